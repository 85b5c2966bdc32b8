"""Leaving nothing behind: what a lab made, what of it still exists, and signals that unwind."""

from __future__ import annotations

import os
import signal
import subprocess

from rarp_announce.pids import alive


def leftovers(made: dict[str, list[str | int]]) -> list[str]:
    """What of a closed lab's footprint (netns, pids, paths) still exists: must be nothing."""
    found = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"netns {name}" for name in made["netns"] if name in listed]
    found += [f"process {pid}" for pid in made["pids"] if isinstance(pid, int) and alive(pid)]
    found += [f"path {path}" for path in made["paths"] if os.path.exists(str(path))]
    with open("/proc/self/mountinfo") as mounts:
        text = mounts.read()
    found += [f"mount under {path}" for path in made["paths"] if str(path) in text]
    return found


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def interrupt_as_exception() -> None:
    """SIGTERM/SIGHUP raise KeyboardInterrupt, so `finally:` clean-ups run on them too.

    Only in this process: pyroute2 forks helpers (netns set-up) that inherit the handler and
    are ended with SIGTERM; there the signal must simply end the child, not unwind our stack.
    """
    owner = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
