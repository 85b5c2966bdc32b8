"""How frames that left are shown to a person or a script."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO

from rarp_announce.announcer import FrameEvent
from rarp_announce.transport import emit_line


def frame_record(event: FrameEvent) -> dict[str, object]:
    """The JSON shape of one frame: {"t", "mac", "device", "vlan", "round", ...}."""
    record: dict[str, object] = {
        "t": round(event.t, 6),
        "mac": event.target.mac,
        "device": event.target.device,
        "vlan": event.target.vlan,
        "round": event.round,
        "burst": event.burst,
    }
    if event.domain is not None:
        record["domain"] = event.domain
    if event.error is not None:
        record["error"] = event.error
    return record


def frame_reporter(as_json: bool, *, quiet: bool = False, stream: TextIO | None = None) -> Callable[[FrameEvent], None]:
    out = stream or sys.stdout

    def report(event: FrameEvent) -> None:
        if as_json:
            emit_line(out, json.dumps(frame_record(event)))
        elif not quiet:
            vlan = event.target.vlan if event.target.vlan is not None else "-"
            status = f"FAILED: {event.error}" if event.error else "sent"
            emit_line(
                out,
                f"+{event.t:7.3f}s  burst {event.burst} round {event.round}  {event.target.mac}"
                f"  {event.target.device} vlan {vlan}  {status}",
            )

    return report
