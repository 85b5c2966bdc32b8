"""One rtnetlink socket for the neighbour requests of the first round (bridge FDB, SVI neighbours).

The messages are encoded and decoded by pyroute2's ndmsg, and sent on a plain rtnetlink
socket kept open: they are made inside the first round, on the event loop, where pyroute2's
own blocking API cannot run (it drives an event loop of its own) and its async API would put an
await between the resume and the first frame. rtnetlink handles a request in the sender's
context (net/core/rtnetlink.c, rtnetlink_rcv), so its answer is queued before `send` returns.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable

from rarp_announce.errors import DeviceError

AF_BRIDGE = 7
NETLINK_ROUTE = 0
RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NTF_MASTER = 0x04
NTF_EXT_LEARNED = 0x10
NUD_REACHABLE = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_ANSWER_WAIT = 0.05  # seconds; rtnetlink answers before send() returns, this only bounds a surprise

Refusal = Callable[[int, str], str]
"""(errno, label) -> the reason a person reads."""


class Rtnl:
    """Neighbour get/replace requests, one at a time, on one socket."""

    _KEPT = 4096  # encoded requests kept (a target's are asked again at each burst)

    def __init__(self, refusal: Refusal | None = None) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._refusal = refusal or default_refusal
        # pyroute2 encodes a request in ~50 µs of Python; the same request is sent again at
        # each burst and by each trigger, so each is encoded once (only its sequence changes).
        self._encoded: dict[tuple[object, ...], bytearray] = {}

    def get_fdb(self, mac: str, bridge_index: int, vlan: int | None, label: str) -> tuple[int, int] | None:
        """(port ifindex, NUD state) of bridge `bridge_index`'s entry for `mac`, or None."""
        attrs: list[tuple[str, object]] = [("NDA_LLADDR", mac), ("NDA_MASTER", bridge_index)]
        if vlan is not None:
            attrs.append(("NDA_VLAN", vlan))
        return self._get(self._message(RTM_GETNEIGH, NLM_F_REQUEST, AF_BRIDGE, 0, 0, 0, attrs), label)

    def new_fdb(self, mac: str, port_index: int, vlan: int | None, label: str) -> None:
        """`bridge fdb replace MAC dev PORT master dynamic [vlan N]`, byte for byte."""
        attrs: list[tuple[str, object]] = [("NDA_LLADDR", mac)]
        if vlan is not None:
            attrs.append(("NDA_VLAN", vlan))
        self._request(self._message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, AF_BRIDGE,
                                    port_index, NUD_REACHABLE, NTF_MASTER, attrs), label)

    def get_neigh(self, family: int, index: int, ip: str, label: str) -> tuple[int, int] | None:
        """(ifindex, NUD state) of the neighbour entry for `ip` on device `index`, or None."""
        return self._get(self._message(RTM_GETNEIGH, NLM_F_REQUEST, family, index, 0, 0, [("NDA_DST", ip)]), label)

    def new_neigh(self, family: int, index: int, ip: str, mac: str, label: str) -> None:
        """`ip neigh replace IP lladdr MAC dev DEV nud reachable`."""
        self._request(self._message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, family,
                                    index, NUD_REACHABLE, 0, [("NDA_DST", ip), ("NDA_LLADDR", mac)]), label)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _message(self, kind: int, header_flags: int, family: int, ifindex: int, state: int, ndm_flags: int,
                 attrs: list[tuple[str, object]]) -> bytearray:
        key = (kind, header_flags, family, ifindex, state, ndm_flags, tuple(attrs))
        message = self._encoded.get(key)
        if message is None:
            if len(self._encoded) >= self._KEPT:
                self._encoded.clear()
            message = self._encoded[key] = encode(kind, header_flags, family, ifindex, state, ndm_flags, attrs)
        return message

    def _get(self, message: bytearray, label: str) -> tuple[int, int] | None:
        answer = self._request(message, label, missing_ok=True)
        return None if answer is None else ndm_place(answer)

    def _request(self, message: bytearray, label: str, *, missing_ok: bool = False) -> bytes | None:
        """Send one request; its answer message (None for an ack, or ENOENT when `missing_ok`)."""
        sock = self._socket(label)
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        struct.pack_into("=I", message, 8, self._seq)
        try:
            sock.send(message)
        except OSError as exc:
            raise DeviceError(label, self._refusal(exc.errno or 0, label)) from None
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, socket.timeout):
                raise DeviceError(label, "the kernel did not answer the netlink request") from None
            except OSError as exc:
                raise DeviceError(label, self._refusal(exc.errno or 0, label)) from None
            length, kind, _flags, seq, _pid = _HEADER.unpack_from(data)
            if seq != self._seq:
                continue  # a late answer to an earlier request that timed out
            if kind != NLMSG_ERROR:
                return data[:length]
            (code,) = struct.unpack_from("=i", data, _HEADER.size)
            if code == 0 or (missing_ok and -code == errno.ENOENT):
                return None
            raise DeviceError(label, self._refusal(-code, label))

    def _socket(self, label: str) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
                sock.bind((0, 0))
            except OSError as exc:
                raise DeviceError(label, f"cannot open a netlink socket: {os.strerror(exc.errno or 0)}") from None
            sock.settimeout(_ANSWER_WAIT)
            self._sock = sock
        return self._sock


_NDMSG = struct.Struct("=BxxxiHBB")  # struct ndmsg (linux/neighbour.h), right after the nlmsghdr


def ndm_place(answer: bytes) -> tuple[int, int]:
    """(ifindex, NUD state) of an RTM_NEWNEIGH answer: the fixed ndmsg header, read with struct.

    An entry a control plane installed (NTF_EXT_LEARNED: zebra's for a MAC or address behind a
    remote VTEP, which it marks NOARP) reads as REACHABLE: it says where the guest was, it is not
    a static entry an operator set, and the arrival replaces it like a learned one."""
    _family, ifindex, state, flags, _type = _NDMSG.unpack_from(answer, _HEADER.size)
    if flags & NTF_EXT_LEARNED:
        state = NUD_REACHABLE
    return ifindex, state


def encode(kind: int, header_flags: int, family: int, ifindex: int, state: int, ndm_flags: int,
           attrs: list[tuple[str, object]]) -> bytearray:
    """One neighbour request, encoded by pyroute2's ndmsg."""
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    msg = ndmsg()
    msg["family"] = family
    msg["ifindex"] = ifindex
    msg["state"] = state
    msg["flags"] = ndm_flags
    msg["attrs"] = attrs
    msg["header"]["type"] = kind
    msg["header"]["flags"] = header_flags
    msg.encode()
    return bytearray(msg.data)


def net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff, linux/capability.h)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 12 & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


NEEDS_NET_ADMIN = "writing the host's neighbour tables needs CAP_NET_ADMIN (root, or the systemd unit's capability)"


def default_refusal(code: int, label: str) -> str:
    if code == errno.EPERM and not net_admin():
        return NEEDS_NET_ADMIN
    if code in (errno.ENODEV, errno.ENXIO):
        return f"{label}: the device is gone"
    return f"the kernel refused the neighbour write: {os.strerror(code)}"
