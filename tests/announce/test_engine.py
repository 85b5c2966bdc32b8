"""The announce engine: one schedule per announcement, joining, shared rounds, failures, cancel, drain."""

from __future__ import annotations

import asyncio
import io

import pytest

from rarp_announce.announce.engine import Announcer, frames_for
from rarp_announce.frames import garp_frame, na_frame, rarp_frame
from rarp_announce.schedule import Schedule
from rarp_announce.lab.netns import Capture, inside
from rarp_announce.mac import parse_mac
from rarp_announce.model import Address, FrameEvent, OvsPort, Target
from rarp_announce.transport.dryrun import DryRunSink
from rarp_announce.transport.raw import RawSocketSink
from tests.virtual_clock import run_on_virtual_clock

# 0, 10, 21 ms: short enough for a unit test, with the QEMU shape of growing gaps.
QUICK = Schedule(initial_ms=10, max_ms=100, rounds=3, step_ms=1)
A = Target("52:54:00:00:00:0a", "br0", 100, "bridge", "vnet0")
B = Target("52:54:00:00:00:0b", "br0", 100, "bridge", "vnet1")
C = Target("52:54:00:00:00:0c", "bond0", None, "direct", "macvtap0")


class Recorder:
    def __init__(self) -> None:
        self.events: list[FrameEvent] = []

    def __call__(self, event: FrameEvent) -> None:
        self.events.append(event)


def make(recorder: Recorder) -> tuple[Announcer, io.StringIO]:
    out = io.StringIO()
    return Announcer(DryRunSink(out), observers=[recorder]), out


def rarp(target: Target) -> bytes:
    return frames_for(target)[0].data


def test_a_targets_frames_are_its_rarp_then_one_per_address() -> None:
    assert [f.data for f in frames_for(A)] == [rarp_frame(parse_mac(A.mac), 100)]
    assert rarp(Target("52:54:00:00:00:0a", "br0", 7, priority=6)) == rarp_frame(parse_mac(A.mac), 7, 6)
    assert A.key == ("52:54:00:00:00:0a", "br0", 100)
    with_ips = Target(A.mac, "br0", 100, addresses=(Address("192.0.2.7", "cli"), Address("2001:db8::7", "cli")))
    built = frames_for(with_ips)
    mac = parse_mac(A.mac)
    assert [(f.type, f.address) for f in built] == [("rarp", None), ("garp", "192.0.2.7"), ("na", "2001:db8::7")]
    assert built[1].data == garp_frame(mac, bytes([192, 0, 2, 7]), 100)
    assert built[2].data == na_frame(mac, bytes.fromhex("20010db8000000000000000000000007"), 100)


def test_an_ovs_access_port_target_sends_the_untagged_frame_the_guest_would() -> None:
    port = Target(A.mac, "ovsbr0", 100, "openvswitch", "vnet3", ovs=OvsPort("ovsbr0", "vnet3", 5), tagged=False)
    assert port.route == "ovsbr0:vnet3" and port.key == (A.mac, "ovsbr0:vnet3", 100)
    assert rarp(port) == rarp_frame(parse_mac(A.mac))
    trunk = Target(A.mac, "ovsbr0", 200, "openvswitch", "vnet3", ovs=OvsPort("ovsbr0", "vnet3", 5))
    assert rarp(trunk) == rarp_frame(parse_mac(A.mac), 200)


def test_first_round_leaves_synchronously_and_the_rest_on_schedule() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        announcer, _ = make(recorder)
        announcement = announcer.announce([A], QUICK, trigger="event", domain="vm1")
        assert announcement is not None
        assert len(recorder.events) == 1  # before any await
        assert announcer.running(A) is announcement
        await announcer.drain()
        assert announcer.running(A) is None
        assert announcement.finished

    # On a virtual clock (time stands still while code runs): each round leaves exactly at its
    # offset in the schedule, whatever the machine's load. How late rounds leave on a real clock
    # is a figure in benchmarks/bench_daemon.py (frame lateness).
    run_on_virtual_clock(scenario())
    assert [(e.burst, e.round, e.trigger, e.domain, e.error) for e in recorder.events] == [
        (1, 1, "event", "vm1", None), (1, 2, "event", "vm1", None), (1, 3, "event", "vm1", None)
    ]
    assert [e.t for e in recorder.events] == pytest.approx([send.offset for send in QUICK.sends()], abs=1e-9)
    assert [send.offset for send in QUICK.sends()] == pytest.approx([0.0, 0.010, 0.021])


