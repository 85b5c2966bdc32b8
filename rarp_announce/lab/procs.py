"""Processes the lab started, tracked by pid so a later `lab migrate` or `lab down` (another
process) can stop exactly those and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from rarp_announce.pids import alive


class Proc:
    """A pid we started, with its Popen when this process is its parent (to reap it)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self.popen = popen

    @classmethod
    def start(cls, argv: list[str], log_path, **kwargs) -> "Proc":
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **kwargs)
        return cls(popen.pid, popen)

    @property
    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return alive(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def signal(self, sig: int, timeout: float) -> bool:
        """Send `sig` and wait up to `timeout` s for the exit; True once gone."""
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return True
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.alive

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if not self.signal(signal.SIGTERM, timeout):
            self.signal(signal.SIGKILL, 5.0)
