"""The hook's standalone waiter: follow one incoming domain until it resumes here, announce it, exit.

The qemu hook starts it (`rarp-announce hook wait`) where no daemon takes the hand-off. It is
a daemon for one domain: the same arrival table, the same libvirt watch (reconnecting when
libvirtd restarts), the same OVSDB replica. It connects to libvirt only after the hook has
returned (libvirt waits for the hook: calling libvirt from inside it would deadlock), then
prepares everything while the migration runs: from the XML the hook saved, and again from the
live XML at STARTED/MIGRATED, so its first frame leaves inside the RESUMED callback.

One waiter per domain: it holds a lock on `WAITER_DIR/UUID.pid` for its life; a second one
for the same domain exits at once, and the hook's `stopped`/`release` for that domain ends it.
A failed or cancelled migration (STOPPED here), or its timeout, leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from rarp_announce.announce.arrivals import Arrival, ArrivalSettings, ArrivalTable, Observer
from rarp_announce.announce.engine import Announcer, FrameObserver
from rarp_announce.config import Config
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.model import FrameEvent, RefusedAddress, Resolution, Target
from rarp_announce.names import check_uuid
from rarp_announce.pids import wait_gone
from rarp_announce.resolve.domxml import MAX_XML_BYTES
from rarp_announce.transport.base import Sink
from rarp_announce.triggers import hookfiles
from rarp_announce.virt import arrival_steps
from rarp_announce.virt.arrival_steps import Step

_log = logging.getLogger("rarp_announce.waiter")

Outcome = Literal["announced", "gone", "ignored", "handed-off", "busy", "timeout", "failed"]
_TRIGGER = "hook-waiter"


@dataclass
class WaitResult:
    """How one wait ended."""

    outcome: Outcome
    detail: str
    targets: list[Target] = field(default_factory=list)
    frames: int = 0
    failed_frames: int = 0

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome in ("announced", "gone", "ignored", "handed-off", "busy") else 1


def state_step(state: int, reason: int) -> Step | None:
    """What a domain's current (state, reason) says when the waiter (re)connects.

    ARRIVED: it already runs here after the migration (the resume came while we were not
    listening). PARKED: paused here (still in the prepare phase, or arrived with
    VIR_MIGRATE_PAUSED): the next RESUMED is the arrival. None: keep waiting for events.
    """
    if state == arrival_steps.DOMAIN_RUNNING and reason in (
        arrival_steps.RUNNING_MIGRATED, arrival_steps.RUNNING_POSTCOPY, arrival_steps.RUNNING_UNPAUSED
    ):
        # UNPAUSED: it arrived paused and was resumed before we looked; the hook told us it is
        # an incoming migration, so this is still that arrival.
        return Step.ARRIVED
    if state == arrival_steps.DOMAIN_PAUSED:
        return Step.PARKED
    return None


class _Log(Observer):
    """The waiter's log lines (its stderr is the hook's log file)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.refused: set[RefusedAddress] = set()

    def resolved(self, arrival: Arrival, resolution: Resolution) -> None:
        for skipped in resolution.skipped:
            _log.info("domain %s: %s %s skipped: %s", self.label, skipped.kind, skipped.mac or "-", skipped.reason)
        for note in resolution.notes:
            _log.warning("domain %s: %s", self.label, note)
        for refused in resolution.refused:
            if refused not in self.refused:  # once: a waiter follows one arrival
                self.refused.add(refused)
                _log.warning("domain %s: address refused: %s %s (%s): %s: %s", self.label, refused.mac, refused.ip,
                             refused.source, refused.reason, refused.detail)

    def resolve_failed(self, arrival: Arrival, error: str) -> None:
        _log.warning("domain %s: cannot resolve: %s", self.label, error)

    def announced(self, arrival: Arrival, targets: list[Target], trigger: str, latency: float | None) -> None:
        for target in targets:
            _log.info("domain %s: announcing %s on %s vlan %s (%s)", self.label, target.mac, target.route,
                      target.vlan if target.vlan is not None else "-", trigger)

    def waiting(self, arrival: Arrival, target: Target, reason: str, timeout: float) -> None:
        _log.info("domain %s: %s on %s not ready (%s); waiting up to %g s", self.label, target.mac, target.route,
                  reason, timeout)

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None:
        _log.info("domain %s: %s on %s ready after %.3f s", self.label, target.mac, target.route, waited)

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None:
        _log.warning("domain %s: gave up on %s on %s after %g s: %s", self.label, target.mac, target.route, after, reason)

    def guest_announced(self, arrival: Arrival, problem: str | None) -> None:
        if problem is None:
            _log.info("domain %s: guest announce: QEMU took announce-self", self.label)
        else:
            _log.warning("domain %s: guest announce failed: %s", self.label, problem)


