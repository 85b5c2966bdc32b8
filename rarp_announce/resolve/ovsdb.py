"""The Open vSwitch database, read through the official bindings (`ovs` on PyPI, Debian's
python3-openvswitch): a live replica on asyncio (OvsdbView) and a one-shot read (read_once).

Both answer the same questions through one OvsSnapshot: which OVS port is a guest's (by
Interface name, attached MAC, or vhost-user socket), with its VLAN columns and whether it is
wired (resolve.ovsport). Only the columns those answers need are replicated.

How the live view runs without a thread and without polling: ovs.db.idl.Idl is written for a
poll() main loop (ovs/poller.py): `idl.run()` does whatever I/O is ready, then `idl.wait(poller)`
says what to wait for next through `poller.fd_wait()`, `timer_wait()`, `timer_wait_until()` and
`immediate_wake()`. _Waits records those calls and _Armed turns them into asyncio reader/writer
callbacks and a timer; when one fires the Idl runs again. The Idl needs the database schema
before it can start; rather than a schema file, get_schema is asked on a connection of its
own (_SchemaFetch), driven the same way, since ovs.jsonrpc's *_block helpers would stall the
event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream
import ovs.timeval

from rarp_announce.config import OvsConfig
from rarp_announce.errors import AnnounceError
from rarp_announce.resolve.ovsport import PortInfo, ovn_bridge_name, wiring_problem

_LOG = logging.getLogger("rarp_announce.resolve")

DB_NAME = "Open_vSwitch"

# What the queries read (and Bridge external_ids, where OpenStack marks its bridges), nothing
# else: ovs-vswitchd rewrites Interface statistics and status every few seconds
# (other_config:stats-update-interval), which would otherwise wake the view for nothing.
_COLUMNS: dict[str, list[str]] = {
    "Open_vSwitch": ["external_ids", "bridges", "cur_cfg", "next_cfg"],
    "Bridge": ["name", "ports", "external_ids"],
    "Port": ["name", "interfaces", "tag", "trunks", "vlan_mode"],
    "Interface": ["name", "type", "ofport", "external_ids", "options", "error"],
}

# Retries of get_schema while ovsdb-server is unreachable: soon at first (it may be starting),
# then no more than a few seconds apart. The Idl's reconnect FSM (ovs/reconnect.py) gets the
# same ceiling once it runs; its floor is fixed at 1 s.
_SCHEMA_FIRST_RETRY = 0.1
_MAX_BACKOFF = 4.0
_SCHEMA_ATTEMPT_TIMEOUT = 5.0
# Only if the OVS code asked to wait for nothing at all (it never should): look again then.
_IDLE_RECHECK = 5.0

_HINT = "is ovsdb-server running? set [ovs] db"


def default_remote() -> str:
    """Where ovsdb-server listens: unix:$OVS_RUNDIR/db.sock, else Debian's and upstream's
    default unix:/run/openvswitch/db.sock."""
    remote = OvsConfig().remote()
    assert remote is not None  # only db = "" means "never read"
    return remote


class OvsdbUnavailable(AnnounceError):
    """The Open vSwitch database cannot be read; the message says what to check."""

    def __init__(self, reason: str, remote: str | None = None) -> None:
        self.reason = reason
        self.remote = remote if remote is not None else default_remote()
        super().__init__(f"cannot read the Open vSwitch database at {self.remote}: {reason} ({_HINT})")


# -- the queries, on one consistent state of the replica --------------------------------------


def _one(value: Any) -> Any:
    """An optional OVSDB column (0 or 1 values) as the bindings give it, a list: value or None."""
    return value[0] if value else None


def _mac_key(mac: str) -> str:
    return re.sub(r"[^0-9a-f]", "", mac.lower())


class OvsSnapshot:
    """The ports of one state of the database, indexed for the resolver's three questions."""

    def __init__(self, bridges: Iterable[str] = (), ports: Iterable[PortInfo] = (), *, applying: bool = False) -> None:
        # ovs-vswitchd sets cur_cfg to next_cfg once it has applied a change that bumped next_cfg
        # (ovs-vswitchd.conf.db(5), Open_vSwitch table): until then a port whose row already says
        # "VLAN 100" may still forward in its old VLAN.
        self.applying = applying
        self._bridges = sorted(set(bridges))
        self._by_name: dict[str, PortInfo] = {}
        self._by_mac: dict[str, list[PortInfo]] = {}
        self._by_vhost_path: dict[str, PortInfo] = {}
        for info in sorted(ports, key=lambda p: (p.bridge, p.interface)):
            # Interface names are unique on a host (ovs-vswitchd.conf.db(5), Interface name).
            self._by_name.setdefault(info.interface, info)
            mac = info.external_ids.get("attached-mac")
            if mac:
                self._by_mac.setdefault(_mac_key(mac), []).append(info)
            path = info.options.get("vhost-server-path")
            if path:
                self._by_vhost_path.setdefault(os.path.normpath(path), info)

    def find_port(self, *, name: str | None = None, mac: str | None = None,
                  socket_path: str | None = None) -> PortInfo | None:
        """The guest's port: by Interface name (libvirt's <target dev>), else by
        external_ids:attached-mac (which libvirt and os-vif set), else by vhost-user socket.

        Several interfaces claiming one MAC (a stale port left behind) resolve to a wired one
        first, then the first by (bridge, interface) name, so the answer is stable.
        """
        if name:
            found = self._by_name.get(name)
            if found is not None:
                return found
        if mac:
            claims = self._by_mac.get(_mac_key(mac), [])
            if claims:
                return min(claims, key=lambda p: wiring_problem(p) is not None)
        if socket_path:
            return self._by_socket(socket_path)
        return None

    def _by_socket(self, path: str) -> PortInfo | None:
        # dpdkvhostuserclient: QEMU is the server, OVS connects to options:vhost-server-path.
        # dpdkvhostuser: OVS is the server on $OVS_RUNDIR/<interface name>
        # (Documentation/topics/dpdk/vhost-user.rst in the OVS sources).
        found = self._by_vhost_path.get(os.path.normpath(path))
        if found is not None:
            return found
        return self._by_name.get(os.path.basename(path.rstrip("/")))

    def is_bridge(self, name: str) -> bool:
        return name in self._bridges

    def bridges(self) -> list[str]:
        return list(self._bridges)


