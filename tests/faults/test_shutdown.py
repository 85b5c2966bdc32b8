"""Row 14: SIGTERM ends the daemon cleanly, however full its arrival table.

The set-up checks it got the state it wanted (every schedule in flight, every retry waiting)
instead of needing a fast machine; how fast the daemon exits is a figure in
benchmarks/bench_daemon.py (`make bench`, idle and loaded), not an assertion here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.faults._daemon import fd_count, rss_kib

ARRIVALS = 10_000


@pytest.mark.parametrize("mode", ["in-flight", "retrying"])
def test_sigterm_with_10k_arrivals_exits_cleanly(lab, mode) -> None:
    from rarp_announce.control import request

    sock_path, notify_path = str(lab.tmp / "s.sock"), str(lab.tmp / "s.notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(180)  # bounded generously: stuffing 10k arrivals on a loaded machine
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONPATH=str(ROOT))
    err_path = lab.tmp / "s.stderr"
    with open(err_path, "wb") as err:
        proc = lab.topo.popen("a", [sys.executable, "-m", "tests.faults._stuffed_daemon", sock_path,
                                    str(lab.tmp / "s-state"), str(ARRIVALS), mode],
                              env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    in_flight = ARRIVALS if mode == "in-flight" else ARRIVALS // 2
    waiting = 0 if mode == "in-flight" else ARRIVALS // 2
    try:
        assert notify.recv(4096).startswith(b"READY=1"), err_path.read_text()[-2000:]
        status = _wait_for(sock_path, in_flight, waiting)
        # The loop still serves requests with the whole table busy (its latency: `make bench`).
        assert request(sock_path, {"op": "ping"}, timeout=30) == {"ok": True}
        rss, fds = rss_kib(proc.pid), fd_count(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)  # bounded generously: a daemon that does not stop fails, never hangs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
    err_text = err_path.read_text()
    stuffed = [line for line in err_text.splitlines() if line.startswith("stuffed")]
    print(f"\nFIGURE sigterm[{mode}]: {stuffed[0] if stuffed else '?'}; {len(status['in_flight'])} schedules in "
          f"flight, {len(status['pending'])} targets waiting; RSS {rss / 1024:.1f} MiB, {fds} fds")
    assert len(status["incoming"]) + len(status["parked"]) == 0
    assert len(status["in_flight"]) == in_flight and len(status["pending"]) == waiting
    assert all(entry["sends_left"] > 0 for entry in status["in_flight"])  # under way when SIGTERM came
    # Cleanly: exit code 0, no traceback, stop() ran to its end and asyncio.run returned (every
    # schedule and retry cancelled: a task left pending would have kept it or been reported).
    assert code == 0 and "Traceback" not in err_text, err_text[-2000:]
    assert "stop() took" in err_text and "asyncio.run returned" in err_text
    assert "Task was destroyed but it is pending" not in err_text
    # Nothing left behind: the control socket is gone (another daemon may start here at once).
    assert not os.path.exists(sock_path)


def _wait_for(path: str, in_flight: int, waiting: int, limit: float = 120.0) -> dict:
    """Poll the daemon's status until it holds the state the test set up (`in_flight` schedules
    under way, `waiting` targets retrying), for at most `limit` seconds: the state, checked
    rather than assumed to be reached in time."""
    from rarp_announce.control import request

    deadline = time.monotonic() + limit
    while True:
        status = request(path, {"op": "status"}, timeout=30)["status"]
        if len(status["in_flight"]) == in_flight and len(status["pending"]) == waiting:
            return status
        assert time.monotonic() < deadline, (
            f"not the state set up within {limit:.0f} s: {len(status['in_flight'])} in flight "
            f"(wanted {in_flight}), {len(status['pending'])} waiting (wanted {waiting})")
        time.sleep(0.2)
