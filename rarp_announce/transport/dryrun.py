"""Prints each frame that would leave, with its time since the first one; sends nothing, and
writes no bridge FDB entry (it prints the one it would write)."""

from __future__ import annotations

import ipaddress
import struct
import sys
import time
from collections.abc import Collection, Sequence
from typing import TextIO

from rarp_announce.frames import frame_kind
from rarp_announce.model import Target
from rarp_announce.textio import emit_line


class DryRunSink:
    offline = True
    prints_frames = True

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._start: float | None = None

    def destination(self, routes: Collection[str]) -> str:
        return "(dry run) on " + ", ".join(sorted(routes))

    async def port_number(self, bridge: str, port: str) -> int | None:
        return None  # nothing is asked of a bridge in a dry run: the number shows as "?"

    async def prepare(self, target: Target, frames: Sequence[bytes]) -> None:
        pass

    def claim(self, target: Target) -> str:
        assert target.bridge_port is not None
        port = target.bridge_port
        emit_line(
            self._stream,
            f"dry-run +{self._elapsed():7.3f}s  {port.bridge:<15} vlan {target.vlan if target.vlan is not None else '-'!s:<4}  "
            f"{target.mac}  fdb replace {target.mac} dev {port.name} master dynamic (not written)",
        )
        return "not written (dry run)"

    def _elapsed(self) -> float:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        return now - self._start

    def send(self, target: Target, frame: bytes) -> None:
        elapsed = self._elapsed()
        vlan = target.vlan if target.vlan is not None else "-"
        where = target.device if target.ovs is None else f"{target.device} in_port={target.ovs.ofport if target.ovs.ofport is not None else '?'} ({target.ovs.name})"
        kind, address = _describe(frame)
        what = kind if address is None else f"{kind} {address}"
        untagged = " untagged" if target.ovs is not None and not target.tagged and target.vlan is not None else ""
        emit_line(
            self._stream,
            f"dry-run +{elapsed:7.3f}s  {where:<15} vlan {vlan!s:<4}{untagged}  {target.mac}  "
            f"{what}  {len(frame)} bytes (not sent)",
        )

    def close(self) -> None:
        pass


def _describe(frame: bytes) -> tuple[str, str | None]:
    offset = 16 if frame[12:14] == b"\x81\x00" else 12
    body = offset + 2
    kind = frame_kind(frame)
    if kind is None:
        (ethertype,) = struct.unpack_from("!H", frame, offset)
        return f"ethertype {ethertype:#06x}", None
    if kind == "garp":
        return kind, str(ipaddress.IPv4Address(frame[body + 14 : body + 18]))
    if kind == "na":
        return kind, str(ipaddress.IPv6Address(frame[body + 48 : body + 64]))
    return kind, None
