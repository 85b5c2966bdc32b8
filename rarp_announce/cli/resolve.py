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
    open_command_sink,
    schedule_from_options,
)
from rarp_announce.errors import AnnounceError, InputError

if TYPE_CHECKING:
    from rarp_announce.config import Config
    from rarp_announce.model import Resolution

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
    from rarp_announce.resolve.host import resolve_once

    try:
        if (xml is None) == (domain is None):
            raise InputError("give exactly one of --xml FILE (or --xml - for stdin) and --domain NAME")
        config = load_config(config_path)
        document: str | bytes
        if xml is not None:
            document = _read_xml(xml)
            conn = _connect(connect, config) if connect else None
        else:
            from rarp_announce.virt.connection import running_domain_xml

            conn = _connect(connect, config)
            _dom, document = running_domain_xml(conn, domain or "")
        resolution = asyncio.run(resolve_once(document, config, conn))
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

    from rarp_announce.announce.arrivals import ArrivalSettings
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
        # The options' schedule is this command's: its frames, and QEMU's announce-self if the
        # config asks for it, follow it.
        config = dataclasses.replace(config, schedule=schedule)
        settings = ArrivalSettings.from_config(config, wait=wait or 0.0)
        sink = open_command_sink(pcap, dry_run, config)
    except AnnounceError as error:
        fail(error)
    try:
        from rarp_announce.cli._domain import announce_domain
        from rarp_announce.virt.connection import running_domain_xml

        conn = _connect(connect, config)
        dom, document = running_domain_xml(conn, name)
        code = asyncio.run(announce_domain(dom, document, config, settings, conn, sink, as_json=json_))
    except AnnounceError as error:
        sink.close()
        fail(error)
    raise typer.Exit(code)


def _connect(connect: str | None, config: Config) -> Any:
    from rarp_announce.config import libvirt_uri
    from rarp_announce.virt.connection import open_connection

    return open_connection(libvirt_uri(connect, config), readonly=True)


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
    for refused in resolution.refused:
        typer.echo(f"refused {refused.mac} {refused.ip} ({refused.source}): {refused.reason}: {refused.detail}")
    for note in resolution.notes:
        typer.echo(f"note: {note}")
