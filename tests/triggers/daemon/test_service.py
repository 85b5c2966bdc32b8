"""The event path end to end: libvirt's constants through the daemon's real callback, frames captured
in a netns and decoded with scapy. Domains live in the libvirt test driver (test:///default)."""

from __future__ import annotations

import asyncio

import libvirt

from rarp_announce.model import Target
from tests.hostlab import ROUNDS, domain_xml, lifecycle, running, settle, tally

STARTED, SUSPENDED, RESUMED, STOPPED = (
    libvirt.VIR_DOMAIN_EVENT_STARTED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED,
)
MAC1, MAC2, MAC3 = "52:54:00:d0:00:01", "52:54:00:d0:00:02", "52:54:00:d0:00:03"


def _start(holder, name, nics):
    dom = holder.defineXML(domain_xml(name, nics))
    dom.create()
    return dom


def test_arrival_is_announced_once_on_each_device_and_vlan(lab) -> None:
    daemon = lab.daemon()
    with lab.capture("br0") as on_br0, lab.capture("cap1") as on_br1:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "web", [(MAC1, "br0", 100, None), (MAC2, "br1", None, None)])
                lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await settle(daemon, 0.1)
                before = on_br0.frames(timeout=0.1) + on_br1.frames(timeout=0.1)
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon)
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)  # a repeat
                await settle(daemon)
                return before, daemon.status()

        before, status = lab.run(scenario)
        assert before == [], "STARTED/MIGRATED alone must send nothing: the source guest still runs"
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, 100): ROUNDS}
        assert tally(on_br1.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC2, None): ROUNDS}
    assert status["counters"]["announcements"] == 1
    assert status["counters"]["duplicate_resumes"] == 1
    assert {(a["mac"], a["device"], a["vlan"], a["trigger"]) for a in status["last_announcements"]} == {
        (MAC1, "br0", 100, "resumed-migrated"),
        (MAC2, "br1", None, "resumed-migrated"),
    }
    assert daemon.metrics.registry.get_sample_value("rarp_announce_first_frame_latency_seconds_count") == 1


def test_started_migrated_alone_sends_nothing_and_prepares(lab) -> None:
    daemon = lab.daemon()
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "quiet", [(MAC1, "br0", 7, None)])
                lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await settle(daemon, 0.2)
                arrival = daemon.table.entries[dom.UUIDString()]
                return arrival.phase == "incoming", arrival.targets, daemon.sink.raw.devices

        incoming, targets, devices = lab.run(scenario)
        assert on_br0.frames(timeout=0.3) == []
    assert incoming
    assert targets == [Target(MAC1, "br0", 7, "bridge", "testnet0")] or [t.key for t in targets] == [(MAC1, "br0", 7)]
    assert devices == ["br0"], "the socket is opened in the prepare phase"


def test_postcopy_then_migrated_is_one_schedule(lab) -> None:
    daemon = lab.daemon()
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "pc", [(MAC1, "br0", None, None)])
                lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY)
                await asyncio.sleep(0.005)  # the postcopy schedule is still running
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon)
                return daemon.status()

        status = lab.run(scenario)
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, None): ROUNDS}
    assert [a["trigger"] for a in status["last_announcements"]] == ["resumed-postcopy"]


def test_paused_migration_is_announced_at_its_first_resume(lab) -> None:
    """The suspend and the resume are real test-driver events through the registered callback."""
    daemon = lab.daemon()
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "parked", [(MAC1, "br0", 200, None)])
                lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                holder.lookupByName("parked").suspend()  # ends paused, as with VIR_MIGRATE_PAUSED
                await settle(daemon, 0.1)
                parked = daemon.table.entries[dom.UUIDString()].phase == "parked"
                quiet = on_br0.frames(timeout=0.1)
                holder.lookupByName("parked").resume()  # RESUMED/UNPAUSED from libvirt itself
                await settle(daemon, 0.1)
                holder.lookupByName("parked").suspend()
                holder.lookupByName("parked").resume()  # a later pause/resume is no arrival
                await settle(daemon, 0.1)
                return parked, quiet, daemon.status()

        parked, quiet, status = lab.run(scenario)
        assert parked and quiet == []
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, 200): ROUNDS}
    assert [a["trigger"] for a in status["last_announcements"]] == ["resumed-after-paused-migration"]


def test_resume_without_prepare_resolves_then_announces(lab) -> None:
    """The daemon started mid-migration: no STARTED/MIGRATED seen, RESUMED/MIGRATED still announces."""
    daemon = lab.daemon()
    with lab.capture("cap1") as on_br1:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "late", [(MAC3, "br1", 42, None)])
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon)

        lab.run(scenario)
        assert tally(on_br1.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC3, 42): ROUNDS}


