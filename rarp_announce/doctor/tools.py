"""Running the tools a check needs (nft, ebtables, ovs-*, vtysh, bridge): bounded, never a crash.

A missing tool is a "skip" line, not an error: a host without ebtables has no ebtables rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

TIMEOUT = 5.0  # seconds per tool: an answer takes milliseconds; a hung daemon must not hang doctor


@dataclass(frozen=True)
class Ran:
    """A tool's answer, or why there is none (`missing`: not installed; `error`: it failed)."""

    stdout: str = ""
    missing: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and self.error is None


def run(argv: list[str], *, timeout: float = TIMEOUT, env: dict[str, str] | None = None) -> Ran:
    if shutil.which(argv[0]) is None:
        return Ran(missing=True)
    environment = None
    if env:
        environment = dict(os.environ)
        environment.update(env)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=environment,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Ran(error=f"`{' '.join(argv[:3])}` did not answer within {timeout:g} s")
    except OSError as exc:
        return Ran(error=f"cannot run {argv[0]}: {exc.strerror or exc}")
    if done.returncode != 0:
        first = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[0]
        return Ran(stdout=done.stdout, error=f"`{' '.join(argv[:3])}` failed: {first}")
    return Ran(stdout=done.stdout)