def test_same_target_asked_twice_while_running_joins_the_running_schedule() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        announcer, _ = make(recorder)
        first = announcer.announce([A], QUICK, trigger="hook")
        await asyncio.sleep(0.005)
        assert announcer.announce([A], QUICK, trigger="event") is None
        # a copy with other metadata is the same (mac, device, vlan): it joins too
        assert announcer.announce([Target(A.mac, A.device, A.vlan, "network", "net0")], QUICK) is None
        second = announcer.announce([A, B], QUICK, trigger="event")
        assert second is not None and second.targets == [B]
        assert announcer.running(A) is first and announcer.running(B) is second
        await announcer.drain()

    asyncio.run(scenario())
    by_mac = {mac: [e for e in recorder.events if e.target.mac == mac] for mac in (A.mac, B.mac)}
    assert len(by_mac[A.mac]) == QUICK.rounds
    assert {e.trigger for e in by_mac[A.mac]} == {"hook"}
    assert len(by_mac[B.mac]) == QUICK.rounds


def test_duplicates_in_one_request_send_once_and_other_vlans_are_other_targets() -> None:
    recorder = Recorder()
    other_vlan = Target(A.mac, A.device, 200)

    async def scenario() -> None:
        announcer, _ = make(recorder)
        announcement = announcer.announce([A, A, other_vlan], QUICK)
        assert announcement is not None and announcement.targets == [A, other_vlan]
        await announcer.drain()

    asyncio.run(scenario())
    assert len(recorder.events) == 2 * QUICK.rounds


def test_after_a_schedule_ends_the_same_target_starts_a_new_one() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        announcer, _ = make(recorder)
        announcer.announce([A], QUICK)
        await announcer.drain()
        assert announcer.announce([A], QUICK) is not None
        await announcer.drain()

    asyncio.run(scenario())
    assert [e.round for e in recorder.events] == [1, 2, 3, 1, 2, 3]


def test_several_macs_share_each_round() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        announcer, out = make(recorder)
        announcer.announce([A, B, C], QUICK)
        await announcer.drain()
        assert len(out.getvalue().splitlines()) == 9

    asyncio.run(scenario())
    assert [e.target for e in recorder.events] == [A, B, C] * 3
    for index in range(3):
        same_round = recorder.events[index * 3 : index * 3 + 3]
        # one timer callback sends the whole round: the three frames share one timestamp
        assert len({e.t for e in same_round}) == 1
        assert {e.round for e in same_round} == {index + 1}


def test_repeat_bursts_are_numbered() -> None:
    recorder = Recorder()
    schedule = Schedule(initial_ms=5, max_ms=10, rounds=2, step_ms=1, repeat=2, repeat_interval_s=0.02)

    async def scenario() -> None:
        announcer, _ = make(recorder)
        announcer.announce([A], schedule)
        await announcer.drain()

    run_on_virtual_clock(scenario())
    assert [(e.burst, e.round) for e in recorder.events] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [e.t for e in recorder.events] == pytest.approx([0.0, 0.005, 0.020, 0.025], abs=1e-9)



def test_a_failing_device_does_not_stop_other_targets(veth: str) -> None:
    good = Target("52:54:00:00:00:01", "tx", 10)
    lost = Target("52:54:00:00:00:02", "gone0", 10)
    also_good = Target("52:54:00:00:00:03", "tx", None)
    recorder = Recorder()

    async def scenario() -> dict[str, str]:
        sink = RawSocketSink()
        announcer = Announcer(sink, observers=[recorder])
        try:
            problems = await announcer.prepare([good, lost, also_good])
            announcer.announce([good, lost, also_good], QUICK)
            await announcer.drain()
        finally:
            sink.close()
        return problems

    with Capture(veth, "rx") as capture, inside(veth):
        problems = asyncio.run(scenario())
        got = capture.frames(count=6, timeout=3)
    assert problems == {"gone0": "no such device on this host"}
    errors = [(e.target.mac, e.error) for e in recorder.events if e.error]
    assert errors == [(lost.mac, "no such device on this host")] * 3
    assert sorted(c.frame for c in got) == sorted([rarp(good), rarp(also_good)] * 3)


