"""`rarp-announce targets` and `rarp-announce domain`: where a domain's vNICs are announced, and announcing them."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from rarp_announce.cli._common import (
    ConfigOpt,
    ConnectOpt,
    DryRunOpt,
    InitialOpt,
    JsonOpt,
    MaxOpt,
    PcapOpt,
    RepeatIntervalOpt,
    RepeatOpt,
    RoundsOpt,
    StepOpt,
    app,
    fail,
    make_sink,
    schedule_from_options,
)
from rarp_announce.announce.arrivals import Arrival, Observer
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.model import Resolution, Target

if TYPE_CHECKING:
    from rarp_announce.config import Config
    from rarp_announce.transport.base import Sink

@app.command()
def targets(
    xml: Annotated[Optional[str], typer.Option("--xml", help="Domain XML file to resolve, or - for stdin.", metavar="FILE")] = None,
    domain: Annotated[Optional[str], typer.Option("--domain", "-d", help="Running domain (name, UUID or id) whose live XML to resolve.", metavar="NAME")] = None,
    connect: ConnectOpt = None,
    config_path: ConfigOpt = None,
    json_: Annotated[bool, typer.Option("--json", help='Print {"targets": [...], "skipped": [...]} instead of a table.')] = False,
) -> None:
    """Show where each vNIC of a domain would be announced: device, VLAN, and why any is skipped.

    Examples:

      rarp-announce targets --domain web01

      virsh dumpxml web01 | rarp-announce targets --xml - --json

      rarp-announce targets --xml guest.xml --config ./config.toml

    A target whose device is missing or down on this host is listed with the problem.
    """
    import asyncio

    from rarp_announce.config import load_config

    try:
        if (xml is None) == (domain is None):
            raise InputError("give exactly one of --xml FILE (or --xml - for stdin) and --domain NAME")
        config = load_config(config_path)
        document: str | bytes
        if xml is not None:
            document = _read_xml(xml)
            conn = _connect(connect, config) if connect else None
        else:
            conn = _connect(connect, config)
            document = _running_xml(conn, domain or "")
        resolution = asyncio.run(_resolve_here(document, config, conn, _ovs_snapshot(config), check=True))
    except AnnounceError as error:
        fail(error)
    if json_:
        typer.echo(json.dumps(resolution.record()))
        return
    _print_table(resolution)


@app.command("domain")
def domain_command(
    name: Annotated[str, typer.Argument(help="Running domain: name, UUID or id.", show_default=False, metavar="NAME")],
    connect: ConnectOpt = None,
    config_path: ConfigOpt = None,
    initial: InitialOpt = None,
    max_: MaxOpt = None,
    rounds: RoundsOpt = None,
    step: StepOpt = None,
    repeat: RepeatOpt = None,
    repeat_interval: RepeatIntervalOpt = None,
    wait: Annotated[Optional[float], typer.Option("--wait", metavar="S", help="Wait up to S seconds for devices that are down or OVS ports not wired yet, announcing each as it becomes ready (default 0: report them and exit 1).")] = None,
    pcap: PcapOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Announce every vNIC of a running domain now, all on one schedule.

    Targets come from the live XML (see `rarp-announce targets --domain NAME`); the schedule
    from the config's [schedule], overridden by the options given here.

    Examples:

      rarp-announce domain web01

      rarp-announce domain web01 --connect qemu+ssh://root@hv2/system --repeat 3

      rarp-announce domain web01 --pcap /tmp/web01.pcap    # nothing on the wire

    Exit codes: 0 every target announced, 1 a device missing or down, 2 bad input.
    """
    import asyncio
    import dataclasses

    from rarp_announce.config import load_config

    try:
        config = load_config(config_path)
        if wait is not None and not 0 <= wait <= 3600:
            raise InputError(f"invalid --wait {wait!r}: expected 0..3600 seconds")
        schedule = schedule_from_options(
            config.schedule,
            initial_ms=initial,
            max_ms=max_,
            rounds=rounds,
            step_ms=step,
            repeat=repeat,
            repeat_interval_s=repeat_interval,
        )
        waiting = wait or 0.0
        config = dataclasses.replace(
            config, schedule=schedule,
            daemon=dataclasses.replace(config.daemon, retry_timeout=waiting),
            ovs=dataclasses.replace(config.ovs, wiring_timeout=waiting),
        )
        sink = make_sink(pcap, dry_run, config)
    except AnnounceError as error:
        fail(error)
    try:
        conn = _connect(connect, config)
        document = _running_xml(conn, name)
        code = asyncio.run(_announce_domain(document, config, conn, sink, as_json=json_,
                                            offline=pcap is not None or dry_run))
    except AnnounceError as error:
        sink.close()
        fail(error)
    raise typer.Exit(code)


