"""The arrival table: one entry per domain arriving on this host, one reconcile that acts on it.

Like OVN's announce table (ovn-controller's garp_rarp.c), every trigger of an arrival (libvirt
events in the daemon, the hook's waiter, `rarp-announce domain`) only says what happened:
`expect` (the prepare phase of an incoming migration), `arrive` (the guest runs here now),
`reconcile` (something changed: the XML, a device, the OVS database). The table owns the
rest: resolve, the readiness check, frames and sockets prepared ahead, the first round from
inside the caller (no await between a resume event and its first frame), retries of routes
not ready, re-resolution when the XML or a port changes, and a give-up with a reason.
(`rarp-announce send` names its targets itself: no domain arrives, so it uses the announcer
directly, with the same schedule from the same config.)
Reconcile is idempotent: it compares what the resolver says now with what was announced and
announces the difference, so calling it twice, or from two triggers, never sends twice.

Waiting is event-driven where the host tells us: an OVS port that is not wired yet waits for
an OVSDB change (`ovs_changed`), with only a deadline timer. Linux devices that are missing
or down are re-checked together every `retry_interval` until `retry_timeout`: one readiness
check for every waiting arrival (each device asked once), and only an arrival whose device
changed is reconciled. Checked one arrival at a time, 5,000 arrivals waiting for one missing
bridge held the loop for seconds and opened 5,000 netlink sockets at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rarp_announce.announce.engine import Announcer
from rarp_announce.config import Config
from rarp_announce.errors import InputError
from rarp_announce.model import Resolution, Target, TargetKey
from rarp_announce.schedule import Schedule

_log = logging.getLogger("rarp_announce.announce")

Phase = Literal["incoming", "parked", "arrived"]
_REREAD_EVERY = 2.0  # seconds between live-XML re-reads while a Linux device is awaited
_REREADS_PER_CHECK = 32  # live-XML re-reads at most per shared device re-check (libvirt calls)


class Resolver(Protocol):
    """What the table asks of the resolve stage (resolve.host.HostResolver on a real host)."""

    def live_xml(self, uuid: str) -> str | None: ...

    async def resolve(self, xml: str | bytes) -> Resolution: ...

    async def check(self, targets: Iterable[Target]) -> dict[str, str]: ...


class Observer:
    """Told what the table does; logs, metrics and command-line reports subclass it. No-ops here."""

    def resolved(self, arrival: Arrival, resolution: Resolution) -> None: ...

    def resolve_failed(self, arrival: Arrival, error: str) -> None: ...

    def announced(self, arrival: Arrival, targets: list[Target], trigger: str, latency: float | None) -> None: ...

    def waiting(self, arrival: Arrival, target: Target, reason: str, timeout: float) -> None: ...

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None: ...

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None: ...

    def expired(self, arrival: Arrival, after: float) -> None: ...

    def guest_announced(self, arrival: Arrival, problem: str | None) -> None: ...


@dataclass(eq=False)
class Arrival:
    """One domain's current arrival on this host, as far as the table knows it."""

    uuid: str
    name: str
    phase: Phase = "incoming"
    source: str = "event"  # what told us: event, hook, catch-up, cli, ...
    confirmed: bool = False  # libvirt itself reported this arrival (a hand-off alone may never come)
    identity: str | None = None  # the daemon's ledger key for exactly-once across restarts
    xml: str | None = None
    resolution: Resolution | None = None
    problems: dict[str, str] = field(default_factory=dict)  # route -> why it cannot carry frames now
    announced: set[TargetKey] = field(default_factory=set)
    claimed: set[TargetKey] = field(default_factory=set)  # announced with their Linux bridge port known
    # (MAC, route) -> since (monotonic), reason: by route, so a port that is wired into another
    # VLAN than its placeholder had still counts as the same wait ending.
    waiting: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    gave_up: dict[TargetKey, str] = field(default_factory=dict)  # target -> the problem it was given up for
    arrived_at: float | None = None
    trigger: str = ""
    seen: float | None = None  # monotonic time the arrival's event reached us (for the latency)
    preparing: asyncio.Future[Any] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    _reconciling: bool = False
    _dirty: bool = False
    _reread: bool = False
    _last_reread: float = 0.0
    _timer: asyncio.TimerHandle | None = None

    @property
    def prepared(self) -> bool:
        return self.resolution is not None

    @property
    def targets(self) -> list[Target]:
        return self.resolution.targets if self.resolution is not None else []

    def pending(self) -> list[Target]:
        """Targets of the current resolution not announced yet because their route is not ready."""
        return [t for t in self.targets if t.key not in self.announced and t.key not in self.gave_up
                and t.route in self.problems]


