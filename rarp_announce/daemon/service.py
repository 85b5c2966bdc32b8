"""The daemon: libvirt events and hook hand-offs in, announcements out, all on one asyncio loop.

Per domain it follows one arrival at a time (REFERENCE section 3):

- STARTED/MIGRATED or a hook hand-off (prepare phase): resolve the domain XML to targets, open
  their devices and build their frames, so nothing is left to do at the resume but send;
- the first RESUMED/MIGRATED or RESUMED/POSTCOPY (or, for a migration done paused, the first
  resume): the first round leaves inside the libvirt callback, before any libvirt call; then
  the live XML is read again and, if it changed, targets it gained are announced too;
- a target whose device is missing or down is retried every `retry_interval` seconds for
  `retry_timeout` seconds, then given up with a log line;
- DEVICE_ADDED within `device_added_window` seconds of an arrival announces that interface
  (OpenStack plugs SR-IOV VFs back in after the resume).

The ledger (ledger.py) makes each arrival announced once across restarts of the daemon and of
libvirtd; after every (re)connection the running domains are caught up against it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from rarp_announce import arrivals
from rarp_announce.announcer import Announcer, Target
from rarp_announce.arrivals import Step
from rarp_announce.config import Config, load_config
from rarp_announce.daemon.control import ControlServer
from rarp_announce.daemon.ledger import QEMU_PID_DIR, Ledger, arrival_identity
from rarp_announce.daemon.logs import LOGGER, log_announcement, log_event
from rarp_announce.daemon.metrics import Metrics
from rarp_announce.daemon.watch import Watcher, register_event_loop
from rarp_announce.errors import InputError
from rarp_announce.transport import RawSocketSink, Sink, device_state

Key = tuple[str, str, "int | None"]
_RERESOLVE_EVERY = 2.0  # seconds between live-XML re-reads while a target waits for its device


@dataclass(eq=False)
class Arrival:
    """What the daemon knows about one domain's current arrival on this host."""

    name: str
    uuid: str
    incoming: bool = False  # prepare phase seen, not announced yet
    parked: bool = False  # arrived paused: announce at the first resume
    source: str = "event"  # what told us it was coming: event, hook, catch-up
    xml: str | None = None
    targets: list[Target] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    identity: str | None = None
    arrived_at: float | None = None  # monotonic time of its announcement
    announced: set[Key] = field(default_factory=set)
    preparing: asyncio.Task[bool] | None = None
    retry: asyncio.Task[None] | None = None

    @property
    def prepared(self) -> bool:
        return self.xml is not None


