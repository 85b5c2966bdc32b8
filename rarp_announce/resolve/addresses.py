"""Where a vNIC's IP addresses come from, for its gratuitous ARPs and unsolicited NAs.

RARP carries no IP, so fabrics that learn MAC-IP bindings (EVPN ARP suppression, routers) need
the guest's addresses announced too (RFC 5227 section 3, RFC 4861 section 7.2.6). The sources,
and who vouches for each, are the table in address_sources.py; this module reads those that the
domain XML, the config and libvirt answer (the neighbour table is resolve/neighbours.py):

- ``metadata``: the domain's own ``<metadata>``, in this project's namespace
  ``urn:x-rarp-announce:addresses:1`` (https://libvirt.org/formatdomain.html#general-metadata):
  ``<ra:addresses><ra:interface mac="52:54:00:12:34:56"><ra:ip address="192.0.2.10"/>...``.
  Operators write it with ``virsh metadata DOM --uri urn:x-rarp-announce:addresses:1 --key ra
  --set '<addresses><interface mac="..."><ip address="..."/></interface></addresses>'``
  (https://libvirt.org/manpages/virsh.html#metadata); libvirt then puts every element of it in
  that namespace, which is how ``virsh dumpxml`` prints it. The block is given without prefixes:
  libvirt 9.0 refuses an ``<ra:addresses xmlns:ra=...>`` given to ``--set`` ("failed to create a
  new XML namespace"), as tried here against its test driver.
- ``config``: ``[addresses.macs]`` in the config file (``AddressesConfig.macs``).
- ``nwfilter``: the ``IP`` (and ``IPV6``) parameters of a vNIC's ``<filterref>``
  (https://libvirt.org/formatnwfilter.html#usage-of-variables-in-filters), the addresses the
  operator tied the vNIC to for libvirt's ``clean-traffic`` anti-spoofing filter.
- ``lease``, ``agent``: libvirt's ``virDomainInterfaceAddresses`` with source LEASE (the DHCP
  leases of libvirt's own networks) or AGENT (qemu-guest-agent inside the guest, which may not
  answer at all). libvirt's ARP source is not used: it matches the MAC on every device of the
  host, and libvirt 9.0 fails on this kernel with "wrong nlmsg len" unless the table is large.

The API, for a resolver:

- at prepare time, without I/O: ``declared_addresses(root, config.addresses)`` ->
  ``(MAC -> [Address], reasons)`` from the metadata, the nwfilter parameters and the config,
  whichever of them ``sources`` lists; it uses ``metadata_addresses(root)``,
  ``nwfilter_addresses(root)`` and ``config_addresses(config)``.
- then, on the event loop: ``await libvirt_addresses(dom, config.addresses.sources,
  timeout=config.addresses.agent_timeout)`` -> ``(MAC -> [Address], reasons)``; each libvirt
  call runs in a thread of its own and is given up after ``timeout``, never awaited again.
- ``merge([declared, found], config.addresses.sources)`` -> ``(MAC -> (Address, ...), reasons)``:
  addresses ordered by their source's rank in ``sources``, the first source to name an IP keeps it.
- opt-in, after the guest resumed: ``await guest_announce(dom, rounds=..., initial_ms=...,
  max_ms=..., step_ms=..., timeout=...)`` asks QEMU's ``announce-self``; None when QEMU took it.

Nothing here raises for bad content: what cannot be used is skipped with a one-line reason, and
every list is bounded (``MAX_PER_MAC`` per MAC, ``MAX_TOTAL`` per source, ``MAX_REASONS``), and
so is the work: at most ``MAX_ENTRIES`` elements of one source are looked at.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from rarp_announce.schedule import Schedule
from rarp_announce.config import ADDRESS_SOURCES, MAX_ADDRESSES_PER_MAC, AddressesConfig
from rarp_announce.errors import InputError
from rarp_announce.ipaddr import check_ip
from rarp_announce.mac import normalize_mac
from rarp_announce.model import Address, AddressSource
from rarp_announce.names import one_line, quoted
from rarp_announce.address_sources import BY_NAME, LIBVIRT_SOURCES

METADATA_NS = "urn:x-rarp-announce:addresses:1"
MAX_PER_MAC = MAX_ADDRESSES_PER_MAC  # every address costs a GARP or NA per round
MAX_TOTAL = 4096  # per source: far above any real guest, low enough to bound the frames built
MAX_ENTRIES = 2 * MAX_TOTAL  # elements looked at per source, valid or not: bounds the work, not only the result
MAX_REASONS = 16  # a hostile document cannot turn its every element into a log line
MAX_BLOCKED_CALLS = 32  # libvirt calls given up but still running (hung agents) before refusing more
NWFILTER_PARAMETERS = ("IP", "IPV6")  # libvirt's variables holding a vNIC's addresses (clean-traffic)

_T = TypeVar("_T")
_QUOTE_MAX = 40


def metadata_addresses(root: ET.Element) -> tuple[dict[str, list[str]], list[str]]:
    """MAC -> canonical IPs declared in the domain's ``<metadata>`` in ``METADATA_NS``, and why
    entries were skipped.

    ``root`` is the ``<domain>`` element (``parse_domain``). The namespace, not the prefix, marks
    the element: ``<ra:addresses xmlns:ra="...">`` and ``<addresses xmlns="...">`` are the same.
    Children are accepted in that namespace (what libvirt writes) or in none (a hand-written
    ``<ra:addresses>`` with plain children); elements of other namespaces belong to someone else
    and are ignored. A MAC listed twice has its lists joined.
    """
    reasons = _Reasons("metadata")
    found: dict[str, list[str]] = {}
    entries = _Limit(reasons, MAX_ENTRIES, "elements")
    total = _Limit(reasons, MAX_TOTAL, "addresses in all")
    cut_macs: set[str] = set()
    try:
        for block in _our_blocks(root):
            for interface in block:
                entries.take()
                name = _local_name(interface.tag)
                if name is None:
                    continue
                if name != "interface":
                    reasons.add(f"unknown element <{quoted(name)}> in <addresses>: expected <interface mac=...>")
                    continue
                mac_text = interface.get("mac")
                if mac_text is None:
                    reasons.add("<interface> without a mac attribute: skipped")
                    continue
                mac, problem = _mac(mac_text)
                if mac is None:
                    reasons.add(f"<interface mac=...> skipped: {problem}")
                    continue
                addresses = found.setdefault(mac, [])
                for element in interface:
                    entries.take()
                    name = _local_name(element.tag)
                    if name is None:
                        continue
                    if name != "ip":
                        reasons.add(f"interface {mac}: unknown element <{quoted(name)}>: expected <ip address=...>")
                        continue
                    if len(addresses) >= MAX_PER_MAC:
                        if mac not in cut_macs:
                            cut_macs.add(mac)
                            reasons.add(f"interface {mac}: more than {MAX_PER_MAC} addresses: the rest is ignored")
                        break
                    text = element.get("address")
                    if text is None:
                        reasons.add(f"interface {mac}: <ip> without an address attribute: skipped")
                        continue
                    ip, problem = check_ip(text)
                    if ip is None:
                        reasons.add(f"interface {mac}: {problem}: skipped")
                        continue
                    if ip in addresses:
                        continue
                    total.take()
                    addresses.append(ip)
    except _Cut:
        pass
    return _without_empty(found), reasons.lines()


def nwfilter_addresses(root: ET.Element) -> tuple[dict[str, list[str]], list[str]]:
    """MAC -> canonical IPs of the ``IP``/``IPV6`` parameters of each vNIC's ``<filterref>``, and why
    entries were skipped: ``<interface><mac address=.../><filterref filter='clean-traffic'>
    <parameter name='IP' value='10.0.0.5'/></filterref>``. A parameter may be given several
    times (libvirt makes a list of it); nested ``<filterref>`` elements carry none of the vNIC's."""
    reasons = _Reasons("nwfilter")
    found: dict[str, list[str]] = {}
    entries = _Limit(reasons, MAX_ENTRIES, "elements")
    devices = root.find("devices")
    try:
        for interface in devices.findall("interface") if devices is not None else []:
            mac_element = interface.find("mac")
            parameters = [p for ref in interface.findall("filterref") for p in ref.findall("parameter")]
            if not parameters:
                continue
            mac_text = mac_element.get("address") if mac_element is not None else None
            mac, problem = _mac(mac_text) if mac_text else (None, "no <mac address=...>")
            if mac is None:
                reasons.add(f"<filterref> of an interface skipped: {problem}")
                continue
            addresses = found.setdefault(mac, [])
            for parameter in parameters:
                entries.take()
                if parameter.get("name") not in NWFILTER_PARAMETERS:
                    continue
                if len(addresses) >= MAX_PER_MAC:
                    reasons.add(f"interface {mac}: more than {MAX_PER_MAC} addresses: the rest is ignored")
                    break
                ip, problem = check_ip(parameter.get("value") or "")
                if ip is None:
                    reasons.add(f"interface {mac}: parameter {quoted(str(parameter.get('name')))}: {problem}: skipped")
                    continue
                if ip not in addresses:
                    addresses.append(ip)
    except _Cut:
        pass
    return _without_empty(found), reasons.lines()


