"""The announce engine: QEMU-style schedules over targets, on one asyncio loop.

Every announcement is one schedule over a set of targets; all targets of a round leave
together from one timer callback, so a thousand domains cost a thousand timers, not threads.
A target (MAC, route, VLAN) that is already being announced joins the running schedule
instead of starting a second one, whoever asked. A target's frames (its RARP, then a GARP or
NA per address) are built once, at prepare time, and leave back to back in every round.

A target on a Linux bridge (`bridge_port`) first has the bridge's FDB entry for its MAC pointed
at the guest's port, in the first round of each burst, right before its first frame: that round runs when
the guest runs here (the arrival), never earlier, since until then local traffic for the guest
must still go to the source. A refused write is reported like a failed frame; the frames go on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rarp_announce import frames as _frames
from rarp_announce.schedule import Schedule, Send
from rarp_announce.errors import DeviceError
from rarp_announce.mac import parse_mac
from rarp_announce.model import Frame, FrameEvent, Target, TargetKey
from rarp_announce.transport.base import Sink

_log = logging.getLogger("rarp_announce.announce")

FrameObserver = Callable[[FrameEvent], None]


def frames_for(target: Target) -> tuple[Frame, ...]:
    """The target's frames in the order they leave: RARP first, then one per address."""
    mac = parse_mac(target.mac)
    vlan = target.frame_vlan
    built = [Frame("rarp", _frames.rarp_frame(mac, vlan, target.priority))]
    for address in target.addresses:
        ip = ipaddress.ip_address(address.ip)
        if ip.version == 4:
            built.append(Frame("garp", _frames.garp_frame(mac, ip.packed, vlan, target.priority), address.ip))
        else:
            built.append(Frame("na", _frames.na_frame(mac, ip.packed, vlan, target.priority), address.ip))
    return tuple(built)


@dataclass(eq=False)
class Announcement:
    """One schedule in flight over its targets."""

    targets: list[Target]
    frames: list[tuple[Frame, ...]]  # each target's frames, built once, in the order they leave
    trigger: str
    domain: str | None
    started: float
    sends: list[Send]
    done: asyncio.Future[None]
    next_index: int = 0
    _timer: asyncio.TimerHandle | None = None

    @property
    def finished(self) -> bool:
        return self.done.done()


