"""Frames for a guest on an Open vSwitch bridge: injected by OpenFlow PACKET_OUT as the guest's port.

A packet-out with in_port = the guest's own OpenFlow port and one action, output to TABLE, runs
the frame through the bridge's flow table as if the guest had sent it: OVS learns the MAC on the
guest's port and applies that port's VLAN; OVN's `activation-strategy=rarp` and Neutron's OVS
firewall see it arrive from the port itself. Writing the frame into the bridge's internal
(LOCAL) port instead makes OVS learn the guest's MAC on LOCAL and send its traffic to the host
(seen in this project's lab with `ovs-appctl fdb/show`), so LOCAL and every other reserved port are refused (`_ofproto`).

One persistent connection per bridge, to ovs-vswitchd's management socket
`$OVS_RUNDIR/BRIDGE.mgmt`, which speaks OpenFlow without any controller being configured and
coexists with ovn-controller or the Neutron agent. Each frame's packet-out is built once in
`prepare`; `send` is one non-blocking write. A lost connection comes back on its own in the
background (0.05 s doubling to 2 s between attempts); meanwhile that bridge's sends raise
DeviceError and other bridges are untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from rarp_announce.config import OvsConfig
from rarp_announce.errors import DeviceError
from rarp_announce.mac import format_mac
from rarp_announce.model import OvsPort, Target
from rarp_announce.transport import _ofproto as ofp

_log = logging.getLogger("rarp_announce.transport")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
# Past this much unsent data ovs-vswitchd has stopped reading: refuse rather than let the
# transport's buffer grow without bound (a packet-out with a RARP is ~100 bytes: ~40k of them).
_MAX_BUFFERED = 4 << 20
_CHECK_EVERY = 64 << 10
_MAX_LOGGED_ERRORS = 1024
_READ_SIZE = 1 << 16


def default_endpoint(bridge: str, rundir: str | None = None) -> str:
    """`unix:RUNDIR/BRIDGE.mgmt`: the management socket every OVS bridge listens on.

    RUNDIR is `rundir`, else $OVS_RUNDIR (what the ovs-* tools honour), else /run/openvswitch.
    """
    return OvsConfig(rundir=rundir).endpoint(bridge)


class OpenFlowError(ConnectionError):
    """A bridge's OpenFlow connection cannot be used; the one-line message says why and what to do."""


def _parse_endpoint(endpoint: str) -> tuple[str, str, int]:
    """("unix", path, 0) or ("tcp", host, port) from `unix:PATH` / `tcp:HOST:PORT` (OVS syntax)."""
    kind, _, rest = endpoint.partition(":")
    if kind == "unix" and rest:
        return "unix", rest, 0
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # tcp:[::1]:6653
        if host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", host, int(port)
    raise ValueError(f"invalid OpenFlow endpoint {endpoint!r}: expected unix:PATH or tcp:HOST:PORT")


def _reach_hint(error: OSError, kind: str) -> str:
    if isinstance(error, FileNotFoundError):
        return "is ovs-vswitchd running and does the bridge exist?"
    if isinstance(error, ConnectionRefusedError):
        if kind == "unix":
            return "is ovs-vswitchd running? the socket file may be left over from an earlier one"
        return "is ovs-vswitchd listening there, e.g. `ovs-vsctl set-controller BRIDGE ptcp:PORT`?"
    if isinstance(error, PermissionError):
        return "run as root, or as the user ovs-vswitchd runs as"
    return "is ovs-vswitchd running and does the bridge exist?"


@dataclass
class _PortQuery:
    future: asyncio.Future[dict[str, int]]
    ports: dict[str, int] = field(default_factory=dict)