def config_addresses(config: AddressesConfig) -> dict[str, list[str]]:
    """MAC -> canonical IPs declared in ``[addresses.macs]`` (already checked by config.py)."""
    return {mac: list(ips) for mac, ips in config.macs.items() if ips}


def declared_addresses(
    root: ET.Element | None, config: AddressesConfig
) -> tuple[dict[str, list[Address]], list[str]]:
    """The synchronous part: the sources read from the domain XML and the config, those of them
    ``config.sources`` names, in its order. ``root`` None (no XML at hand) leaves the XML's out."""
    parts: list[Mapping[str, Sequence[Address]]] = []
    reasons: list[str] = []
    for source in config.sources:
        if source == "config":
            parts.append(tag_addresses("config", config_addresses(config)))
        elif source in _XML_READERS and root is not None:
            found, skipped = _XML_READERS[source](root)
            parts.append(tag_addresses(source, found))
            reasons.extend(skipped)
    merged, cut = merge(parts, config.sources)
    return {mac: list(addresses) for mac, addresses in merged.items()}, reasons + cut


def tag_addresses(source: AddressSource, found: Mapping[str, Sequence[str]]) -> dict[str, list[Address]]:
    """MAC -> IPs (already canonical) as MAC -> Address from ``source``."""
    return {mac: [Address(ip, source) for ip in ips] for mac, ips in found.items()}