class Announcer:
    """Runs QEMU-style schedules for targets on the running loop, writing to one sink."""

    def __init__(self, sink: Sink, *, observers: Iterable[FrameObserver] = ()) -> None:
        self.sink = sink
        self.observers: list[FrameObserver] = list(observers)
        self._prepared: dict[Target, tuple[Frame, ...]] = {}
        self._running: dict[TargetKey, Announcement] = {}
        self._announcements: set[Announcement] = set()

    async def prepare(self, targets: Iterable[Target]) -> dict[str, str]:
        """Build frames and ready the sink ahead of time; returns {route: problem} for those not ready."""
        problems: dict[str, str] = {}
        for target in targets:
            built = self._prepared.get(target)
            if built is None:
                built = self._prepared[target] = frames_for(target)
            if target.route in problems:
                continue
            try:
                await self.sink.prepare(target, [frame.data for frame in built])
            except DeviceError as exc:
                problems[target.route] = exc.reason
        return problems

    def release(self, targets: Iterable[Target]) -> None:
        """Forget frames prepared for targets that will not be announced after all."""
        for target in targets:
            self._prepared.pop(target, None)

    def announce(
        self,
        targets: Iterable[Target],
        schedule: Schedule,
        *,
        trigger: str = "manual",
        domain: str | None = None,
    ) -> Announcement | None:
        """Start one schedule for the targets not already running; the first round leaves now.

        Returns the new announcement, or None when every target joined a running one.
        """
        loop = asyncio.get_running_loop()
        fresh: list[Target] = []
        built: list[tuple[Frame, ...]] = []
        seen: set[TargetKey] = set()
        for target in targets:
            # Popped even for a target that joins a running schedule: release() only sees the
            # targets of the current resolution, so frames left here could stay for good.
            prepared = self._prepared.pop(target, None)
            if target.key in self._running or target.key in seen:
                continue
            seen.add(target.key)
            fresh.append(target)
            built.append(prepared if prepared is not None else frames_for(target))
        if not fresh:
            return None
        announcement = Announcement(
            targets=fresh,
            frames=built,
            trigger=trigger,
            domain=domain,
            started=loop.time(),
            sends=schedule.sends(),
            done=loop.create_future(),
        )
        for target in fresh:
            self._running[target.key] = announcement
        self._announcements.add(announcement)
        self._fire(announcement)
        return announcement

    def running(self, target: Target) -> Announcement | None:
        return self._running.get(target.key)

    @property
    def in_flight(self) -> list[Announcement]:
        return [a for a in self._announcements if not a.finished]

    def cancel(self, announcement: Announcement) -> None:
        if announcement._timer is not None:
            announcement._timer.cancel()
        self._finish(announcement)

    def cancel_all(self) -> None:
        for announcement in list(self._announcements):
            self.cancel(announcement)

    async def drain(self) -> None:
        """Wait until every announcement in flight has sent its last round."""
        while self._announcements:
            await asyncio.gather(*(a.done for a in list(self._announcements)))

    def _fire(self, announcement: Announcement) -> None:
        loop = asyncio.get_running_loop()
        send = announcement.sends[announcement.next_index]
        t = loop.time() - announcement.started
        # Each burst starts with the FDB step (--repeat is for fabrics that need longer: the
        # guest's MAC may have been learned elsewhere again meanwhile); usually "already there".
        first = send.round == 1
        try:
            for target, built in zip(announcement.targets, announcement.frames):
                if first and target.bridge_port is not None:
                    self._claim(target, t, send.burst, send.round, announcement.trigger, announcement.domain)
                for frame in built:
                    if announcement.finished:  # an observer cancelled it mid-round
                        return
                    error = self._send_one(target, frame.data)
                    self._notify(FrameEvent(t, target, send.burst, send.round, announcement.trigger,
                                            announcement.domain, error, frame.type, frame.address))
        finally:
            # Whatever went wrong above, the schedule goes on: a stalled chain never finishes and
            # would leave its targets "running" for good, so they could never be announced again.
            announcement.next_index += 1
            if not announcement.finished:
                if announcement.next_index < len(announcement.sends):
                    due = announcement.started + announcement.sends[announcement.next_index].offset
                    announcement._timer = loop.call_at(due, self._fire, announcement)
                else:
                    self._finish(announcement)

    def claim(self, targets: Iterable[Target], *, trigger: str, domain: str | None = None) -> None:
        """The bridge FDB and SVI neighbour step alone, now, for targets already announced before
        their Linux bridge port was known (a hook's migratable XML names no tap: libvirt drops
        auto-named <target dev>), which the caller has prepared; reported like the step of a first
        round."""
        for target in targets:
            if target.bridge_port is not None:
                self._claim(target, 0.0, 1, 1, trigger, domain)

    def _claim(self, target: Target, t: float, burst: int, round_: int, trigger: str, domain: str | None) -> None:
        detail: str | None = None
        error: str | None = None
        try:
            detail = self.sink.claim(target)
        except DeviceError as exc:
            error = exc.reason
        except Exception as exc:  # a sink's own bug: the FDB step lost, never the frames after it
            _log.warning("bridge FDB step failed on %s: %r", target.route, exc)
            error = f"{type(exc).__name__}: {exc}"
        self._notify(FrameEvent(t, target, burst, round_, trigger, domain, error, "fdb", None, detail))

    def _send_one(self, target: Target, frame: bytes) -> str | None:
        try:
            self.sink.send(target, frame)
        except DeviceError as exc:
            return exc.reason
        except Exception as exc:  # a sink's own bug or a full disk: one frame lost, not the schedule
            _log.warning("sink failed on %s: %r", target.route, exc)
            return f"{type(exc).__name__}: {exc}"
        return None

    def _notify(self, event: FrameEvent) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception:  # a broken observer (metrics, a closed pipe) must not stop frames
                _log.exception("frame observer %r failed", observer)

    def _finish(self, announcement: Announcement) -> None:
        for target in announcement.targets:
            if self._running.get(target.key) is announcement:
                del self._running[target.key]
        self._announcements.discard(announcement)
        if not announcement.done.done():
            announcement.done.set_result(None)
