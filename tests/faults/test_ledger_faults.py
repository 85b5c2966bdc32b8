"""Rows 1, 2 and 13: the ledger is an aid to exactly-once, never a reason to stop announcing,
to start late or not at all. Only a second daemon on the same state dir is refused."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time

import libvirt
import pytest

from rarp_announce.triggers.daemon.ledger import LEDGER_NAME, Ledger, boot_id
from tests.faults.conftest import fill
from tests.hostlab import ROUNDS, domain_xml, lifecycle, running, settle, tally

STARTED, RESUMED = libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED
MAC1, MAC2, MAC3 = "52:54:00:f1:00:01", "52:54:00:f1:00:02", "52:54:00:f1:00:03"


def _veth(lab, capture_end: str) -> None:
    """The capture end of a bridge still to come: a veth pair, both ends up, no bridge yet."""
    from pyroute2 import NetNS

    with NetNS(lab.ns) as host:
        host.link("add", ifname=f"p{capture_end}", kind="veth", peer={"ifname": capture_end})
        host.link("set", ifname=f"p{capture_end}", state="up")
        host.link("set", ifname=capture_end, state="up")


def _bridge_now(lab, bridge: str, capture_end: str) -> None:
    """The late bridge appears, up, with the waiting veth as its port."""
    from pyroute2 import NetNS

    with NetNS(lab.ns) as host:
        host.link("add", ifname=bridge, kind="bridge", br_stp_state=0)
        index = host.link_lookup(ifname=bridge)[0]
        host.link("set", ifname=f"p{capture_end}", master=index)
        host.link("set", ifname=bridge, state="up")


def _break(state, fault: str) -> None:
    if fault == "full":
        fill(state)
    elif fault == "directory":
        ledger = state / LEDGER_NAME
        if ledger.exists():
            ledger.unlink()
        ledger.mkdir()
    elif fault == "deleted":
        shutil.rmtree(state)


@pytest.mark.parametrize("fault", ["full", "directory", "deleted"])
def test_a_ledger_write_that_fails_stops_nothing(lab, tiny_fs, daemon_log, fault) -> None:
    """Two arrivals, each recorded after its first round: both writes fail, one warning says so,
    and the late vNIC's retries still run until its bridge comes up a second later."""
    state = tiny_fs("16k", name="d-state") if fault == "full" else lab.tmp / "d-state"
    daemon = lab.daemon(lab.config(retry_timeout=4.0, retry_interval=0.05))
    _veth(lab, "caplate")
    with lab.capture("br0") as on_br0, lab.capture("caplate") as on_late, lab.capture("cap1") as on_br1:

        async def scenario():
            async with running(daemon) as holder:
                _break(state, fault)
                first = holder.defineXML(domain_xml("ledger-a", [(MAC1, "br0", None, None), (MAC2, "brlate", 5, None)]))
                second = holder.defineXML(domain_xml("ledger-b", [(MAC3, "br1", 9, None)]))
                for dom in (first, second):
                    dom.create()
                    lifecycle(daemon, dom, STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.1)
                for dom in (first, second):
                    lifecycle(daemon, dom, RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await asyncio.sleep(1.0)
                waiting = [p["mac"] for p in daemon.status()["pending"]]
                await asyncio.to_thread(_bridge_now, lab, "brlate", "caplate")
                for _ in range(60):  # the next retry finds it: at most retry_interval later
                    if not daemon.status()["pending"]:
                        break
                    await asyncio.sleep(0.05)
                await settle(daemon)
                return waiting, daemon.status(), daemon.control_socket

        waiting, status, _ = lab.run(scenario)
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC1, None): ROUNDS}
        assert tally(on_late.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC2, 5): ROUNDS}
        assert tally(on_br1.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC3, 9): ROUNDS}
    assert waiting == [MAC2], "the late vNIC waited for its bridge"
    assert {a["mac"]: a["trigger"] for a in status["last_announcements"]} == {
        MAC1: "resumed-migrated", MAC2: "retry", MAC3: "resumed-migrated"}
    assert status["ledger_problems"] == {"write": 2}
    assert status["ledger_entries"] == 2, "remembered in memory all the same"
    warnings = [m for m in daemon_log.messages(logging.WARNING) if "ledger" in m]
    assert len(warnings) == 1 and "cannot write the ledger" in warnings[0], warnings
    assert "\n" not in warnings[0]


