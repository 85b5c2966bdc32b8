"""Row 9: SIGHUP with a config the daemon cannot use (nested without end, a FIFO) keeps the
running config, counts the failure, and never holds the loop or the exit."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rarp_announce.config import load_config
from rarp_announce.errors import InputError
from tests.faults._daemon import CONFIG

DEEP = 20_000
NESTED = {
    "arrays": "a = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "inline-tables": "a = " + "{b = " * 100_000 + "1" + "}" * 100_000 + "\n",
    "uplinks-dotted": "[uplinks" + ".a" * DEEP + "]\n",
    "openflow-dotted": "[ovs.openflow" + ".a" * DEEP + "]\n",
    "ignore-dotted": "[ignore" + ".domains" * DEEP + "]\n",
    "daemon-dotted": "[daemon.metrics" + ".a" * DEEP + "]\n",
    "hook-dotted": "[hook.mode" + ".a" * DEEP + "]\n",
    "connect-dotted": "[connect" + ".a" * DEEP + "]\n",
}


@pytest.mark.parametrize("name", list(NESTED))
def test_a_nested_config_is_one_input_error(tmp_path, name) -> None:
    path = tmp_path / "nested.toml"
    path.write_text(NESTED[name])
    with pytest.raises(InputError) as caught:
        load_config(str(path))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message


def test_sighup_with_a_nested_config_or_a_fifo_keeps_the_config_and_the_loop(lab, daemon_proc) -> None:
    daemon = daemon_proc()
    daemon.wait_ready()
    assert daemon.status()["schedule"]["rounds"] == 3

    def reload_failures() -> int:
        return daemon.status()["counters"].get("reload_failures", 0)

    def hup_and_wait(failures: int) -> list[float]:
        """SIGHUP, then ping every 20 ms until the failure is counted; the ping latencies (a
        figure, printed; bounded waits only, so a held loop fails the test instead of hanging it)."""
        latencies = []
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120  # generous: a second of parsing idle, more under load
        while reload_failures() < failures:
            assert time.monotonic() < deadline, "the reload never ended"
            started = time.monotonic()
            assert daemon.request({"op": "ping"}, timeout=30) == {"ok": True}
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        return latencies

    # 1. Deep dotted tables: over a second of TOML parsing, then a check that used to recurse.
    daemon.config_path.write_text("[uplinks" + ".a" * 50_000 + "]\n")
    slow = hup_and_wait(1)
    # 2. Arrays nested 100k deep.
    daemon.config_path.write_text(NESTED["arrays"])
    hup_and_wait(2)
    # 3. A FIFO in place of the file: open() and read() must not wait for a writer.
    daemon.config_path.unlink()
    os.mkfifo(daemon.config_path)
    hup_and_wait(3)
    status = daemon.status()
    assert status["schedule"]["rounds"] == 3, "the running config is kept"
    assert status["counters"].get("reloads", 0) == 0
    code = daemon.terminate()
    print(f"\nFIGURE sighup: {len(slow)} pings during the 50k-deep reload, max {max(slow or [0]) * 1000:.1f} ms")
    assert code == 0
    err = daemon.stderr()
    assert "Traceback" not in err and "RecursionError" not in err
    failed = [line for line in err.splitlines() if "config reload failed" in line]
    assert len(failed) == 3, failed
    assert "too deeply" in failed[0] and "too deeply" in failed[1] and "not a regular file" in failed[2]
    # Pings were answered while the reload ran (the failure not yet counted): it runs beside the
    # loop. Reading in the loop would hold every request until the parse ended, so at most the
    # one ping already on its way before the SIGHUP was handled would be answered before it.
    assert len(slow) >= 2, "the reload held the loop"


def test_sighups_in_a_burst_end_in_one_more_reload(lab, daemon_proc) -> None:
    """Ten SIGHUPs while one reload runs: the last file is read, nothing piles up."""
    daemon = daemon_proc()
    daemon.wait_ready()
    daemon.config_path.write_text(CONFIG.replace("rounds = 3", "rounds = 7"))
    for _ in range(10):
        daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while daemon.status()["schedule"]["rounds"] != 7:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    reloads = daemon.status()["counters"]["reloads"]
    assert 1 <= reloads <= 10
    assert daemon.terminate() == 0