def merge(
    parts: Iterable[Mapping[str, Sequence[Address]]],
    order: Sequence[str] = ADDRESS_SOURCES,
    *,
    limit: int = MAX_PER_MAC,
) -> tuple[dict[str, tuple[Address, ...]], list[str]]:
    """Every part's addresses per MAC: ranked by their source's place in ``order`` (sources not in
    it after those that are), in the order each part lists them, an IP kept only the first time,
    at most ``limit`` per MAC. MACs appear in the order first seen. Returns also why any were cut."""
    rank = {source: index for index, source in enumerate(order)}
    gathered: dict[str, list[Address]] = {}
    for part in parts:
        for mac, addresses in part.items():
            gathered.setdefault(mac, []).extend(addresses)
    result: dict[str, tuple[Address, ...]] = {}
    reasons: list[str] = []
    for mac, addresses in gathered.items():
        # sorted() is stable: within a source the parts' own order stays.
        ranked = sorted(addresses, key=lambda address: rank.get(address.source, len(rank)))
        kept: list[Address] = []
        seen: set[str] = set()
        for address in ranked:
            if address.ip in seen:
                continue
            if len(kept) >= limit:
                reasons.append(f"interface {mac}: more than {limit} addresses from all sources: the rest is ignored")
                break
            seen.add(address.ip)
            kept.append(address)
        if kept:
            result[mac] = tuple(kept)
    return result, reasons


