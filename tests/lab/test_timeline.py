"""The picture of a migration: the frames the lab records (frametrace.py, fdbwatch.py) and the SVG
timeline drawn from them (timeline.py), which --help, the daemon and the hook never load."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import require

SVG = "{http://www.w3.org/2000/svg}"


def _texts(path: Path) -> list[str]:
    """Every text of an SVG (matplotlib writes text as <text> with svg.fonttype none)."""
    root = ET.parse(path).getroot()
    return ["".join(element.itertext()).strip() for element in root.iter(f"{SVG}text")]


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_help_and_the_daemon_s_modules_never_import_matplotlib() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "rarp_announce", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "rarp_announce.cli" in imported  # the importtime report is the one of this run
    assert not [name for name in imported if name.split(".")[0] == "matplotlib"]
    assert "rarp_announce.lab.timeline" not in imported and "rarp_announce.doctor.run" not in imported
    daemon = subprocess.run([sys.executable, "-c", "import sys, rarp_announce.triggers.daemon.service, "
                             "rarp_announce.triggers.waiter; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"],
                            capture_output=True, text=True, timeout=60)
    assert daemon.returncode == 0, daemon.stderr
    assert daemon.stdout.strip() == "[]"


def test_the_fdb_watch_sees_a_dynamic_entry_written_on_a_port(veth) -> None:
    """A real bridge in a netns of the test's own: `bridge fdb replace ... dynamic` on port rx is
    notification the watch reads, on port rx, dynamic, stamped between the command's start and end."""
    import time

    from rarp_announce.lab.fdbwatch import FdbWatch
    from rarp_announce.lab.netns import wait_until

    def sh(command: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", veth, "sh", "-c", command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr

    sh("ip link add br0 type bridge && ip link set rx master br0 && ip link set br0 up")
    watch = FdbWatch(veth)
    try:
        # `bridge monitor` has subscribed once it reports a probe entry (a loaded machine may
        # take its time starting it): written again until it does, bounded.
        def subscribed() -> bool:
            # Deleted first: rewriting an unchanged entry sends no notification.
            sh("bridge fdb del 52:54:00:0e:00:ff dev rx master 2>/dev/null; "
               "bridge fdb replace 52:54:00:0e:00:ff dev rx master dynamic")
            return any(e.mac == "52:54:00:0e:00:ff" for e in watch.events())

        assert wait_until(subscribed, 20.0, 0.2), "bridge monitor never reported an entry"
        before = time.time()
        sh("bridge fdb replace 52:54:00:0e:00:01 dev rx master dynamic")
        sh("bridge fdb replace 52:54:00:0e:00:01 dev rx master static")
        assert wait_until(lambda: len([e for e in watch.events() if e.mac == "52:54:00:0e:00:01"]) == 2, 5.0)
        dynamic, static = [e for e in watch.events() if e.mac == "52:54:00:0e:00:01"]
        assert (dynamic.device, dynamic.state, static.device, static.state) == ("rx", "dynamic", "rx", "static")
        # Stamped when `bridge monitor` read it: never before the write (a later read is later).
        assert before - 0.001 <= dynamic.time <= static.time
    finally:
        watch.close()


def test_the_fdb_watch_ends_with_the_process_that_started_it(veth) -> None:
    """`lab up` exits and leaves the lab running: its `bridge monitor` must not stay behind."""
    from rarp_announce.lab.netns import wait_until
    from rarp_announce.pids import alive
    from tests.conftest import ROOT

    code = f"from rarp_announce.lab.fdbwatch import FdbWatch; print(FdbWatch({veth!r}).pid)"
    started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert started.returncode == 0, started.stderr
    assert wait_until(lambda: not alive(int(started.stdout)), 5.0)


def _trace():
    """A migration's frames as the lab records them: the client sends every ms; the source's tap
    takes them until 10 ms after RESUMED (the guest paused there 25 ms before it: the last 35 ms
    of those reach nobody), the destination's from 2 ms after RESUMED; our frames and the FDB
    write at RESUMED; QEMU's at QEMU's schedule."""
    from rarp_announce.lab.frametrace import ClientTrace, MigrationTrace
    from rarp_announce.lab.migration import Migration

    start, resumed = 5000.0, 5001.5
    sent = [(1000 + n, start + n / 1000) for n in range(3000)]
    client = ClientTrace("52:54:00:0e:00:02", "br0", sent, refused=frozenset({1003}))
    for sequence, at in sent:
        if sequence in client.refused:  # never left the client
            continue
        if at < resumed + 0.010:
            client.at_source[sequence] = at + 0.0001
        if at >= resumed + 0.002:
            client.at_destination[sequence] = at + 0.0001
    client.paused = resumed - 0.025
    trace = MigrationTrace(start, start + 3.0, resumed, None, client.paused, clients={client.mac: client},
                           qemu=[(resumed - 0.002 + ms / 1000, client.mac) for ms in (0, 44, 194, 444, 794)],
                           ours=[(resumed + 0.001 + ms / 1000, client.mac) for ms in (0, 50, 200, 450, 800)],
                           fdb={client.mac: resumed + 0.0008})
    record = Migration(7, "a", "b", start)
    record.trace = trace
    return record, client


def test_a_timeline_shows_every_lane_with_its_count_and_every_event(tmp_path: Path) -> None:
    require(_has_matplotlib(), "needs matplotlib (the plot extra)")
    from rarp_announce.lab.timeline import write_timeline

    record, client = _trace()
    lost = client.lost()
    # Lost: sent (1003 was refused: never sent), reaching neither the destination's tap nor the
    # source's while the guest ran there: the 27 frames from the pause to 2 ms after RESUMED.
    resumed = record.trace.resumed
    assert [seq for seq, _ in lost] == [seq for seq, at in client.sent if resumed - 0.025 <= at < resumed + 0.002]
    assert len(lost) == 27
    path = write_timeline(record, tmp_path / "m7.svg")
    texts = _texts(path)
    for lane, count in (("sent", 2999), ("at source tap", len(client.at_source)),
                        ("at destination tap", len(client.at_destination)), ("lost", len(lost))):
        assert f"{lane} ({count})" in texts
    for label in ("QEMU's RARPs", "our frames", "bridge FDB", "RESUMED on the destination", "paused on the source",
                  "our frame leaving the destination",
                  "bridge FDB entry on the guest's tap", "QEMU's RARP entering the bridge from the guest's tap"):
        assert label in texts, label
    assert "migration 7: host a -> host b" in texts  # the title, one line per vNIC under it
    assert (f"52:54:00:0e:00:02 on Linux bridge br0: {len(lost)} client frames lost, the first reached the guest's "
            "new tap 2.1 ms after RESUMED") in texts
    assert write_timeline(record, tmp_path / "m7.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_migration_without_a_trace_is_one_error(tmp_path: Path) -> None:
    from rarp_announce.errors import AnnounceError
    from rarp_announce.lab.migration import Migration
    from rarp_announce.lab.timeline import write_timeline

    with pytest.raises(AnnounceError, match="migration 3 has no frame trace"):
        write_timeline(Migration(3, "a", "b", 0.0), tmp_path / "none.svg")


@pytest.mark.lab
def test_a_real_migration_is_traced_and_drawn(tmp_path: Path) -> None:
    """One live migration in the lab (QEMU's RARPs dropped, the daemon announcing): the trace
    agrees with what the lab measured on its own, and holds our FDB write on the guest's new tap."""
    require(_has_matplotlib(), "needs matplotlib (the plot extra)")
    from rarp_announce.lab.session import Lab
    from rarp_announce.lab.teardown import leftovers
    from rarp_announce.lab.timeline import write_timeline
    from tests.lab.conftest import lab_prerequisites

    lab_prerequisites("ovs-vswitchd", "ovsdb-server", "nft")
    lab = Lab("daemon").up()
    try:
        record = lab.migrate()
        trace = record.trace
        assert trace is not None and trace.resumed == record.resumed
        br0 = next(nic for nic in lab.guest.nics if nic.bridge == "br0")
        client = trace.clients[br0.mac]
        sequences = {sequence for sequence, _ in client.sent}
        assert client.sent and set(client.at_destination) <= sequences and set(client.at_source) <= sequences
        assert client.first_at_destination(record.started) == record.nics[br0.mac].delivered
        # QEMU's RARPs are dropped at br0's ingress: the entry on the guest's tap is our write,
        # seen during this migration. (Not compared with the delivery's time: `bridge monitor`
        # stamps a notification when it reads it, the kernel stamps the frame: two clocks.)
        assert trace.fdb.get(br0.mac) is not None and trace.fdb[br0.mac] >= record.started
        assert record.nics[br0.mac].on_guest_port
        assert {mac for _, mac in trace.ours} == set(lab.guest.macs)
        path = write_timeline(record, tmp_path / "real.svg")
        assert f"at destination tap ({len(client.at_destination)})" in _texts(path)
    finally:
        lab.close()
    assert leftovers(lab.made) == []