def test_a_fifo_in_place_of_the_ledger_freezes_no_write(tmp_path) -> None:
    """record() must not wait in open() for a reader of a FIFO: it would hold the loop for ever."""
    os.mkfifo(tmp_path / LEDGER_NAME)
    ledger = Ledger(tmp_path)
    assert ledger.problems["load"] == 1
    done = threading.Event()
    worker = threading.Thread(target=lambda: (ledger.record(f"{boot_id()}/x/1", domain="d", trigger="t"), done.set()),
                              daemon=True)
    worker.start()
    worker.join(2.0)
    if not done.is_set():  # release it (a reader lets open() return), then fail
        fd = os.open(tmp_path / LEDGER_NAME, os.O_RDONLY | os.O_NONBLOCK)
        worker.join(2.0)
        os.close(fd)
        pytest.fail("Ledger.record() blocked on a FIFO named announced.jsonl")
    assert ledger.problems["write"] == 1
    assert stat_is_fifo(tmp_path / LEDGER_NAME)
    ledger.close()


def stat_is_fifo(path) -> bool:
    import stat

    return stat.S_ISFIFO(os.lstat(path).st_mode)


def _line(identity: str, at: float | None = None) -> str:
    return json.dumps({"id": identity, "domain": "d", "trigger": "resumed-migrated",
                       "at": time.time() if at is None else at}, separators=(",", ":")) + "\n"


def _current_ids(path) -> list[str]:
    ids = []
    for raw in path.read_bytes().split(b"\n"):
        try:
            ids.append(json.loads(raw)["id"])
        except (ValueError, KeyError):
            continue
    return [i for i in ids if i.startswith(boot_id() + "/")]


@pytest.mark.parametrize("free", [0, 8192], ids=["no-byte-free", "less-than-the-compacted-file"])
def test_a_full_state_fs_with_stale_lines_starts_and_keeps_the_ledger_whole(lab, tiny_fs, daemon_proc, free) -> None:
    """Compaction at start cannot be written (or only partly): best effort, the ledger stays whole."""
    state = tiny_fs("64k", name="d-state")
    current = [f"{boot_id()}/{i:08x}-0000-4000-8000-000000000000/{i}" for i in range(150)]
    stale = [f"another-boot/{i:08x}-0000-4000-8000-000000000000/{i}" for i in range(150)]
    (state / LEDGER_NAME).write_text("".join(_line(i) for pair in zip(current, stale) for i in pair))
    (state / "lock").touch()
    fill(state, leave=free)
    daemon = daemon_proc(state_dir=str(state))
    daemon.wait_ready()
    status = daemon.status()
    assert status["ledger_entries"] == 150
    assert status["ledger_problems"].get("compact") == 1, status["ledger_problems"]
    assert sorted(_current_ids(state / LEDGER_NAME)) == sorted(current), "a failed compaction must not lose arrivals"
    assert not (state / "announced.tmp").exists()
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.stderr()
    assert sum("cannot compact the ledger" in line for line in daemon.lines()) == 1


