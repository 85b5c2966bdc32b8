"""How frames are shown: the JSON record scripts rely on, and the text line people read."""

from __future__ import annotations

import io
import json

from rarp_announce.announcer import FrameEvent, Target
from rarp_announce.report import frame_record, frame_reporter

TAGGED = FrameEvent(0.0501234567, Target("52:54:00:12:34:56", "br0", 100), 1, 2, "event", "vm1")
PLAIN = FrameEvent(0.8, Target("52:54:00:12:34:57", "bond0", None), 2, 5, "cli", None)
FAILED = FrameEvent(0.2, Target("52:54:00:12:34:58", "gone0", None), 1, 3, "cli", None, "no such device on this host")


def test_record_has_the_documented_keys() -> None:
    assert frame_record(TAGGED) == {
        "t": 0.050123, "mac": "52:54:00:12:34:56", "device": "br0", "vlan": 100, "round": 2, "burst": 1, "domain": "vm1"
    }
    assert frame_record(PLAIN) == {"t": 0.8, "mac": "52:54:00:12:34:57", "device": "bond0", "vlan": None, "round": 5, "burst": 2}
    assert frame_record(FAILED)["error"] == "no such device on this host"


def test_json_reporter_writes_one_parseable_object_per_line() -> None:
    out = io.StringIO()
    report = frame_reporter(True, stream=out)
    for event in (TAGGED, PLAIN, FAILED):
        report(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert records == [frame_record(e) for e in (TAGGED, PLAIN, FAILED)]
    for record in records:
        assert {"t", "mac", "device", "vlan", "round"} <= record.keys()


def test_text_reporter_says_what_left_and_what_failed() -> None:
    out = io.StringIO()
    report = frame_reporter(False, stream=out)
    for event in (TAGGED, PLAIN, FAILED):
        report(event)
    assert out.getvalue().splitlines() == [
        "+  0.050s  burst 1 round 2  52:54:00:12:34:56  br0 vlan 100  sent",
        "+  0.800s  burst 2 round 5  52:54:00:12:34:57  bond0 vlan -  sent",
        "+  0.200s  burst 1 round 3  52:54:00:12:34:58  gone0 vlan -  FAILED: no such device on this host",
    ]


def test_quiet_text_reporter_prints_nothing_but_json_ignores_quiet() -> None:
    out = io.StringIO()
    frame_reporter(False, quiet=True, stream=out)(TAGGED)
    assert out.getvalue() == ""
    frame_reporter(True, quiet=True, stream=out)(TAGGED)
    assert json.loads(out.getvalue())["mac"] == "52:54:00:12:34:56"
