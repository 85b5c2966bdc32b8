"""The persisted record of arrivals already announced, so none is announced twice.

An arrival's identity must stay the same across libvirtd and daemon restarts (the catch-up
after a reconnect asks "was this arrival announced?") and must change for every new incoming
migration, even of the same domain coming back. It is made of:

- the host's boot id: a domain running now cannot be an arrival from before a reboot;
- the domain UUID: stable across hosts and restarts;
- the domain id: libvirt gives each started QEMU process a new id and keeps it for a running
  domain across libvirtd restarts; but a restarted libvirtd may hand out ids again, so alone
  it could repeat for a domain that left and came back;
- the start time of the QEMU process (field 22 of /proc/PID/stat, PID from the qemu driver's
  pid file): every incoming migration starts a new QEMU process, and the start time is fixed
  for its life, so this part tells two arrivals with equal ids apart. When the pid file cannot
  be read (another driver, a private /run of a lab daemon) the identity falls back to the
  first three parts.

The file holds one JSON object per line (append-only, so recording costs one small write on
the loop); it is compacted at load to the arrivals of the current boot.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path

from rarp_announce.errors import AnnounceError

LEDGER_NAME = "announced.jsonl"
LOCK_NAME = "lock"
_MAX_BYTES = 64 << 20  # ~300k arrivals; a bigger file is not ours
_log = logging.getLogger("rarp_announce.daemon")
QEMU_PID_DIR = "/run/libvirt/qemu"
_MAX_AGE = 30 * 86400.0  # a running domain older than this is announced again at most once more


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def qemu_start_time(domain_name: str, pid_dir: str = QEMU_PID_DIR) -> str | None:
    """The QEMU process's start time in clock ticks since boot, or None when it cannot be read."""
    try:
        pid = int(Path(pid_dir, f"{domain_name}.pid").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return f"{pid}@{fields[19]}" if len(fields) > 19 else None


def arrival_identity(uuid: str, domain_id: int, domain_name: str, *, pid_dir: str = QEMU_PID_DIR,
                     boot: str | None = None) -> str:
    """The identity of this domain's current stay on this host (see the module docstring)."""
    parts = [boot or boot_id(), uuid, str(domain_id)]
    started = qemu_start_time(domain_name, pid_dir)
    if started is not None:
        parts.append(started)
    return "/".join(parts)


class Ledger:
    """Arrival identities announced on this host, kept in `state_dir/announced.jsonl`.

    An aid to exactly-once, never a reason to skip an announcement or to refuse to start: a
    state dir that is full, read-only, deleted or holds garbage costs at most an arrival
    announced twice after a restart. Problems are counted (`problems`) and logged once each.
    Only a second daemon on the same state dir is refused (`lock()`): both would announce
    every arrival.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, load: bool = True) -> None:
        self.path = Path(state_dir) / LEDGER_NAME
        self._seen: dict[str, dict[str, object]] = {}
        self._boot = boot_id()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.problems: collections.Counter[str] = collections.Counter()
        self._logged: set[str] = set()
        if load:
            self.load()

    def __contains__(self, identity: str) -> bool:
        return identity in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def lock(self) -> None:
        """Hold STATE_DIR/lock for this daemon's life; AnnounceError if another daemon holds it."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._problem("lock", f"cannot create the lock in {directory}: {exc.strerror}; a second daemon "
                                  "on this state dir would not be noticed")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AnnounceError(
                f"another rarp-announce daemon uses the state dir {directory}: stop it, or give this one its own "
                "--state-dir and --control-socket"
            ) from None
        self._lock_fd = fd

    def record(self, identity: str, *, domain: str | None, trigger: str) -> bool:
        """Remember an announced arrival; False when it was already known. Never raises."""
        if identity in self._seen:
            return False
        entry: dict[str, object] = {"id": identity, "domain": domain, "trigger": trigger, "at": time.time()}
        self._seen[identity] = entry
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = self._open_for_append()
            # One write() per line of well under PIPE_BUF: a crash never leaves half a record.
            _append_line(self._fd, line)
        except OSError as exc:
            self.forget_file()
            self._problem("write", f"cannot write the ledger {self.path}: {exc.strerror}; announcing goes on, "
                                   "but after a restart an arrival may be announced twice")
        return True

    def _open_for_append(self) -> int:
        # O_NONBLOCK: a FIFO put in its place must fail here (ENXIO), not hold the loop until a
        # reader comes; anything but a regular file is refused like a failed write.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        except OSError:
            os.close(fd)
            raise
        return fd

    def forget_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self.forget_file()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _problem(self, kind: str, message: str) -> None:
        self.problems[kind] += 1
        if message not in self._logged:
            self._logged.add(message)
            _log.warning("%s", message)

    def load(self) -> None:
        """Read the arrivals of this boot; compact the file when it held others."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            self._problem("load", f"cannot create the state dir {directory}: {exc.strerror}; starting with an empty ledger")
            return
        self._remove_stale_temporary()
        data = self._read()
        if data is None:
            return
        now = time.time()
        lines = data.split(b"\n")
        kept = 0
        for raw in lines:
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8"))
                identity = entry["id"]
                fresh = now - float(entry.get("at", 0)) < _MAX_AGE
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
                self.problems["corrupt_lines"] += 1  # a torn or foreign line costs at most one extra announcement
                continue
            if isinstance(identity, str) and identity.startswith(self._boot + "/") and fresh:
                self._seen[identity] = entry
                kept += 1
        if self.problems["corrupt_lines"]:
            self._problem("corrupt", f"the ledger {self.path} had {self.problems['corrupt_lines']} unreadable line(s): skipped")
        if kept < sum(1 for raw in lines if raw.strip()):
            self._rewrite()

    def _read(self) -> bytes | None:
        """The ledger's bytes; None (and a logged reason) when it cannot be used as a file."""
        try:
            # O_NONBLOCK: a FIFO put there must not freeze the daemon in open() or read().
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problem("load", f"cannot read the ledger {self.path}: {exc.strerror}; starting with an empty ledger")
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._problem("load", f"the ledger {self.path} is not a regular file: ignored (remove it)")
                return None
            if info.st_size > _MAX_BYTES:
                self._problem("load", f"the ledger {self.path} is {info.st_size} bytes: ignored as damaged")
                return None
            return os.read(fd, _MAX_BYTES)
        except OSError as exc:
            self._problem("load", f"cannot read the ledger {self.path}: {exc.strerror}; starting with an empty ledger")
            return None
        finally:
            os.close(fd)

    def _remove_stale_temporary(self) -> None:
        # Left by a compaction that a crash or a full disk interrupted; never ours to keep.
        tmp = self.path.with_suffix(".tmp")
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._problem("load", f"cannot remove the stale {tmp}: {exc.strerror}")

    def _rewrite(self) -> None:
        """Compact to the arrivals still relevant; best effort (the appends work without it)."""
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                data = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in self._seen.values())
                _write_all(fd, data.encode())  # a short write on a nearly full disk must not replace the ledger
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._problem("compact", f"cannot compact the ledger {self.path}: {exc.strerror}; kept as it is")


def _write_all(fd: int, data: bytes) -> None:
    """Every byte, or OSError: os.write() may write part of it when the disk fills up."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _append_line(fd: int, line: bytes) -> None:
    """Append one record whole or not at all: a short write (a disk that just filled up) is cut
    back, so the next record does not glue onto half a line and make both unreadable."""
    before = os.fstat(fd).st_size  # the end, where O_APPEND writes; this daemon is the only writer (lock)
    written = os.write(fd, line)
    if written != len(line):
        with contextlib.suppress(OSError):
            os.ftruncate(fd, before)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
