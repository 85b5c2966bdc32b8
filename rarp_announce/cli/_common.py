"""The typer app and what every command shares: options, error reporting, one announcement run.

Only typer and the standard library load at import: scapy and libvirt cost 0.4-2 s and are
imported inside the commands that need them, so --help and the hook's helpers stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

from rarp_announce.errors import AnnounceError

if TYPE_CHECKING:
    from rarp_announce.announcer import FrameEvent, Target
    from rarp_announce.schedule import Schedule
    from rarp_announce.transport import Sink


class _App(typer.Typer):
    """A typer app whose usage errors are one line on stderr, like every other error of this tool.

    Click prints usage, a hint and the error over several lines (in a box with rich); operators
    and scripts read one line. A command ends with `raise typer.Exit(code)` or returns None (0).
    """

    def __call__(self, *args, **kwargs):
        if "standalone_mode" in kwargs:  # a caller that wants click's own handling gets it
            return super().__call__(*args, **kwargs)
        exceptions = _click_exceptions()
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except exceptions.UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # bare `rarp-announce`: the help teaches
                error.show()
                sys.exit(error.exit_code)
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            typer.echo(f"rarp-announce: error: {_one_line(error.format_message())}{where}", err=True)
            sys.exit(error.exit_code)
        except exceptions.ClickException as error:
            typer.echo(f"rarp-announce: error: {_one_line(error.format_message())}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("rarp-announce: aborted", err=True)
            sys.exit(1)
        sys.exit(code if type(code) is int else 0)


def _click_exceptions():
    try:
        from typer._click import exceptions  # typer >= 0.22 vendors click
    except ImportError:  # older typer depends on click itself
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def _one_line(text: str) -> str:
    return " ".join(text.split())


app = _App(
    name="rarp-announce",
    help=(
        "Broadcast QEMU-style RARP announcements for live-migrated libvirt guests, so that "
        "switches move each vNIC MAC to this host's port at once.\n\n"
        "Example: rarp-announce send 52:54:00:12:34:56 --iface br0 --vlan 100"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich would add ~100 ms to every --help for colours.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def fail(error: AnnounceError) -> NoReturn:
    """One line on stderr and the error's exit code; never a traceback."""
    typer.echo(f"rarp-announce: error: {error}", err=True)
    raise typer.Exit(error.exit_code)


# Schedule options shared by every command that announces.
InitialOpt = Annotated[Optional[int], typer.Option("--initial", metavar="MS", help="First gap in ms (QEMU announce-initial; default 50).", show_default=False)]
MaxOpt = Annotated[Optional[int], typer.Option("--max", metavar="MS", help="Largest gap in ms (QEMU announce-max; default 550).", show_default=False)]
RoundsOpt = Annotated[Optional[int], typer.Option("--rounds", metavar="N", help="Frames per burst (QEMU announce-rounds; default 5).", show_default=False)]
StepOpt = Annotated[Optional[int], typer.Option("--step", metavar="MS", help="Gap increase per round in ms (QEMU announce-step; default 100).", show_default=False)]
RepeatOpt = Annotated[Optional[int], typer.Option("--repeat", metavar="N", help="Repeat the whole burst N times, for fabrics that need longer (Nova's workaround; default 1).", show_default=False)]
RepeatIntervalOpt = Annotated[Optional[float], typer.Option("--repeat-interval", metavar="S", help="Seconds between the starts of two bursts (default 1.0).", show_default=False)]
ConnectOpt = Annotated[Optional[str], typer.Option("--connect", "-c", metavar="URI", help="libvirt URI. Default: the config's `connect`, else $LIBVIRT_DEFAULT_URI, else qemu:///system.")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", metavar="FILE", help="TOML config file. Default: /etc/rarp-announce/config.toml when it exists.")]
PcapOpt = Annotated[Optional[str], typer.Option("--pcap", help="Write the frames to this pcap file instead of the wire.", metavar="FILE")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be sent and when; send nothing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line instead of text.")]


def schedule_from_options(base: Schedule | None = None, **given: int | float | None) -> Schedule:
    """A Schedule from the defaults (or `base`), overridden by the options actually given."""
    import dataclasses

    from rarp_announce.schedule import Schedule

    base = base or Schedule()
    overrides = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(base, **overrides)


def make_sink(pcap: str | None, dry_run: bool) -> Sink:
    from rarp_announce import transport

    if pcap and dry_run:
        from rarp_announce.errors import InputError

        raise InputError("--pcap and --dry-run exclude each other: choose one")
    if pcap:
        return transport.PcapSink(pcap)
    if dry_run:
        return transport.DryRunSink(sys.stdout)
    return transport.RawSocketSink()


def run_announcement(
    targets: Sequence[Target],
    schedule: Schedule,
    sink: Sink,
    *,
    as_json: bool,
    trigger: str = "cli",
    domain: str | None = None,
) -> int:
    """Announce `targets` on one schedule, reporting every frame; returns the exit code."""
    import asyncio

    from rarp_announce.announcer import Announcer
    from rarp_announce.errors import DeviceError
    from rarp_announce.report import frame_reporter
    from rarp_announce.transport import DryRunSink, PcapSink, emit_line

    failures: list[str] = []
    sent = 0

    def tally(event: FrameEvent) -> None:
        nonlocal sent
        if event.error:
            failures.append(f"device {event.target.device!r}: {event.error}")
        else:
            sent += 1

    observers = [tally]
    if as_json:
        observers.append(frame_reporter(True))

    async def _run() -> None:
        announcer = Announcer(sink, observers=observers)
        problems = announcer.prepare(targets)
        if problems:
            device, reason = next(iter(problems.items()))
            raise DeviceError(device, reason)
        announcer.announce(targets, schedule, trigger=trigger, domain=domain)
        await announcer.drain()

    try:
        asyncio.run(_run())
    except KeyboardInterrupt:
        return 130
    finally:
        sink.close()
    if not as_json and not isinstance(sink, DryRunSink):
        devices = sorted({t.device for t in targets})
        where = f"to {sink.path}" if isinstance(sink, PcapSink) else "on " + ", ".join(devices)
        emit_line(sys.stdout, f"announced {len({t.mac for t in targets})} MAC(s) {where}: {sent} frame(s) over {schedule.duration:.3f} s")
    if failures:
        typer.echo(f"rarp-announce: error: {failures[0]} ({len(failures)} frame(s) failed)", err=True)
        return 1
    return 0