class Daemon:
    """One daemon: a libvirt watcher, an announcer, a control socket, a ledger and metrics."""

    def __init__(
        self,
        config: Config,
        *,
        uri: str,
        config_path: str | None = None,
        control_socket: str | None = None,
        state_dir: str | None = None,
        metrics_address: str | None = None,
        sink: Sink | None = None,
        pid_dir: str = QEMU_PID_DIR,
        open_connection: Any = None,
    ) -> None:
        self.config = config
        self.uri = uri
        self.config_path = config_path
        self.control_socket = control_socket or config.daemon.control_socket
        self.state_dir = state_dir or config.daemon.state_dir
        self.metrics_address = metrics_address if metrics_address is not None else config.daemon.metrics
        self.pid_dir = pid_dir
        self.log = logging.getLogger(LOGGER)
        self.metrics = Metrics()
        self.sink = sink or RawSocketSink()
        self.announcer = Announcer(self.sink, observers=[self.metrics.observe_frame])
        self.metrics.in_flight.set_function(lambda: len(self.announcer.in_flight))  # counted at scrape time
        self.ledger = Ledger(self.state_dir, load=False)  # read at start(), not at construction
        self.arrivals: dict[str, Arrival] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.counters: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []  # event -> first round sent, seconds (kept for the benchmark)
        self.started = time.time()
        self._open_connection = open_connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.watcher: Watcher | None = None
        self.control: ControlServer | None = None

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, connect (or start waiting for libvirtd); returns after the first connection attempt."""
        self._loop = asyncio.get_running_loop()
        if self._stopped is None:
            self._stopped = asyncio.Event()
        self.ledger = Ledger(self.state_dir)
        register_event_loop(self._loop)  # before any connection, or events are lost
        self.control = ControlServer(self.control_socket, self.handle_request)
        await self.control.start()
        if self.metrics_address:
            self.metrics.serve(self.metrics_address)
        daemon_config = self.config.daemon
        self.watcher = Watcher(
            self.uri,
            lifecycle=self.on_lifecycle,
            device_added=self.on_device_added,
            on_connected=self.on_connected,
            on_state=self._connection_state,
            keepalive_interval=daemon_config.keepalive_interval,
            keepalive_count=daemon_config.keepalive_count,
            reconnect_max=daemon_config.reconnect_max,
            open_connection=self._open_connection,
        )
        self.watcher.start()
        await self.watcher.first_attempt
        # What exists now (modules, the connection) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause the loop for milliseconds.
        gc.freeze()
        log_event(self.log, logging.INFO, "daemon ready", uri=self.uri, control_socket=self.control_socket,
                  state_dir=self.state_dir, metrics=self.metrics_address)

    async def run(self, *, notify: bool = True) -> None:
        """Start, tell systemd we are ready, serve until SIGTERM/SIGINT; SIGHUP reloads the config."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        if notify:
            sd_notify("READY=1\nSTATUS=watching " + self.uri)
        try:
            assert self._stopped is not None
            await self._stopped.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if notify:
                sd_notify("STOPPING=1")
            await self.stop()

    def request_stop(self) -> None:
        log_event(self.log, logging.INFO, "stopping")
        if self._stopped is not None:
            self._stopped.set()

    async def stop(self) -> None:
        """Cancel schedules and retries, close the connection, socket, devices and ledger."""
        self.announcer.cancel_all()
        for arrival in self.arrivals.values():
            if arrival.retry is not None:
                arrival.retry.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.control is not None:
            await self.control.close()
        self.metrics.close()
        self.sink.close()
        self.ledger.close()

    def reload(self) -> None:
        """SIGHUP: read the config file again; a broken file keeps the running config."""
        try:
            config = load_config(self.config_path)
        except InputError as exc:
            log_event(self.log, logging.ERROR, "config reload failed; keeping the running config", error=str(exc))
            self.counters["reload_failures"] += 1
            return
        old = self.config.daemon
        self.config = config
        self.counters["reloads"] += 1
        needs_restart = [
            name for name in ("control_socket", "state_dir", "metrics")
            if getattr(old, name) != getattr(config.daemon, name)
        ]
        if self.watcher is not None:
            self.watcher.reconnect_max = config.daemon.reconnect_max
        log_event(self.log, logging.INFO, "config reloaded", path=self.config_path or "defaults",
                  restart_needed_for=",".join(needs_restart) or None)

    # ---- libvirt callbacks (run on the loop thread) -------------------------------------------

    def on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any = None) -> None:
        """libvirt's lifecycle callback: decide with arrivals.classify, act without delay."""
        seen = time.monotonic()
        try:
            self._lifecycle(dom, event, detail, seen)
        except Exception:  # libvirt would only print it: log it, keep serving every other domain
            self.log.exception("handling lifecycle event %s/%s failed", event, detail)

    def _lifecycle(self, dom: Any, event: int, detail: int, seen: float) -> None:
        uuid = dom.UUIDString()
        arrival = self.arrivals.get(uuid)
        step = arrivals.classify(
            event, detail,
            incoming=arrival is not None and arrival.incoming,
            parked=arrival is not None and arrival.parked,
        )
        if step is Step.IGNORE:
            return
        if step is Step.INCOMING:
            if arrival is None or not arrival.incoming:
                # A new arrival; but one the hook handed off already is this same arrival, kept
                # prepared from the hook's XML while the live XML is read.
                self._forget(uuid)
                arrival = self.arrivals[uuid] = Arrival(dom.name(), uuid, incoming=True)
            # A task, so no libvirt call is made from inside libvirt's own callback.
            arrival.preparing = self._spawn(self._prepare_from_domain(arrival, dom), f"prepare {arrival.name}")
        elif step is Step.PARKED:
            assert arrival is not None
            arrival.incoming, arrival.parked = False, True
        elif step is Step.ARRIVED:
            if arrival is None:
                arrival = self.arrivals[uuid] = Arrival(dom.name(), uuid)
            elif arrival.arrived_at is not None and not arrival.incoming and not arrival.parked:
                self.counters["duplicate_resumes"] += 1  # postcopy, then migrated: one arrival
                return
            self._arrive(arrival, dom, trigger=_trigger(event, detail), seen=seen)
        elif step is Step.GONE:
            self._forget(uuid)

    def on_device_added(self, conn: Any, dom: Any, alias: str, opaque: Any = None) -> None:
        """libvirt's DEVICE_ADDED callback: a vNIC plugged in shortly after an arrival is announced."""
        try:
            arrival = self.arrivals.get(dom.UUIDString())
        except Exception:
            self.log.exception("handling device-added event failed")
            return
        if arrival is None or arrival.arrived_at is None:
            return
        if time.monotonic() - arrival.arrived_at > self.config.daemon.device_added_window:
            return
        self._spawn(self._device_added(arrival, dom, alias), f"device-added {arrival.name}")

    def on_connected(self, conn: Any, first: bool) -> None:
        """After every (re)connection: catch up with arrivals whose resume we could have missed."""
        self._spawn(self._catch_up(conn), "catch-up")

    def _connection_state(self, up: bool) -> None:
        self.metrics.connected.set(1 if up else 0)
        if up and self.watcher is not None and self.watcher.connects > 1:
            self.metrics.reconnects.inc()

    # ---- the arrival path -------------------------------------------------------------------------

    async def _prepare_from_domain(self, arrival: Arrival, dom: Any) -> bool:
        await asyncio.sleep(0)
        if self.arrivals.get(arrival.uuid) is not arrival:
            return False  # superseded
        xml = self._domain_xml(dom, arrival)
        if xml is None:
            return False
        arrival.identity = self._identity(arrival, dom)
        return await self._prepare(arrival, xml)

    async def _prepare(self, arrival: Arrival, xml: str) -> bool:
        """Resolve `xml`, open devices, build frames; False when the XML is unusable."""
        try:
            resolution = await self._resolve(xml)
        except InputError as exc:
            log_event(self.log, logging.ERROR, "cannot resolve domain XML", domain=arrival.name, error=str(exc))
            self.metrics.failure("bad_xml")
            return False
        problems = dict(resolution.problems)
        problems.update(self.announcer.prepare(t for t in resolution.targets if t.device not in problems))
        arrival.xml = xml
        arrival.targets = resolution.targets
        arrival.problems = problems
        for skipped in resolution.skipped:
            log_event(self.log, logging.INFO, "not announced", domain=arrival.name, mac=skipped.mac,
                      kind=skipped.kind, interface=skipped.interface, reason=skipped.reason)
        return True

    def _arrive(self, arrival: Arrival, dom: Any, *, trigger: str, seen: float | None) -> None:
        arrival.incoming = arrival.parked = False
        arrival.arrived_at = time.monotonic()
        if arrival.prepared:
            self._announce_arrival(arrival, dom, trigger=trigger, seen=seen, fast=True)
        else:
            self._spawn(self._arrive_unprepared(arrival, dom, trigger, seen), f"arrive {arrival.name}")

    async def _arrive_unprepared(self, arrival: Arrival, dom: Any, trigger: str, seen: float | None) -> None:
        """Nothing prepared yet: wait for a prepare in flight, or resolve now (the daemon started
        mid-migration or missed the prepare phase), checking the ledger first since a previous
        daemon may have announced this very arrival."""
        if arrival.preparing is not None and not arrival.preparing.done():
            await asyncio.wait([arrival.preparing])
        if not arrival.prepared:
            if self._migration_cancelled(dom):
                # libvirt also reports RESUMED/MIGRATED when a failed or cancelled migration
                # resumes the guest on its *source*: nothing arrived, nothing to announce.
                self.counters["cancelled_migrations"] += 1
                self._forget(arrival.uuid)
                return
            xml = self._domain_xml(dom, arrival)
            if xml is None:
                return
            arrival.identity = self._identity(arrival, dom)
            if arrival.identity is not None and arrival.identity in self.ledger:
                self.counters["already_announced"] += 1
                return
            if not await self._prepare(arrival, xml):
                return
        if self.arrivals.get(arrival.uuid) is arrival:
            self._announce_arrival(arrival, dom, trigger=trigger, seen=seen, fast=False)

    def _announce_arrival(self, arrival: Arrival, dom: Any, *, trigger: str, seen: float | None, fast: bool) -> None:
        ready = [t for t in arrival.targets if t.device not in arrival.problems]
        self._announce(arrival, ready, trigger, seen=seen)
        # Everything below happens after the first round has left.
        if arrival.identity is None and dom is not None:
            arrival.identity = self._identity(arrival, dom)
        if arrival.identity is not None:
            self.ledger.record(arrival.identity, domain=arrival.name, trigger=trigger)
        if fast and dom is not None:
            self._spawn(self._recheck_xml(arrival, dom, trigger), f"recheck {arrival.name}")
        else:
            self._retry_if_pending(arrival, trigger)

    async def _recheck_xml(self, arrival: Arrival, dom: Any, trigger: str) -> None:
        """Re-resolve after the resume when the live XML differs from the one prepared."""
        await asyncio.sleep(0)
        if self.arrivals.get(arrival.uuid) is not arrival:
            return
        xml = self._domain_xml(dom, arrival)
        if xml is None or xml == arrival.xml:
            self._retry_if_pending(arrival, trigger)
            return
        self.counters["xml_changed"] += 1
        if await self._prepare(arrival, xml):
            fresh = [t for t in arrival.targets if t.key not in arrival.announced and t.device not in arrival.problems]
            self._announce(arrival, fresh, trigger)
            self._retry_if_pending(arrival, trigger)

    async def _device_added(self, arrival: Arrival, dom: Any, alias: str) -> None:
        await asyncio.sleep(0)
        if self.arrivals.get(arrival.uuid) is not arrival:
            return
        xml = self._domain_xml(dom, arrival)
        if xml is None or not await self._prepare(arrival, xml):
            return
        macs = _macs_with_alias(xml, alias)
        chosen = [t for t in arrival.targets if t.mac in macs or t.key not in arrival.announced]
        ready = [t for t in chosen if t.device not in arrival.problems]
        # Re-plugged with the same MAC counts as new: the port behind it was just wired.
        arrival.announced.difference_update(t.key for t in chosen)
        self._announce(arrival, ready, "device-added")
        self._retry_if_pending(arrival, "device-added")

    def _announce(self, arrival: Arrival, targets: list[Target], trigger: str, *, seen: float | None = None) -> None:
        if not targets:
            return
        self.announcer.announce(targets, self.config.schedule, trigger=trigger, domain=arrival.name)
        if seen is not None:
            latency = time.monotonic() - seen
            self.latencies.append(latency)
            self.metrics.latency.observe(latency)
        arrival.announced.update(t.key for t in targets)
        for kind in {t.kind for t in targets}:
            self.metrics.announcements.labels(trigger, kind).inc()
        self.counters["announcements"] += 1
        now = time.time()
        for target in targets:
            log_announcement(self.log, target, domain=arrival.name, trigger=trigger)
            self.recent.append({"time": round(now, 3), "domain": arrival.name, "mac": target.mac,
                                "device": target.device, "vlan": target.vlan, "kind": target.kind,
                                "trigger": trigger})

    # ---- targets not ready --------------------------------------------------------------------------

    def _pending(self, arrival: Arrival) -> list[Target]:
        return [t for t in arrival.targets if t.key not in arrival.announced and t.device in arrival.problems]

    def _retry_if_pending(self, arrival: Arrival, trigger: str) -> None:
        if self._pending(arrival) and (arrival.retry is None or arrival.retry.done()):
            arrival.retry = self._spawn(self._retry(arrival, trigger), f"retry {arrival.name}")

    async def _retry(self, arrival: Arrival, trigger: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.daemon.retry_timeout
        next_resolve = loop.time() + _RERESOLVE_EVERY
        for target in self._pending(arrival):
            log_event(self.log, logging.WARNING, "device not ready; retrying", domain=arrival.name, mac=target.mac,
                      device=target.device, vlan=target.vlan, reason=arrival.problems.get(target.device),
                      timeout=self.config.daemon.retry_timeout)
        self.metrics.pending.inc(len(self._pending(arrival)))
        try:
            while self._pending(arrival):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    for target in self._pending(arrival):
                        log_event(self.log, logging.ERROR, "gave up", domain=arrival.name, mac=target.mac,
                                  device=target.device, vlan=target.vlan, reason=arrival.problems.get(target.device),
                                  after=self.config.daemon.retry_timeout)
                        self.metrics.failure("gave_up")
                        self.counters["gave_up"] += 1
                    return
                await asyncio.sleep(min(self.config.daemon.retry_interval, remaining))
                if self.arrivals.get(arrival.uuid) is not arrival:
                    return
                before = len(self._pending(arrival))
                if loop.time() >= next_resolve:
                    # The live XML may now name another device (a network's bridge, a VF's PF).
                    next_resolve = loop.time() + _RERESOLVE_EVERY
                    xml = self._live_xml(arrival) or arrival.xml
                    if xml is not None:
                        await self._prepare(arrival, xml)
                else:
                    self._recheck_devices(arrival)  # one ioctl per device: cheap for hundreds of domains
                ready = [t for t in arrival.targets if t.key not in arrival.announced and t.device not in arrival.problems]
                self._announce(arrival, ready, "retry")
                self.metrics.pending.dec(max(0, before - len(self._pending(arrival))))
        finally:
            self.metrics.pending.dec(len(self._pending(arrival)))

    def _recheck_devices(self, arrival: Arrival) -> None:
        for device in {t.device for t in self._pending(arrival)}:
            problem = device_state(device)
            if problem is None:
                problem = self.announcer.prepare(t for t in arrival.targets if t.device == device).get(device)
            if problem is None:
                arrival.problems.pop(device, None)
            else:
                arrival.problems[device] = problem

    # ---- catch-up after (re)connecting --------------------------------------------------------------

    async def _catch_up(self, conn: Any) -> None:
        import libvirt

        known = set(self.arrivals)  # arrivals learnt after the listing are not judged by it
        try:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            log_event(self.log, logging.WARNING, "catch-up: cannot list domains", error=exc.get_error_message())
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
            arrival = self.arrivals.get(uuid)
            if state != arrivals.DOMAIN_RUNNING:
                continue  # paused: still mid-migration or parked; its resume will tell
            if arrival is not None and (arrival.incoming or arrival.parked):
                pass  # its resume happened while we were disconnected
            elif arrival is None and reason in (arrivals.RUNNING_MIGRATED, arrivals.RUNNING_POSTCOPY):
                arrival = Arrival(dom.name(), uuid, source="catch-up")
                xml = self._domain_xml(dom, arrival)
                if xml is None:
                    continue
                arrival.identity = self._identity(arrival, dom)
                if arrival.identity in self.ledger:
                    continue
                self.arrivals[uuid] = arrival
                if not await self._prepare(arrival, xml):
                    continue
            else:
                continue
            self.counters["caught_up"] += 1
            self._arrive(arrival, dom, trigger="catch-up", seen=None)
        for uuid in known - running:
            self._forget(uuid)  # stopped or left while we were not listening

    # ---- hand-offs and status over the control socket -----------------------------------------------

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "status":
            return {"ok": True, "status": self.status()}
        if op == "handoff":
            return await self._handoff(request)
        if op == "claimed":
            # A hook whose hand-off timed out asks this before its waiter announces on its own:
            # the daemon may have taken the domain after all, and one arrival is announced once.
            uuid = request.get("uuid")
            if not isinstance(uuid, str) or not uuid:
                return {"ok": False, "error": 'claimed needs a non-empty string "uuid"'}
            return {"ok": True, "claimed": uuid.lower() in self.arrivals}
        return {"ok": False, "error": f"unknown op {str(op)[:40]!r}: expected ping, status, handoff or claimed"}

    async def _handoff(self, request: dict[str, Any]) -> dict[str, Any]:
        domain, uuid, xml = request.get("domain"), request.get("uuid"), request.get("xml")
        for key, value in (("domain", domain), ("uuid", uuid), ("xml", xml)):
            if not isinstance(value, str) or not value:
                return {"ok": False, "error": f'handoff needs a non-empty string "{key}"'}
        assert isinstance(domain, str) and isinstance(uuid, str) and isinstance(xml, str)
        uuid = uuid.lower()
        current = self.arrivals.get(uuid)
        if current is not None and current.incoming and current.xml == xml:
            return {"ok": True}  # the STARTED/MIGRATED event got here first with the same XML
        arrival = Arrival(domain, uuid, incoming=True, source=str(request.get("source") or "handoff")[:20])
        try:
            from rarp_announce.resolve import resolve_xml

            resolution = resolve_xml(xml, self.config, check_host=False)
        except InputError as exc:
            return {"ok": False, "error": str(exc)}
        if resolution.uuid and resolution.uuid.lower() != uuid:
            return {"ok": False, "error": f"uuid {uuid} does not match the XML's <uuid> {resolution.uuid}"}
        self._forget(uuid)
        self.arrivals[uuid] = arrival
        arrival.preparing = self._spawn(self._prepare(arrival, xml), f"prepare {domain}")
        self.counters["handoffs"] += 1
        return {"ok": True}

    def status(self) -> dict[str, Any]:
        watcher = self.watcher
        now = time.monotonic()
        in_flight = [
            {"domain": a.domain, "trigger": a.trigger, "targets": len(a.targets),
             "elapsed": round(now - a.started, 3), "sends_left": len(a.sends) - a.next_index}
            for a in self.announcer.in_flight
        ]
        pending = [
            {"domain": a.name, "mac": t.mac, "device": t.device, "vlan": t.vlan, "reason": a.problems.get(t.device)}
            for a in self.arrivals.values() if a.retry is not None and not a.retry.done()
            for t in self._pending(a)
        ]
        return {
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "uri": self.uri,
            "config": self.config_path,
            "connection": {
                "state": watcher.state if watcher else "stopped",
                "since": round(watcher.since, 3) if watcher else None,
                "reconnects": watcher.reconnects if watcher else 0,
                "last_error": watcher.last_error if watcher else None,
            },
            "schedule": dataclasses.asdict(self.config.schedule),
            "incoming": sorted(a.name for a in self.arrivals.values() if a.incoming),
            "parked": sorted(a.name for a in self.arrivals.values() if a.parked),
            "in_flight": in_flight,
            "pending": pending,
            "last_announcements": list(self.recent)[-20:],
            "counters": dict(self.counters),
            "ledger_entries": len(self.ledger),
        }

    # ---- helpers ----------------------------------------------------------------------------------------

    async def _resolve(self, xml: str):
        """resolve_xml on the loop thread (its libvirt look-ups must stay there), with devices
        checked by one ioctl each (transport.device_state): pyroute2's blocking API cannot run
        inside a running loop, and in a worker thread it leaves cyclic garbage whose collection
        stalled schedules by 30-80 ms in the 1,000-domain benchmark."""
        from rarp_announce.resolve import resolve_xml

        lookup = None
        conn = self.watcher.conn if self.watcher is not None else None
        if conn is not None:
            from rarp_announce.virt import network_bridge_lookup

            lookup = network_bridge_lookup(conn)
        resolution = resolve_xml(xml, self.config, network_bridge=lookup, check_host=False)
        for device in {t.device for t in resolution.targets}:
            problem = device_state(device)
            if problem:
                resolution.problems[device] = problem
        return resolution

    def _domain_xml(self, dom: Any, arrival: Arrival) -> str | None:
        import libvirt

        try:
            return dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            log_event(self.log, logging.WARNING, "cannot read domain XML", domain=arrival.name,
                      error=exc.get_error_message())
            self.metrics.failure("libvirt")
            return None

    def _migration_cancelled(self, dom: Any) -> bool:
        import libvirt

        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return False
        return state == arrivals.DOMAIN_RUNNING and reason == arrivals.RUNNING_MIGRATION_CANCELED

    def _live_xml(self, arrival: Arrival) -> str | None:
        import libvirt

        conn = self.watcher.conn if self.watcher is not None else None
        if conn is None:
            return None
        try:
            return conn.lookupByUUIDString(arrival.uuid).XMLDesc(0)
        except libvirt.libvirtError:
            return None

    def _identity(self, arrival: Arrival, dom: Any) -> str | None:
        import libvirt

        try:
            return arrival_identity(arrival.uuid, dom.ID(), arrival.name, pid_dir=self.pid_dir)
        except libvirt.libvirtError:
            return None

    def _forget(self, uuid: str) -> None:
        arrival = self.arrivals.pop(uuid, None)
        if arrival is not None and arrival.retry is not None:
            arrival.retry.cancel()

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s failed", task.get_name(), exc_info=task.exception())


def _trigger(event: int, detail: int) -> str:
    if event == arrivals.EVENT_RESUMED and detail == arrivals.RESUMED_POSTCOPY:
        return "resumed-postcopy"
    if event == arrivals.EVENT_RESUMED and detail == arrivals.RESUMED_MIGRATED:
        return "resumed-migrated"
    return "resumed-after-paused-migration"


def _macs_with_alias(xml: str, alias: str) -> set[str]:
    from rarp_announce.domxml import parse_domain
    from rarp_announce.mac import normalize_mac

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


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) how we are, through $NOTIFY_SOCKET; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(path)
        sock.sendall(message.encode())
    except OSError:
        return False
    finally:
        sock.close()
    return True