class _Report(Observer):
    """What `domain` says on stderr: skipped vNICs, notes, and each route it could not use."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def resolved(self, arrival: Arrival, resolution: Resolution) -> None:
        for skipped in resolution.skipped:
            typer.echo(f"rarp-announce: note: skipped {skipped.interface} ({skipped.kind}): {skipped.reason}", err=True)
        for note in resolution.notes:
            typer.echo(f"rarp-announce: note: {note}", err=True)

    def resolve_failed(self, arrival: Arrival, error: str) -> None:
        typer.echo(f"rarp-announce: error: domain {arrival.name!r}: {error}", err=True)

    def waiting(self, arrival: Arrival, target: Target, reason: str, timeout: float) -> None:
        if timeout > 0:
            typer.echo(f"rarp-announce: note: {_what(target)} not ready ({reason}); waiting up to {timeout:g} s", err=True)

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None:
        typer.echo(f"rarp-announce: note: {_what(target)} ready after {waited:.3f} s", err=True)

    def guest_announced(self, arrival: Arrival, problem: str | None) -> None:
        if problem is not None:
            typer.echo(f"rarp-announce: note: guest announce failed: {problem}", err=True)

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None:
        if target.route not in self.failed:
            self.failed[target.route] = reason
            typer.echo(f"rarp-announce: error: {_what(target)}: {reason}", err=True)


def _what(target: Target) -> str:
    return f"device {target.device!r}" if target.ovs is None else f"OVS port {target.route!r}"


class _Offline:
    """For --pcap and --dry-run: every target is written, whatever the host's devices say."""

    def __init__(self, resolver: Any) -> None:
        self._resolver = resolver

    def live_xml(self, uuid: str) -> str | None:
        return self._resolver.live_xml(uuid)

    async def resolve(self, xml: str | bytes) -> Resolution:
        resolution = await self._resolver.resolve(xml)
        resolution.problems.clear()
        return resolution

    async def check(self, targets: Any) -> dict[str, str]:
        return {}


async def _announce_domain(document: str, config: Config, conn: Any, sink: Sink, *, as_json: bool,
                           offline: bool) -> int:
    """`domain`: the arrival table, as the daemon uses it, for one arrival announced now."""
    from rarp_announce.announce.arrivals import ArrivalTable
    from rarp_announce.announce.engine import Announcer
    from rarp_announce.cli._common import frame_tally, report_failures, summary_line
    from rarp_announce.cli._report import frame_reporter
    from rarp_announce.resolve.domxml import parse_domain
    from rarp_announce.textio import emit_line
    from rarp_announce.transport.dryrun import DryRunSink

    root = parse_domain(document)
    name = (root.findtext("name") or "").strip() or "(unnamed)"
    uuid = (root.findtext("uuid") or "").strip().lower() or name
    tally, state = frame_tally()
    announcer = Announcer(sink, observers=[tally] + ([frame_reporter()] if as_json else []))
    host = _host_resolver(config, conn, sink, (None, None))
    resolver: Any = _Offline(host) if offline else host
    report = _Report()
    table = ArrivalTable(announcer, resolver, lambda: config, observers=[report])
    view = None
    remote = config.ovs.remote()
    if remote is not None:
        # The live replica, as the daemon has it: with --wait, a port rewired meanwhile is seen.
        from rarp_announce.resolve.ovsdb import OvsdbView

        view = host.ovs = OvsdbView(remote, on_change=table.ovs_changed)
        if not await view.start(timeout=1.0):
            host.ovs_error = view.last_error
    try:
        entry = await table.expect(uuid, name, xml=document, source="cli")
        if entry.resolution is None:
            raise InputError(f"domain {name!r} cannot be resolved")
        if not entry.targets:
            raise AnnounceError(f"domain {name!r} has nothing to announce: every interface was skipped")
        table.arrive(uuid, name, trigger="cli")
        await table.settled(uuid)
        await announcer.drain()
    finally:
        table.close()
        sink.close()
        if view is not None:
            view.close()
    announced = [t for t in entry.targets if t.key in entry.announced]
    if not announced:
        raise AnnounceError(f"domain {name!r} has nothing to announce: every device is missing or down")
    if not as_json and not isinstance(sink, DryRunSink):
        emit_line(sys.stdout, summary_line(announced, sink, int(state["sent"]), config.schedule))  # type: ignore[call-overload]
    return report_failures(state) or (1 if report.failed or len(announced) < len(entry.targets) else 0)