def test_plain_boot_and_unpause_are_not_arrivals(lab) -> None:
    daemon = lab.daemon()
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "local", [(MAC1, "br0", None, None)])  # real STARTED/BOOTED
                dom.suspend()
                dom.resume()  # real RESUMED/UNPAUSED, never migrated
                lifecycle(daemon, dom, STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
                await settle(daemon, 0.1)
                return daemon.status()

        status = lab.run(scenario)
        assert on_br0.frames(timeout=0.2) == []
    assert status["last_announcements"] == []


def test_missing_device_is_retried_then_announced_and_a_never_ready_one_given_up(lab) -> None:
    daemon = lab.daemon(lab.config(retry_timeout=1.0, retry_interval=0.05))
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "slow", [(MAC1, "br0", None, None), (MAC2, "brlate", 5, None),
                                               (MAC3, "brnever", None, None)])
                lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await asyncio.sleep(0.2)
                await asyncio.to_thread(lab.add_bridge, "brlate", "caplate")  # wired late, as OpenStack may
                capture = lab.capture("caplate")
                await asyncio.sleep(1.2)
                await settle(daemon)
                return capture, daemon.status()

        capture, status = lab.run(scenario)
        with capture:
            assert tally(capture.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC2, 5): ROUNDS}
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, None): ROUNDS}
    triggers = {a["mac"]: a["trigger"] for a in status["last_announcements"]}
    assert triggers == {MAC1: "resumed-migrated", MAC2: "retry"}
    assert status["counters"]["gave_up"] == 1
    assert status["pending"] == []


def test_device_added_after_arrival_announces_that_interface(lab) -> None:
    daemon = lab.daemon(lab.config(retry_timeout=0.1, retry_interval=0.05, device_added_window=60))
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "vf", [(MAC1, "br0", None, None), (MAC2, "brvf", 300, "ua-vf1")])
                lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon, 0.3)  # brvf absent: retried briefly, given up
                await asyncio.to_thread(lab.add_bridge, "brvf", "capvf")
                capture = lab.capture("capvf")
                daemon.on_device_added(daemon.watcher.conn, dom, "ua-vf1", None)
                await settle(daemon)
                other = holder.defineXML(domain_xml("notarrived", [(MAC3, "br0", None, "ua-x")]))
                other.create()
                daemon.on_device_added(daemon.watcher.conn, other, "ua-x", None)  # never arrived: ignored
                await settle(daemon)
                return capture, daemon.status()

        capture, status = lab.run(scenario)
        with capture:
            assert tally(capture.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC2, 300): ROUNDS}
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, None): ROUNDS}
    assert [(a["mac"], a["trigger"]) for a in status["last_announcements"]] == [
        (MAC1, "resumed-migrated"), (MAC2, "device-added")]


def test_device_added_outside_the_window_is_ignored(lab) -> None:
    daemon = lab.daemon(lab.config(device_added_window=0.05))
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = _start(holder, "old", [(MAC1, "br0", None, "ua-n1")])
                lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon, 0.1)
                daemon.on_device_added(daemon.watcher.conn, dom, "ua-n1", None)
                await settle(daemon)

        lab.run(scenario)
        assert tally(on_br0.frames(count=2 * ROUNDS, timeout=0.5)) == {(MAC1, None): ROUNDS}


def test_a_restarted_daemon_does_not_announce_an_arrival_twice(lab) -> None:
    """Same state dir: the second daemon finds the arrival in the ledger and stays quiet."""
    first, second = lab.daemon(name="one"), lab.daemon(name="one")
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(first) as holder:
                dom = _start(holder, "kept", [(MAC1, "br0", None, None)])
                lifecycle(first, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                lifecycle(first, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY)
                await settle(first)
                keep = libvirt.open("test:///default")  # the domain outlives the first daemon
            try:
                # The daemon restarted between postcopy's resume and the final RESUMED/MIGRATED.
                async with running(second):
                    dom = keep.lookupByName("kept")
                    lifecycle(second, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                    await settle(second)
                    return second.status()
            finally:
                keep.close()

        status = lab.run(scenario)
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, None): ROUNDS}
    assert status["counters"].get("already_announced") == 1


def test_metrics_count_frames_by_kind_and_latency(lab) -> None:
    daemon = lab.daemon()

    async def scenario():
        async with running(daemon) as holder:
            dom = _start(holder, "m", [(MAC1, "br0", None, None), (MAC2, "br1", 9, None)])
            lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
            await asyncio.sleep(0.05)
            lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
            await settle(daemon)

    lab.run(scenario)
    registry = daemon.metrics.registry
    assert registry.get_sample_value("rarp_announce_frames_sent_total", {"kind": "bridge", "type": "rarp"}) == 2 * ROUNDS
    assert registry.get_sample_value("rarp_announce_announcements_total", {"trigger": "resumed-migrated", "kind": "bridge"}) == 1
    assert registry.get_sample_value("rarp_announce_first_frame_latency_seconds_count") == 1
    assert registry.get_sample_value("rarp_announce_libvirt_connected") == 0  # stopped at the end
