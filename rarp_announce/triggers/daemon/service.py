"""The daemon's wiring, start and stop: one loop holding the libvirt watch, the OVSDB replica,
the arrival table, the control socket, the ledger, logs and metrics.

What a libvirt event means is decided in libvirt_trigger.py, what a control request does in
requests.py, what `status` shows of the arrivals in status.py; every arrival is handled by the
arrival table (announce/arrivals.py), the same one the hook's waiter and the commands use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import signal
import socket
import time
from typing import Any

from rarp_announce import __version__
from rarp_announce.announce.arrivals import ArrivalSettings, ArrivalTable
from rarp_announce.announce.engine import Announcer
from rarp_announce.config import Config, load_config
from rarp_announce.control import ControlServer
from rarp_announce.errors import InputError
from rarp_announce.resolve.host import HostResolver
from rarp_announce.transport.base import Sink
from rarp_announce.transport.factory import open_sink
from rarp_announce.triggers.daemon.ledger import QEMU_PID_DIR, Ledger
from rarp_announce.triggers.daemon.libvirt_trigger import LibvirtTrigger
from rarp_announce.triggers.daemon.logs import LOGGER, LogObserver, log_event, log_fdb_step
from rarp_announce.triggers.daemon.metrics import Metrics
from rarp_announce.triggers.daemon.requests import Requests
from rarp_announce.triggers.daemon.status import StatusObserver, arrivals_status
from rarp_announce.virt.events import Watcher, register_event_loop


class Daemon:
    """One daemon: a libvirt watcher, an arrival table, a control socket, a ledger and metrics."""

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
        self.sink = sink if sink is not None else open_sink(openflow_endpoint=lambda bridge: self.config.ovs.endpoint(bridge))
        self.announcer = Announcer(self.sink, observers=[self.metrics.observe_frame,
                                                         functools.partial(log_fdb_step, self.log)])
        self.metrics.in_flight.set_function(lambda: len(self.announcer.in_flight))  # counted at scrape time
        self.status_log = StatusObserver()
        self.ovs: Any = None  # resolve.ovsdb.OvsdbView once started, when OVSDB is to be read
        self.resolver = HostResolver(lambda: self.config, connection=self._connection,
                                     openflow_port=self.sink.port_number)
        self.table = ArrivalTable(
            self.announcer, self.resolver, ArrivalSettings.from_config(config),
            observers=[LogObserver(self.log), self.metrics.observer(), self.status_log],
        )
        # Read by the metrics thread while the loop changes the table: list() copies it in one step.
        self.metrics.pending.set_function(lambda: sum(len(e.pending()) for e in list(self.table.entries.values())))
        self.ledger = Ledger(self.state_dir, load=False)  # read at start(), not at construction
        # Each part gets what it uses; getters for what changes: the ledger is opened again at
        # start(), the config replaced at a reload.
        self.libvirt_trigger = LibvirtTrigger(
            self.table, ledger=lambda: self.ledger, counters=self.counters,
            device_added_window=lambda: self.config.daemon.device_added_window,
            failed=self.metrics.failure, log=self.log, pid_dir=self.pid_dir,
        )
        self.requests = Requests(self.table, self.counters, status=self.status,
                                 handoff_expiry=lambda: self.config.daemon.handoff_expiry)
        self.started = time.time()
        self._open_connection = open_connection
        self._stopped: asyncio.Event | None = None
        self.watcher: Watcher | None = None
        self.control: ControlServer | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # libvirt's callbacks, registered by the watcher on every connection
    @property
    def on_lifecycle(self) -> Any:
        return self.libvirt_trigger.on_lifecycle

    @property
    def on_device_added(self) -> Any:
        return self.libvirt_trigger.on_device_added

    @property
    def counters(self) -> Any:
        return self.status_log.counters

    def _connection(self) -> Any:
        return self.watcher.conn if self.watcher is not None else None

    # ---- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, connect (or start waiting for libvirtd); returns after the first connection attempt."""
        loop = asyncio.get_running_loop()
        if self._stopped is None:
            self._stopped = asyncio.Event()
        self.ledger = Ledger(self.state_dir, load=False)
        self.ledger.lock()  # before anything else: a second daemon here would announce every arrival too
        self.ledger.load()
        warm_up()
        register_event_loop(loop)  # before any connection, or events are lost
        self.control = ControlServer(self.control_socket, self.requests.handle, group=self.config.daemon.control_group)
        await self.control.start()
        if self.metrics_address:
            self.metrics.serve(self.metrics_address)
        await self._start_ovs()
        daemon_config = self.config.daemon
        self.watcher = Watcher(
            self.uri,
            lifecycle=self.libvirt_trigger.on_lifecycle,
            device_added=self.libvirt_trigger.on_device_added,
            on_connected=self.libvirt_trigger.on_connected,
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
        log_event(self.log, logging.INFO, "daemon ready", version=__version__, uri=self.uri, control_socket=self.control_socket,
                  state_dir=self.state_dir, metrics=self.metrics_address,
                  ovsdb=self.config.ovs.remote() or "off")

    async def _start_ovs(self) -> None:
        self.ovs = self.resolver.follow_ovs(self.table.ovs_changed)
        if self.ovs is not None:
            # Bounded: a host without Open vSwitch must not delay the daemon; the view keeps
            # connecting in the background and says so once.
            await self.ovs.start(timeout=1.0)

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
        """Cancel schedules and waits, close the connections, socket, devices and ledger."""
        if self._reloading is not None:
            self._reloading.cancel()
        self.announcer.cancel_all()
        self.table.close()
        self.libvirt_trigger.close()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.control is not None:
            await self.control.close()
        if self.ovs is not None:
            self.ovs.close()
        self.metrics.close()
        self.sink.close()
        self.ledger.close()

    def reload(self) -> None:
        """SIGHUP: read the config file again; a broken file keeps the running config.

        Read and checked in a thread: a file of a megabyte takes a second of TOML parsing, which
        must not hold schedules and requests. SIGHUPs during a reload make one more reload.
        """
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        for _ in range(100):  # bounded: a SIGHUP storm costs at most this many reads in a row
            self._reload_again = False
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except InputError as exc:
                log_event(self.log, logging.ERROR, "config reload failed; keeping the running config", error=str(exc))
                self.counters["reload_failures"] += 1
            except Exception as exc:  # noqa: BLE001 - a bug in the checks must not lose the running config
                log_event(self.log, logging.ERROR, "config reload failed; keeping the running config",
                          error=f"{type(exc).__name__}: {exc}")
                self.counters["reload_failures"] += 1
            else:
                self._apply(config)
            if not self._reload_again:
                return

    def _apply(self, config: Config) -> None:
        old = self.config
        self.config = config
        self.table.settings = ArrivalSettings.from_config(config)
        self.counters["reloads"] += 1
        needs_restart = [
            name for name in ("control_socket", "state_dir", "metrics")
            if getattr(old.daemon, name) != getattr(config.daemon, name)
        ]
        if old.ovs.remote() != config.ovs.remote():
            needs_restart.append("ovs.db")
        if self.watcher is not None:
            self.watcher.reconnect_max = config.daemon.reconnect_max
        if self.control is not None and old.daemon.control_group != config.daemon.control_group:
            self.control.set_group(config.daemon.control_group)
        log_event(self.log, logging.INFO, "config reloaded", path=self.config_path or "defaults",
                  restart_needed_for=",".join(needs_restart) or None)

    def status(self) -> dict[str, Any]:
        """What `rarp-announce status` shows (the arrivals' part from status.arrivals_status)."""
        watcher, ovs = self.watcher, self.ovs
        return {
            "version": __version__,
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
            "ovsdb": {
                "remote": self.config.ovs.remote(),
                "state": "off" if ovs is None else ("connected" if ovs.connected else "disconnected"),
                "last_error": ovs.last_error if ovs is not None else None,
            },
            "schedule": dataclasses.asdict(self.table.settings.schedule),
            **arrivals_status(self.table, self.announcer.in_flight),
            "last_announcements": list(self.status_log.recent),
            "counters": dict(self.status_log.counters),
            "ledger_entries": len(self.ledger),
            "ledger_problems": dict(self.ledger.problems),
        }

    def _connection_state(self, up: bool) -> None:
        self.metrics.connected.set(1 if up else 0)
        if up and self.watcher is not None and self.watcher.connects > 1:
            self.metrics.reconnects.inc()


def warm_up() -> None:
    """Import now what the first arrival needs (netlink, OpenFlow, OVSDB, the resolver): in the
    lab the prepare phase lasts 50-100 ms, and these imports alone cost ~300 ms."""
    import pyroute2  # noqa: F401

    import rarp_announce.resolve.interfaces  # noqa: F401
    import rarp_announce.transport.openflow  # noqa: F401


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
