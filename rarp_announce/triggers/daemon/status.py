"""What `rarp-announce status` shows of the arrivals: what each waits for, the last
announcements, the counters. Daemon.status() (service.py) adds the connection, OVSDB and ledger."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any

from rarp_announce.announce.arrivals import Arrival, ArrivalTable, Observer
from rarp_announce.announce.engine import Announcement
from rarp_announce.model import Target

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


def arrivals_status(table: ArrivalTable, in_flight: Iterable[Announcement]) -> dict[str, Any]:
    """The arrivals' part of the status: incoming, parked, schedules in flight, targets waiting."""
    now = time.monotonic()
    flying = [
        {"domain": a.domain, "trigger": a.trigger, "targets": len(a.targets),
         "elapsed": round(now - a.started, 3), "sends_left": len(a.sends) - a.next_index}
        for a in in_flight
    ]
    entries = list(table.entries.values())
    pending = []
    for entry in entries:
        for target in entry.pending():
            since, _reason = entry.waiting.get((target.mac, target.route), (now, ""))
            pending.append({
                "domain": entry.name, "mac": target.mac, "device": target.device,
                "port": target.ovs.name if target.ovs else None, "vlan": target.vlan,
                "reason": entry.problems.get(target.route), "waiting": round(now - since, 3),
            })
    return {
        "incoming": sorted(e.name for e in entries if e.phase == "incoming"),
        "parked": sorted(e.name for e in entries if e.phase == "parked"),
        "in_flight": flying,
        "pending": pending,
    }
