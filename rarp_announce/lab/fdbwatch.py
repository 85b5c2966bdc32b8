"""When a lab host's Linux bridge points a MAC at a port: its FDB notifications, as they happen.

`bridge -timestamp monitor fdb` (iproute2) in the host's netns prints every RTM_NEWNEIGH of
family AF_BRIDGE the kernel sends when a bridge FDB entry is created or moves to another port
(net/bridge/br_fdb.c, fdb_notify), learned or written by a user (`bridge fdb replace`,
rarp-announce's write at RESUMED), each stamped as it read it. A process of its own, not a
thread here: netlink gives no kernel timestamp (no SO_TIMESTAMP cmsg on netlink sockets), and
a thread sharing the lab's interpreter with its packet sniffers read the notification
milliseconds late (that process, too, may be scheduled a millisecond or so late on a busy
machine: the stamp is an upper bound). With QEMU's RARPs dropped at the bridge's ingress and a
silent guest, the first entry on the guest's new tap is rarp-announce's write: the timelines
mark it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class FdbEvent:
    time: float  # wall clock, as `bridge monitor` read the notification
    mac: str
    device: str  # the port the entry points at
    state: str  # dynamic, static or permanent


class FdbWatch:
    """Every bridge FDB entry created or moved in netns `ns`, from creation to close()."""

    def __init__(self, ns: str) -> None:
        self._events: list[FdbEvent] = []
        self._lock = threading.Lock()
        # setpriv(1) --pdeathsig: SIGTERM when the thread that started it ends (`lab up` exits and
        # leaves the lab running: its watch must not outlive it); prctl(2) PR_SET_PDEATHSIG
        # survives the exec of `ip` and of `bridge`. (A preexec_fn could deadlock in the child
        # of this threaded process.)
        argv = ["setpriv", "--pdeathsig", "TERM", "ip", "netns", "exec", ns, "bridge", "-timestamp", "monitor", "fdb"]
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._run, name=f"fdb-{ns}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _run(self) -> None:
        assert self._process.stdout is not None
        stamp: float | None = None
        for line in self._process.stdout:
            if line.startswith("Timestamp:"):
                stamp = parse_stamp(line)
                continue
            event = parse_event(line, stamp if stamp is not None else time.time())
            if event is not None:
                with self._lock:
                    self._events.append(event)

    def events(self) -> list[FdbEvent]:
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._thread.join(2)
        if self._process.stdout is not None:
            self._process.stdout.close()


def parse_stamp(line: str) -> float | None:
    """'Timestamp: Sat Dec  5 06:32:29 2026 788993 usec' (local time) -> seconds since the epoch."""
    words = line.split()
    try:
        whole = time.mktime(time.strptime(" ".join(words[1:6]), "%a %b %d %H:%M:%S %Y"))
        return whole + int(words[6]) / 1e6
    except (ValueError, IndexError):
        return None


def parse_event(line: str, stamp: float) -> FdbEvent | None:
    """'52:54:00:00:00:09 dev vnet0 master br0 [static|permanent] ...': an entry on a bridge port."""
    words = line.split()
    if len(words) < 3 or words[0] == "Deleted" or "master" not in words or "dev" not in words:
        return None
    device = words[words.index("dev") + 1] if words.index("dev") + 1 < len(words) else ""
    state = "permanent" if "permanent" in words else "static" if "static" in words else "dynamic"
    return FdbEvent(stamp, words[0].lower(), device, state)
