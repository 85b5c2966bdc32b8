"""Decode RARP frames seen on a device with scapy, and say whether each has QEMU's exact shape."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from rarp_announce.errors import AnnounceError, DeviceError
from rarp_announce.frames import ETH_P_RARP, rarp_frame
from rarp_announce.transport import device_state


@dataclass(frozen=True)
class SeenFrame:
    time: float
    mac: str
    vlan: int | None
    priority: int
    opcode: int
    qemu_shape: bool
    length: int
    raw: bytes


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
    expected = _expected(raw[6:12], vlan, priority or 0)
    return SeenFrame(when, source, vlan, priority or 0, int(arp.op), raw[: len(expected)] == expected and _padding_ok(raw, expected), len(raw), raw)


def _expected(mac: bytes, vlan: int | None, priority: int) -> bytes:
    try:
        return rarp_frame(mac, vlan, priority)
    except AnnounceError:
        return b""


def _padding_ok(raw: bytes, expected: bytes) -> bool:
    # A capture may carry extra trailing zero bytes from the NIC; QEMU's frame is what matters.
    return bool(expected) and not any(raw[len(expected):])


def sniff_rarp(iface: str, *, count: int = 0, timeout: float | None = None, as_json: bool = False) -> int:
    """Print RARP frames seen on `iface` until count or timeout; returns how many were seen."""
    problem = device_state(iface)
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
            frame = decode(bytes(packet), float(packet.time))
            if frame is None:
                continue
            seen += 1
            _print(frame, started, as_json)
    finally:
        sock.close()
    return seen


def _print(frame: SeenFrame, started: float, as_json: bool) -> None:
    if as_json:
        record = {
            "time": round(frame.time, 6),
            "mac": frame.mac,
            "vlan": frame.vlan,
            "priority": frame.priority,
            "opcode": frame.opcode,
            "qemu_shape": frame.qemu_shape,
            "length": frame.length,
        }
        print(json.dumps(record), flush=True)
    else:
        vlan = frame.vlan if frame.vlan is not None else "-"
        shape = "QEMU shape" if frame.qemu_shape else "NOT QEMU's shape"
        print(
            f"+{frame.time - started:8.3f}s  {frame.mac}  vlan {vlan:<4}  op {frame.opcode}  {frame.length} bytes  {shape}",
            file=sys.stdout,
            flush=True,
        )