# -- driving the ovs library from asyncio -----------------------------------------------------


class _Waits:
    """Stands in for ovs.poller.Poller: records what the OVS code wants to wait for.

    Same semantics as Poller (ovs/poller.py): a non-positive timer or a deadline already past
    means wake at once; several timers mean the earliest."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}
        self.timeout_ms: float | None = None

    def fd_wait(self, fd: Any, events: int) -> None:
        fileno = fd if isinstance(fd, int) else fd.fileno()
        self.fds[fileno] = self.fds.get(fileno, 0) | events

    def timer_wait(self, msec: float) -> None:
        if msec <= 0:
            self.immediate_wake()
        elif self.timeout_ms is None or msec < self.timeout_ms:
            self.timeout_ms = msec

    def timer_wait_until(self, msec: float) -> None:
        self.timer_wait(msec - ovs.timeval.msec())

    def immediate_wake(self) -> None:
        self.timeout_ms = 0


class _Armed:
    """The asyncio registrations for one _Waits; replaced as a whole after every run.

    Everything is removed before the OVS code runs again: that code may close a socket and a
    new one may reuse the fd number, which asyncio must not still have registered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._wake = wake
        self._readers: list[int] = []
        self._writers: list[int] = []
        self._timer: asyncio.Handle | None = None

    def arm(self, waits: _Waits) -> None:
        self.disarm()
        for fd, events in waits.fds.items():
            if events & ovs.poller.POLLOUT:
                self._loop.add_writer(fd, self._wake)
                self._writers.append(fd)
            if events & ~ovs.poller.POLLOUT or not events:
                # POLLIN, or POLLERR/POLLHUP alone: epoll reports errors to readers too.
                self._loop.add_reader(fd, self._wake)
                self._readers.append(fd)
        if waits.timeout_ms == 0:
            self._timer = self._loop.call_soon(self._wake)
        elif waits.timeout_ms is not None:
            self._timer = self._loop.call_later(waits.timeout_ms / 1000.0, self._wake)
        elif not waits.fds:
            _LOG.debug("OVSDB view: nothing to wait for; looking again in %.0f s", _IDLE_RECHECK)
            self._timer = self._loop.call_later(_IDLE_RECHECK, self._wake)

    def disarm(self) -> None:
        for fd in self._readers:
            self._loop.remove_reader(fd)
        for fd in self._writers:
            self._loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _split_remotes(remote: str) -> list[str]:
    """Idl's comma-separated remotes ("tcp:a:6640,unix:/x"), as Idl._parse_remotes splits them."""
    remotes: list[str] = []
    for part in remote.split(","):
        if remotes and ":" not in part:
            remotes[-1] += "," + part
        else:
            remotes.append(part)
    return remotes


