"""What `rarp-announce status` shows: the connection, arrivals and what each waits for, counters."""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from rarp_announce import __version__
from rarp_announce.announce.arrivals import Arrival, Observer
from rarp_announce.model import Target

if TYPE_CHECKING:
    from rarp_announce.triggers.daemon.service import Daemon

_RECENT = 20  # announcements `status` shows


class StatusObserver(Observer):
    """Keeps the last announcements and the counters the status shows."""

    def __init__(self) -> None:
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT)
        self.counters: collections.Counter[str] = collections.Counter()

    def announced(self, arrival: Arrival, targets: list[Target], trigger: str, latency: float | None) -> None:
        self.counters["announcements"] += 1
        now = round(time.time(), 3)
        for target in targets:
            self.recent.append({"time": now, "domain": arrival.name, "mac": target.mac, "device": target.device,
                                "port": target.ovs.name if target.ovs else None, "vlan": target.vlan,
                                "kind": target.kind, "trigger": trigger})

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None:
        self.counters["ready_after_wait"] += 1

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None:
        self.counters["gave_up"] += 1

    def resolve_failed(self, arrival: Arrival, error: str) -> None:
        self.counters["resolve_failures"] += 1


def daemon_status(daemon: Daemon) -> dict[str, Any]:
    watcher = daemon.watcher
    now = time.monotonic()
    in_flight = [
        {"domain": a.domain, "trigger": a.trigger, "targets": len(a.targets),
         "elapsed": round(now - a.started, 3), "sends_left": len(a.sends) - a.next_index}
        for a in daemon.announcer.in_flight
    ]
    entries = list(daemon.table.entries.values())
    pending = []
    for entry in entries:
        for target in entry.pending():
            since, _reason = entry.waiting.get((target.mac, target.route), (now, ""))
            pending.append({
                "domain": entry.name, "mac": target.mac, "device": target.device,
                "port": target.ovs.name if target.ovs else None, "vlan": target.vlan,
                "reason": entry.problems.get(target.route), "waiting": round(now - since, 3),
            })
    ovs = daemon.ovs
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started": round(daemon.started, 3),
        "uri": daemon.uri,
        "config": daemon.config_path,
        "connection": {
            "state": watcher.state if watcher else "stopped",
            "since": round(watcher.since, 3) if watcher else None,
            "reconnects": watcher.reconnects if watcher else 0,
            "last_error": watcher.last_error if watcher else None,
        },
        "ovsdb": {
            "remote": daemon.config.ovs.remote(),
            "state": "off" if ovs is None else ("connected" if ovs.connected else "disconnected"),
            "last_error": ovs.last_error if ovs is not None else None,
        },
        "schedule": dataclasses.asdict(daemon.config.schedule),
        "incoming": sorted(e.name for e in entries if e.phase == "incoming"),
        "parked": sorted(e.name for e in entries if e.phase == "parked"),
        "in_flight": in_flight,
        "pending": pending,
        "last_announcements": list(daemon.status_log.recent),
        "counters": dict(daemon.status_log.counters),
        "ledger_entries": len(daemon.ledger),
        "ledger_problems": dict(daemon.ledger.problems),
    }
