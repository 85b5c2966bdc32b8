"""`rarp-announce targets` and `rarp-announce domain`: where a domain's vNICs are announced, and announcing them."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

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
    run_announcement,
    schedule_from_options,
)
from rarp_announce.errors import AnnounceError, InputError

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
    from rarp_announce.config import load_config

    try:
        if (xml is None) == (domain is None):
            raise InputError("give exactly one of --xml FILE (or --xml - for stdin) and --domain NAME")
        config = load_config(config_path)
        if xml is not None:
            from rarp_announce.resolve import resolve_xml

            document = _read_xml(xml)
            network_bridge = _network_bridge_for_file(connect, config) if connect else None
            resolution = resolve_xml(document, config, network_bridge=network_bridge)
        else:
            resolution = _resolve_running(domain, connect, config)
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
    from rarp_announce.config import load_config

    try:
        config = load_config(config_path)
        schedule = schedule_from_options(
            config.schedule,
            initial_ms=initial,
            max_ms=max_,
            rounds=rounds,
            step_ms=step,
            repeat=repeat,
            repeat_interval_s=repeat_interval,
        )
        sink = make_sink(pcap, dry_run)
    except AnnounceError as error:
        fail(error)
    try:
        resolution = _resolve_running(name, connect, config)
        for skipped in resolution.skipped:
            typer.echo(f"rarp-announce: note: skipped {skipped.interface} ({skipped.kind}): {skipped.reason}", err=True)
        chosen = resolution.targets
        left_out = 0
        if pcap is None and not dry_run:
            # On the wire, a device that is missing or down would fail the whole run at prepare;
            # announce on the others and say which were left out.
            for device, problem in resolution.problems.items():
                typer.echo(f"rarp-announce: error: device {device!r}: {problem}", err=True)
            chosen = resolution.ready
            left_out = len(resolution.targets) - len(chosen)
        if not chosen:
            why = "every device is missing or down" if resolution.targets else "every interface was skipped"
            raise AnnounceError(f"domain {resolution.domain or name!r} has nothing to announce: {why}")
        code = run_announcement(chosen, schedule, sink, as_json=json_, trigger="cli", domain=resolution.domain)
    except AnnounceError as error:
        sink.close()
        fail(error)
    raise typer.Exit(code or (1 if left_out else 0))


def _resolve_running(name: str, connect: str | None, config):
    from rarp_announce.config import libvirt_uri
    from rarp_announce.virt import open_connection, resolve_domain

    conn = open_connection(libvirt_uri(connect, config), readonly=True)
    try:
        return resolve_domain(conn, name, config)
    finally:
        conn.close()


def _network_bridge_for_file(connect: str, config):
    # A saved XML may name a network without its bridge: ask libvirt only when --connect is given.
    from rarp_announce.config import libvirt_uri
    from rarp_announce.virt import network_bridge_lookup, open_connection

    conn = open_connection(libvirt_uri(connect, config), readonly=True)
    return network_bridge_lookup(conn)


def _read_xml(path: str) -> bytes:
    from rarp_announce.domxml import MAX_XML_BYTES

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


def _print_table(resolution) -> None:
    title = resolution.domain or "(unnamed domain)"
    typer.echo(f"domain {title}" + (f" ({resolution.uuid})" if resolution.uuid else ""))
    if resolution.targets:
        rows = [("MAC", "DEVICE", "VLAN", "KIND", "INTERFACE", "STATUS")]
        for target in resolution.targets:
            status = resolution.problems.get(target.device, "ready")
            vlan = str(target.vlan) if target.vlan is not None else "-"
            rows.append((target.mac, target.device, vlan, target.kind, target.interface, status))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])
    else:
        typer.echo("no targets")
    for skipped in resolution.skipped:
        typer.echo(f"skipped {skipped.mac or '-'} {skipped.interface} ({skipped.kind or '?'}): {skipped.reason}")
