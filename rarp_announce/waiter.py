"""The hook's standalone waiter: wait for one incoming domain to resume here, announce it, exit.

The qemu hook starts it (`rarp-announce hook wait`) where no daemon takes the hand-off. It runs
after the hook has returned (libvirt waits for the hook, so calling libvirt from inside it would
deadlock), listens to lifecycle events for that one UUID, decides with
`arrivals.classify` exactly as the daemon does, and gives up after its timeout so that a failed
or cancelled migration leaves nothing behind. A resume that happened before it connected is
caught from the domain's state reason (RUNNING_MIGRATED).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rarp_announce import arrivals
from rarp_announce.announcer import Announcer, FrameEvent, FrameObserver, Target
from rarp_announce.arrivals import Step
from rarp_announce.config import Config
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.pids import wait_gone
from rarp_announce.virt import error_message
from rarp_announce.transport import Sink

_log = logging.getLogger("rarp_announce.waiter")

_UUID_CHARS = frozenset("0123456789abcdef-")


@dataclass
class WaitResult:
    """How one wait ended: announced, gone (migration failed or cancelled), timeout or failed."""

    outcome: str
    detail: str
    targets: list[Target] = field(default_factory=list)
    frames: int = 0
    failed_frames: int = 0

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome in ("announced", "gone", "ignored", "handed-off") else 1


def check_uuid(text: str) -> str:
    """The UUID in canonical lower-case form, or InputError."""
    uuid = text.strip().lower()
    parts = uuid.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12] or not set(uuid) <= _UUID_CHARS:
        raise InputError(f"invalid --uuid {text!r}: expected a UUID such as 4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    return uuid


def state_step(state: int, reason: int) -> Step | None:
    """What a domain's current (state, reason) says when the waiter first looks at it.

    ARRIVED: it already runs here after the migration (the resume came before we connected).
    PARKED: it is paused here (still in the prepare phase, or arrived with VIR_MIGRATE_PAUSED);
    either way the next RESUMED is the arrival. None: anything else (keep waiting for events).
    """
    if state == arrivals.DOMAIN_RUNNING and reason in (arrivals.RUNNING_MIGRATED, arrivals.RUNNING_POSTCOPY, arrivals.RUNNING_UNPAUSED):
        # UNPAUSED: it arrived paused and was resumed before we looked; the hook told us it is
        # an incoming migration, so this is still that arrival.
        return Step.ARRIVED
    if state == arrivals.DOMAIN_PAUSED:
        return Step.PARKED
    return None


async def wait_for_arrival(
    conn: Any,
    uuid: str,
    config: Config,
    sink: Sink,
    *,
    timeout: float,
    name: str | None = None,
    observers: Iterable[FrameObserver] = (),
) -> WaitResult:
    """Wait (at most `timeout` s) for domain `uuid` to resume on `conn`'s host, then announce it.

    `conn` must have been opened after libvirt's event loop was bound to the running loop. The
    announcement uses the config's schedule and the resolver's targets for the live XML.
    """
    import libvirt

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    uuid = check_uuid(uuid)
    label = f"{name} ({uuid})" if name else uuid
    events: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def on_lifecycle(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        # Runs on libvirt's event thread or loop: only queue, never block or call libvirt here.
        try:
            if dom.UUIDString().lower() == uuid:
                loop.call_soon_threadsafe(events.put_nowait, (event, detail))
        except Exception:  # noqa: BLE001 - a bad event must not kill the event loop
            pass

    callback = conn.domainEventRegisterAny(None, arrivals.EVENT_ID_LIFECYCLE, on_lifecycle, None)
    try:
        parked = False
        step = None
        try:
            state, reason = conn.lookupByUUIDString(uuid).state()
            step = state_step(state, reason)
            _log.info("domain %s: found in state %d reason %d", label, state, reason)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                return WaitResult("failed", f"cannot look up domain {label}: {error_message(exc)}")
            _log.info("domain %s: not defined here yet; waiting for its events", label)
        if step is Step.PARKED:
            parked = True
        while step is not Step.ARRIVED:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return WaitResult("timeout", f"domain {label} did not resume here within {timeout:g} s")
            try:
                event, detail = await asyncio.wait_for(events.get(), remaining)
            except asyncio.TimeoutError:
                continue
            step = arrivals.classify(event, detail, incoming=True, parked=parked)
            if step is Step.PARKED:
                parked = True
            elif step is Step.GONE:
                return WaitResult("gone", f"domain {label} stopped here before it resumed (migration failed or cancelled)")
        return await _announce(conn, uuid, label, config, sink, observers, deadline=deadline)
    finally:
        try:
            conn.domainEventDeregisterAny(callback)
        except libvirt.libvirtError:
            pass


async def _announce(
    conn: Any,
    uuid: str,
    label: str,
    config: Config,
    sink: Sink,
    observers: Iterable[FrameObserver],
    *,
    deadline: float,
) -> WaitResult:
    import libvirt

    from rarp_announce.resolve import resolve_xml
    from rarp_announce.virt import lookup_domain, network_bridge_lookup

    try:
        xml = lookup_domain(conn, uuid).XMLDesc(0)
        # check_host=False: the resolver's netlink look-up runs its own asyncio loop, which cannot
        # nest in this one; the announcer's prepare() checks every device just the same.
        resolution = resolve_xml(xml, config, network_bridge=network_bridge_lookup(conn), check_host=False)
    except AnnounceError as exc:
        return WaitResult("failed", f"domain {label} resumed but cannot be resolved: {exc}")
    except libvirt.libvirtError as exc:
        return WaitResult("failed", f"domain {label} resumed but its XML cannot be read: {error_message(exc)}")
    for skipped in resolution.skipped:
        _log.info("domain %s: %s %s skipped: %s", label, skipped.kind, skipped.mac or "-", skipped.reason)
    if not resolution.targets:
        return WaitResult("ignored", f"domain {label} resumed; nothing to announce")
    result = WaitResult("announced", "", targets=list(resolution.targets))

    def count(event: FrameEvent) -> None:
        if event.error:
            result.failed_frames += 1
        else:
            result.frames += 1

    announcer = Announcer(sink, observers=[*observers, count])
    problems = {**resolution.problems, **announcer.prepare(resolution.ready)}
    ready = [t for t in resolution.targets if t.device not in problems]
    if ready:
        announcer.announce(ready, config.schedule, trigger="hook-waiter", domain=resolution.domain)
    waiting = [t for t in resolution.targets if t.device in problems]
    if waiting:
        await _retry(announcer, waiting, problems, label, resolution.domain, config, deadline)
    await announcer.drain()
    if not result.frames:
        result.outcome = "failed"
        device, reason = next(iter(problems.items()), ("-", "every frame failed"))
        result.detail = f"domain {label}: nothing announced: device {device!r}: {reason}"
        return result
    devices = ", ".join(sorted({t.device for t in result.targets if t.device not in problems}))
    result.detail = (
        f"domain {label}: announced {len({t.mac for t in result.targets})} MAC(s) on {devices}: "
        f"{result.frames} frame(s)"
    )
    if problems:
        result.detail += "; not ready: " + "; ".join(f"{d}: {r}" for d, r in sorted(problems.items()))
    return result


async def _retry(
    announcer: Announcer,
    waiting: list[Target],
    problems: dict[str, str],
    label: str,
    domain: str | None,
    config: Config,
    deadline: float,
) -> None:
    """Announce targets whose device was not ready as soon as it is (os-vif wires ports late)."""
    loop = asyncio.get_running_loop()
    until = min(deadline, loop.time() + config.daemon.retry_timeout)
    for device, reason in sorted(problems.items()):
        _log.info("domain %s: device %s not ready (%s); retrying for up to %g s", label, device, reason, until - loop.time())
    while waiting and loop.time() < until:
        await asyncio.sleep(config.daemon.retry_interval)
        now_ready = []
        for target in waiting:
            if not announcer.prepare([target]):
                now_ready.append(target)
        if now_ready:
            for target in now_ready:
                problems.pop(target.device, None)
            waiting = [t for t in waiting if t not in now_ready]
            announcer.announce(now_ready, config.schedule, trigger="hook-waiter-retry", domain=domain)


def wait_for_process_exit(pid: int, limit: float = 5.0) -> bool:
    """Poll until `pid` is gone or a zombie (the hook has returned to libvirt); False on timeout."""
    # 5 ms polls: the waiter's whole head start on the resume is spent here.
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
) -> WaitResult:
    """The process entry of `rarp-announce hook wait`: wait for the hook, connect, wait, announce."""
    from rarp_announce.daemon.watch import register_event_loop
    from rarp_announce.transport import RawSocketSink
    from rarp_announce.virt import open_connection

    uuid = check_uuid(uuid)
    if not timeout > 0:
        raise InputError(f"invalid --timeout {timeout!r}: expected a positive number of seconds")
    if hook_pid is not None and hook_pid != os.getpid():
        if not wait_for_process_exit(hook_pid):
            _log.warning("hook pid %d still runs after 5 s; connecting to libvirt anyway", hook_pid)
    if ask_daemon and daemon_took(ask_daemon, uuid):
        return WaitResult("handed-off", f"the daemon at {ask_daemon} took the domain after all: it announces")

    async def main() -> WaitResult:
        loop = asyncio.get_running_loop()
        register_event_loop(loop)
        deadline = loop.time() + timeout
        while True:
            # libvirtd may be restarting or busy: keep trying within the same deadline.
            try:
                conn = open_connection(uri)
                break
            except AnnounceError as exc:
                if loop.time() + 1.0 >= deadline:
                    raise
                _log.info("%s; retrying", exc)
                await asyncio.sleep(1.0)
        sink = RawSocketSink()
        try:
            remaining = max(deadline - loop.time(), 0.001)
            return await wait_for_arrival(conn, uuid, config, sink, timeout=remaining, name=name)
        finally:
            sink.close()
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing on the way out; nothing left to report to
                pass

    return asyncio.run(main())


def daemon_took(control_socket: str, uuid: str, *, timeout: float = 1.0) -> bool:
    """Whether the daemon at `control_socket` follows this domain's arrival (False when unsure)."""
    from rarp_announce.daemon.control import request

    try:
        answer = request(control_socket, {"op": "claimed", "uuid": uuid}, timeout=timeout)
    except AnnounceError as exc:
        _log.info("could not ask the daemon whether it took the domain (%s): announcing here", exc)
        return False
    return answer.get("ok") is True and answer.get("claimed") is True