class Waiter:
    """Follows domain `uuid` on `uri` until it arrived and was announced, left, or `timeout` passed."""

    def __init__(self, uuid: str, *, name: str | None, uri: str, config: Config, sink: Sink,
                 timeout: float, xml: str | None = None, observers: Iterable[FrameObserver] = (),
                 open_connection: Any = None) -> None:
        self.uuid = check_uuid(uuid)
        self.name = name or self.uuid
        self.label = f"{name} ({self.uuid})" if name else self.uuid
        self.uri = uri
        self.config = config
        self.timeout = timeout
        self.hook_xml = xml
        self.result = WaitResult("timeout", f"domain {self.label} did not resume here within {timeout:g} s")
        self.announcer = Announcer(sink, observers=[*observers, self._count])
        self._open_connection = open_connection
        self._events: asyncio.Queue[tuple[int, int, Step]] = asyncio.Queue()
        self._connected: asyncio.Queue[Any] = asyncio.Queue()
        self.listening = asyncio.Event()  # set once libvirt's events reach us (tests wait for it)
        self.watcher: Any = None
        self.ovs: Any = None
        self.table: ArrivalTable | None = None

    def _count(self, event: FrameEvent) -> None:
        if event.type == "fdb":
            port = event.target.bridge_port
            where = port.label if port is not None else event.target.route
            if event.error:
                _log.warning("domain %s: bridge FDB for %s on %s not written (frames sent anyway): %s", self.label,
                             event.target.mac, where, event.error)
            else:
                _log.info("domain %s: bridge FDB for %s on %s: %s", self.label, event.target.mac, where, event.detail)
            return
        if event.error:
            self.result.failed_frames += 1
        else:
            self.result.frames += 1

    async def run(self) -> WaitResult:
        from rarp_announce.resolve.host import HostResolver
        from rarp_announce.virt.events import Watcher, register_event_loop

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        register_event_loop(loop)  # before any connection, or events are lost
        resolver = HostResolver(lambda: self.config, connection=self._conn,
                                openflow_port=self.announcer.sink.port_number)
        self.table = table = ArrivalTable(self.announcer, resolver, ArrivalSettings.from_config(self.config),
                                          observers=[_Log(self.label)])
        self.watcher = Watcher(
            self.uri, lifecycle=self._on_lifecycle, device_added=lambda *args: None,
            on_connected=lambda conn, first: self._connected.put_nowait(conn),
            keepalive_interval=self.config.daemon.keepalive_interval,
            keepalive_count=self.config.daemon.keepalive_count,
            reconnect_max=min(self.config.daemon.reconnect_max, 5.0),
            open_connection=self._open_connection,
        )
        self.watcher.start()
        # Listening to libvirt comes first (a short migration resumes within a second of the
        # hook); what the first arrival needs is loaded and prepared right after.
        await self.watcher.first_attempt
        ovs_start = None
        self.ovs = resolver.follow_ovs(table.ovs_changed)
        if self.ovs is not None:
            # Not awaited: until it answers, OVS ports wait for it (the table prepares again then).
            ovs_start = asyncio.ensure_future(self.ovs.start(timeout=min(2.0, self.timeout)))
        if self.hook_xml is not None and self.uuid not in table.entries:
            # Prepared from the hook's copy, usually before libvirt even defined the domain here.
            table.expect_soon(self.uuid, self.name, xml=self.hook_xml, source="hook")
        try:
            return await self._follow(table, deadline)
        finally:
            table.close()
            await self.watcher.stop()
            if self.ovs is not None:
                if ovs_start is not None:
                    ovs_start.cancel()
                self.ovs.close()

    def _conn(self) -> Any:
        return self.watcher.conn if self.watcher is not None else None

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        # On the loop thread, in libvirt's order: the table's first round leaves from here.
        try:
            if dom.UUIDString().lower() != self.uuid:
                return
            assert self.table is not None
            table = self.table
            entry = table.entries.get(self.uuid)
            step = arrival_steps.classify(event, detail, incoming=True, parked=entry is not None and entry.phase == "parked")
            if step is Step.ARRIVED:
                table.arrive(self.uuid, self.name, trigger=_TRIGGER, seen=time.monotonic())
            elif step is Step.INCOMING:
                table.incoming(self.uuid, self.name)
            elif step is Step.PARKED:
                table.park(self.uuid, self.name)
            self._events.put_nowait((event, detail, step))
        except Exception:  # noqa: BLE001 - a bad event must not kill the event loop
            _log.exception("domain %s: handling event %d/%d failed", self.label, event, detail)

    async def _follow(self, table: ArrivalTable, deadline: float) -> WaitResult:
        loop = asyncio.get_running_loop()
        while True:
            entry = table.entries.get(self.uuid)
            if entry is not None and entry.phase == "arrived":
                return await self._finish(table, entry, deadline)
            remaining = deadline - loop.time()
            if remaining <= 0:
                if self.watcher is not None and self.watcher.connects == 0:
                    return WaitResult("failed", f"cannot connect to libvirt at {self.uri}: {self.watcher.last_error}")
                return self.result
            getters = [asyncio.ensure_future(self._events.get()), asyncio.ensure_future(self._connected.get())]
            done, _pending = await asyncio.wait(getters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for getter in getters:
                getter.cancel()
            for finished in done:
                value = finished.result()
                if finished is getters[1]:
                    self.listening.set()
                    await self._look(table, value)
                elif value[2] is Step.GONE:
                    return WaitResult("gone", f"domain {self.label} stopped here before it resumed "
                                              "(migration failed or cancelled)")

    async def _look(self, table: ArrivalTable, conn: Any) -> None:
        """After each (re)connection: where is the domain now? A resume we missed is the arrival."""
        import libvirt

        try:
            state, reason = conn.lookupByUUIDString(self.uuid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                _log.warning("domain %s: cannot look it up: %s", self.label, exc.get_error_message())
            else:
                _log.info("domain %s: not defined here yet; waiting for its events", self.label)
            return
        _log.info("domain %s: found in state %d reason %d", self.label, state, reason)
        step = state_step(state, reason)
        if step is Step.PARKED:
            # Paused here (prepare phase, or a migration done paused): whichever resume comes
            # next, MIGRATED or UNPAUSED, is the arrival.
            table.park(self.uuid, self.name)
        elif step is Step.ARRIVED:  # the table ignores a second arrival
            table.arrive(self.uuid, self.name, trigger="hook-waiter-catch-up")

    async def _finish(self, table: ArrivalTable, entry: Arrival, deadline: float) -> WaitResult:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(table.settled(self.uuid), max(0.001, deadline - loop.time()))
        except asyncio.TimeoutError:
            pass
        window_end = table.ovs_window_end(entry)
        if self.ovs is not None and window_end is not None:
            # As the daemon does: an OVS port rewired into another VLAN within the wiring window
            # is announced again there (the table reconciles on each OVSDB change meanwhile).
            await self._watch_until(min(deadline, loop.time() + window_end - time.monotonic()))
            try:
                await asyncio.wait_for(table.settled(self.uuid), max(0.001, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass
        await self.announcer.drain()
        targets = list(entry.targets)
        result = self.result
        result.targets = targets
        if not targets and entry.resolution is not None:
            result.outcome, result.detail = "ignored", f"domain {self.label} resumed; nothing to announce"
            return result
        problems = {**entry.problems, **{key[1]: why for key, why in entry.gave_up.items()}}
        pending = entry.pending() + [t for t in targets if t.key in entry.gave_up]
        if not result.frames:
            route, reason = next(iter(problems.items()), ("-", "every frame failed"))
            result.outcome = "failed"
            result.detail = f"domain {self.label}: nothing announced: {route}: {reason}"
            return result
        result.outcome = "announced"
        routes = ", ".join(sorted({t.route for t in targets if t.key in entry.announced}))
        result.detail = (f"domain {self.label}: announced {len({t.mac for t in targets if t.key in entry.announced})} "
                         f"MAC(s) on {routes}: {result.frames} frame(s)")
        if pending:
            result.detail += "; not ready: " + "; ".join(
                f"{t.route}: {problems.get(t.route, 'not ready')}" for t in pending)
        return result


    async def _watch_until(self, until: float) -> None:
        """Keep listening until `until` (loop time), or until the domain leaves or stops here."""
        loop = asyncio.get_running_loop()
        while (remaining := until - loop.time()) > 0:
            try:
                _event, _detail, step = await asyncio.wait_for(self._events.get(), remaining)
            except asyncio.TimeoutError:
                return
            if step is Step.GONE:
                return


# ---- one waiter per domain ------------------------------------------------------------------------


@contextlib.contextmanager
def claim(waiter_dir: str, uuid: str) -> Iterator[bool]:
    """Hold `waiter_dir/UUID.pid` locked (POSIX record lock) for the waiter's life.

    Yields False when another live waiter holds it. The hook tests the same lock (posix.lockf)
    before it spawns a waiter, and reads the pid to end a waiter at `stopped`/`release`.
    waiter_dir must be root's alone (hookfiles.py: InputError otherwise), and its files are
    opened relative to it, never through a symlink.
    """
    dir_fd = hookfiles.open_waiter_dir(waiter_dir, create=True)
    assert dir_fd is not None
    try:
        fd = os.open(f"{uuid}.pid", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        os.close(dir_fd)
        raise AnnounceError(f"cannot open the waiter's lock {waiter_dir}/{uuid}.pid: {exc.strerror}") from None
    try:
        try:
            os.lockf(fd, os.F_TLOCK, 0)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                yield False
                return
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            for name in (f"{uuid}.pid", f"{uuid}.xml"):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(fd)
        os.close(dir_fd)


def read_hook_xml(waiter_dir: str, uuid: str) -> str | None:
    """The domain XML the hook saved for this waiter, if any (removed once read)."""
    try:
        dir_fd = hookfiles.open_waiter_dir(waiter_dir, create=False)
    except AnnounceError as exc:
        _log.warning("not reading the hook's copy of the XML: %s", exc)
        return None
    if dir_fd is None:
        return None
    name = f"{uuid}.xml"
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            data = handle.read(MAX_XML_BYTES + 1)  # a bigger one is refused by the parse anyway
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def wait_for_process_exit(pid: int, limit: float = 5.0) -> bool:
    """Until `pid` is gone or a zombie (the hook has returned to libvirt); False on timeout."""
    # 5 ms polls: the waiter's head start on the resume is spent here.
    return wait_gone(pid, limit, interval=0.005)


def run(
    uuid: str,
    *,
    name: str | None,
    timeout: float,
    uri: str,
    config: Config,
    hook_pid: int | None = None,
    ask_daemon: str | None = None,
    waiter_dir: str | None = None,
) -> WaitResult:
    """The process entry of `rarp-announce hook wait`: one waiter per domain, then follow it."""
    from rarp_announce.transport.factory import open_sink

    uuid = check_uuid(uuid)
    if not timeout > 0:
        raise InputError(f"invalid --timeout {timeout!r}: expected a positive number of seconds")
    directory = waiter_dir or config.hook.waiter_dir
    with claim(directory, uuid) as mine:
        if not mine:
            return WaitResult("busy", f"another waiter already follows domain {uuid}: this one leaves it")
        xml = read_hook_xml(directory, uuid)
        if hook_pid is not None and hook_pid != os.getpid():
            if not wait_for_process_exit(hook_pid):
                _log.warning("hook pid %d still runs after 5 s; connecting to libvirt anyway", hook_pid)
        if ask_daemon and daemon_took(ask_daemon, uuid):
            return WaitResult("handed-off", f"the daemon at {ask_daemon} took the domain after all: it announces")

        async def main() -> WaitResult:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            # The hook's `stopped`/`release` ends us with SIGTERM: leave like a finished wait.
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            sink = open_sink(openflow_endpoint=config.ovs.endpoint)
            waiter = Waiter(uuid, name=name, uri=uri, config=config, sink=sink, timeout=timeout, xml=xml)
            work = asyncio.ensure_future(waiter.run())
            ended = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([work, ended], return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    return work.result()
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                why = "ended by the hook: the domain stopped here or left this host"
                if waiter.result.frames:
                    return WaitResult("announced", f"domain {waiter.label}: {waiter.result.frames} frame(s) sent; {why}",
                                      frames=waiter.result.frames, failed_frames=waiter.result.failed_frames)
                return WaitResult("gone", f"domain {waiter.label}: {why}")
            finally:
                ended.cancel()
                sink.close()

        return asyncio.run(main())


def daemon_took(control_socket: str, uuid: str, *, timeout: float = 1.0) -> bool:
    """Whether the daemon at `control_socket` follows this domain's arrival (False when unsure)."""
    from rarp_announce.control import request

    try:
        answer = request(control_socket, {"op": "claimed", "uuid": uuid}, timeout=timeout)
    except AnnounceError as exc:
        _log.info("could not ask the daemon whether it took the domain (%s): announcing here", exc)
        return False
    return answer.get("ok") is True and answer.get("claimed") is True


def setup_logging() -> logging.Logger:
    """stderr is the hook's log file: lines shaped like the hook's own, in UTC with milliseconds."""
    formatter = logging.Formatter(f"%(asctime)s.%(msecs)03dZ rarp-announce waiter[{os.getpid()}]: %(message)s",
                                  "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    package = logging.getLogger("rarp_announce")  # the waiter's, libvirt watch's and OVSDB's lines alike
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    return _log


def main(argv: list[str] | None = None) -> int:
    """What the hook runs: `python -m rarp_announce.triggers.waiter`, the options of `hook wait`.

    The hook's own entry, without the command line's framework: a migration of a small guest
    resumes within a second of `migrate begin`, and every 100 ms of start-up counts.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="rarp-announce hook wait", description=main.__doc__)
    parser.add_argument("--uuid", required=True)
    parser.add_argument("--name")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--connect")
    parser.add_argument("--config")
    parser.add_argument("--hook-pid", type=int)
    parser.add_argument("--ask-daemon")
    parser.add_argument("--waiter-dir")
    args = parser.parse_args(argv)
    return wait_main(args.uuid, name=args.name, timeout=args.timeout, connect=args.connect, config_path=args.config,
                     hook_pid=args.hook_pid, ask_daemon=args.ask_daemon, waiter_dir=args.waiter_dir)


def wait_main(uuid: str, *, name: str | None, timeout: float, connect: str | None, config_path: str | None,
              hook_pid: int | None, ask_daemon: str | None, waiter_dir: str | None) -> int:
    """One waiter with its log on stderr (the hook's log file), and its exit code; for `main` and
    `rarp-announce hook wait`. Errors are one log line, not a second copy on stderr."""
    from rarp_announce.config import libvirt_uri, load_config

    log = setup_logging()
    try:
        config = load_config(config_path)
        result = run(uuid, name=name, timeout=timeout, uri=libvirt_uri(connect, config), config=config,
                     hook_pid=hook_pid, ask_daemon=ask_daemon, waiter_dir=waiter_dir)
    except AnnounceError as error:
        log.error("error: %s", error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    log.info("%s: %s", result.outcome, result.detail)
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
