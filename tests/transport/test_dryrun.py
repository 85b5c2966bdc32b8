"""The dry-run sink: one line per frame, nothing sent."""

from __future__ import annotations

import asyncio
import io
import re
import time

from rarp_announce.frames import garp_frame, rarp_frame
from rarp_announce.model import OvsPort, Target
from rarp_announce.transport.dryrun import DryRunSink

MAC = bytes.fromhex("525400123456")


def test_prints_each_frame_with_its_route_and_sends_nothing() -> None:
    out = io.StringIO()
    sink = DryRunSink(out)
    nosuch = Target("52:54:00:12:34:56", "nosuch0")
    asyncio.run(sink.prepare(nosuch, []))  # no device needed: nothing leaves
    sink.send(nosuch, rarp_frame(MAC))
    time.sleep(0.02)
    sink.send(Target("52:54:00:00:00:ff", "br-ex", 42), rarp_frame(bytes.fromhex("5254000000ff"), 42))
    port = Target("52:54:00:12:34:56", "ovsbr0", 100, ovs=OvsPort("ovsbr0", "vnet3", 5), tagged=False)
    sink.send(port, garp_frame(MAC, bytes([192, 0, 2, 1])))
    sink.close()
    lines = out.getvalue().splitlines()
    pattern = re.compile(r"^dry-run \+\s*(\d+\.\d{3})s  (\S+)\s+vlan (\S+)\s+(\S+)  rarp  (\d+) bytes \(not sent\)$")
    first, second = (pattern.match(line) for line in lines[:2])
    assert first and second, lines
    assert first.groups() == ("0.000", "nosuch0", "-", "52:54:00:12:34:56", "60")
    assert second.group(2, 3, 4, 5) == ("br-ex", "42", "52:54:00:00:00:ff", "64")
    assert 0.015 <= float(second.group(1)) < 1.0
    assert "ovsbr0 in_port=5 (vnet3) vlan 100  untagged  52:54:00:12:34:56  garp 192.0.2.1  60 bytes (not sent)" in lines[2]
