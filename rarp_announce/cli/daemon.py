"""`rarp-announce daemon` and `rarp-announce status`: the host's announcer, and a look inside it."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rarp_announce.cli._common import ConfigOpt, ConnectOpt, app, fail
from rarp_announce.errors import AnnounceError


@app.command()
def daemon(
    connect: ConnectOpt = None,
    config: ConfigOpt = None,
    control_socket: Annotated[Optional[str], typer.Option("--control-socket", help="Unix socket for hook hand-offs and `status` (default: [daemon] control_socket, /run/rarp-announce/control.sock).", metavar="PATH")] = None,
    state_dir: Annotated[Optional[str], typer.Option("--state-dir", help="Where announced arrivals are remembered across restarts (default: /var/lib/rarp-announce).", metavar="DIR")] = None,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Serve Prometheus metrics on ADDR:PORT, e.g. 127.0.0.1:9477 (default: off).", metavar="ADDR:PORT")] = None,
    log_format: Annotated[Optional[str], typer.Option("--log-format", help="text or json: one line per announced MAC (domain, MAC, device, VLAN, trigger).", show_default="text")] = None,
) -> None:
    """Watch libvirt and announce every vNIC of each guest that live-migrates onto this host.

    Announces at the guest's resume on this host (never earlier), prepared during the migration
    so the first frame leaves within a millisecond; catches up after libvirtd restarts; takes
    hand-offs from the libvirt hook. SIGTERM stops, SIGHUP reloads the config.

    Examples:

      rarp-announce daemon

      rarp-announce daemon --connect qemu:///system --metrics 127.0.0.1:9477 --log-format json

      rarp-announce daemon --control-socket /run/ra-b.sock --state-dir /var/lib/ra-b   # a second one
    """
    import asyncio

    from rarp_announce.config import libvirt_uri, load_config
    from rarp_announce.triggers.daemon.logs import setup_logging
    from rarp_announce.config import parse_address
    from rarp_announce.triggers.daemon.service import Daemon

    try:
        settings = load_config(config)
        setup_logging(log_format or settings.daemon.log_format)
        if metrics is not None:
            parse_address(metrics)
        service = Daemon(
            settings,
            uri=libvirt_uri(connect, settings),
            config_path=config,
            control_socket=control_socket,
            state_dir=state_dir,
            metrics_address=metrics,
        )
        asyncio.run(service.run())
    except AnnounceError as error:
        fail(error)
    except OSError as error:
        fail(AnnounceError(f"{error.strerror or error}: {getattr(error, 'filename', '') or ''}".rstrip(": ")))
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command()
def status(
    control_socket: Annotated[Optional[str], typer.Option("--control-socket", help="The daemon's control socket (default: [daemon] control_socket of the config, /run/rarp-announce/control.sock).", metavar="PATH")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="Config file whose [daemon] control_socket to use.", metavar="FILE")] = None,
    json_: Annotated[bool, typer.Option("--json", help="The daemon's whole status as one JSON object.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the answer.", min=0.01)] = 5.0,
) -> None:
    """Show a running daemon's libvirt connection, schedules in flight, last announcements, counters.

    Examples: rarp-announce status ; rarp-announce status --json --control-socket /run/ra-b.sock
    """
    from rarp_announce.control import request

    try:
        if control_socket is None:
            from rarp_announce.config import load_config

            control_socket = load_config(config).daemon.control_socket
        answer = request(control_socket, {"op": "status"}, timeout=timeout)
    except AnnounceError as error:
        fail(error)
    if not answer.get("ok"):
        fail(AnnounceError(f"the daemon refused: {answer.get('error', 'no reason given')}"))
    state = answer.get("status", {})
    if json_:
        typer.echo(json.dumps(state, indent=2, sort_keys=True))
        return
    connection = state.get("connection", {})
    version = f"rarp-announce {state['version']}" if state.get("version") else "rarp-announce (version unknown)"
    typer.echo(f"{version}  daemon pid {state.get('pid')}  libvirt {state.get('uri')}: {connection.get('state')}"
               f" (reconnects {connection.get('reconnects', 0)})")
    if connection.get("last_error"):
        typer.echo(f"  last error: {connection['last_error']}")
    typer.echo(f"incoming: {len(state.get('incoming', []))}  parked: {len(state.get('parked', []))}"
               f"  schedules in flight: {len(state.get('in_flight', []))}  targets waiting: {len(state.get('pending', []))}")
    counters = state.get("counters", {})
    if counters:
        typer.echo("counters: " + ", ".join(f"{key} {value}" for key, value in sorted(counters.items())))
    recent = state.get("last_announcements", [])
    if recent:
        typer.echo("last announcements:")
        for item in recent[-10:]:
            vlan = item.get("vlan") if item.get("vlan") is not None else "-"
            typer.echo(f"  {item.get('domain')}  {item.get('mac')}  {item.get('device')} vlan {vlan}  {item.get('trigger')}")
