"""The destination Linux bridge's own FDB: the guest's MAC pointed at the guest's tap, dynamic.

A Linux bridge learns a source MAC only at a port's ingress (net/bridge/br_input.c,
br_handle_frame_finish -> br_fdb_update), never from a frame its own bridge device transmits
(net/bridge/br_device.c, br_dev_xmit). On the destination the guest's tap is new and every
earlier announcement flooded the L2 domain, so the bridge holds the guest's MAC on its uplink:
a frame sent from the bridge device moves the external switch but leaves this bridge sending
the guest's traffic back out of the uplink. QEMU's own RARP fixes that by entering through the
tap; when it was lost, this entry does the same.

The entry is written exactly as `bridge fdb replace MAC dev TAP master dynamic` does
(iproute2 bridge/fdb.c): RTM_NEWNEIGH, family AF_BRIDGE, NTF_MASTER, NUD_REACHABLE,
NLM_F_CREATE|NLM_F_REPLACE, NDA_VLAN on a VLAN-filtering bridge. NUD_REACHABLE keeps it an
ordinary learned entry that roams when the MAC later enters another port and ages out;
without a state the kernel makes it NUD_PERMANENT, which on a bridge means *local*: the host
would swallow the guest's traffic and the entry would never move (net/bridge/br_fdb.c,
fdb_add_entry). A static or permanent entry already there was set by libvirt
(macTableManager='libvirt') or an operator and is never replaced (one a control plane
installed, extern_learn, such as zebra's for a MAC behind a remote VTEP, is not theirs); one that already points at
the guest's port is left alone.

The requests go through one rtnetlink socket kept open (_rtnl.py), inside the first round.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rarp_announce.errors import DeviceError
from rarp_announce.model import Target
from rarp_announce.transport import _rtnl
from rarp_announce.transport._rtnl import NUD_NOARP, NUD_PERMANENT

if TYPE_CHECKING:
    from rarp_announce.netdev import SharedLinks

_STATE_NAMES = {NUD_PERMANENT: "permanent", NUD_NOARP: "static"}


@dataclass
class _Port:
    """What `prepare` found out about a target's bridge and port (ifindexes, VLAN filtering)."""

    bridge_index: int
    port_index: int
    vlan_filtering: bool


class BridgeFdb:
    """Points bridge FDB entries at guests' ports over one rtnetlink socket."""

    def __init__(self) -> None:
        self._rtnl = _rtnl.Rtnl(_refusal)
        self._ports: dict[tuple[str, str], _Port] = {}
        self._links: SharedLinks | None = None

    async def prepare(self, target: Target) -> str | None:
        """Look the bridge and the guest's port up ahead of time (pyroute2). Never raises: a port
        that is not there yet is looked up again at the write; why it was not found is returned."""
        where = target.bridge_port
        if where is None:
            return None
        if self._links is None:
            from rarp_announce.netdev import SharedLinks

            self._links = SharedLinks()  # 10,000 arrivals prepared at once share a look-up per loop turn
        found = await self._links.get([where.bridge, where.name])
        bridge, port = found.get(where.bridge), found.get(where.name)
        if bridge is None or bridge.kind != "bridge":
            return f"{where.bridge} is not a Linux bridge on this host"
        if port is None:
            return f"the guest's port {where.name} does not exist (yet)"
        if port.master != where.bridge:
            return f"{where.name} is not a port of bridge {where.bridge}"
        self._ports[(where.bridge, where.name)] = _Port(bridge.index, port.index, bridge.vlan_filtering)
        return None

    def claim(self, target: Target) -> str:
        """Point the bridge's entry for the target's MAC at the guest's port; what was done, in
        words. DeviceError (route = the guest's port) when the kernel refuses or it is gone."""
        where = target.bridge_port
        if where is None:
            return "no Linux bridge port"
        label = where.label
        port = self._ports.get((where.bridge, where.name)) or self._lookup(where.bridge, where.name, label)
        try:
            return self._claim(target, port)
        except DeviceError:
            # The tap may have been re-created since `prepare` (a new ifindex): look it up once more.
            fresh = self._lookup(where.bridge, where.name, label)
            if (fresh.bridge_index, fresh.port_index) == (port.bridge_index, port.port_index):
                raise
            return self._claim(target, fresh)

    def close(self) -> None:
        self._rtnl.close()
        self._ports.clear()

    # ---- inside ------------------------------------------------------------------------------

    def _claim(self, target: Target, port: _Port) -> str:
        assert target.bridge_port is not None
        where = target.bridge_port
        label = where.label
        vlan = target.vlan if port.vlan_filtering else None
        current = self._rtnl.get_fdb(target.mac, port.bridge_index, vlan, label)
        if current is not None:
            index, state = current
            fixed = state & (NUD_PERMANENT | NUD_NOARP)
            if fixed:
                on = "the guest's port" if index == port.port_index else _ifname(index)
                return (f"left the {_STATE_NAMES[NUD_PERMANENT if state & NUD_PERMANENT else NUD_NOARP]} entry on "
                        f"{on} as it is (set by libvirt or an operator)")
            if index == port.port_index:
                return f"already on {where.name}"
        self._rtnl.new_fdb(target.mac, port.port_index, vlan, label)
        moved = f" (was on {_ifname(current[0])})" if current is not None else ""
        in_vlan = f" vlan {vlan}" if vlan is not None else ""
        return f"set {target.mac} on {where.name}{in_vlan} dynamic{moved}"

    def _lookup(self, bridge: str, name: str, label: str) -> _Port:
        """The synchronous fallback of `prepare`, for a port that appeared after it."""
        try:
            bridge_index, port_index = socket.if_nametoindex(bridge), socket.if_nametoindex(name)
        except OSError:
            raise DeviceError(label, f"{bridge} or the guest's port {name} does not exist") from None
        filtering = _vlan_filtering(bridge)
        port = self._ports[(bridge, name)] = _Port(bridge_index, port_index, filtering)
        return port


def _vlan_filtering(bridge: str) -> bool:
    try:
        with open(f"/sys/class/net/{bridge}/bridge/vlan_filtering") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return False


def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"ifindex {index}"


def _refusal(code: int, label: str) -> str:
    bridge, _, port = label.partition(":")
    if code == errno.EPERM:
        if not _rtnl.net_admin():
            return "writing the bridge FDB needs CAP_NET_ADMIN (root, or the systemd unit's capability)"
        # net/bridge/br_fdb.c, fdb_add_entry: a port that cannot learn (no carrier, or STP
        # blocking/listening) takes only static and local entries.
        return f"port {port} cannot learn now (no carrier, or STP blocking/listening: bridge link show dev {port})"
    if code in (errno.ENODEV, errno.ENXIO):
        return f"the guest's port {port} or bridge {bridge} is gone"
    if code in (errno.EINVAL, errno.EOPNOTSUPP):
        return f"{port} is not a port of Linux bridge {bridge}"
    return f"the kernel refused the bridge FDB write: {os.strerror(code)}"