@pytest.mark.parametrize("garbage", ["xff-byte", "stray-tmp-dir", "fifo"])
def test_the_daemon_starts_despite_garbage_in_the_state_dir(lab, daemon_proc, garbage) -> None:
    state = lab.tmp / "d-state"
    state.mkdir(mode=0o700)
    good = f"{boot_id()}/00000000-0000-4000-8000-000000000001/1"
    if garbage == "xff-byte":
        (state / LEDGER_NAME).write_bytes(_line(good).encode() + b'{"id":"\xff"}\n' + b"\xff\xfe\n")
    elif garbage == "stray-tmp-dir":
        (state / LEDGER_NAME).write_text(_line(good))
        (state / "announced.tmp").mkdir()
        (state / "announced.tmp" / "junk").write_text("x")
    else:
        os.mkfifo(state / LEDGER_NAME)
    daemon = daemon_proc(state_dir=str(state))
    daemon.wait_ready()  # a FIFO read or opened blocking would never get here (bounded: fails, never hangs)
    status = daemon.status()
    assert daemon.request({"op": "ping"}) == {"ok": True}
    if garbage == "xff-byte":
        assert status["ledger_entries"] == 1
        assert status["ledger_problems"].get("corrupt_lines") == 2
        assert _current_ids(state / LEDGER_NAME) == [good], "compacted to the readable line"
    elif garbage == "stray-tmp-dir":
        assert status["ledger_entries"] == 1 and status["ledger_problems"] == {}
        assert not (state / "announced.tmp").exists(), "the stale temporary is removed"
    else:
        assert status["ledger_entries"] == 0 and status["ledger_problems"] == {"load": 1}
        assert stat_is_fifo(state / LEDGER_NAME), "left as it is (the operator removes it)"
    assert daemon.terminate() == 0
    assert daemon.proc.returncode == 0
    assert "Traceback" not in daemon.stderr()


def test_a_second_daemon_on_the_same_state_dir_exits_with_one_line(lab, daemon_proc) -> None:
    """Row 13: both would announce every arrival. The second has its own control socket, so only
    the state dir can refuse it."""
    first = daemon_proc(name="first")
    first.wait_ready()
    second = daemon_proc(name="second", state_dir=first.state_dir)
    assert second.wait_exit(20) == 1
    lines = second.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert first.state_dir in lines[0] and "another rarp-announce daemon" in lines[0]
    assert "Traceback" not in second.stderr()
    assert first.request({"op": "ping"}) == {"ok": True}, "the first one is untouched"
    assert os.path.exists(first.control_socket)
    assert first.terminate() == 0


def test_a_record_cut_short_by_a_full_disk_leaves_no_torn_line(tiny_fs) -> None:
    """A record that crosses into a page the full tmpfs cannot give is written in part: it is cut
    back, so the next record (once there is room again) is not glued onto half a line."""
    state = tiny_fs("16k", name="torn")
    first = f"{boot_id()}/00000000-0000-4000-8000-00000000000a/1"
    padded = json.dumps({"id": first, "domain": "", "trigger": "t", "at": time.time()}, separators=(",", ":"))
    padded = padded.replace('"domain":""', '"domain":"' + "p" * (4090 - len(padded) - 1) + '"') + "\n"
    assert len(padded) == 4090
    (state / LEDGER_NAME).write_text(padded)
    ledger = Ledger(state)
    fill(state)
    second, third = (f"{boot_id()}/00000000-0000-4000-8000-00000000000{c}/1" for c in "bc")
    ledger.record(second, domain="d", trigger="t")
    assert ledger.problems["write"] == 1
    assert (state / LEDGER_NAME).read_text() == padded, "the part written was cut back"
    (state / "filler").unlink()
    ledger.record(third, domain="d", trigger="t")
    ledger.close()
    assert _current_ids(state / LEDGER_NAME) == [first, third]
    again = Ledger(state)
    assert again.problems["corrupt_lines"] == 0 and first in again and third in again
    again.close()


def test_a_state_dir_that_cannot_be_made_starts_the_daemon_with_one_warning(lab, daemon_proc) -> None:
    daemon = daemon_proc(state_dir="/proc/nope/dir")
    daemon.wait_ready()
    status = daemon.status()
    assert status["ledger_problems"] == {"lock": 1, "load": 1}
    assert daemon.terminate() == 0
    assert daemon.proc.returncode == 0
    warnings = [line for line in daemon.lines() if " warning " in line and "/proc/nope/dir" in line]
    assert len(warnings) == 2 and "second daemon on this state dir would not be noticed" in warnings[0], warnings