@dataclass(frozen=True)
class ArrivalSettings:
    """What the table needs of the configuration (`from_config`); a daemon replaces it at each
    reload."""

    schedule: Schedule
    retry_timeout: float  # seconds a missing or down Linux device is waited for
    retry_interval: float  # seconds between the shared re-checks of those devices
    wiring_timeout: float  # seconds an OVS port not wired yet is waited for
    guest_announce: bool  # ask QEMU's announce-self after the first round

    @classmethod
    def from_config(cls, config: Config, *, wait: float | None = None) -> ArrivalSettings:
        """The config's values; `wait` (the `domain --wait` option) bounds both waits instead."""
        return cls(
            schedule=config.schedule,
            retry_timeout=config.daemon.retry_timeout if wait is None else wait,
            retry_interval=config.daemon.retry_interval,
            wiring_timeout=config.ovs.wiring_timeout if wait is None else wait,
            guest_announce=config.addresses.guest_announce,
        )


class ArrivalTable:
    """Every arrival on this host, and the one reconcile that announces them."""

    def __init__(
        self,
        announcer: Announcer,
        resolver: Resolver,
        settings: ArrivalSettings,
        *,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.announcer = announcer
        self.resolver = resolver
        self.settings = settings
        self.observers: list[Observer] = list(observers)
        self.entries: dict[str, Arrival] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._recheck: asyncio.TimerHandle | None = None  # the one timer of the shared device re-check

    # ---- what triggers say -------------------------------------------------------------------

    async def expect(self, uuid: str, name: str, *, xml: str | None = None, source: str = "event",
                     identity: str | None = None) -> Arrival:
        """An incoming migration (prepare phase): resolve, check and prepare everything now.

        Replaces any earlier entry of this domain: a new incoming migration is a new arrival.
        """
        entry = self.expect_soon(uuid, name, xml=xml, source=source, identity=identity)
        assert entry.preparing is not None
        await asyncio.wait([entry.preparing])
        return entry

    def expect_soon(self, uuid: str, name: str, *, xml: str | None = None, source: str = "event",
                    identity: str | None = None, expire_after: float | None = None) -> Arrival:
        """`expect` without waiting for the preparation: for callbacks that must return at once.

        `expire_after`: forget it after that many seconds unless libvirt confirmed it (`confirm`)
        or it arrived: a hand-off for a migration that never came must not stay for ever.
        """
        self.forget(uuid)
        entry = self.entries[uuid] = Arrival(uuid, name, source=source, identity=identity, confirmed=source == "event")
        entry.preparing = self._spawn(self._prepare(entry, xml))
        if expire_after is not None:
            entry._timer = asyncio.get_running_loop().call_later(expire_after, self._expire, entry, expire_after)
        return entry

    def incoming(self, uuid: str, name: str) -> Arrival | None:
        """libvirt reports an incoming migration (STARTED/MIGRATED). An arrival a hook handed over
        already is kept (its XML is being prepared) and confirmed: it no longer expires. Anything
        else is prepared afresh from the live XML. The new entry, or None when one was kept."""
        entry = self.entries.get(uuid)
        if entry is None or entry.phase != "incoming" or entry.source == "event":
            return self.expect_soon(uuid, name, source="event")
        entry.confirmed = True
        if entry._timer is not None:
            entry._timer.cancel()
            entry._timer = None
        return None

    def _expire(self, entry: Arrival, after: float) -> None:
        entry._timer = None
        if self.entries.get(entry.uuid) is entry and entry.phase != "arrived" and not entry.confirmed:
            self.forget(entry.uuid)
            self._notify("expired", entry, after)

    def park(self, uuid: str, name: str | None = None) -> None:
        """It is here but paused (the prepare phase, or a migration done with VIR_MIGRATE_PAUSED):
        the arrival is its first resume. With `name`, an arrival not seen before is prepared."""
        entry = self.entries.get(uuid)
        if entry is None and name is not None:
            entry = self.expect_soon(uuid, name, source="event")
        if entry is not None and entry.phase == "incoming":
            entry.phase = "parked"

    def arrive(self, uuid: str, name: str, *, trigger: str, seen: float | None = None) -> Arrival | None:
        """The guest runs here now: the first round of every ready target leaves before this returns.

        None when this arrival was already announced (postcopy, then migrated: one arrival).
        """
        entry = self.entries.get(uuid)
        if entry is None:
            entry = self.entries[uuid] = Arrival(uuid, name)
        elif entry.phase == "arrived":
            return None
        entry.phase = "arrived"
        entry.arrived_at = time.monotonic()
        entry.trigger = trigger
        entry.seen = seen
        if entry.prepared:
            # What was prepared last, even if a newer preparation is under way (an OVSDB change
            # re-prepares): the reconcile below announces whatever that one adds.
            ready = [t for t in entry.targets if t.route not in entry.problems]
            self._announce(entry, ready, trigger)
        self._spawn(self._after_arrival(entry))
        return entry

    async def reconcile(self, uuid: str, *, reread: bool = False, trigger: str | None = None,
                        renew_macs: Iterable[str] = ()) -> None:
        """Bring an arrived entry in line with what the host says now; safe to call any time.

        `reread` asks libvirt for the live XML first; `renew_macs` announces those MACs again
        (a vNIC unplugged and plugged back is on a freshly wired port).
        """
        entry = self.entries.get(uuid)
        if entry is None or entry.phase != "arrived":
            return
        renew = set(renew_macs)
        if renew:
            entry.announced = {key for key in entry.announced if key[0] not in renew}
            entry.claimed = {key for key in entry.claimed if key[0] not in renew}
            entry.gave_up = {key: why for key, why in entry.gave_up.items() if key[0] not in renew}
        if entry._reconciling:
            entry._dirty = True
            entry._reread |= reread
            return
        entry._reconciling = True
        entry.settled.clear()
        try:
            while self.entries.get(uuid) is entry:
                entry._dirty = False
                await self._reconcile_once(entry, reread or entry._reread, trigger)
                reread = entry._reread = False
                if not entry._dirty:
                    break
        finally:
            entry._reconciling = False
        if self.entries.get(uuid) is entry:
            self._schedule(entry)

    def ovs_changed(self) -> None:
        """The OVS database changed: arrivals with a port not wired, or within their window for
        a VLAN change, are reconciled (no libvirt call: the XML is the one already known), and
        arrivals still to come are prepared again with what OVSDB says now."""
        now = time.monotonic()
        for entry in list(self.entries.values()):
            if entry.phase != "arrived" and entry.xml is not None and (entry.preparing is None or entry.preparing.done()):
                entry.preparing = self._spawn(self._prepare(entry, entry.xml))
                continue
            until = self.ovs_window_end(entry)
            if until is not None and now <= until:
                self._spawn(self.reconcile(entry.uuid, trigger="ovs-change"))

    def ovs_window_end(self, entry: Arrival) -> float | None:
        """Until when (monotonic) an OVSDB change re-announces this arrival (a port rewired into
        another VLAN); None when it has not arrived or has no OVS port."""
        if entry.phase != "arrived" or entry.arrived_at is None or not any(t.ovs is not None for t in entry.targets):
            return None
        return entry.arrived_at + self.settings.wiring_timeout

    def forget(self, uuid: str) -> Arrival | None:
        """The domain left (stopped, migrated away) or is replaced: stop everything for it."""
        entry = self.entries.pop(uuid, None)
        if entry is not None:
            if entry._timer is not None:
                entry._timer.cancel()
            if entry.preparing is not None and not entry.preparing.done():
                entry.preparing.cancel()
            self.announcer.release(entry.targets)
            entry.settled.set()
        return entry

    async def settled(self, uuid: str) -> Arrival | None:
        """Wait until the arrival has nothing left to wait for (announced, given up or forgotten)."""
        entry = self.entries.get(uuid)
        if entry is None:
            return None
        await entry.settled.wait()
        return entry

    def close(self) -> None:
        for uuid in list(self.entries):
            self.forget(uuid)
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        for task in list(self._tasks):
            task.cancel()

    # ---- inside --------------------------------------------------------------------------------

    async def _prepare(self, entry: Arrival, xml: str | None) -> bool:
        if xml is None:
            xml = self.resolver.live_xml(entry.uuid)
            if xml is None:
                self._notify("resolve_failed", entry, "cannot read the domain's XML from libvirt")
                return False
        resolution = await self._resolve(entry, xml)
        if resolution is None:
            return False
        problems = await self._readiness(resolution, resolution.targets)
        entry.xml, entry.resolution, entry.problems = _kept(xml), resolution, problems
        return True

    async def _after_arrival(self, entry: Arrival) -> None:
        if entry.preparing is not None and not entry.preparing.done():
            await asyncio.wait([entry.preparing])
        if self.entries.get(entry.uuid) is not entry:
            return
        # The live XML after the resume is the truth (a network's actual device, a hot-plug
        # during the migration): re-read it once whether or not the prepare phase was seen.
        await self.reconcile(entry.uuid, reread=True, trigger=entry.trigger)
        ask_guest = getattr(self.resolver, "guest_announce", None)
        if ask_guest is not None and self.settings.guest_announce and self.entries.get(entry.uuid) is entry:
            # After our first round: the guest then announces its own addresses (IPv6 too).
            self._notify("guest_announced", entry, await ask_guest(entry.uuid))

    async def _reconcile_once(self, entry: Arrival, reread: bool, trigger: str | None) -> None:
        xml = entry.xml
        now = time.monotonic()
        due = reread or (now - entry._last_reread >= _REREAD_EVERY and self._device_waits(entry))
        if due:
            entry._last_reread = now
        if due or xml is None:
            live = self.resolver.live_xml(entry.uuid)
            if live is not None:
                xml = live
        if xml is None:
            self._notify("resolve_failed", entry, "no domain XML: libvirt is not reachable")
            return
        resolution = await self._resolve(entry, xml)
        if resolution is None:
            return
        todo = [t for t in resolution.targets if t.key not in entry.announced and t.key not in entry.gave_up]
        problems = await self._readiness(resolution, todo)
        if self.entries.get(entry.uuid) is not entry:
            return
        entry.xml, entry.resolution, entry.problems = _kept(xml), resolution, problems
        ready = [t for t in todo if t.route not in problems]
        first = not entry.announced
        self._announce(entry, ready, entry.trigger if first else (trigger or "retry"))
        # Announced from an XML that named no tap (a hook's migratable XML): the live one does,
        # so the bridge FDB and SVI neighbour step the first round could not take is taken now,
        # once. The sink prepares these targets first: only now is their bridge known, and with
        # it the SVI each vouched address belongs to.
        unclaimed = [t for t in resolution.targets if t.bridge_port is not None and t.key in entry.announced
                     and t.key not in entry.claimed]
        if unclaimed:
            entry.claimed.update(t.key for t in unclaimed)
            await self.announcer.prepare(unclaimed)
            if self.entries.get(entry.uuid) is entry:
                self.announcer.claim(unclaimed, trigger=trigger or "reconcile", domain=entry.name)
            self.announcer.release(unclaimed)
        self._track_waiting(entry, now)

    async def _resolve(self, entry: Arrival, xml: str | bytes) -> Resolution | None:
        try:
            resolution = await self.resolver.resolve(xml)
        except InputError as exc:
            self._notify("resolve_failed", entry, str(exc))
            return None
        if resolution.uuid and resolution.uuid.lower() != entry.uuid.lower():
            self._notify("resolve_failed", entry, f"the XML's <uuid> {resolution.uuid} is not this domain's")
            return None
        if entry.resolution is None or _summary(entry.resolution) != _summary(resolution):
            self._notify("resolved", entry, resolution)
        return resolution

    async def _readiness(self, resolution: Resolution, targets: list[Target]) -> dict[str, str]:
        """The resolver's problems (an OVS port not wired), then the readiness check, then the
        sink's own preparation: a route that passes all three carries frames at once."""
        problems = dict(resolution.problems)
        candidates = [t for t in targets if t.route not in problems]
        problems.update(await self.resolver.check(candidates))
        problems.update(await self.announcer.prepare(t for t in candidates if t.route not in problems))
        return problems

    def _announce(self, entry: Arrival, targets: list[Target], trigger: str) -> None:
        fresh = [t for t in targets if t.key not in entry.announced]
        if not fresh:
            return
        self.announcer.announce(fresh, self.settings.schedule, trigger=trigger, domain=entry.name)
        now = time.monotonic()
        # The latency that matters is the arrival's: event -> its first round on the wire.
        latency = now - entry.seen if entry.seen is not None and not entry.announced else None
        entry.announced.update(t.key for t in fresh)
        entry.claimed.update(t.key for t in fresh if t.bridge_port is not None)
        for target in fresh:
            waited = entry.waiting.pop((target.mac, target.route), None)
            if waited is not None:
                self._notify("ready", entry, target, now - waited[0], waited[1])
        self._notify("announced", entry, fresh, trigger, latency)

    def _track_waiting(self, entry: Arrival, now: float) -> None:
        current = {(t.mac, t.route): t for t in entry.pending()}
        for key in list(entry.waiting):
            if key not in current:
                del entry.waiting[key]  # no longer in the resolution (the vNIC was unplugged)
        for key, target in current.items():
            reason = entry.problems[target.route]
            if key not in entry.waiting:
                entry.waiting[key] = (now, reason)
                self._notify("waiting", entry, target, reason, self._timeout(target))

    def _timeout(self, target: Target) -> float:
        settings = self.settings
        return settings.wiring_timeout if target.ovs is not None else settings.retry_timeout

    def _device_waits(self, entry: Arrival) -> bool:
        return any(not _resolution_problem(entry, t) for t in entry.pending())

    def _awaits_device(self, entry: Arrival) -> bool:
        """Whether the shared re-check is for this entry. Before its arrival an entry's problems
        are its preparation's, which reconcile leaves alone, so the re-check must too."""
        return entry.phase == "arrived" and self._device_waits(entry)

    def _schedule(self, entry: Arrival) -> None:
        """Set the one timer of an entry (its earliest give-up), and arm the shared device re-check
        while a Linux device of it is awaited."""
        if entry._timer is not None:
            entry._timer.cancel()
            entry._timer = None
        pending = entry.pending()
        if not pending:
            entry.settled.set()
            return
        entry.settled.clear()
        assert entry.arrived_at is not None
        deadline = min(entry.arrived_at + self._timeout(t) for t in pending)
        loop = asyncio.get_running_loop()
        entry._timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._wake, entry)
        if self._device_waits(entry) and self._recheck is None:
            self._recheck = loop.call_later(self.settings.retry_interval, self._recheck_due)

    def _recheck_due(self) -> None:
        self._recheck = None
        self._spawn(self._recheck_devices())

    async def _recheck_devices(self) -> None:
        """The shared re-check: one readiness check of every awaited Linux device, then a reconcile
        of each arrival whose devices changed, or whose live XML is due for a re-read."""
        now = time.monotonic()
        waiting = [e for e in self.entries.values() if not e._reconciling and self._awaits_device(e)]
        routes = {t.route: t for e in waiting for t in e.pending() if not _resolution_problem(e, t)}
        try:
            problems = await self.resolver.check(routes.values()) if routes else {}
        except Exception:  # one failed check must not end every wait: the next one retries
            _log.exception("shared readiness check failed")
            problems = None
        rereads = _REREADS_PER_CHECK
        for entry in sorted(waiting, key=lambda e: e._last_reread):
            if self.entries.get(entry.uuid) is not entry:
                continue
            awaited = {t.route for t in entry.pending() if not _resolution_problem(entry, t)}
            changed = problems is None or any(problems.get(r) != entry.problems.get(r) for r in awaited)
            if not changed:
                # Nothing new from netlink; the live XML may still have moved the vNIC to
                # another device, so the longest unread are re-read, a few per check.
                if rereads == 0 or now - entry._last_reread < _REREAD_EVERY:
                    continue
                rereads -= 1
            self._spawn(self.reconcile(entry.uuid, trigger="retry"))
        if self._recheck is None and any(self._awaits_device(e) for e in self.entries.values()):
            self._recheck = asyncio.get_running_loop().call_later(self.settings.retry_interval,
                                                                  self._recheck_due)

    def _wake(self, entry: Arrival) -> None:
        entry._timer = None
        if self.entries.get(entry.uuid) is not entry:
            return
        now = time.monotonic()
        assert entry.arrived_at is not None
        for target in entry.pending():
            timeout = self._timeout(target)
            if now >= entry.arrived_at + timeout:
                reason = entry.problems.get(target.route, "not ready")
                entry.gave_up[target.key] = reason
                entry.waiting.pop((target.mac, target.route), None)
                self._notify("gave_up", entry, target, reason, timeout)
        self._spawn(self.reconcile(entry.uuid, trigger="retry"))

    def _notify(self, method: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception:  # a broken log sink or metric must never stop an announcement
                _log.exception("arrival observer %r failed in %s", observer, method)

    def _spawn(self, coroutine: Awaitable[object]) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("arrival task failed", exc_info=task.exception())


_KEEP_XML = 256 * 1024


def _kept(xml: str | None) -> str | None:
    """The XML to keep for re-resolving without libvirt: a huge one is read again instead (fifty
    hand-offs of 4 MiB kept 212 MB)."""
    return xml if xml is not None and len(xml) <= _KEEP_XML else None


def _resolution_problem(entry: Arrival, target: Target) -> bool:
    """The target waits for something the resolver reported (an OVS port not wired): an OVSDB
    change ends that wait, not a device re-check."""
    return entry.resolution is not None and target.route in entry.resolution.problems


def _summary(resolution: Resolution) -> tuple[object, ...]:
    return (tuple(resolution.targets), tuple(resolution.skipped), tuple(sorted(resolution.problems.items())),
            tuple(resolution.notes), tuple(resolution.refused))
