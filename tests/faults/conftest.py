"""Fixtures of the fault-injection suite: daemon subprocesses, a tiny filesystem, the daemon's log."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.faults._daemon import DaemonProcess


@pytest.fixture
def daemon_proc(lab):
    """start(*extra, **options) -> a DaemonProcess in the lab's host netns; all killed at the end."""
    started: list[DaemonProcess] = []

    def start(*extra: str, name: str = "d", **options) -> DaemonProcess:
        process = DaemonProcess(lab.tmp, lab.ns, *extra, name=name, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def tiny_fs(root_netns, tmp_path) -> Iterator[object]:
    """mount(size) -> a tmpfs of that size on a directory of this test's own, unmounted at the end."""
    require(shutil.which("mount") is not None and shutil.which("umount") is not None, "needs mount(8)")
    mounted: list[Path] = []

    def mount(size: str = "16k", name: str = "state") -> Path:
        where = tmp_path / name
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                       check=True, capture_output=True, timeout=10)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def fill(directory: Path, *, leave: int = 0) -> int:
    """Fill the filesystem of `directory` until at most `leave` bytes are free; the bytes written."""
    import os

    written = 0
    with open(directory / "filler", "wb", buffering=0) as out:
        for _ in range(100_000):  # bounded: the filesystems filled here are kilobytes to a megabyte
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            if free <= leave:
                break
            try:
                written += out.write(b"\0" * min(4096, max(1, free - leave)))
            except OSError:
                break
    return written


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def daemon_log() -> Iterator[_Lines]:
    """Every record of the package's loggers, whatever handlers another test left there."""
    handler = _Lines()
    package = logging.getLogger("rarp_announce")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