class OpenFlowConnection:
    """One OpenFlow connection to one bridge, kept open and re-opened when lost.

    `connect` opens it; afterwards a reader task answers ECHO_REQUESTs (ovs-vswitchd probes an
    idle connection and drops it when unanswered), logs each distinct OFPT_ERROR once and
    completes port-list requests. `send` writes without blocking or raises ConnectionError.
    """

    def __init__(self, bridge: str, endpoint: str | None = None, *, versions: Sequence[int] = ofp.VERSIONS,
                 connect_timeout: float = 1.0) -> None:
        self.bridge = bridge
        self.endpoint = endpoint if endpoint is not None else default_endpoint(bridge)
        self._kind, self._where, self._port = _parse_endpoint(self.endpoint)
        self.versions = tuple(sorted(set(versions)))
        for version in self.versions:
            if version not in ofp.VERSIONS:
                raise ValueError(f"unsupported OpenFlow wire version 0x{version:02x}")
        if not self.versions:
            raise ValueError("offer at least one OpenFlow version")
        self.connect_timeout = connect_timeout
        self.version: int | None = None  # negotiated; kept while reconnecting
        self.echoes_answered = 0
        self.rejected: dict[int, str] = {}  # xid -> error text of an OFPT_ERROR about it, not yet reported
        self._transport: asyncio.WriteTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._pending: dict[int, _PortQuery] = {}
        self._about: dict[int, str] = {}
        self._logged: set[tuple[int, int, int]] = set()
        self._xids = itertools.count(1)
        self._unchecked = 0  # bytes written since the write buffer was last measured
        self._closed = False

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def reconnecting(self) -> bool:
        return self._reconnect_task is not None

    def _down_text(self) -> str:
        if self._reconnect_task is not None:
            return f"OpenFlow connection to bridge {self.bridge} is down; reconnecting"
        return f"OpenFlow connection to bridge {self.bridge} is not open"

    def allocate_xid(self, about: str | None = None) -> int:
        """A fresh transaction id; an OFPT_ERROR answering it is logged as being `about` this."""
        xid = next(self._xids) & 0xFFFFFFFF
        if about is not None:
            self._about[xid] = about
        return xid

    # -- opening -------------------------------------------------------------------------

    async def connect(self, timeout: float | None = None) -> None:
        """Open the connection and agree on a version, within `timeout` s (default: connect_timeout).

        Raises OpenFlowError (a ConnectionError) with a message that says what to check.
        """
        if self._closed:
            raise OpenFlowError(f"OpenFlow connection to bridge {self.bridge} was closed")
        if self.connected:
            return
        timeout = self.connect_timeout if timeout is None else timeout
        if self._reconnect_task is not None:
            await self.wait_connected(timeout)
            return
        self._attach(*await self._open(timeout))

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; OpenFlowError if that takes longer than `timeout` s."""
        if self.connected:
            return
        if self._reconnect_task is None:
            raise OpenFlowError(self._down_text())
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            raise OpenFlowError(self._down_text()) from None

    async def _open(self, timeout: float | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                          ofp.Framer, int, list[bytes]]:
        """Dial, exchange HELLOs, negotiate: (reader, writer, framer, version, messages after HELLO)."""
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        where = f"bridge {self.bridge}'s OpenFlow socket {self.endpoint}"
        try:
            async with asyncio.timeout(timeout):
                try:
                    if self._kind == "unix":
                        reader, writer = await asyncio.open_unix_connection(self._where)
                    else:
                        reader, writer = await asyncio.open_connection(self._where, self._port)
                except OSError as error:
                    reason = error.strerror or str(error) or type(error).__name__
                    hint = _reach_hint(error, self._kind)
                    raise OpenFlowError(f"cannot reach {where}: {reason} ({hint})") from None
                writer.write(ofp.hello(self.versions))
                framer = ofp.Framer()
                messages: list[bytes] = []
                while not messages:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        raise OpenFlowError(f"{where} closed the connection before its HELLO "
                                            "(is it an OpenFlow socket?)")
                    messages = framer.feed(data)
        except TimeoutError:
            self._discard(writer)
            if writer is None:
                raise OpenFlowError(f"cannot reach {where}: no connection within {timeout:g} s "
                                    "(is the address right and ovs-vswitchd listening?)") from None
            raise OpenFlowError(f"{where}: no OpenFlow HELLO within {timeout:g} s "
                                "(is ovs-vswitchd overloaded or stuck?)") from None
        except asyncio.CancelledError:
            self._discard(writer)
            raise
        except OSError as error:
            self._discard(writer)
            if isinstance(error, OpenFlowError):
                raise
            reason = error.strerror or str(error) or type(error).__name__
            raise OpenFlowError(f"{where} failed during the OpenFlow handshake: {reason}") from None
        except ValueError as error:  # the framer: not an OpenFlow byte stream
            self._discard(writer)
            raise OpenFlowError(f"{where} does not speak OpenFlow: {error}") from None
        assert reader is not None and writer is not None

        first, rest = messages[0], messages[1:]
        head = ofp.header(first)
        if head.type != ofp.OFPT_HELLO:
            self._discard(writer)
            if head.type == ofp.OFPT_ERROR:
                raise OpenFlowError(f"bridge {self.bridge} refused the OpenFlow connection: "
                                    f"{self._error_text(first)}")
            raise OpenFlowError(f"{where} sent OpenFlow message type {head.type} instead of HELLO")
        version = ofp.negotiate(self.versions, first)
        if version is None:
            # "Connection Setup" (OF1.5.1 6.3.3): the side finding no common version says so, then hangs up.
            text = (f"We support {ofp.versions_text(self.versions)}, you support "
                    f"{ofp.peer_versions_text(first)}, no common versions.").encode()
            writer.write(ofp.error(min(self.versions), ofp.OFPET_HELLO_FAILED, 0, text, head.xid))
            self._discard(writer)
            raise OpenFlowError(
                f"bridge {self.bridge} allows only OpenFlow {ofp.peer_versions_text(first)} "
                f"and we offered {ofp.versions_text(self.versions)}: no common version "
                f"(see the bridge's protocols column: ovs-vsctl get bridge {self.bridge} protocols)"
            )
        return reader, writer, framer, version, rest

    @staticmethod
    def _discard(writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            try:
                writer.close()
            except RuntimeError:  # event loop already closed: the socket goes with it
                pass

    def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: ofp.Framer,
                version: int, early: list[bytes]) -> None:
        self._writer = writer
        self._transport = writer.transport
        self.version = version
        self._reader_task = asyncio.create_task(self._read(reader, framer, early),
                                                name=f"openflow-reader-{self.bridge}")
        self._up.set()

    # -- the reader ----------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader, framer: ofp.Framer, early: list[bytes]) -> None:
        reason = "ovs-vswitchd closed it"
        try:
            for message in early:
                self._dispatch(message)
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                for message in framer.feed(data):
                    self._dispatch(message)
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
        except ValueError as error:
            reason = f"garbled OpenFlow stream: {error}"
        self._lost(reason)

    def _dispatch(self, message: bytes) -> None:
        head = ofp.header(message)
        try:
            if head.type == ofp.OFPT_ECHO_REQUEST:
                if self._transport is not None:
                    self._transport.write(ofp.echo_reply(message))
                    self.echoes_answered += 1
            elif head.type == ofp.OFPT_ERROR:
                self._on_error(head, message)
            elif head.xid in self._pending and ofp.is_port_desc_reply(message):
                query = self._pending[head.xid]
                ports, more = ofp.parse_ports(head.version, message)
                query.ports.update(ports)
                if not more and not query.future.done():
                    query.future.set_result(query.ports)
            else:
                _log.debug("bridge %s: ignoring OpenFlow message type %d (xid %#x)",
                           self.bridge, head.type, head.xid)
        except ValueError as error:
            # One malformed message must not take the connection down with it.
            _log.debug("bridge %s: undecodable OpenFlow message type %d: %s", self.bridge, head.type, error)

    def _error_text(self, message: bytes) -> str:
        head = ofp.header(message)
        try:
            type_, code, data = ofp.parse_error(message)
        except ValueError as error:
            return f"malformed OpenFlow error ({error})"
        text = ofp.error_text(type_, code, head.version)
        if type_ == ofp.OFPET_HELLO_FAILED and data:
            text += ": " + data.decode("ascii", "replace").strip()
        return text

    def _on_error(self, head: ofp.Header, message: bytes) -> None:
        type_, code, data = ofp.parse_error(message)
        text = self._error_text(message)
        query = self._pending.get(head.xid)
        if query is not None and not query.future.done():
            query.future.set_exception(
                OpenFlowError(f"bridge {self.bridge} refused to list its ports: {text}"))
        about = self._about.get(head.xid)
        if about is not None:
            self.rejected[head.xid] = text
        # The same failing packet-out is resent every round: say it once. Without a known xid,
        # key on the offending message's type instead.
        key = (type_, code, head.xid if about is not None else (data[1] if len(data) > 1 else -1))
        if key in self._logged:
            return
        if len(self._logged) < _MAX_LOGGED_ERRORS:
            self._logged.add(key)
        subject = f"about the packet-out for {about}" if about is not None else f"(xid {head.xid:#x})"
        _log.warning("OpenFlow error from bridge %s %s: %s", self.bridge, subject, text)

    # -- loss and reconnection -----------------------------------------------------------

    def _lost(self, reason: str) -> None:
        self._drop_link()
        if self._closed:
            return
        _log.warning("OpenFlow connection to bridge %s lost (%s); reconnecting", self.bridge, reason)
        self._reconnect_task = asyncio.create_task(self._reconnect(),
                                                   name=f"openflow-reconnect-{self.bridge}")

    def _drop_link(self) -> None:
        self._up.clear()
        self._discard(self._writer)
        self._writer = None
        self._transport = None
        self._reader_task = None
        for query in self._pending.values():
            if not query.future.done():
                query.future.set_exception(
                    OpenFlowError(f"OpenFlow connection to bridge {self.bridge} was lost"))

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        started, delay, attempts = loop.time(), BACKOFF_FIRST, 0
        previous = self.version
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                link = await self._open(self.connect_timeout)
            except OpenFlowError as error:
                _log.debug("bridge %s: reconnection attempt %d failed: %s", self.bridge, attempts, error)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._reconnect_task = None
            self._attach(*link)
            changed = f", was {ofp.version_name(previous)}" if previous is not None and previous != self.version else ""
            _log.info("OpenFlow connection to bridge %s back after %.2f s (OpenFlow %s%s)", self.bridge,
                      loop.time() - started, ofp.version_name(link[3]), changed)
            return

    # -- using it ------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        """Queue `message` for the bridge without blocking; ConnectionError when that cannot be done."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise OpenFlowError(self._down_text())
        self._unchecked += len(message)
        if self._unchecked >= _CHECK_EVERY:
            # Only now and then: from Python 3.12 on get_write_buffer_size() sums the queued
            # chunks. Stays due (no reset) while congested, so every later send checks again.
            buffered = transport.get_write_buffer_size()
            if buffered > _MAX_BUFFERED:
                raise OpenFlowError(f"OpenFlow connection to bridge {self.bridge} is congested: "
                                    f"{buffered} bytes not yet read by ovs-vswitchd")
            self._unchecked = 0
        transport.write(message)

    async def ports(self, timeout: float | None = None) -> dict[str, int]:
        """Port name -> OpenFlow port number of every non-reserved port of the bridge."""
        if not self.connected or self.version is None:
            raise OpenFlowError(self._down_text())
        xid = self.allocate_xid()
        query = _PortQuery(asyncio.get_running_loop().create_future())
        self._pending[xid] = query
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            self.send(ofp.port_desc_request(self.version, xid))
            async with asyncio.timeout(timeout):
                return await query.future
        except TimeoutError:
            raise OpenFlowError(f"bridge {self.bridge} did not list its ports within {timeout:g} s") from None
        finally:
            del self._pending[xid]

    async def port_number(self, name: str, timeout: float | None = None) -> int | None:
        """The OpenFlow port number of port `name`, None when the bridge has no such port."""
        return (await self.ports(timeout)).get(name)

    def close(self) -> None:
        """Stop the reader and any reconnection, close the socket; the connection is not reused."""
        self._closed = True
        for task in (self._reader_task, self._reconnect_task):
            if task is not None:
                try:
                    task.cancel()
                except RuntimeError:  # its loop is closed: nothing left to run it
                    pass
        self._reconnect_task = None
        self._drop_link()