async def libvirt_addresses(
    dom: Any, sources: Sequence[str], *, timeout: float
) -> tuple[dict[str, list[Address]], list[str]]:
    """MAC -> addresses libvirt's ``virDomainInterfaceAddresses`` reports, for each of ``sources``
    that is a libvirt source (lease, arp, agent; metadata and config are passed over, so the
    configured list can be given as is), and one line per source that failed or per skip.

    The sources are asked one after the other, each in a thread of its own (libvirt-python drops
    the GIL while it waits): the event loop never blocks. A source that has not answered after
    ``timeout`` seconds is given up with a reason; its thread may stay blocked in libvirt (a hung
    guest agent), but nothing waits for it, not even interpreter exit (daemon threads).
    An IP named by two sources is kept once, for the first of them in ``sources``.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    asked: list[AddressSource] = []
    reasons: list[str] = []
    for source in sources:
        if BY_NAME.get(source) is not None and BY_NAME[source].libvirt is not None:
            if source not in asked:
                asked.append(cast(AddressSource, source))
        elif source not in ADDRESS_SOURCES:
            reasons.append(f"{quoted(source)}: not an address source (expected one of {', '.join(ADDRESS_SOURCES)})")
    # One source after the other, never two calls on one domain at once: libvirt 9.0's test
    # driver crashed (SIGSEGV) on concurrent virDomainInterfaceAddresses of one domain.
    answers = [await _ask_libvirt(dom, source, timeout) for source in asked]
    parts: list[dict[str, list[Address]]] = []
    for found, skipped in answers:
        parts.append(found)
        reasons.extend(skipped)
    merged, cut = merge(parts, asked)
    return {mac: list(addresses) for mac, addresses in merged.items()}, reasons + cut


async def guest_announce(
    dom: Any, *, rounds: int, initial_ms: int, max_ms: int, step_ms: int, timeout: float
) -> str | None:
    """Ask QEMU to announce the guest itself (QMP ``announce-self``, QEMU >= 4.0): None when QEMU
    took the command, else one line saying why not.

    QEMU sends its RARPs on every NIC and sets virtio-net's VIRTIO_NET_S_ANNOUNCE; a virtio
    guest that negotiated VIRTIO_NET_F_GUEST_ANNOUNCE then sends its own gratuitous ARP and
    neighbour advertisements for every address it has, IPv6 included: addresses no source here
    knows. The arguments are QEMU's announce parameters (qapi/net.json, AnnounceParameters).

    The command goes through ``libvirt_qemu.qemuMonitorCommand``, as OpenStack Nova does. libvirt
    marks the domain tainted for any such command: libvirtd logs the warning "Domain ... is
    tainted: custom-monitor" (qemuDomainObjTaintMsg) each time, and support may frown at a
    tainted domain: that is why this is opt-in (``[addresses] guest_announce``). It runs off the
    event loop and is given up after ``timeout`` seconds (libvirt waits up to 30 s for the
    domain's job lock, which a migration's last steps may still hold).
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        command = announce_self_command(rounds=rounds, initial_ms=initial_ms, max_ms=max_ms, step_ms=step_ms)
    except InputError as exc:
        return f"announce-self: {exc}"
    reply, problem = await _off_loop(lambda: _monitor_command(dom, command), timeout)
    if problem is not None:
        return f"announce-self: {problem}"
    return _qmp_problem(reply)


def announce_self_command(*, rounds: int, initial_ms: int, max_ms: int, step_ms: int) -> str:
    """The QMP text of ``announce-self``; InputError when QEMU's bounds refuse a number."""
    # Schedule holds QEMU's own bounds (migrate_params_check): one check for both.
    Schedule(initial_ms=initial_ms, max_ms=max_ms, rounds=rounds, step_ms=step_ms)
    arguments = {"initial": initial_ms, "max": max_ms, "rounds": rounds, "step": step_ms}
    return json.dumps({"execute": "announce-self", "arguments": arguments}, separators=(",", ":"))


_XML_READERS: dict[str, Callable[[ET.Element], tuple[dict[str, list[str]], list[str]]]] = {
    "metadata": metadata_addresses,
    "nwfilter": nwfilter_addresses,
}


def _our_blocks(root: ET.Element) -> list[ET.Element]:
    """The ``<addresses>`` elements in our namespace under the domain's ``<metadata>``."""
    blocks: list[ET.Element] = []
    for metadata in root.findall("metadata"):
        blocks.extend(child for child in metadata if child.tag == f"{{{METADATA_NS}}}addresses")
    return blocks