def test_cancel_stops_the_remaining_rounds() -> None:
    recorder = Recorder()
    slow = Schedule(initial_ms=200, max_ms=1000, rounds=4, step_ms=100)

    async def scenario() -> None:
        announcer, _ = make(recorder)
        announcement = announcer.announce([A, B], slow)
        assert announcement is not None
        announcer.cancel(announcement)
        assert announcement.finished
        assert announcer.running(A) is None and announcer.in_flight == []
        await asyncio.wait_for(announcer.drain(), 1)
        await asyncio.sleep(0.25)  # past the second round's due time

    asyncio.run(scenario())
    assert [e.round for e in recorder.events] == [1, 1]


def test_cancel_all_then_drain_returns_at_once() -> None:
    recorder = Recorder()
    slow = Schedule(initial_ms=200, max_ms=1000, rounds=4, step_ms=100)

    async def scenario() -> None:
        announcer, _ = make(recorder)
        announcer.announce([A], slow)
        announcer.announce([C], slow, domain="other")
        assert len(announcer.in_flight) == 2
        announcer.cancel_all()
        assert announcer.in_flight == []
        await asyncio.wait_for(announcer.drain(), 0.5)
        # a cancelled target may be announced again at once
        assert announcer.announce([A], QUICK) is not None
        await announcer.drain()

    asyncio.run(scenario())
    assert [e.round for e in recorder.events if e.target == C] == [1]
    assert [e.round for e in recorder.events if e.target == A] == [1, 1, 2, 3]


def test_drain_waits_for_announcements_started_while_draining() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        announcer, _ = make(recorder)
        loop = asyncio.get_running_loop()

        def start_c_after_a_round_2(event: FrameEvent) -> None:
            if event.target == A and event.round == 2:
                loop.call_soon(announcer.announce, [C], QUICK)

        announcer.observers.append(start_c_after_a_round_2)
        announcer.announce([A], QUICK)
        await announcer.drain()
        assert announcer.in_flight == []

    asyncio.run(scenario())
    assert len([e for e in recorder.events if e.target == A]) == 3
    assert len([e for e in recorder.events if e.target == C]) == 3


def test_prepare_reports_each_unready_device_once() -> None:
    announcer = Announcer(RawSocketSink())
    problems = asyncio.run(
        announcer.prepare([Target("52:54:00:00:00:01", "gone0"), Target("52:54:00:00:00:02", "gone0")])
    )
    assert problems == {"gone0": "no such device on this host"}


def test_a_failing_observer_stops_neither_frames_nor_other_observers(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()

    def broken(event: FrameEvent) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    async def scenario() -> None:
        announcer = Announcer(DryRunSink(io.StringIO()), observers=[broken, recorder])
        announcer.announce([A, B], QUICK)
        await asyncio.wait_for(announcer.drain(), 2)
        assert announcer.running(A) is None

    asyncio.run(scenario())
    assert len(recorder.events) == 6
    assert "frame observer" in caplog.text


class ExplodingSink:
    """A sink whose device `bad` fails with something other than DeviceError (a bug, a full disk)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def prepare(self, target: Target, frames: object) -> None:
        pass

    def send(self, target: Target, frame: bytes) -> None:
        if target.device == "bad":
            raise OSError(28, "No space left on device")
        self.sent.append(target.device)

    def close(self) -> None:
        pass


def test_an_unexpected_sink_error_is_a_failed_frame_not_a_stalled_schedule() -> None:
    recorder = Recorder()
    sink = ExplodingSink()
    bad = Target("52:54:00:00:00:0d", "bad")

    async def scenario() -> None:
        announcer = Announcer(sink, observers=[recorder])
        announcer.announce([bad, A], QUICK)
        await asyncio.wait_for(announcer.drain(), 2)

    asyncio.run(scenario())
    assert sink.sent == ["br0"] * 3
    assert [e.error for e in recorder.events if e.target == bad] == ["OSError: [Errno 28] No space left on device"] * 3


def test_an_observer_may_cancel_its_announcement_mid_round() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        announcer, _ = make(recorder)
        holder: dict[str, object] = {}

        def cancel_at_round_2(event: FrameEvent) -> None:
            if event.round == 2 and event.target == A:
                announcer.cancel(holder["announcement"])  # type: ignore[arg-type]

        announcer.observers.insert(0, cancel_at_round_2)
        holder["announcement"] = announcer.announce([A, B], QUICK)
        await asyncio.wait_for(announcer.drain(), 1)
        await asyncio.sleep(0.05)  # past the third round's due time

    asyncio.run(scenario())
    assert [(e.target.mac, e.round) for e in recorder.events] == [(A.mac, 1), (B.mac, 1), (A.mac, 2)]