async def _resolve_here(document: str | bytes, config: Config, conn: Any, ovs: _Ovs, *, check: bool) -> Resolution:
    """What `targets` shows: the resolution with this host's OVS ports and its readiness check."""
    resolver = _host_resolver(config, conn, None, ovs)
    resolution = await resolver.resolve(document)
    if check:
        waiting = [t for t in resolution.targets if t.route not in resolution.problems]
        resolution.problems.update(await resolver.check(waiting))
    return resolution


_Ovs = tuple[Any, "str | None"]  # an OVSDB snapshot, or None and why there is none


def _ovs_snapshot(config: Config) -> _Ovs:
    """One read of the OVS database for a command (outside any event loop)."""
    from rarp_announce.resolve.ovsdb import OvsdbUnavailable, read_once

    remote = config.ovs.remote()
    if remote is None:
        return None, None
    try:
        return read_once(remote, timeout=1.0), None
    except OvsdbUnavailable as exc:
        return None, exc.reason


def _host_resolver(config: Config, conn: Any, sink: Sink | None, ovs: _Ovs) -> Any:
    from rarp_announce.resolve.host import HostResolver
    from rarp_announce.transport.wire import WireSink

    snapshot, error = ovs

    async def one_off(bridge: str, port: str) -> int | None:
        from rarp_announce.transport.openflow import OpenFlowSink

        lookup = OpenFlowSink(config.ovs.endpoint)
        try:
            return await lookup.port_number(bridge, port)
        finally:
            lookup.close()

    openflow_port: Any = None
    if isinstance(sink, WireSink):
        openflow_port = sink.openflow.port_number
    elif sink is None:
        openflow_port = one_off
    return HostResolver(lambda: config, connection=lambda: conn, ovs=snapshot, ovs_error=error,
                        openflow_port=openflow_port)


def _connect(connect: str | None, config: Config) -> Any:
    from rarp_announce.config import libvirt_uri
    from rarp_announce.virt.connection import open_connection

    return open_connection(libvirt_uri(connect, config), readonly=True)


def _running_xml(conn: Any, name: str) -> str:
    from rarp_announce.virt.connection import running_domain_xml

    _domain, xml = running_domain_xml(conn, name)
    return xml


def _read_xml(path: str) -> bytes:
    from rarp_announce.resolve.domxml import MAX_XML_BYTES

    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_XML_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_XML_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"XML file {path!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"XML file {path!r} is a directory: give a domain XML file (virsh dumpxml NAME > FILE)") from None
    except OSError as exc:
        raise InputError(f"cannot read XML file {path!r}: {exc.strerror}") from None
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"domain XML {path!r} is larger than the {MAX_XML_BYTES}-byte limit")
    if not data.strip():
        raise InputError(f"domain XML {'on stdin' if path == '-' else repr(path)} is empty")
    return data


def _print_table(resolution: Resolution) -> None:
    title = resolution.domain or "(unnamed domain)"
    typer.echo(f"domain {title}" + (f" ({resolution.uuid})" if resolution.uuid else ""))
    if resolution.targets:
        rows = [("MAC", "DEVICE", "PORT", "VLAN", "KIND", "INTERFACE", "ADDRESSES", "STATUS")]
        for target in resolution.targets:
            status = resolution.problems.get(target.route, "ready")
            vlan = "-" if target.vlan is None else f"{target.vlan} ({target.vlan_source}{'' if target.tagged else ', untagged'})"
            port = "-"
            if target.ovs is not None:
                port = f"{target.ovs.name} ({target.ovs.ofport if target.ovs.ofport is not None else '?'})"
            addresses = ",".join(f"{a.ip} ({a.source})" for a in target.addresses) or "-"
            rows.append((target.mac, target.device, port, vlan, target.kind, target.interface, addresses, status))
        widths = [max(len(row[i]) for row in rows) for i in range(7)]
        for row in rows:
            typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:7])) + "  " + row[7])
    else:
        typer.echo("no targets")
    for skipped in resolution.skipped:
        typer.echo(f"skipped {skipped.mac or '-'} {skipped.interface} ({skipped.kind or '?'}): {skipped.reason}")
    for note in resolution.notes:
        typer.echo(f"note: {note}")