def _local_name(tag: Any) -> str | None:
    """An element's name when it is ours (our namespace or none), None for anything else
    (another namespace, a comment or processing instruction)."""
    if not isinstance(tag, str):
        return None
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return name if namespace == METADATA_NS else None
    return tag


def _mac(text: str) -> tuple[str | None, str | None]:
    """(normalized MAC, None) or (None, why not); mac.py quotes its input whole, so a long one
    is refused here before it can make a long line."""
    if len(text) > _QUOTE_MAX:
        return None, f"invalid MAC {quoted(text, _QUOTE_MAX)}: too long for a MAC"
    try:
        return normalize_mac(text), None
    except InputError as exc:
        return None, str(exc)


def _without_empty(found: dict[str, list[_T]]) -> dict[str, list[_T]]:
    return {mac: items for mac, items in found.items() if items}


async def _ask_libvirt(dom: Any, source: AddressSource, timeout: float) -> tuple[dict[str, list[Address]], list[str]]:
    reply, problem = await _off_loop(lambda: dom.interfaceAddresses(LIBVIRT_SOURCES[source], 0), timeout)
    if problem is not None:
        return {}, [f"{source}: {problem}"]
    return _read_reply(source, reply)


def _read_reply(source: AddressSource, reply: Any) -> tuple[dict[str, list[Address]], list[str]]:
    """libvirt-python's ``{ifname: {"hwaddr": MAC, "addrs": [{"addr": IP, "prefix": N, "type": 0|1}]}}``
    as MAC -> addresses; anything of another shape is skipped with a reason, never raised."""
    reasons = _Reasons(source)
    if not isinstance(reply, dict):
        return {}, [f"{source}: libvirt answered {type(reply).__name__}, not a table of interfaces"]
    found: dict[str, list[Address]] = {}
    entries = _Limit(reasons, MAX_ENTRIES, "entries")
    total = _Limit(reasons, MAX_TOTAL, "addresses in all")
    try:
        for name, entry in reply.items():
            entries.take()
            label = quoted(str(name))
            if not isinstance(entry, dict):
                reasons.add(f"interface {label}: unexpected entry {type(entry).__name__}: skipped")
                continue
            hwaddr = entry.get("hwaddr")
            if not hwaddr or (isinstance(hwaddr, str) and hwaddr.strip() in ("00:00:00:00:00:00", "")):
                # The agent lists the guest's loopback (hwaddr all zeros, 127.0.0.1, ::1), and
                # devices without a MAC: not vNICs, nothing to announce and nothing to report.
                continue
            if not isinstance(hwaddr, str):
                reasons.add(f"interface {label}: unusable hwaddr {quoted(str(hwaddr))}: skipped")
                continue
            mac, problem = _mac(hwaddr)
            if mac is None:
                reasons.add(f"interface {label}: {problem}: skipped")
                continue
            addresses = found.setdefault(mac, [])
            addrs = entry.get("addrs") or []
            if not isinstance(addrs, list):
                reasons.add(f"interface {label}: unexpected addrs {type(addrs).__name__}: skipped")
                continue
            for item in addrs:
                entries.take()
                text = item.get("addr") if isinstance(item, dict) else None
                if not isinstance(text, str):
                    reasons.add(f"interface {mac}: an entry without an address: skipped")
                    continue
                ip, problem = check_ip(text)
                if ip is None:
                    reasons.add(f"interface {mac}: {problem}: skipped")
                    continue
                if any(address.ip == ip for address in addresses):
                    continue
                # The bound in all before this MAC's own; an address counts once it is kept.
                total.check()
                if len(addresses) >= MAX_PER_MAC:
                    reasons.add(f"interface {mac}: more than {MAX_PER_MAC} addresses: the rest is ignored")
                    break
                addresses.append(Address(ip, source))
                total.count += 1
    except _Cut:
        pass
    return _without_empty(found), reasons.lines()


def _monitor_command(dom: Any, command: str) -> Any:
    import libvirt_qemu

    # flags 0: the command is QMP (JSON) and so is the reply (VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT).
    return libvirt_qemu.qemuMonitorCommand(dom, command, 0)


