"""The destination's SVI neighbour entries for a guest's vouched addresses, dynamic.

On an EVPN-VXLAN hypervisor, FRR's zebra advertises a MAC+IP (type-2) route for an address
only when the neighbour table of the VNI's SVI (the bridge itself, or a VLAN device on it,
holding an address in the guest's subnet) has an entry for it; remote VTEPs then update their
ARP-suppression caches. A host never adds a neighbour entry for a gratuitous ARP it sends
itself (the same trap as the bridge FDB, see fdb.py), so at the arrival each of the guest's
vouched addresses in an SVI's subnet is written as `ip neigh replace IP lladdr MAC dev SVI nud
reachable` would (RTM_NEWNEIGH, NUD_REACHABLE, NLM_F_CREATE|NLM_F_REPLACE): an ordinary entry
the kernel re-validates and ages, never static or permanent (FRR removed operators' static
entries during migrations, FRRouting/frr#21472), and never over a static or permanent entry the
operator set. Only what the resolver put in `Target.neighbours` is written: addresses the
operator or the host's control plane vouches for, never one the guest alone claimed.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
from dataclasses import dataclass

from rarp_announce.model import Target
from rarp_announce.netdev import Shared
from rarp_announce.transport import _rtnl


@dataclass(frozen=True)
class _Entry:
    svi: str
    index: int
    ip: str


class SviNeighbours:
    """Writes the neighbour entries of targets' vouched addresses on this host's SVIs."""

    _KEPT = 4096  # plans kept: a target is claimed at the start of each burst, then forgotten

    def __init__(self) -> None:
        self._rtnl = _rtnl.Rtnl()
        self._plans: collections.OrderedDict[Target, tuple[_Entry, ...]] = collections.OrderedDict()
        self._svis: Shared[str, tuple[_Svi, ...]] | None = None

    async def prepare(self, target: Target) -> None:
        """Find the SVI of each address (pyroute2): the bridge, or a VLAN device on it for the
        target's VLAN, with an address whose prefix holds it. Addresses without one get nothing."""
        if target.bridge_port is None or not target.neighbours:
            return
        if self._svis is None:
            self._svis = Shared(_svis)  # the targets prepared in one loop turn share one dump
        found = await self._svis.get([target.bridge_port.bridge])
        self._plans[target] = _plan(target, found.get(target.bridge_port.bridge, ()))
        self._plans.move_to_end(target)
        while len(self._plans) > self._KEPT:
            self._plans.popitem(last=False)

    def claim(self, target: Target) -> list[str]:
        """Write the entries; what was done, one phrase each. DeviceError names the first refusal."""
        done: list[str] = []
        for entry in self._plans.get(target, ()):
            label = f"{entry.svi}:{entry.ip}"
            family = socket.AF_INET if ipaddress.ip_address(entry.ip).version == 4 else socket.AF_INET6
            current = self._rtnl.get_neigh(family, entry.index, entry.ip, label)
            if current is not None and current[1] & (_rtnl.NUD_PERMANENT | _rtnl.NUD_NOARP):
                done.append(f"left the static neighbour {entry.ip} on {entry.svi} as it is")
                continue
            self._rtnl.new_neigh(family, entry.index, entry.ip, target.mac, label)
            done.append(f"neighbour {entry.ip} -> {target.mac} on {entry.svi}")
        return done

    def close(self) -> None:
        self._rtnl.close()
        self._plans.clear()


@dataclass(frozen=True)
class _Svi:
    name: str
    index: int
    vlan: int | None  # None: the bridge itself; else a VLAN device on it
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


async def _svis(bridges: set[str]) -> dict[str, tuple[_Svi, ...]]:
    """Each bridge's SVIs with their subnets: one dump of links and addresses for all of them."""
    from pyroute2 import AsyncIPRoute

    async with AsyncIPRoute() as ipr:
        links = [message async for message in await ipr.link("dump")]
        addresses = [message async for message in await ipr.addr("dump")]
    networks: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for message in addresses:
        networks.setdefault(message["index"], []).append(
            ipaddress.ip_network(f"{message.get('address')}/{message['prefixlen']}", strict=False))
    index_of = {message.get("ifname"): message["index"] for message in links}
    found: dict[str, tuple[_Svi, ...]] = {}
    for bridge in bridges:
        top = index_of.get(bridge)
        if top is None:
            continue
        svis = [_Svi(bridge, top, None, tuple(networks.get(top, ())))]
        for message in links:
            if (message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vlan" and message.get("link") == top):
                vid = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VLAN_ID")
                svis.append(_Svi(message.get("ifname"), message["index"], vid, tuple(networks.get(message["index"], ()))))
        found[bridge] = tuple(svis)
    return found


def _plan(target: Target, svis: tuple[_Svi, ...]) -> tuple[_Entry, ...]:
    """Each address goes to the SVI of the target's VLAN (the bridge itself when untagged) whose
    subnet holds it; one in no such subnet gets nothing."""
    here = [svi for svi in svis if svi.vlan == target.vlan]
    plan = []
    for ip in target.neighbours:
        address = ipaddress.ip_address(ip)
        for svi in here:
            if any(address.version == net.version and address in net and address != net.network_address
                   for net in svi.networks):
                plan.append(_Entry(svi.name, svi.index, ip))
                break
    return tuple(plan)
