"""The libvirt connection: events on the asyncio loop, keepalive, close callback, reconnect.

libvirt accepts exactly one event implementation per process, registered before any
connection opens (or events are lost), and libvirtaio binds its implementation to one asyncio
loop. A daemon or a waiter runs one loop for its life, so `register_event_loop` registers
libvirtaio's implementation once, through its public API, and refuses a second loop: libvirt
would go on dispatching on the first one, dead or not, and the second would never hear an event.
Whatever needs loops of its own (tests, benchmarks) runs them in processes of their own.

libvirtaio's callbacks touch the loop without locks, so every libvirt call is made on the loop
thread. Calls to a local libvirtd take well under a millisecond; none is made between an event
and its first frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from rarp_announce.errors import AnnounceError

_log = logging.getLogger("rarp_announce.daemon")

CLOSE_REASONS = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "closed by client"}


class EventLoopTaken(RuntimeError):
    """libvirt's events already go to another asyncio loop of this process."""


def register_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Make libvirt dispatch its events on `loop`; call before opening any connection.

    Once per process: again with the same loop does nothing, with another loop raises
    EventLoopTaken (libvirt keeps its first implementation for the life of the process).
    """
    import libvirt
    import libvirtaio

    current = libvirtaio.getCurrentImpl()
    if current is not None:
        if current.loop is loop:
            return
        state = "closed" if current.loop.is_closed() else "still open"
        raise EventLoopTaken(
            f"libvirt's events already go to another asyncio loop of this process ({state}): libvirt "
            "accepts one event implementation per process, so run each loop that watches libvirt in a "
            "process of its own, or keep using the first loop"
        )
    try:
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    except RuntimeError as exc:  # libvirt-python: "Event loop is already registered", by other code
        # (one registered in C, virEventRegisterDefaultImpl, libvirt ignores with a logged warning:
        # nothing public tells it from here, so a process must not mix the two)
        raise EventLoopTaken(
            f"libvirt already has an event implementation in this process that is not ours ({exc}): "
            "rarp-announce needs libvirt's events on its asyncio loop; run it in a process of its own"
        ) from None
    # libvirt prints every error to stderr by default; the daemon reports its own way.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


LifecycleCallback = Callable[[Any, Any, int, int, Any], None]
DeviceAddedCallback = Callable[[Any, Any, str, Any], None]


class Watcher:
    """Keeps one libvirt connection open, registers the daemon's callbacks on each new one.

    `on_connected(conn, first)` runs after every successful (re)connection, for the catch-up.
    """

    def __init__(
        self,
        uri: str,
        *,
        lifecycle: LifecycleCallback,
        device_added: DeviceAddedCallback,
        on_connected: Callable[[Any, bool], None],
        on_state: Callable[[bool], None] = lambda up: None,
        keepalive_interval: int = 5,
        keepalive_count: int = 3,
        reconnect_max: float = 30.0,
        open_connection: Callable[[str], Any] | None = None,
    ) -> None:
        self.uri = uri
        self.conn: Any = None
        self.state = "disconnected"
        self.since = time.time()
        self.last_error: str | None = None
        self.connects = 0
        self.reconnects = 0
        self._lifecycle = lifecycle
        self._device_added = device_added
        self._on_connected = on_connected
        self._on_state = on_state
        self.keepalive_interval = keepalive_interval
        self.keepalive_count = keepalive_count
        self.reconnect_max = reconnect_max
        self._open = open_connection or _default_open
        self._callback_ids: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.first_attempt = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="libvirt-watch")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._drop()

    def connection_closed(self, conn: Any, reason: int, opaque: Any = None) -> None:
        """libvirt's close callback: the connection died; reconnect from the watch task."""
        if conn is not self.conn and self.conn is not None and conn is not None:
            return
        why = CLOSE_REASONS.get(reason, f"reason {reason}")
        self.last_error = f"connection closed: {why}"
        _log.warning("libvirt connection to %s closed (%s); reconnecting", self.uri, why)
        # Not from inside libvirt's own callback: the connection is torn down on the next turn.
        asyncio.get_running_loop().call_soon(self._lost)

    def _lost(self) -> None:
        self._drop()
        self._wake.set()

    async def _run(self) -> None:
        delay = 0.5
        first = True
        while not self._stopping:
            if self.conn is None:
                self.state = "connecting"
                try:
                    self._connect()
                except AnnounceError as exc:
                    self.last_error = str(exc)
                    self.state = "disconnected"
                    if first:
                        _log.warning("libvirt at %s is not reachable yet (%s); waiting for it", self.uri, exc)
                else:
                    if self.connects > 1:
                        self.reconnects += 1
                    delay = 0.5
                    try:
                        self._on_connected(self.conn, first)
                    except Exception:  # the catch-up must never end the watch
                        _log.exception("catch-up after connecting to %s failed", self.uri)
                if first:
                    first = False
                    if not self.first_attempt.done():
                        self.first_attempt.set_result(self.conn is not None)
            if self.conn is None:
                await self._sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _connect(self) -> None:
        import libvirt

        conn = self._open(self.uri)
        try:
            try:
                conn.setKeepAlive(self.keepalive_interval, self.keepalive_count)
            except libvirt.libvirtError:
                pass  # local drivers (test://, in-process) have no keepalive and need none
            conn.registerCloseCallback(self.connection_closed, None)
            self._callback_ids = [
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._device_added, None),
            ]
        except libvirt.libvirtError as exc:
            _close_quietly(conn)
            raise AnnounceError(f"cannot watch events on {self.uri}: {exc.get_error_message()}") from None
        self.conn = conn
        self.connects += 1
        self.state = "connected"
        self.since = time.time()
        self.last_error = None
        self._on_state(True)
        _log.info("connected to libvirt at %s", self.uri)

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        self.state = "disconnected"
        self.since = time.time()
        self._on_state(False)
        import libvirt

        # A connection that died may refuse these; it is dropped either way.
        for callback_id in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass
        self._callback_ids = []
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        # A dead connection still holds its socket and our callbacks: closing frees both.
        _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    import libvirt

    try:
        conn.close()
    except libvirt.libvirtError:
        pass


def _default_open(uri: str) -> Any:
    from rarp_announce.virt.connection import open_connection

    return open_connection(uri)
