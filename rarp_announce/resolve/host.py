"""Resolving on this host: a domain's live XML from libvirt, its OVS ports from OVSDB, and the
one readiness check of every route. The arrival pipeline asks this; so do the commands.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rarp_announce.config import Config
from rarp_announce.errors import AnnounceError
from rarp_announce.model import Address, Resolution, Target
from rarp_announce.names import canonical_uuid
from rarp_announce.resolve import hostnet
from rarp_announce.resolve.addresses import guest_announce, libvirt_addresses, merge, off_loop
from rarp_announce.resolve.interfaces import NetworkBridge, OvsLookup, resolve_xml
from rarp_announce.resolve.neighbours import HostTables, neighbour_addresses, read_tables
from rarp_announce.resolve.ovsport import PortInfo
from rarp_announce.address_sources import BY_NAME, GUEST
from rarp_announce.resolve.trust import bridge_of, declared_elsewhere, guest_sources, vet

if TYPE_CHECKING:
    from rarp_announce.resolve.ovsdb import OvsdbView

_log = logging.getLogger("rarp_announce.resolve")

OpenFlowPort = Callable[[str, str], Awaitable["int | None"]]
"""(bridge, port name) -> the port's OpenFlow number, asked of the bridge itself."""

_INLINE_XML = 64 * 1024  # a domain XML is ~10 KB; bigger ones are resolved off the loop
_REMEMBERED = 1024  # domains whose libvirt-reported addresses are kept
_UUID = re.compile(rb"<uuid>\s*([0-9a-fA-F-]{32,36})\s*</uuid>")
_UUID_SPAN = 65536  # bytes searched: <uuid> comes right after <name>, near the top
# How long one reading of the host's tables and of the other guests' declarations serves every
# resolution that vets guest sources: a burst of arrivals (and each one's retries every
# retry_interval) costs one netlink dump and one libvirt scan, not one each.
_TABLES_FOR = 2.0
_ELSEWHERE_FOR = 5.0
_TABLES_TIMEOUT = 5.0  # a netlink dump answers in milliseconds; this only bounds a wedged one
_T = TypeVar("_T")


def _uuid_of(xml: str | bytes) -> str | None:
    # A character is at least one byte: the first _UUID_SPAN characters hold the first
    # _UUID_SPAN bytes, without encoding a document of megabytes.
    data = xml[:_UUID_SPAN].encode() if isinstance(xml, str) else xml
    match = _UUID.search(data[:_UUID_SPAN])
    return canonical_uuid(match.group(1).decode()) if match else None


async def ovs_snapshot(config: Config, timeout: float) -> tuple[Any, str | None]:
    """One read of the OVS database for a command: (snapshot, None), or (None, why not);
    (None, None) when the config says never to read it."""
    from rarp_announce.resolve.ovsdb import OvsdbUnavailable, read_snapshot

    remote = config.ovs.remote()
    if remote is None:
        return None, None
    try:
        return await read_snapshot(remote, timeout), None
    except OvsdbUnavailable as exc:
        return None, exc.reason


def command_resolver(config: Config, conn: Any, openflow_port: OpenFlowPort,
                     ovs: tuple[Any, str | None] = (None, None)) -> HostResolver:
    """The resolver of a command: `ovs` is a one-shot OVSDB snapshot, or None and why there is
    none (a live replica can be set later with `follow_ovs`); `openflow_port` is the sink's
    (Sink.port_number: asked on the sink's own connection)."""
    snapshot, error = ovs
    return HostResolver(lambda: config, connection=lambda: conn, ovs=snapshot, ovs_error=error,
                        openflow_port=openflow_port)


async def resolve_once(document: str | bytes, config: Config, conn: Any,
                       ovs: tuple[Any, str | None] | None = None) -> Resolution:
    """What `targets` and `doctor` show: the resolution with this host's OVS ports and its
    readiness check. `ovs` is an OVSDB snapshot read already (and why there is none); without
    it OVSDB is read only when a vNIC is on Open vSwitch. Port numbers OVSDB does not give are
    asked of the bridge, on a network sink's connection (Sink.port_number)."""
    from rarp_announce.transport.factory import open_sink

    sink = open_sink(openflow_endpoint=config.ovs.endpoint)
    try:
        resolver = command_resolver(config, conn, sink.port_number, ovs or (None, None))
        if ovs is None and await resolver.needs_ovs(document):
            resolver.ovs, resolver.ovs_error = await ovs_snapshot(config, timeout=1.0)
        resolution = await resolver.resolve(document)
        waiting = [t for t in resolution.targets if t.route not in resolution.problems]
        resolution.problems.update(await resolver.check(waiting))
        return resolution
    finally:
        sink.close()


