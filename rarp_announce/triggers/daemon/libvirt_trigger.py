"""The daemon's libvirt trigger: what each event means for an arrival, and the catch-up.

Per domain (libvirt's event order for a precopy migration, include/libvirt/libvirt-domain.h):

- STARTED/MIGRATED (prepare phase; also a hook hand-off): the table prepares the arrival,
  so nothing is left to do at the resume but send;
- the first RESUMED/MIGRATED or RESUMED/POSTCOPY (or, for a migration done paused, the first
  resume): the table's first round leaves inside this callback, before any libvirt call;
- DEVICE_ADDED within `device_added_window` seconds of an arrival: that vNIC again
  (OpenStack plugs SR-IOV VFs back in after the resume);
- STOPPED / UNDEFINED: the arrival is forgotten.

The ledger makes each arrival announced once across restarts of the daemon and of libvirtd;
after every (re)connection the running domains are caught up against it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from rarp_announce.errors import InputError
from rarp_announce.triggers.daemon.ledger import arrival_identity
from rarp_announce.triggers.daemon.logs import log_event
from rarp_announce.virt import arrival_steps
from rarp_announce.virt.arrival_steps import Step

if TYPE_CHECKING:
    from rarp_announce.announce.arrivals import Arrival, ArrivalTable
    from rarp_announce.triggers.daemon.ledger import Ledger


class LibvirtTrigger:
    """Turns libvirt's events for this host into the arrival table's steps.

    Given what it uses, not the daemon: `ledger` and `device_added_window` are read at each use
    (the daemon opens its ledger at start and replaces its config at a reload); `failed` counts
    a failure by reason (the daemon's metrics).
    """

    def __init__(
        self,
        table: ArrivalTable,
        *,
        ledger: Callable[[], Ledger],
        counters: collections.Counter[str],
        device_added_window: Callable[[], float],
        failed: Callable[[str], None],
        log: logging.Logger,
        pid_dir: str,
    ) -> None:
        self._table = table
        self._ledger = ledger
        self._counters = counters
        self._device_added_window = device_added_window
        self._failed = failed
        self._log = log
        self._pid_dir = pid_dir
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- libvirt callbacks (on the loop thread; never block, never call libvirt before the first round)

    def on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any = None) -> None:
        seen = time.monotonic()
        try:
            self._lifecycle(dom, event, detail, seen)
        except Exception:  # libvirt would only print it: log it, keep serving every other domain
            self._log.exception("handling lifecycle event %s/%s failed", event, detail)

    def _lifecycle(self, dom: Any, event: int, detail: int, seen: float) -> None:
        uuid = dom.UUIDString()
        entry = self._table.entries.get(uuid)
        step = arrival_steps.classify(
            event, detail,
            incoming=entry is not None and entry.phase == "incoming",
            parked=entry is not None and entry.phase == "parked",
        )
        if step is Step.IGNORE:
            return
        if step is Step.INCOMING:
            # The entry exists from now on (a resume that follows at once finds it); its live XML
            # is read by the table's task: no libvirt call from inside libvirt's callback.
            arrival = self._table.incoming(uuid, dom.name())
            if arrival is not None:
                self._spawn(self._identify(arrival, dom))
        elif step is Step.PARKED:
            self._table.park(uuid)
        elif step is Step.ARRIVED:
            self._arrived(dom, uuid, entry, event, detail, seen)
        elif step is Step.GONE:
            self._table.forget(uuid)

    def _arrived(self, dom: Any, uuid: str, entry: Arrival | None, event: int, detail: int, seen: float) -> None:
        trigger = _trigger(event, detail)
        if entry is None:
            # Nothing seen of its prepare phase (the daemon started mid-migration): check the
            # ledger and whether it is a migration at all before announcing.
            self._spawn(self._arrived_cold(dom, uuid, trigger, seen))
            return
        arrival = self._table.arrive(uuid, dom.name(), trigger=trigger, seen=seen)
        if arrival is None:
            self._counters["duplicate_resumes"] += 1  # postcopy, then migrated: one arrival
            return
        # Everything below happens after the first round has left.
        self._record(arrival, dom, trigger)

    def on_device_added(self, conn: Any, dom: Any, alias: str, opaque: Any = None) -> None:
        try:
            entry = self._table.entries.get(dom.UUIDString())
        except Exception:
            self._log.exception("handling device-added event failed")
            return
        if entry is None or entry.arrived_at is None:
            return
        if time.monotonic() - entry.arrived_at > self._device_added_window():
            return
        self._spawn(self._device_added(entry, dom, alias))

    def on_connected(self, conn: Any, first: bool) -> None:
        """After every (re)connection: catch up with arrivals whose resume we could have missed."""
        self._spawn(self._catch_up(conn))

    # ---- tasks -----------------------------------------------------------------------------

    async def _identify(self, arrival: Arrival, dom: Any) -> None:
        if arrival.identity is None:
            arrival.identity = self._identity(arrival.uuid, dom)

    async def _arrived_cold(self, dom: Any, uuid: str, trigger: str, seen: float) -> None:
        import libvirt

        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return
        if state == arrival_steps.DOMAIN_RUNNING and reason == arrival_steps.RUNNING_MIGRATION_CANCELED:
            # libvirt also reports RESUMED/MIGRATED when a failed or cancelled migration resumes
            # the guest on its *source*: nothing arrived, nothing to announce.
            self._counters["cancelled_migrations"] += 1
            return
        await self._announce_cold(dom, uuid, trigger, seen, source="event")

    async def _announce_cold(self, dom: Any, uuid: str, trigger: str, seen: float | None, *, source: str) -> bool:
        """Whether it arrived now: False when the ledger has it already or it is gone meanwhile."""
        identity = self._identity(uuid, dom)
        if identity is not None and identity in self._ledger():
            self._counters["already_announced"] += 1
            return False
        xml = self._xml(dom)
        if xml is None:
            return False
        await self._table.expect(uuid, dom.name(), xml=xml, source=source, identity=identity)
        if self._table.entries.get(uuid) is None:
            return False
        arrival = self._table.arrive(uuid, dom.name(), trigger=trigger, seen=seen)
        if arrival is not None:
            self._record(arrival, dom, trigger)
        return True

    async def _device_added(self, entry: Arrival, dom: Any, alias: str) -> None:
        await asyncio.sleep(0)
        xml = self._xml(dom)
        if xml is None or self._table.entries.get(entry.uuid) is not entry:
            return
        # Re-plugged with the same MAC counts as new: the port behind it was just wired.
        await self._table.reconcile(entry.uuid, reread=True, trigger="device-added", renew_macs=_macs_with_alias(xml, alias))

    async def _catch_up(self, conn: Any) -> None:
        import libvirt

        known = set(self._table.entries)  # arrivals learnt after the listing are not judged by it
        try:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            log_event(self._log, logging.WARNING, "catch-up: cannot list domains", error=exc.get_error_message())
            return
        running = set()
        for dom in domains:
            await asyncio.sleep(0)  # let schedules in flight keep their timing
            try:
                uuid = dom.UUIDString()
                state, reason = dom.state()
            except libvirt.libvirtError:
                continue  # gone meanwhile
            running.add(uuid)
            if state != arrival_steps.DOMAIN_RUNNING:
                continue  # paused: still mid-migration or parked; its resume will tell
            entry = self._table.entries.get(uuid)
            if entry is not None and entry.phase in ("incoming", "parked"):
                # Its resume happened while we were disconnected.
                self._counters["caught_up"] += 1
                arrival = self._table.arrive(uuid, dom.name(), trigger="catch-up")
                if arrival is not None:
                    self._record(arrival, dom, "catch-up")
            elif entry is None and reason in (arrival_steps.RUNNING_MIGRATED, arrival_steps.RUNNING_POSTCOPY):
                if await self._announce_cold(dom, uuid, "catch-up", None, source="catch-up"):
                    self._counters["caught_up"] += 1
        for uuid in known - running:
            self._table.forget(uuid)  # stopped or left while we were not listening

    # ---- helpers -----------------------------------------------------------------------------

    def _record(self, arrival: Arrival, dom: Any, trigger: str) -> None:
        if arrival.identity is None:
            arrival.identity = self._identity(arrival.uuid, dom)
        if arrival.identity is not None:
            self._ledger().record(arrival.identity, domain=arrival.name, trigger=trigger)

    def _xml(self, dom: Any) -> str | None:
        import libvirt

        try:
            return str(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            log_event(self._log, logging.WARNING, "cannot read domain XML", domain=_name(dom),
                      error=exc.get_error_message())
            self._failed("libvirt")
            return None

    def _identity(self, uuid: str, dom: Any) -> str | None:
        import libvirt

        try:
            return arrival_identity(uuid, dom.ID(), dom.name(), pid_dir=self._pid_dir)
        except libvirt.libvirtError:
            return None

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("task failed", exc_info=task.exception())

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _trigger(event: int, detail: int) -> str:
    if event == arrival_steps.EVENT_RESUMED and detail == arrival_steps.RESUMED_POSTCOPY:
        return "resumed-postcopy"
    if event == arrival_steps.EVENT_RESUMED and detail == arrival_steps.RESUMED_MIGRATED:
        return "resumed-migrated"
    return "resumed-after-paused-migration"


def _name(dom: Any) -> str:
    try:
        return str(dom.name())
    except Exception:  # noqa: BLE001 - only used to word a log line
        return "?"


def _macs_with_alias(xml: str, alias: str) -> set[str]:
    from rarp_announce.mac import normalize_mac
    from rarp_announce.resolve.domxml import parse_domain

    macs: set[str] = set()
    for element in parse_domain(xml).iter("interface"):
        found = element.find("alias")
        mac = element.find("mac")
        if found is not None and found.get("name") == alias and mac is not None and mac.get("address"):
            try:
                macs.add(normalize_mac(mac.get("address", "")))
            except InputError:
                pass
    return macs
