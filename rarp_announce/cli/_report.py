"""How frames that left are shown to a script: one JSON object per frame."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO

from rarp_announce.model import FrameEvent
from rarp_announce.textio import emit_line


def frame_record(event: FrameEvent) -> dict[str, object]:
    """The JSON shape of one frame: {"t", "mac", "device", "vlan", "round", "burst", "type", ...};
    type "fdb" is the bridge FDB step before a target's first frame, with "bridge", "port" and
    "detail" (what it did) or "error"."""
    target = event.target
    record: dict[str, object] = {
        "t": round(event.t, 6),
        "mac": target.mac,
        "device": target.device,
        "vlan": target.vlan,
        "round": event.round,
        "burst": event.burst,
        "type": event.type,
    }
    if target.ovs is not None:
        record["port"] = target.ovs.name
        record["ofport"] = target.ovs.ofport
    if event.address is not None:
        record["ip"] = event.address
    if event.domain is not None:
        record["domain"] = event.domain
    if target.bridge_port is not None and event.type == "fdb":
        record.update(bridge=target.bridge_port.bridge, port=target.bridge_port.name)
    if event.detail is not None:
        record["detail"] = event.detail
    if event.error is not None:
        record["error"] = event.error
    return record


def frame_reporter(stream: TextIO | None = None) -> Callable[[FrameEvent], None]:
    out = stream or sys.stdout

    def report(event: FrameEvent) -> None:
        emit_line(out, json.dumps(frame_record(event)))

    return report
