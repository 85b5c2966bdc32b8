"""How frames are shown to scripts: the JSON record they rely on, one object per line."""

from __future__ import annotations

import io
import json

from rarp_announce.cli._report import frame_record, frame_reporter
from rarp_announce.model import FrameEvent, OvsPort, Target

TAGGED = FrameEvent(0.0501234567, Target("52:54:00:12:34:56", "br0", 100), 1, 2, "event", "vm1")
PLAIN = FrameEvent(0.8, Target("52:54:00:12:34:57", "bond0", None), 2, 5, "cli", None)
FAILED = FrameEvent(0.2, Target("52:54:00:12:34:58", "gone0", None), 1, 3, "cli", None, "no such device on this host")
OVS_GARP = FrameEvent(0.0, Target("52:54:00:12:34:59", "ovsbr0", 100, ovs=OvsPort("ovsbr0", "vnet3", 5), tagged=False),
                      1, 1, "event", "vm2", None, "garp", "192.0.2.9")


def test_record_has_the_documented_keys() -> None:
    assert frame_record(TAGGED) == {
        "t": 0.050123, "mac": "52:54:00:12:34:56", "device": "br0", "vlan": 100, "round": 2, "burst": 1,
        "type": "rarp", "domain": "vm1",
    }
    assert frame_record(PLAIN) == {"t": 0.8, "mac": "52:54:00:12:34:57", "device": "bond0", "vlan": None,
                                   "round": 5, "burst": 2, "type": "rarp"}
    assert frame_record(FAILED)["error"] == "no such device on this host"
    assert frame_record(OVS_GARP) == {
        "t": 0.0, "mac": "52:54:00:12:34:59", "device": "ovsbr0", "vlan": 100, "round": 1, "burst": 1,
        "type": "garp", "port": "vnet3", "ofport": 5, "ip": "192.0.2.9", "domain": "vm2",
    }


def test_json_reporter_writes_one_parseable_object_per_line() -> None:
    out = io.StringIO()
    report = frame_reporter(stream=out)
    for event in (TAGGED, PLAIN, FAILED, OVS_GARP):
        report(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert records == [frame_record(e) for e in (TAGGED, PLAIN, FAILED, OVS_GARP)]
    for record in records:
        assert {"t", "mac", "device", "vlan", "round", "type"} <= record.keys()
