"""Processes by pid, as /proc tells: a zombie counts as gone, since it only awaits its reaper."""

from __future__ import annotations

import time


def alive(pid: int) -> bool:
    """True while `pid` runs (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def wait_gone(pid: int, timeout: float, interval: float = 0.02) -> bool:
    """Poll until `pid` is gone or `timeout` s pass; True once gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(interval)
    return not alive(pid)
