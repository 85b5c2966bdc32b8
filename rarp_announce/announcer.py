"""The announce engine: what to announce, when and where, on one asyncio loop.

Every announcement is one schedule over a set of targets; all targets of a round leave
together from one timer callback, so a thousand domains cost a thousand timers, not threads.
A target (MAC, device, VLAN) that is already being announced joins the running schedule
instead of starting a second one, whoever asked (event, hook hand-off, CLI).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rarp_announce.errors import DeviceError
from rarp_announce.frames import rarp_frame
from rarp_announce.mac import parse_mac
from rarp_announce.schedule import Schedule, Send
from rarp_announce.transport import Sink

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One announcement destination: this MAC, leaving on this host device, in this VLAN."""

    mac: str  # lower-case, colon-separated
    device: str
    vlan: int | None = None
    kind: str = "manual"  # the libvirt interface type it came from
    interface: str = ""  # the vNIC's alias or target dev, for people reading logs
    priority: int = 0

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.mac, self.device, self.vlan)

    @functools.cached_property
    def frame(self) -> bytes:
        """Built on first use and kept: every round of every burst sends these same bytes."""
        return rarp_frame(parse_mac(self.mac), self.vlan, self.priority)


@dataclass(frozen=True)
class FrameEvent:
    """One frame that left (error None) or could not (error says why)."""

    t: float  # seconds since its announcement started
    target: Target
    burst: int
    round: int
    trigger: str
    domain: str | None
    error: str | None = None


@dataclass(eq=False)
class Announcement:
    targets: list[Target]
    schedule: Schedule
    trigger: str
    domain: str | None
    started: float
    sends: list[Send]
    done: asyncio.Future[None]
    next_index: int = 0
    failed: dict[tuple[str, str, int | None], str] = field(default_factory=dict)
    _timer: asyncio.TimerHandle | None = None

    @property
    def finished(self) -> bool:
        return self.done.done()


FrameObserver = Callable[[FrameEvent], None]


class Announcer:
    """Runs QEMU-style schedules for targets on the running loop, writing to one sink."""

    def __init__(self, sink: Sink, *, observers: Iterable[FrameObserver] = ()) -> None:
        self.sink = sink
        self.observers: list[FrameObserver] = list(observers)
        self._running: dict[tuple[str, str, int | None], Announcement] = {}
        self._announcements: set[Announcement] = set()

    def prepare(self, targets: Iterable[Target]) -> dict[str, str]:
        """Build frames and open devices ahead of time; returns {device: problem} for those not ready."""
        problems: dict[str, str] = {}
        for target in targets:
            target.frame  # noqa: B018 - builds the frame now, not in the first round
            if target.device in problems:
                continue
            try:
                self.sink.prepare(target.device)
            except DeviceError as exc:
                problems[target.device] = exc.reason
        return problems

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
        seen: set[tuple[str, str, int | None]] = set()
        for target in targets:
            if target.key in self._running or target.key in seen:
                continue
            seen.add(target.key)
            fresh.append(target)
        if not fresh:
            return None
        announcement = Announcement(
            targets=fresh,
            schedule=schedule,
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
        try:
            for target in announcement.targets:
                if announcement.finished:  # an observer cancelled it mid-round
                    break
                error = self._send_one(target)
                if error is not None:
                    announcement.failed[target.key] = error
                event = FrameEvent(t, target, send.burst, send.round, announcement.trigger, announcement.domain, error)
                self._notify(event)
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

    def _send_one(self, target: Target) -> str | None:
        try:
            self.sink.send(target.device, target.frame)
        except DeviceError as exc:
            return exc.reason
        except Exception as exc:  # a sink's own bug or a full disk: one frame lost, not the schedule
            _log.warning("sink failed on %s: %r", target.device, exc)
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