def _qmp_problem(reply: Any) -> str | None:
    """None for QMP's success reply ``{"return": {}}``, else why not, in one line.

    libvirt hands back QEMU's reply as it came, QMP errors included (docs/qmp-spec: an error
    reply is ``{"error": {"class": ..., "desc": ...}}``), so the reply itself must be read."""
    try:
        parsed = json.loads(reply) if isinstance(reply, (str, bytes)) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return f"announce-self: QEMU's reply is not QMP: {quoted(str(reply))}"
    if "return" in parsed:
        return None
    error = parsed.get("error")
    if isinstance(error, dict):
        desc = one_line(str(error.get("desc", "")))[:200] or "no description"
        return f"announce-self: QEMU refused it: {one_line(str(error.get('class', 'error')))[:40]}: {desc}"
    return f"announce-self: QEMU's reply has neither return nor error: {quoted(str(reply))}"


async def _off_loop(call: Callable[[], _T], timeout: float) -> tuple[_T | None, str | None]:
    """(result, None), or (None, why) when the call raised or took longer than ``timeout``."""
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(_THREADS, call)
    except RuntimeError as exc:
        return None, str(exc)
    try:
        return await asyncio.wait_for(future, timeout), None
    except asyncio.TimeoutError:
        return None, f"no answer within {timeout:g} s: given up (the call may still be blocked in libvirt)"
    except Exception as exc:  # noqa: BLE001 - every libvirt failure is a reason, never a crash
        return None, _error_text(exc)


off_loop = _off_loop  # for resolve.host: other libvirt calls bounded the same way, on the same threads


def _error_text(exc: BaseException) -> str:
    """A libvirt error (or any other) as one bounded line."""
    getter = getattr(exc, "get_error_message", None)
    text = (getter() if callable(getter) else None) or str(exc) or type(exc).__name__
    return one_line(str(text))[:300]


class _DaemonThreads(concurrent.futures.Executor):
    """Runs each call in a daemon thread of its own, at most ``limit`` at once.

    Not a ThreadPoolExecutor, and not the loop's default one: their threads are joined at
    interpreter exit and by ``asyncio.run``'s shutdown_default_executor, so one call stuck in a
    hung guest agent would hang the program's exit, and a few would starve every other user of
    the pool. A daemon thread is abandoned at exit; the limit bounds how many can pile up.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[_T]:
        if not self._slots.acquire(blocking=False):
            raise RuntimeError(
                f"{self._limit} earlier libvirt calls are still blocked (a hung guest agent?): not asked"
            )
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            finally:
                self._slots.release()

        try:
            threading.Thread(target=run, name="rarp-announce-libvirt", daemon=True).start()
        except BaseException:
            self._slots.release()
            raise
        return future


_THREADS = _DaemonThreads(MAX_BLOCKED_CALLS)


class _Reasons:
    """One-line reasons of one source, at most MAX_REASONS, then a count of the rest."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._lines: list[str] = []
        self._more = 0
        self._final: str | None = None

    def add(self, text: str, *, final: bool = False) -> None:
        line = f"{self._source}: {one_line(text)}"
        if final:
            self._final = line  # a cut is always said, however many lines came before
        elif len(self._lines) < MAX_REASONS:
            self._lines.append(line)
        else:
            self._more += 1

    def lines(self) -> list[str]:
        lines = list(self._lines)
        if self._more:
            lines.append(f"{self._source}: {self._more} more entries skipped")
        if self._final is not None:
            lines.append(self._final)
        return lines


class _Cut(Exception):
    """Internal: a bound of one source was hit and said as its final reason; the rest is ignored."""


class _Limit:
    """One bound of one source: at most `limit` of what it counts, then a final reason and _Cut."""

    def __init__(self, reasons: _Reasons, limit: int, what: str) -> None:
        self._reasons = reasons
        self._limit = limit
        self._what = what
        self.count = 0

    def check(self) -> None:
        """_Cut when `limit` are already counted."""
        if self.count >= self._limit:
            self._reasons.add(f"more than {self._limit} {self._what}: the rest is ignored", final=True)
            raise _Cut

    def take(self) -> None:
        """Count one more, or _Cut when there is no room for it."""
        self.check()
        self.count += 1
