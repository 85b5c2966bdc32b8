"""`rarp-announce doctor`: what on this host would stop an announcement, one line per check."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from rarp_announce.cli._common import ConfigOpt, ConnectOpt, app, fail
from rarp_announce.errors import AnnounceError


@app.command()
def doctor(
    domain: Annotated[Optional[str], typer.Option("--domain", "-d", metavar="NAME", help="Also check every target of this running domain, and only its bridges.")] = None,
    json_: Annotated[bool, typer.Option("--json", help='One JSON object: {"checks": [{"group", "status", "what", "why", "fix"}], "counts": {...}, "exit": N}.')] = False,
    connect: ConnectOpt = None,
    config_path: ConfigOpt = None,
    hooks_dir: Annotated[str, typer.Option("--hooks-dir", metavar="DIR", help="libvirt's hooks directory to look for the hook in.")] = "/etc/libvirt/hooks",
    frr_vty: Annotated[Optional[str], typer.Option("--frr-vty", metavar="DIR", help="FRR's vty socket folder, for an FRR that is not the host's default (vtysh --vty_socket).")] = None,
) -> None:
    """Check this host as an expert would: daemon or hook, capabilities, bridges, firewall, OVS,
    EVPN, address sources and (with --domain) a domain's targets.

    One line per check, "ok / info / warn / fail / skip: what: why it matters; fix: how".
    Works when libvirt is down too (the bridges are still checked).

    Examples:

      rarp-announce doctor

      rarp-announce doctor --domain web01 --json

    Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 bad input.
    """
    from rarp_announce.config import load_config
    from rarp_announce.doctor.report import exit_code, record, summary_line
    from rarp_announce.doctor.run import Visit, run_doctor
    from rarp_announce.textio import emit_line

    try:
        config = load_config(config_path)
        checks = run_doctor(Visit(config, connect=connect, domain=domain, hooks_dir=hooks_dir, frr_vty=frr_vty))
    except AnnounceError as error:
        fail(error)
    if json_:
        emit_line(sys.stdout, json.dumps(record(checks)))
    else:
        for check in checks:
            emit_line(sys.stdout, check.line())
        emit_line(sys.stdout, summary_line(checks))
    raise typer.Exit(exit_code(checks))
