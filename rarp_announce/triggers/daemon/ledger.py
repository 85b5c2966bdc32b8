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

import json
import os
import time
from pathlib import Path

from rarp_announce.errors import AnnounceError

LEDGER_NAME = "announced.jsonl"
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
    """Arrival identities announced on this host, kept in `state_dir/announced.jsonl`."""

    def __init__(self, state_dir: str | os.PathLike[str], *, load: bool = True) -> None:
        self.path = Path(state_dir) / LEDGER_NAME
        self._seen: dict[str, dict[str, object]] = {}
        self._boot = boot_id()
        self._fd: int | None = None
        if load:
            self._load()

    def __contains__(self, identity: str) -> bool:
        return identity in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def record(self, identity: str, *, domain: str | None, trigger: str) -> bool:
        """Remember an announced arrival; False when it was already known."""
        if identity in self._seen:
            return False
        entry = {"id": identity, "domain": domain, "trigger": trigger, "at": time.time()}
        self._seen[identity] = entry
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # One write() per line of well under PIPE_BUF: a crash never leaves half a record.
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _load(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lines = self.path.read_text().splitlines()
        except FileNotFoundError as exc:
            if exc.filename == str(self.path):
                return
            raise AnnounceError(f"cannot use state dir {self.path.parent}: {exc.strerror}; choose another --state-dir") from None
        except OSError as exc:
            raise AnnounceError(f"cannot use state dir {self.path.parent}: {exc.strerror}; choose another --state-dir") from None
        now = time.time()
        for line in lines:
            try:
                entry = json.loads(line)
                identity = entry["id"]
                fresh = now - float(entry.get("at", 0)) < _MAX_AGE
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line costs at most one extra announcement
            if isinstance(identity, str) and identity.startswith(self._boot + "/") and fresh:
                self._seen[identity] = entry
        if len(self._seen) < len(lines):
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as out:
            for entry in self._seen.values():
                out.write(json.dumps(entry, separators=(",", ":")) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