@dataclass
class _Prebuilt:
    """One frame's packet-out for one OVS port, built at the version last negotiated."""

    in_port: int
    frame: bytes
    xid: int
    version: int = 0
    message: bytes = b""

    def build(self, version: int | None) -> None:
        assert version is not None
        self.message = ofp.packet_out(version, self.in_port, self.frame, self.xid)
        self.version = version


_NOT_OVS = "is not an Open vSwitch port: the OpenFlow transport only injects frames as a guest's OVS port"


class OpenFlowSink:
    """The Sink for OVS ports: each frame enters its bridge as a packet-out from the guest's port."""

    offline = False
    prints_frames = False

    def __init__(self, endpoint_for: Callable[[str], str] = default_endpoint, *, connect_timeout: float = 1.0,
                 versions: Sequence[int] = ofp.VERSIONS) -> None:
        self._endpoint_for = endpoint_for
        self._connect_timeout = connect_timeout
        self._versions = tuple(versions)
        self._connections: dict[str, OpenFlowConnection] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._prebuilt: dict[tuple[str, int, bytes], _Prebuilt] = {}
        self._found: dict[tuple[str, str], int] = {}  # (bridge, port name) -> ofport, asked over OpenFlow

    def destination(self, routes: Collection[str]) -> str:
        return "on " + ", ".join(sorted(routes))

    def connection(self, bridge: str) -> OpenFlowConnection | None:
        """The bridge's connection, once `prepare` or `port_number` has opened it."""
        return self._connections.get(bridge)

    async def _connection(self, bridge: str, route: str) -> OpenFlowConnection:
        connection = self._connections.get(bridge)
        if connection is None:
            lock = self._opening.setdefault(bridge, asyncio.Lock())
            async with lock:  # two targets on one bridge prepared at once share one connection
                connection = self._connections.get(bridge)
                if connection is None:
                    try:
                        connection = OpenFlowConnection(bridge, self._endpoint_for(bridge),
                                                        versions=self._versions,
                                                        connect_timeout=self._connect_timeout)
                        await connection.connect(self._connect_timeout)
                    except (ConnectionError, ValueError) as error:
                        if connection is not None:
                            connection.close()
                        raise DeviceError(route, str(error)) from None
                    self._connections[bridge] = connection
        if not connection.connected:
            try:
                await connection.wait_connected(self._connect_timeout)
            except ConnectionError as error:
                raise DeviceError(route, str(error)) from None
        return connection

    async def prepare(self, target: Target, frames: Sequence[bytes]) -> None:
        port = target.ovs
        if port is None:
            raise DeviceError(target.route, _NOT_OVS)
        connection = await self._connection(port.bridge, target.route)
        in_port = port.ofport
        if in_port is None:
            # The resolver could not read OVSDB: ask the bridge itself, once per port.
            in_port = await self._look_up(connection, port, target.route)
        for frame in frames:
            key = (port.bridge, in_port, bytes(frame))
            entry = self._prebuilt.get(key)
            if entry is None:
                about = f"in_port {in_port} (port {port.name}), source MAC {format_mac(frame[6:12])}"
                entry = _Prebuilt(in_port, key[2], connection.allocate_xid(about))
            if entry.version != connection.version:
                try:
                    entry.build(connection.version)
                except ValueError as error:  # a reserved in_port (LOCAL...) or an oversized frame
                    raise DeviceError(target.route, str(error)) from None
            self._prebuilt[key] = entry

    async def _look_up(self, connection: OpenFlowConnection, port: OvsPort, route: str) -> int:
        number = self._found.get((port.bridge, port.name))
        if number is None:
            try:
                number = await connection.port_number(port.name, self._connect_timeout)
            except ConnectionError as error:
                raise DeviceError(route, str(error)) from None
            if number is None:
                raise DeviceError(route, f"bridge {port.bridge} has no port named {port.name} "
                                         "(its OpenFlow port list does not show it)")
            self._found[(port.bridge, port.name)] = number
        return number

    def send(self, target: Target, frame: bytes) -> None:
        port: OvsPort | None = target.ovs
        if port is None:
            raise DeviceError(target.route, _NOT_OVS)
        in_port = port.ofport if port.ofport is not None else self._found.get((port.bridge, port.name))
        entry = self._prebuilt.get((port.bridge, in_port, frame)) if in_port is not None else None
        connection = self._connections.get(port.bridge)
        if entry is None or connection is None:
            raise DeviceError(target.route, "this frame was not prepared for the port (prepare() first)")
        if entry.version != connection.version:
            try:
                entry.build(connection.version)  # a reconnection negotiated another version
            except ValueError as error:  # e.g. a port number 1.0 cannot carry
                raise DeviceError(target.route, str(error)) from None
        if connection.rejected:
            rejected = connection.rejected.pop(entry.xid, None)
            if rejected is not None:
                raise DeviceError(target.route, f"bridge {port.bridge} rejected an earlier packet-out "
                                                f"for in_port {in_port}: {rejected}")
        try:
            connection.send(entry.message)
        except ConnectionError as error:
            raise DeviceError(target.route, str(error)) from None

    async def port_number(self, bridge: str, name: str) -> int | None:
        """The OpenFlow port number of `name` on `bridge` (for when the OVS database is unreachable)."""
        connection = await self._connection(bridge, bridge)
        try:
            return await connection.port_number(name, self._connect_timeout)
        except ConnectionError as error:
            raise DeviceError(bridge, str(error)) from None

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        self._opening.clear()
        self._prebuilt.clear()
        self._found.clear()