class HostResolver:
    """Turns a domain XML into targets with this host's knowledge; every method is safe on the loop.

    `connection` returns the current libvirt connection (or None while there is none): it
    answers the live XML and network bridges. `ovs` is the daemon's monitored OVSDB replica.
    `openflow_port` finds a port's number when OVSDB cannot be read. The commands pass a
    one-shot OVSDB snapshot as `ovs` (or `ovs_error`, why there is none).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        connection: Callable[[], Any] = lambda: None,
        ovs: OvsdbView | OvsLookup | None = None,
        ovs_error: str | None = None,
        openflow_port: OpenFlowPort | None = None,
    ) -> None:
        self._config = config
        self._connection = connection
        self.ovs = ovs
        self.ovs_error = ovs_error
        self._addresses: collections.OrderedDict[str, tuple[dict[str, list[Address]], list[str]]] = (
            collections.OrderedDict())
        self._openflow_port = openflow_port
        self._devices = hostnet.SharedCheck()
        self._tables: _Shared[HostTables] = _Shared(_TABLES_FOR)
        self._elsewhere: _Shared[tuple[dict[str, list[tuple[str, str]]], list[str]]] = _Shared(_ELSEWHERE_FOR)

    def follow_ovs(self, on_change: Callable[[], None]) -> OvsdbView | None:
        """A live OVSDB replica for this resolver, not started yet, that calls `on_change` on every
        change (the arrival table's `ovs_changed`); None when the config says never to read it."""
        remote = self._config().ovs.remote()
        if remote is None:
            return None
        from rarp_announce.resolve.ovsdb import OvsdbView

        view = OvsdbView(remote, on_change=on_change)
        self.ovs = view
        return view

    async def needs_ovs(self, xml: str | bytes) -> bool:
        """Whether resolving `xml` asks the OVS database anything: a vNIC plugged into Open
        vSwitch (<virtualport type='openvswitch'>, which libvirt needs to plug a tap into OVS,
        and writes into the live XML of a vNIC on an OVS network too; vhost-user) or into a
        bridge that netlink shows is a kernel-datapath OVS bridge (kind "openvswitch"). A
        command on a host without Open vSwitch then never contacts it. InputError for an
        unusable document."""
        probe = _OvsProbe()
        resolve_xml(xml, self._config(), network_bridge=self._network_bridge(), ovs=probe)
        if probe.port_asked:
            return True
        if not probe.bridges:
            return False
        from rarp_announce.netdev import links

        found = await links(probe.bridges)
        return any(link is not None and link.kind == "openvswitch" for link in found.values())

    def _network_bridge(self) -> NetworkBridge | None:
        """libvirt's answer for a network's bridge, or None without a connection."""
        conn = self._connection()
        if conn is None:
            return None
        from rarp_announce.virt.connection import network_bridge_lookup

        return network_bridge_lookup(conn)

    def live_xml(self, uuid: str) -> str | None:
        """The domain's live XML now, or None when libvirt is not reachable or the domain is gone."""
        import libvirt

        conn = self._connection()
        if conn is None:
            return None
        try:
            return str(conn.lookupByUUIDString(uuid).XMLDesc(0))
        except libvirt.libvirtError:
            return None

    async def resolve(self, xml: str | bytes) -> Resolution:
        """Targets for `xml` as this host sees them now; InputError for an unusable document."""
        lookup, down, pending = self._ovs_lookup()
        found, reasons = await self._libvirt_addresses(xml)
        network_bridge = self._network_bridge()
        run = functools.partial(resolve_xml, xml, self._config(), network_bridge=network_bridge, ovs_down=down,
                                ovs_pending=pending, found_addresses=found)
        if len(xml) <= _INLINE_XML:
            resolution = run(ovs=lookup)
        else:
            # A document of megabytes takes a parse of up to a second: aside, so every schedule
            # and request on the loop goes on. The live replica is read through a fixed snapshot
            # (the loop keeps updating the replica meanwhile).
            snapshot = getattr(lookup, "snapshot", None)
            fixed = snapshot() if callable(snapshot) else lookup
            resolution = await asyncio.get_running_loop().run_in_executor(None, functools.partial(run, ovs=fixed))
        resolution.notes.extend(f"address not announced: {reason}" for reason in reasons)
        await self._guest_addresses(xml, resolution)
        await self._fill_ofports(resolution)
        return resolution

    async def _guest_addresses(self, xml: str | bytes, resolution: Resolution) -> None:
        """The guest-vouched sources the config names (none by default), through the policy
        (resolve.trust): what passes joins its targets' addresses, the rest is `refused`."""
        config = self._config()
        sources = guest_sources(config.addresses)
        if not sources or not resolution.targets:
            return
        bridges: dict[str, set[str]] = {}
        for target in resolution.targets:
            bridges.setdefault(target.mac, set()).add(bridge_of(target))
        try:
            tables = await self._tables.get(_read_tables_aside)
        except Exception as exc:  # noqa: BLE001 - without the host's tables nothing can be vetted
            resolution.notes.append(f"address not announced: {', '.join(sources)}: this host's tables could not be "
                                    f"read to vet them ({type(exc).__name__}: {exc})")
            return
        parts: list[dict[str, list[Address]]] = []
        reasons: list[str] = []
        libvirt_sources = [s for s in sources if BY_NAME[s].libvirt is not None]
        if libvirt_sources:
            found, skipped = await self._libvirt_addresses(xml, libvirt_sources)
            parts.append(found)
            reasons.extend(skipped)
        if any(BY_NAME[s].reads == "netlink" for s in sources):
            found, skipped = neighbour_addresses(tables, bridges)
            parts.append(found)
            reasons.extend(skipped)
        candidates, cut = merge(parts, sources)
        conn = self._connection()
        elsewhere, unread = await self._elsewhere.get(lambda: self._declared_elsewhere(conn))
        trusted = {t.mac: t.addresses for t in resolution.targets}
        allowed, refused = vet(candidates, bridges, trusted, config.addresses.allow, tables, elsewhere)
        resolution.refused.extend(refused)
        if allowed:
            merged, more = merge([trusted, allowed], config.addresses.sources)
            cut += more
            resolution.targets = [dataclasses.replace(t, addresses=merged[t.mac]) if t.mac in merged else t
                                  for t in resolution.targets]
        resolution.notes.extend(f"address not announced: {reason}" for reason in reasons + cut + unread)

    async def _declared_elsewhere(self, conn: Any) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
        config = self._config().addresses
        if conn is None:
            return declared_elsewhere(None, config)
        answer, problem = await off_loop(lambda: declared_elsewhere(conn, config), config.agent_timeout)
        if answer is None:
            # Without the other guests' declarations the allowed prefixes still bound what passes.
            found, _ = declared_elsewhere(None, config)
            return found, [f"other guests' addresses not read: {problem}"]
        return answer

    async def guest_announce(self, uuid: str) -> str | None:
        """QEMU's announce-self for the domain: None when done or without libvirt, else why not
        (see resolve.addresses.guest_announce). Whether the config asks for it is the caller's
        to check (announce.arrivals)."""
        config = self._config()
        conn = self._connection()
        if conn is None:
            return None
        import libvirt

        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            return f"announce-self: the domain is gone ({exc.get_error_message()})"
        schedule = config.schedule
        return await guest_announce(dom, rounds=schedule.rounds, initial_ms=schedule.initial_ms, max_ms=schedule.max_ms,
                                    step_ms=schedule.step_ms, timeout=config.addresses.agent_timeout)

    async def _libvirt_addresses(self, xml: str | bytes, sources: list[str] | None = None
                                 ) -> tuple[dict[str, list[Address]], list[str]]:
        """What libvirt knows of the domain's addresses from `sources` (by default the configured
        ones the operator or the host vouch for: the leases; the guest agent is asked by
        _guest_addresses), asked once per domain and kept: the next resolutions (a port
        rewired, a device back) reuse it."""
        config = self._config()
        if sources is None:
            sources = [s for s in config.addresses.sources if s not in GUEST]
        if not any(BY_NAME[source].libvirt is not None for source in sources):
            return {}, []
        uuid = _uuid_of(xml)
        conn = self._connection()
        if uuid is None or conn is None:
            return {}, []
        key = f"{uuid} {','.join(sources)}"
        if key in self._addresses:
            self._addresses.move_to_end(key)
            return self._addresses[key]
        import libvirt

        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return {}, []  # not defined here yet (a hook's XML): asked again at the next resolution
        answer = await libvirt_addresses(dom, sources, timeout=config.addresses.agent_timeout)
        self._addresses[key] = answer
        while len(self._addresses) > _REMEMBERED:
            self._addresses.popitem(last=False)
        return answer

    async def check(self, targets: Iterable[Target]) -> dict[str, str]:
        """The readiness check: {route: why it cannot carry frames now} for routes that cannot.

        A Linux device is asked of netlink; an OVS port's wiring was judged by the resolution
        and its bridge's OpenFlow connection is checked by the sink when it prepares.
        """
        devices = {t.device for t in targets if t.ovs is None}
        return await self._devices.problems(devices) if devices else {}

    def _ovs_lookup(self) -> tuple[OvsLookup | None, str | None, bool]:
        """What to ask about OVS ports, why nothing can be asked, and whether an answer is coming."""
        if self._config().ovs.remote() is None:
            return None, None, False  # the operator said this host has no OVSDB to read: no remark
        if self.ovs is None:
            return None, self.ovs_error or "no connection to it", False
        if getattr(self.ovs, "connected", True) is False:
            error = getattr(self.ovs, "last_error", None)
            # A live view still on its first connection: wait for it (it calls back when it
            # has the database) rather than fall back to the XML's VLANs a moment too early.
            return None, error or "not connected yet", error is None
        return self.ovs, None, False

    async def _fill_ofports(self, resolution: Resolution) -> None:
        """Without OVSDB, ask each bridge for the guest port's number (OpenFlow port list)."""
        missing = [t for t in resolution.targets if t.ovs is not None and t.ovs.ofport is None
                   and t.route not in resolution.problems]
        if not missing:
            return
        found: dict[tuple[str, str], int | str] = {}
        for target in missing:
            assert target.ovs is not None
            key = (target.ovs.bridge, target.ovs.name)
            if key in found:
                continue
            found[key] = f"no port {key[1]} on OVS bridge {key[0]} (asked over OpenFlow)"
            if self._openflow_port is not None:
                try:
                    number = await self._openflow_port(*key)
                except AnnounceError as exc:
                    found[key] = getattr(exc, "reason", str(exc))
                else:
                    if number is not None:
                        found[key] = number
        missing_ids = {id(t) for t in missing}
        replaced = []
        for target in resolution.targets:
            if id(target) in missing_ids:
                assert target.ovs is not None
                answer = found[(target.ovs.bridge, target.ovs.name)]
                if isinstance(answer, str):
                    resolution.problems[target.route] = answer
                else:
                    target = dataclasses.replace(target, ovs=dataclasses.replace(target.ovs, ofport=answer))
            replaced.append(target)
        resolution.targets = replaced


class _OvsProbe:
    """An OVS look-up that knows nothing and remembers what it was asked (HostResolver.needs_ovs)."""

    applying = False

    def __init__(self) -> None:
        self.bridges: set[str] = set()
        self.port_asked = False

    def find_port(self, *, name: str | None = None, mac: str | None = None,
                  socket_path: str | None = None) -> PortInfo | None:
        self.port_asked = True
        return None

    def is_bridge(self, name: str) -> bool:
        self.bridges.add(name)
        return False


async def _read_tables_aside() -> HostTables:
    """read_tables in a thread of its own, with a loop of its own: pyroute2 parses a dump of a
    thousand neighbours in ~45 ms of CPU (`make bench`, bench_trust), which on the daemon's loop
    would delay every running schedule by as much; aside, the interpreter hands the loop the GIL
    every few ms. The thread is started from the loop's, so it reads the same network namespace."""
    tables, problem = await off_loop(lambda: asyncio.run(read_tables()), _TABLES_TIMEOUT)
    if tables is None:
        raise RuntimeError(problem)
    return tables


class _Shared(Generic[_T]):
    """One answer of an asynchronous read, shared by every caller for `ttl` seconds; callers that
    come while it is being read wait for that read instead of starting their own."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._value: tuple[float, _T] | None = None
        self._reading: asyncio.Future[_T] | None = None

    async def get(self, read: Callable[[], Awaitable[_T]]) -> _T:
        if self._value is not None and time.monotonic() - self._value[0] < self._ttl:
            return self._value[1]
        if self._reading is None:
            self._reading = asyncio.ensure_future(read())
            self._reading.add_done_callback(self._done)
        return await asyncio.shield(self._reading)

    def _done(self, future: asyncio.Future[_T]) -> None:
        self._reading = None
        if not future.cancelled() and future.exception() is None:
            self._value = (time.monotonic(), future.result())