def _describe(error: int) -> str:
    if error == ovs.jsonrpc.EOF:
        return "connection closed by ovsdb-server"
    if error > 0:
        return os.strerror(error)
    return "connection dropped"


class _FetchFailed(Exception):
    """get_schema did not succeed; the message is the reason, for last_error and logs."""


class _SchemaFetch:
    """One get_schema exchange on a connection of its own, driven step by step (never blocks)."""

    def __init__(self, remote: str) -> None:
        self._deadline = ovs.timeval.msec() + _SCHEMA_ATTEMPT_TIMEOUT * 1000
        self._rpc: Any = None
        self._request = ovs.jsonrpc.Message.create_request("get_schema", [DB_NAME])
        self._stream: Any = None
        if not ovs.stream.Stream.is_valid_name(remote):
            raise _FetchFailed(f"{remote!r} is not an OVSDB remote (unix:PATH, tcp:IP:PORT or ssl:IP:PORT)")
        try:
            error, self._stream = ovs.stream.Stream.open(remote)
        except (OSError, ValueError) as failure:  # e.g. tcp: without a port number
            raise _FetchFailed(str(failure)) from failure
        if error:
            raise _FetchFailed(os.strerror(error))

    def run(self) -> dict[str, Any] | None:
        """The schema once it has arrived, None while in progress; raises _FetchFailed."""
        if ovs.timeval.msec() >= self._deadline:
            raise _FetchFailed(f"no answer to get_schema within {_SCHEMA_ATTEMPT_TIMEOUT:.0f} s")
        if self._rpc is None:
            error = self._stream.connect()
            if error == errno.EAGAIN:
                return None
            if error:
                raise _FetchFailed(os.strerror(error))
            self._rpc = ovs.jsonrpc.Connection(self._stream)
            self._rpc.send(self._request)
        self._rpc.run()
        while True:
            error, msg = self._rpc.recv()
            if error == errno.EAGAIN:
                return None
            if error:
                raise _FetchFailed(_describe(error))
            if msg.id != self._request.id:
                continue
            if msg.type == ovs.jsonrpc.Message.T_ERROR:
                # e.g. "unknown database": the remote is an ovsdb-server for something else (OVN).
                raise _FetchFailed(f"the server has no {DB_NAME} database ({msg.error})")
            schema: dict[str, Any] = msg.result
            return schema

    def wait(self, poller: _Waits) -> None:
        poller.timer_wait_until(self._deadline)
        if self._rpc is None:
            self._stream.run_wait(poller)
            self._stream.connect_wait(poller)
        else:
            self._rpc.wait(poller)
            self._rpc.recv_wait(poller)

    def close(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None
        elif self._stream is not None:
            self._stream.close()
        self._stream = None


def _root_fields(row: Any) -> tuple[Any, ...]:
    # Bridges hang off the root row; a Bridge row nothing refers to is garbage-collected by
    # ovsdb-server (ovsdb(7), "root set"), so the root's list is the whole truth.
    return (ovn_bridge_name(row.external_ids), tuple(bridge.uuid for bridge in row.bridges),
            int(row.cur_cfg) < int(row.next_cfg))


def _bridge_fields(row: Any) -> tuple[Any, ...]:
    return row.name, tuple(port.uuid for port in row.ports)


def _port_fields(row: Any) -> tuple[Any, ...]:
    return row.name, _one(row.tag), tuple(row.trunks), _one(row.vlan_mode), tuple(i.uuid for i in row.interfaces)


def _iface_fields(row: Any) -> tuple[Any, ...]:
    return row.name, row.type, _one(row.ofport), row.external_ids, row.options, _one(row.error)


def _make_idl(remote: str, schema: dict[str, Any]) -> _ReplicaIdl:
    tables = schema.get("tables", {}) if isinstance(schema, dict) else {}
    for table, columns in _COLUMNS.items():
        missing = [c for c in columns if c not in tables.get(table, {}).get("columns", {})]
        if missing:
            raise _FetchFailed(f"the server's {DB_NAME} schema lacks {table} {', '.join(missing)}")
    helper = ovs.db.idl.SchemaHelper(schema_json=schema)
    for table, columns in _COLUMNS.items():
        helper.register_columns(table, columns)
    return _ReplicaIdl(remote, helper)


class _ReplicaIdl(ovs.db.idl.Idl):  # the bindings are untyped: the base is Any
    """The Idl, plus what the view must know that the Idl keeps in its session: whether the
    connection is up and, when it is not, why (ovs/jsonrpc.py Session, ovs/reconnect.py)."""

    def __init__(self, remote: str, helper: Any) -> None:
        super().__init__(remote, helper)
        self.last_failure: str | None = None
        self._fields: dict[Any, tuple[Any, ...]] = {}  # row uuid -> its columns, as plain values
        fsm = self._session.reconnect
        fsm.set_backoff(fsm.get_min_backoff(), int(_MAX_BACKOFF * 1000))
        # The session reports every failed attempt and dropped connection to its reconnect
        # FSM's disconnected() (connect_failed() goes through it), then forgets the errno.
        original = fsm.disconnected

        def disconnected(now: float, error: int) -> None:
            self.last_failure = _describe(error)
            original(now, error)

        fsm.disconnected = disconnected

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        # The Idl calls this for every row an update created, changed or deleted
        # (Idl.notify, ovs/db/idl.py): only those rows are read again for the next snapshot.
        self._fields.pop(row.uuid, None)

    def snapshot(self) -> OvsSnapshot:
        """The replica as PortInfos. Reading a column through the bindings' Row costs tens of
        microseconds (it converts the datum back and forth), so each row's columns are kept as
        plain values until the Idl reports that row changed."""
        cached, fields = self._fields, {}

        def read(row: Any, extract: Callable[[Any], tuple[Any, ...]]) -> tuple[Any, ...]:
            value = cached.get(row.uuid)
            if value is None:
                value = extract(row)
            fields[row.uuid] = value
            return value

        ports_table, ifaces_table = self.tables["Port"].rows, self.tables["Interface"].rows
        root = next(iter(self.tables["Open_vSwitch"].rows.values()), None)
        ovn_bridge, bridge_ids, applying = read(root, _root_fields) if root is not None else (None, (), False)
        bridge_rows = self.tables["Bridge"].rows
        names: list[str] = []
        ports: list[PortInfo] = []
        for bridge_id in bridge_ids:
            bridge_row = bridge_rows.get(bridge_id)
            if bridge_row is None:
                continue
            bridge, port_ids = read(bridge_row, _bridge_fields)
            names.append(bridge)
            for port_id in port_ids:
                port_row = ports_table.get(port_id)
                if port_row is None:
                    continue
                port, tag, trunks, vlan_mode, iface_ids = read(port_row, _port_fields)
                for iface_id in iface_ids:
                    iface_row = ifaces_table.get(iface_id)
                    if iface_row is None:
                        continue
                    name, kind, ofport, external_ids, options, error = read(iface_row, _iface_fields)
                    ports.append(PortInfo(
                        bridge=bridge, port=port, interface=name, ofport=ofport, tag=tag, trunks=trunks,
                        vlan_mode=vlan_mode, iface_type=kind, external_ids=external_ids, options=options,
                        error=error, ovn_bridge=bridge == ovn_bridge,
                    ))
        self._fields = fields  # rows no longer referenced drop out
        return OvsSnapshot(names, ports, applying=applying)

    def session_up(self) -> bool:
        return bool(self._session.is_connected())

    def current(self) -> bool:
        """Connected and holding the server's full contents (not mid re-synchronisation: after
        a reconnection, or when ovsdb-server cancels the monitor, as it does on exit)."""
        return self.session_up() and self.state == self.IDL_S_MONITORING


# -- the live view ----------------------------------------------------------------------------


class OvsdbView:
    """A replica of the OVS database that follows every change, on the running asyncio loop.

    `remote` defaults to default_remote() at construction. `on_change()` runs on the loop after
    each update that changed the replica and when the connection comes or goes; an exception it
    raises is logged and otherwise ignored. Queries answer from the latest replica, which while
    disconnected is the last one seen (see `connected`).
    """

    def __init__(self, remote: str | None = None, *, on_change: Callable[[], None] | None = None) -> None:
        self.remote = remote if remote is not None else default_remote()
        self._on_change = on_change
        self._remotes = _split_remotes(self.remote)
        self._next_remote = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed: _Armed | None = None
        self._idl: _ReplicaIdl | None = None
        self._fetch: _SchemaFetch | None = None
        self._retry_at: float | None = None  # ovs.timeval.msec() of the next get_schema try
        self._backoff = _SCHEMA_FIRST_RETRY
        self._connected = False
        self._reported: bool | None = None  # what was last logged: reachable or not
        self._last_error: str | None = None
        self._seen_seqno = 0
        self._snapshot: OvsSnapshot | None = None
        self._snapshot_of: tuple[_ReplicaIdl | None, int] | None = None
        self._ready: asyncio.Event | None = None
        self._failed: asyncio.Event | None = None  # set on each failure (read_once's fast exit)
        self._closed = False
        self._log_transitions = True  # read_once reports through its exception instead

    # -- public state --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while connected with the server's full, current contents."""
        return self._connected

    @property
    def last_error(self) -> str | None:
        """Why the view is not connected (None while connected and before the first try)."""
        return self._last_error

    async def start(self, timeout: float = 2.0) -> bool:
        """Begin (once) and wait up to `timeout` s for the first full replica: True when it is
        here, False if not (it keeps connecting in the background; on_change tells when)."""
        if self._closed:
            raise RuntimeError("OvsdbView is closed")
        self._begin()
        assert self._ready is not None
        if self._connected:
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self._connected

    def close(self) -> None:
        """Stop following the database and release its connections. Idempotent."""
        self._closed = True
        if self._armed is not None:
            self._armed.disarm()
        self._drop_connections()
        self._connected = False

    # -- queries ---------------------------------------------------------------------------

    def snapshot(self) -> OvsSnapshot:
        """The replica's current state, indexed; rebuilt only after the replica changed."""
        idl = self._idl
        key = (idl, idl.change_seqno if idl is not None else 0)
        if self._snapshot is None or self._snapshot_of != key:  # an Idl compares by identity
            self._snapshot = idl.snapshot() if idl is not None else OvsSnapshot()
            self._snapshot_of = key
        return self._snapshot

    def find_port(self, *, name: str | None = None, mac: str | None = None,
                  socket_path: str | None = None) -> PortInfo | None:
        return self.snapshot().find_port(name=name, mac=mac, socket_path=socket_path)

    def is_bridge(self, name: str) -> bool:
        return self.snapshot().is_bridge(name)

    @property
    def applying(self) -> bool:
        """ovs-vswitchd has not applied the latest configuration change yet (cur_cfg < next_cfg)."""
        return self.snapshot().applying

    def bridges(self) -> list[str]:
        return self.snapshot().bridges()

    # -- the machinery -----------------------------------------------------------------------

    def _begin(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._armed = _Armed(self._loop, self._wake)
        self._ready = asyncio.Event()
        self._failed = asyncio.Event()
        self._wake()

    def _wake(self) -> None:
        """Run whatever is ready, then wait for what the OVS code wants next."""
        if self._closed or self._armed is None:
            return
        self._armed.disarm()
        try:
            self._step()
        except Exception as error:
            # A bug here or in the ovs library must not end the view: start over, after a pause.
            _LOG.exception("OVSDB view on %s: unexpected error; starting over", self.remote)
            self._reset(f"internal error: {error}")
        if self._closed:
            return
        waits = _Waits()
        if self._idl is not None:
            self._idl.wait(waits)
        elif self._fetch is not None:
            self._fetch.wait(waits)
        elif self._retry_at is not None:
            waits.timer_wait_until(self._retry_at)
        else:
            waits.immediate_wake()
        self._armed.arm(waits)
        self._report()

    def _step(self) -> None:
        if self._idl is None:
            self._step_schema()
        if self._idl is not None:
            self._idl.run()

    def _step_schema(self) -> None:
        if self._fetch is None:
            if self._retry_at is not None and ovs.timeval.msec() < self._retry_at:
                return
            self._retry_at = None
            remote = self._remotes[self._next_remote]
            self._next_remote = (self._next_remote + 1) % len(self._remotes)
            try:
                self._fetch = _SchemaFetch(remote)
            except _FetchFailed as failure:
                self._schema_failed(str(failure))
                return
        fetch, done = self._fetch, True
        try:
            schema = fetch.run()
            if schema is None:
                done = False  # under way: its connection stays open
                return
            self._idl = _make_idl(self.remote, schema)
            self._backoff = _SCHEMA_FIRST_RETRY
        except _FetchFailed as failure:
            self._schema_failed(str(failure))
        finally:
            if done:
                fetch.close()
                self._fetch = None

    def _schema_failed(self, reason: str) -> None:
        self._last_error = reason
        self._retry_at = ovs.timeval.msec() + self._backoff * 1000
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        self._mark_unreachable()

    def _drop_connections(self) -> None:
        if self._fetch is not None:
            self._fetch.close()
            self._fetch = None
        if self._idl is not None:
            self._idl.close()
            self._idl = None

    def _reset(self, reason: str) -> None:
        self._drop_connections()
        self._last_error = reason
        self._retry_at = ovs.timeval.msec() + _MAX_BACKOFF * 1000

    def _mark_unreachable(self) -> None:
        if self._reported is not False:
            self._reported = False
            if self._log_transitions:
                _LOG.warning("Open vSwitch database at %s unreachable: %s (retrying in the background)",
                             self.remote, self._last_error)
        if self._failed is not None:
            self._failed.set()

    def _report(self) -> None:
        """After each run: follow the connection state, log its changes once, call on_change."""
        idl = self._idl
        up = idl is not None and idl.current()
        changed = up != self._connected
        self._connected = up
        if up:
            assert idl is not None
            self._last_error = idl.last_failure = None
            if self._reported is not True:
                self._reported = True
                if self._log_transitions:
                    _LOG.info("Open vSwitch database at %s reachable", self.remote)
            assert self._ready is not None
            self._ready.set()
        else:
            assert self._ready is not None
            self._ready.clear()
            # Unreachable only once the session says an attempt failed or the connection
            # dropped; connected but re-synchronising, or a first attempt still under way, is not.
            if idl is not None and idl.last_failure is not None and not idl.session_up():
                self._last_error = idl.last_failure
                self._mark_unreachable()
        seqno = idl.change_seqno if idl is not None else 0
        if seqno != self._seen_seqno:
            self._seen_seqno = seqno
            changed = True
        if changed and self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                _LOG.exception("OVSDB view on %s: on_change callback failed", self.remote)


# -- the one-shot read ------------------------------------------------------------------------


def read_once(remote: str | None = None, timeout: float = 2.0) -> OvsSnapshot:
    """Read the database once (blocking; for command-line use, outside any running event loop).

    Raises OvsdbUnavailable at the first failure to reach the server, or after `timeout` s
    without its contents."""
    remote = remote if remote is not None else default_remote()
    return asyncio.run(read_snapshot(remote, timeout))


async def read_snapshot(remote: str, timeout: float) -> OvsSnapshot:
    """read_once on the running loop: a command that already runs one."""
    view = OvsdbView(remote)
    view._log_transitions = False
    try:
        view._begin()
        assert view._ready is not None and view._failed is not None
        if not view.connected and not view._failed.is_set():
            waiters = [asyncio.ensure_future(view._ready.wait()), asyncio.ensure_future(view._failed.wait())]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if view.connected:
            return view.snapshot()
        raise OvsdbUnavailable(view.last_error or f"no answer within {timeout:g} s", remote)
    finally:
        view.close()
