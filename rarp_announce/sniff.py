"""Decode announcements seen on a device, and say whether each has exactly the announced shape.

RARP frames are decoded with scapy and checked against QEMU's frame. Gratuitous ARP and
unsolicited NA are decoded with struct at fixed offsets: their exact shape is a byte layout
(RFC 5227 2.3, RFC 4861 7.2.6), and scapy's dissection reads a checksum without checking it
and splits a frame by its length fields, which hides exactly what must be reported. Whatever
the decoder, a frame only counts as the right shape when it is byte for byte what frames.py
builds for its MAC, address and tag; the field checks only explain a miss.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from rarp_announce.frames import (
    ALL_NODES,
    ALL_NODES_MAC,
    ARP_HRD_ETHER,
    ARP_OP_REQUEST,
    BROADCAST,
    ETH_P_IP,
    ETH_P_RARP,
    NA_FLAG_OVERRIDE,
    ND_OPT_TARGET_LL_ADDR,
    RARP_OP_REQUEST_REVERSE,
    FrameKind,
    frame_kind,
    garp_frame,
    icmpv6_checksum,
    na_frame,
    rarp_frame,
)
from rarp_announce.errors import DeviceError, InputError
from rarp_announce.ipaddr import ip_problem
from rarp_announce.mac import format_mac

KINDS: tuple[FrameKind, ...] = ("rarp", "garp", "na")
RARP_ONLY: tuple[FrameKind, ...] = ("rarp",)

# Layouts of our own rather than frames.py's: a mistake there must not be mirrored here.
_ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_NA_MESSAGE = struct.Struct("!BBHI16s")
_ND_OPTION = struct.Struct("!BB6s")
_NA_FLAG_ROUTER = 0x80000000
_NA_FLAG_SOLICITED = 0x40000000
_ZERO_IP = bytes(4)
_ZERO_MAC = bytes(6)
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


@dataclass(frozen=True)
class SeenFrame:
    time: float
    mac: str  # the Ethernet source
    vlan: int | None
    priority: int
    opcode: int  # the ARP/RARP opcode; for an NA its ICMPv6 type (136)
    qemu_shape: bool  # exactly the announced shape: QEMU's RARP, or frames.py's GARP / NA
    length: int
    raw: bytes
    kind: FrameKind = "rarp"
    ip: str | None = None  # the announced address of a GARP (sender IP) or NA (target)
    problem: str | None = None  # why the shape is not the announced one; None when it is


def decode(raw: bytes, when: float = 0.0) -> SeenFrame | None:
    """A SeenFrame when `raw` is a RARP frame (tagged or not), else None. scapy decodes."""
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import bind_layers

    # scapy only decodes 0x8035 as ARP once told to.
    bind_layers(Ether, ARP, type=ETH_P_RARP)
    bind_layers(Dot1Q, ARP, type=ETH_P_RARP)
    packet = Ether(raw)
    if ARP not in packet:
        return None
    vlan = priority = None
    if Dot1Q in packet:
        vlan, priority = packet[Dot1Q].vlan, packet[Dot1Q].prio
    ether_type = packet[Dot1Q].type if Dot1Q in packet else packet.type
    if ether_type != ETH_P_RARP:
        return None
    arp = packet[ARP]
    source = packet.src.lower()
    expected = _built(rarp_frame, raw[6:12], vlan, priority or 0)
    shape = _matches(raw, expected)
    problem = None if shape else _why(_rarp_problems(raw), raw, expected)
    return SeenFrame(when, source, vlan, priority or 0, int(arp.op), shape, len(raw), raw, "rarp", None, problem)


def _built(builder: Callable[..., bytes], *args: object) -> bytes:
    """What `builder` makes of these fields, or b'' when it refuses them (nothing can match)."""
    try:
        return builder(*args)
    except InputError:
        return b""


def _matches(raw: bytes, expected: bytes) -> bool:
    # A capture may carry extra trailing zero bytes from the NIC; the built frame is what matters.
    return bool(expected) and raw[: len(expected)] == expected and not any(raw[len(expected):])


def decode_garp(raw: bytes, when: float = 0.0) -> SeenFrame | None:
    """A SeenFrame when `raw` is an ARP frame (tagged or not), else None.

    Every ARP frame is decoded, so that one meant as an announcement but built wrong (a reply,
    differing sender and target IP, a probe from 0.0.0.0) is shown with why it is not one.
    """
    return _decode_garp(raw, when) if frame_kind(raw) == "garp" else None


def _decode_garp(raw: bytes, when: float) -> SeenFrame:
    vlan, priority, offset = _tag(raw)
    problems = _ethernet_problems(raw, vlan, BROADCAST, "broadcast")
    body = raw[offset : offset + _ARP_BODY.size]
    if len(body) < _ARP_BODY.size:
        problems.append(f"truncated: {len(body)} bytes of ARP, expected {_ARP_BODY.size}")
        body = body.ljust(_ARP_BODY.size, b"\x00")
    hrd, pro, hln, pln, op, sha, spa, tha, tpa = _ARP_BODY.unpack(body)
    problems += _arp_header_problems(hrd, pro, hln, pln)
    if op != ARP_OP_REQUEST:
        # RFC 5227 3: an announcement is a request because every stack processes a broadcast
        # request, while a reply (normally unicast) sent to broadcast may be ignored.
        what = " (a reply)" if op == 2 else ""
        problems.append(f"op {op}{what}: an announcement is a request (op {ARP_OP_REQUEST}), RFC 5227 3")
    if sha != raw[6:12]:
        problems.append(f"sender MAC {format_mac(sha)} is not the Ethernet source {format_mac(raw[6:12])}")
    sender, target = _ipv4_text(spa), _ipv4_text(tpa)
    if spa == _ZERO_IP:
        problems.append("sender IP 0.0.0.0: an ARP probe (RFC 5227 2.1.1), not an announcement")
    elif spa != tpa:
        problems.append(f"sender IP {sender} and target IP {target} differ: a question about another host, not an announcement")
    else:
        _append_ip_problem(problems, "sender IP", sender)
    if tha != _ZERO_MAC:
        problems.append(f"target MAC {format_mac(tha)} is not 00:00:00:00:00:00 (RFC 5227 2.3)")
    expected = _built(garp_frame, raw[6:12], spa, vlan, priority)
    return _seen(raw, when, "garp", vlan, priority, op, sender, problems, expected)


def decode_na(raw: bytes, when: float = 0.0) -> SeenFrame | None:
    """A SeenFrame when `raw` is an ICMPv6 neighbour advertisement (tagged or not), else None.

    Every NA is decoded, so that a solicited one, or one a router would drop (hop limit not
    255, a bad checksum), is shown with why it is not an unsolicited announcement.
    """
    return _decode_na(raw, when) if frame_kind(raw) == "na" else None


def _decode_na(raw: bytes, when: float) -> SeenFrame:
    vlan, priority, offset = _tag(raw)
    problems = _ethernet_problems(raw, vlan, ALL_NODES_MAC, "33:33:00:00:00:01 (all-nodes)")
    header = raw[offset : offset + _IPV6_HEADER.size]
    # frame_kind already saw next header 58 and ICMPv6 type 136.
    first_word, payload_length, _next, hop_limit, source, destination = _IPV6_HEADER.unpack(header)
    payload = raw[offset + _IPV6_HEADER.size :]
    fixed = _NA_MESSAGE.size + _ND_OPTION.size
    if first_word != 6 << 28:
        problems.append(f"traffic class {(first_word >> 20) & 0xFF} / flow label {first_word & 0xFFFFF}: expected 0 / 0")
    if payload_length != fixed:
        problems.append(f"IPv6 payload length {payload_length}, expected {fixed} (the NA and one option)")
    if hop_limit != 255:
        problems.append(f"hop limit {hop_limit}, expected 255: receivers drop any other (RFC 4861 7.1.2)")
    if destination != ALL_NODES:
        problems.append(f"IPv6 destination {_ipv6_text(destination)} is not ff02::1: an unsolicited NA goes to all-nodes (RFC 4861 7.2.6)")
    message = payload[:payload_length]
    if len(message) < payload_length:
        problems.append(f"truncated: {len(payload)} bytes of IPv6 payload, its header says {payload_length}")
    padded = message.ljust(fixed, b"\x00")
    kind, code, checksum, flags, target = _NA_MESSAGE.unpack_from(padded)
    target_text = _ipv6_text(target)
    if code != 0:
        problems.append(f"ICMPv6 code {code}, expected 0")
    if len(message) == payload_length:
        # RFC 4443 2.3: the sum covers the pseudo-header and the message as the IPv6 header bounds it.
        zeroed = message[:2] + b"\x00\x00" + message[4:]
        right = icmpv6_checksum(source, destination, zeroed)
        if checksum != right:
            problems.append(f"ICMPv6 checksum 0x{checksum:04x} is wrong, expected 0x{right:04x}")
    if flags & _NA_FLAG_ROUTER:
        problems.append("Router flag set: a guest announces a host address (R=0)")
    if flags & _NA_FLAG_SOLICITED:
        problems.append("Solicited flag set: an answer to a solicitation, not an announcement (RFC 4861 7.2.6)")
    if not flags & NA_FLAG_OVERRIDE:
        problems.append("Override flag clear: neighbours keep the MAC they cached (RFC 4861 7.2.5)")
    if flags & 0x1FFFFFFF:
        problems.append(f"reserved bits set (0x{flags & 0x1FFFFFFF:08x}): RFC 4861 4.4 says zero")
    if source != target:
        problems.append(f"IPv6 source {_ipv6_text(source)} is not the target {target_text}")
    _append_ip_problem(problems, "target", target_text)
    opt_type, opt_length, lladdr = _ND_OPTION.unpack_from(padded, _NA_MESSAGE.size)
    if (opt_type, opt_length) != (ND_OPT_TARGET_LL_ADDR, 1):
        problems.append(
            f"option type {opt_type} length {opt_length}: expected one target link-layer address option (type 2, length 1), RFC 4861 4.6.1"
        )
    elif lladdr != raw[6:12]:
        problems.append(f"target link-layer address {format_mac(lladdr)} is not the Ethernet source {format_mac(raw[6:12])}")
    expected = _built(na_frame, raw[6:12], target, vlan, priority)
    return _seen(raw, when, "na", vlan, priority, kind, target_text, problems, expected)


# By kind, once frame_kind has said which: the ARP and NA decoders need not ask it again.
_DECODERS: dict[FrameKind, Callable[[bytes, float], SeenFrame | None]] = {
    "rarp": decode,
    "garp": _decode_garp,
    "na": _decode_na,
}


def decode_any(raw: bytes, when: float = 0.0, kinds: Collection[str] = KINDS) -> SeenFrame | None:
    """A SeenFrame when `raw` is a RARP, ARP or NA frame of one of `kinds`, else None."""
    kind = frame_kind(raw)
    if kind is None or kind not in kinds:
        return None
    return _DECODERS[kind](raw, when)


def _tag(raw: bytes) -> tuple[int | None, int, int]:
    """(VLAN id, priority, offset of the payload after the ethertype), past one 802.1Q tag."""
    if raw[12:14] == b"\x81\x00":
        tci = int.from_bytes(raw[14:16], "big")
        return tci & 0x0FFF, tci >> 13, 18
    return None, 0, 14


def _ethernet_problems(raw: bytes, vlan: int | None, destination: bytes, named: str) -> list[str]:
    problems: list[str] = []
    if raw[:6] != destination:
        problems.append(f"destination {format_mac(raw[:6])} is not {named}")
    source = raw[6:12]
    if source[0] & 1 or source == _ZERO_MAC:
        problems.append(f"source {format_mac(source)} is not a unicast MAC")
    if vlan is not None and not 1 <= vlan <= 4094:
        problems.append(f"VLAN id {vlan}: only 1..4094 carry an announcement")
    if raw[12:14] == b"\x81\x00" and int.from_bytes(raw[14:16], "big") & 0x1000:
        problems.append("802.1Q DEI bit set")
    return problems


def _arp_header_problems(hrd: int, pro: int, hln: int, pln: int) -> list[str]:
    if (hrd, pro, hln, pln) == (ARP_HRD_ETHER, ETH_P_IP, 6, 4):
        return []
    return [f"hardware type {hrd}, protocol 0x{pro:04x}, lengths {hln}/{pln}: expected Ethernet/IPv4 (1, 0x0800, 6/4)"]


def _rarp_problems(raw: bytes) -> list[str]:
    vlan, _priority, offset = _tag(raw)
    problems = _ethernet_problems(raw, vlan, BROADCAST, "broadcast")
    body = raw[offset : offset + _ARP_BODY.size].ljust(_ARP_BODY.size, b"\x00")
    hrd, pro, hln, pln, op, sha, spa, tha, tpa = _ARP_BODY.unpack(body)
    problems += _arp_header_problems(hrd, pro, hln, pln)
    if op != RARP_OP_REQUEST_REVERSE:
        problems.append(f"op {op}: QEMU sends {RARP_OP_REQUEST_REVERSE} (reverse request)")
    for name, value in (("sender MAC", sha), ("target MAC", tha)):
        if value != raw[6:12]:
            problems.append(f"{name} {format_mac(value)} is not the Ethernet source {format_mac(raw[6:12])}")
    for name, value in (("sender IP", spa), ("target IP", tpa)):
        if value != _ZERO_IP:
            problems.append(f"{name} {_ipv4_text(value)}: QEMU leaves it 0.0.0.0")
    return problems


def _append_ip_problem(problems: list[str], name: str, text: str) -> None:
    problem = ip_problem(text)
    if problem is not None:
        problems.append(f"{name}: {problem}")


def _seen(
    raw: bytes, when: float, kind: FrameKind, vlan: int | None, priority: int, opcode: int,
    ip: str, problems: list[str], expected: bytes,
) -> SeenFrame:
    # The builder is the definition of the shape; the field checks above only explain a miss.
    problem = None if not problems and _matches(raw, expected) else _why(problems, raw, expected)
    return SeenFrame(when, format_mac(raw[6:12]), vlan, priority, opcode, problem is None, len(raw), raw, kind, ip, problem)


def _why(problems: list[str], raw: bytes, expected: bytes) -> str:
    if problems:
        return "; ".join(problems)
    if len(raw) < len(expected):
        return f"{len(raw)} bytes, expected {len(expected)} (zero-padded)"
    for index, (have, want) in enumerate(zip(raw, expected)):
        if have != want:
            if not any(expected[index:]):
                return f"non-zero padding at byte {index}"
            return f"byte {index} is 0x{have:02x}, expected 0x{want:02x}"
    return f"non-zero bytes after the {len(expected)}-byte frame"


def _ipv4_text(octets: bytes) -> str:
    return str(ipaddress.IPv4Address(octets))


def _ipv6_text(octets: bytes) -> str:
    return str(ipaddress.IPv6Address(octets))


def _device_state(device: str) -> str | None:
    """None when a capture on `device` can see frames, else why not (missing, down).

    Not the resolver's readiness check: listening on a guest's tap or a port without carrier
    is legitimate here, so only existence and IFF_UP matter (one ioctl, no netlink session).
    """
    try:
        socket.if_nametoindex(device)
    except (OSError, ValueError):
        return "no such device on this host"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH14x", device.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request))[1]
    except OSError as exc:
        return f"cannot read its flags ({os.strerror(exc.errno or 0)})"
    finally:
        probe.close()
    if not flags & _IFF_UP:
        return f"device is down (ip link set dev {device} up)"
    return None


def _check_kinds(kinds: Collection[str]) -> tuple[FrameKind, ...]:
    if isinstance(kinds, str):  # "na" is a kind, not the kinds "n" and "a"
        kinds = (kinds,)
    chosen = tuple(kind for kind in KINDS if kind in kinds)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not chosen:
        raise InputError(f"unknown frame type(s) {', '.join(unknown) or '(none)'}: expected some of {', '.join(KINDS)}")
    return chosen


def sniff_rarp(
    iface: str,
    *,
    count: int = 0,
    timeout: float | None = None,
    as_json: bool = False,
    kinds: Collection[str] = RARP_ONLY,
) -> int:
    """Print frames of `kinds` (RARP by default; "garp", "na" too) seen on `iface` until count or
    timeout; returns how many were seen.

    With RARP only, output is what it always was; with any other kind every record also
    carries its type, IP and the reason a frame is not the announced shape.
    """
    chosen = _check_kinds(kinds)
    extended = chosen != RARP_ONLY
    problem = _device_state(iface)
    if problem:
        raise DeviceError(iface, problem)
    import scapy.arch  # noqa: F401  (fills conf.L2listen for this OS; scapy.config alone leaves it None)
    import scapy.layers.l2  # noqa: F401  (registers Ethernet, or the listen socket warns and guesses)
    from scapy.config import conf

    seen = 0
    started = time.time()
    try:
        sock = conf.L2listen(iface=iface)
    except PermissionError:
        raise DeviceError(iface, "capturing needs root or CAP_NET_RAW") from None
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not count or seen < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            ready = sock.select([sock], min(remaining, 0.5) if remaining is not None else 0.5)
            if not ready:
                continue
            packet = sock.recv()
            if packet is None:
                continue
            frame = decode_any(bytes(packet), float(packet.time), chosen)
            if frame is None:
                continue
            seen += 1
            _print(frame, started, as_json, extended=extended)
    finally:
        sock.close()
    return seen


def _print(frame: SeenFrame, started: float, as_json: bool, *, extended: bool = False) -> None:
    # A RARP-only sniff prints exactly what it always did; anything else prints the type too.
    extended = extended or frame.kind != "rarp"
    if as_json:
        record: dict[str, object] = {
            "time": round(frame.time, 6),
            "mac": frame.mac,
            "vlan": frame.vlan,
            "priority": frame.priority,
            "opcode": frame.opcode,
            "qemu_shape": frame.qemu_shape,
            "length": frame.length,
        }
        if extended:
            record.update(type=frame.kind, ip=frame.ip, problem=frame.problem)
        print(json.dumps(record), flush=True)
        return
    vlan = frame.vlan if frame.vlan is not None else "-"
    if not extended:
        shape = "QEMU shape" if frame.qemu_shape else "NOT QEMU's shape"
        print(
            f"+{frame.time - started:8.3f}s  {frame.mac}  vlan {vlan:<4}  op {frame.opcode}  {frame.length} bytes  {shape}",
            file=sys.stdout,
            flush=True,
        )
        return
    what = f"op {frame.opcode}" if frame.kind == "rarp" else frame.ip or "-"
    if frame.qemu_shape:
        shape = "QEMU shape" if frame.kind == "rarp" else "announcement shape"
    else:
        shape = ("NOT QEMU's shape" if frame.kind == "rarp" else "NOT the announcement shape") + f": {frame.problem}"
    print(
        f"+{frame.time - started:8.3f}s  {frame.mac}  vlan {vlan:<4}  {frame.kind:<4}  {what:<24}  {frame.length} bytes  {shape}",
        file=sys.stdout,
        flush=True,
    )
