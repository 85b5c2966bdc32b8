"""`rarp-announce send` and `rarp-announce sniff`: announce MACs by hand, and watch what reaches a port."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rarp_announce.cli._common import (
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
from rarp_announce.errors import AnnounceError


@app.command()
def send(
    macs: Annotated[list[str], typer.Argument(metavar="MAC", help="vNIC MACs: 52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456.", show_default=False)],
    iface: Annotated[str, typer.Option("--iface", "-i", metavar="DEV", help="Host device the frames leave on (a bridge or uplink, never a guest's vnetX tap).")],
    vlan: Annotated[Optional[int], typer.Option("--vlan", metavar="N", help="Tag the frames with this 802.1Q VLAN id (1..4094).")] = None,
    priority: Annotated[int, typer.Option("--priority", metavar="P", help="802.1p priority (0..7) in the tag; needs --vlan.")] = 0,
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
    """Announce MACs on a device now, on QEMU's schedule (0/50/200/450/800 ms by default).

    All MACs share one schedule: every round sends one frame per MAC together.

    Examples:

      rarp-announce send 52:54:00:12:34:56 --iface br0 --vlan 100

      rarp-announce send 5254.0012.3456 52:54:00:ab:cd:ef --iface bond0 --repeat 3 --json

      rarp-announce send 52:54:00:12:34:56 --iface br0 --pcap /tmp/rarp.pcap
    """
    from rarp_announce.announcer import Target
    from rarp_announce.frames import check_vlan
    from rarp_announce.mac import normalize_mac

    try:
        targets = [Target(normalize_mac(mac), iface, vlan, "manual", "", priority) for mac in macs]
        check_vlan(vlan, priority)
        schedule = schedule_from_options(
            initial_ms=initial, max_ms=max_, rounds=rounds, step_ms=step, repeat=repeat, repeat_interval_s=repeat_interval
        )
        sink = make_sink(pcap, dry_run)
        code = run_announcement(targets, schedule, sink, as_json=json_)
    except AnnounceError as error:
        fail(error)
    raise typer.Exit(code)


@app.command()
def sniff(
    iface: Annotated[str, typer.Option("--iface", "-i", metavar="DEV", help="Device to listen on (a bridge, uplink or switch port).")],
    count: Annotated[int, typer.Option("--count", "-c", metavar="N", help="Stop after N RARP frames (0: no limit).", min=0)] = 0,
    timeout: Annotated[Optional[float], typer.Option("--timeout", "-t", metavar="S", help="Stop after S seconds.", min=0)] = None,
    json_: JsonOpt = False,
) -> None:
    """Print each RARP frame seen on a device, tagged or not, and whether it has QEMU's exact shape.

    Use it to check what reaches a port. Exit 1 when --count frames did not arrive in time.

    Example: rarp-announce sniff --iface br0 --count 5 --timeout 10
    """
    from rarp_announce.sniff import sniff_rarp

    try:
        seen = sniff_rarp(iface, count=count, timeout=timeout, as_json=json_)
    except AnnounceError as error:
        fail(error)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    if count and seen < count:
        typer.echo(f"rarp-announce: error: saw {seen} of {count} RARP frame(s) on {iface} before the timeout", err=True)
        raise typer.Exit(1)
