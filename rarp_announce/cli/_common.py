"""The typer app and what every command shares: options, error reporting, one announcement run.

Only typer and the standard library load at import: scapy and libvirt cost 0.4-2 s and are
imported inside the commands that need them, so --help and the hook's helpers stay fast.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from rarp_announce.errors import AnnounceError
from rarp_announce.names import one_line
from rarp_announce.textio import output_failure

if TYPE_CHECKING:
    from rarp_announce.announce.schedule import Schedule
    from rarp_announce.config import Config
    from rarp_announce.model import FrameEvent, Target
    from rarp_announce.transport.base import Sink


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
                try:
                    error.show()
                except (OSError, ValueError):
                    pass  # stderr is full or gone: the exit code still says it
                sys.exit(error.exit_code)
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            _say_error(f"{one_line(error.format_message())}{where}")
            sys.exit(error.exit_code)
        except exceptions.ClickException as error:
            _say_error(one_line(error.format_message()))
            sys.exit(error.exit_code)
        except typer.Abort:
            _say("rarp-announce: aborted")
            sys.exit(1)
        except SystemExit as exit_:
            # click's main() ends a broken pipe (EPIPE) itself with exit code 1, before we see the
            # error: apply our rule instead (the reported failure's code, else the reader left: 0).
            broken = exit_.__context__
            if exit_.code == 1 and isinstance(broken, OSError) and broken.errno == errno.EPIPE:
                reported = _reported_error(broken)
                sys.exit(reported.exit_code if reported is not None else 0)
            raise
        except OSError as error:
            _quiet_stdout()
            reported = _reported_error(error)
            if reported is not None:
                # stderr failed while the command said why it failed: that failure's code stands
                # (a closed stderr pipe must not turn an input error into success).
                sys.exit(reported.exit_code)
            if isinstance(error, BrokenPipeError):
                sys.exit(0)  # the reader left (`| head`): nothing more to say to it
            # Writing the report failed (a full disk, a closed descriptor): one line, not a traceback.
            _say_error(f"cannot write the output: {error.strerror or error}")
            sys.exit(1)
        code = code if type(code) is int else 0
        failure = output_failure()
        if failure is not None:
            _say_error(f"cannot write the output: {failure.strerror or failure} (the frames themselves were sent)")
            code = code or 1
        sys.exit(code)


def _reported_error(error: BaseException) -> AnnounceError | None:
    """The AnnounceError a command was reporting when writing failed (`fail()` inside `except`)."""
    seen = 0
    context = error.__context__
    while context is not None and seen < 10:  # bounded: a context chain is short
        if isinstance(context, AnnounceError):
            return context
        context, seen = context.__context__, seen + 1
    return None


def _quiet_stdout() -> None:
    from rarp_announce.textio import mute

    if sys.stdout is not None:
        mute(sys.stdout)


def _say_error(text: str) -> None:
    _say(f"rarp-announce: error: {text}")


def _say(line: str) -> None:
    try:
        typer.echo(line, err=True)
    except (OSError, ValueError, AttributeError):
        pass  # stderr is full or gone too: the exit code is all that is left


def _click_exceptions():
    try:
        from typer._click import exceptions  # typer >= 0.22 vendors click
    except ImportError:  # older typer depends on click itself
        from click import exceptions  # type: ignore[no-redef, import-not-found, unused-ignore]
    return exceptions


app = _App(
    name="rarp-announce",
    help=(
        "Broadcast QEMU-style RARP announcements for live-migrated libvirt guests, so that "
        "switches move each vNIC MAC to this host's port at once.\n\n"
        "Example: rarp-announce send 52:54:00:12:34:56 --iface br0 --vlan 100"
    ),
    no_args_is_help=True,
    # typer's own --install-completion / --show-completion: --help imports the same modules with
    # it as without, and its time stays within the noise (20 runs each, ~80 ms median).
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain click help: rich would add ~100 ms to every --help for colours.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from rarp_announce import __version__

        typer.echo(f"rarp-announce {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """The options before any command (typer calls this, then the command)."""


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

    from rarp_announce.announce.schedule import Schedule

    base = base or Schedule()
    overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(base, **overrides)


def make_sink(pcap: str | None, dry_run: bool, config: Config) -> Sink:
    """The sink the options ask for: a pcap file, a dry run, or the network."""
    if pcap is not None and dry_run:
        from rarp_announce.errors import InputError

        raise InputError("--pcap and --dry-run exclude each other: choose one")
    if pcap is not None:
        from rarp_announce.transport.pcap import PcapSink

        return PcapSink(pcap)
    if dry_run:
        from rarp_announce.transport.dryrun import DryRunSink

        return DryRunSink(sys.stdout)
    from rarp_announce.transport.wire import WireSink

    return WireSink(config.ovs.endpoint)


class FrameTally:
    """A frame observer: how many frames left, why each failed one did not, and what each bridge
    FDB step did (a refused one is a failure too: the guest stays unreachable from this host's
    bridge, though its frames went out)."""

    def __init__(self) -> None:
        self.sent = 0
        self.failures: list[str] = []
        self.fdb: list[str] = []

    def __call__(self, event: FrameEvent) -> None:
        if event.type == "fdb":
            port = event.target.bridge_port
            where = port.label if port is not None else event.target.route
            if event.error:
                self.failures.append(f"bridge FDB for {event.target.mac} on {where} not written "
                                     f"(the frames were sent): {event.error}")
            else:
                line = f"bridge FDB on {where}: {event.detail}"
                if line not in self.fdb:  # a trunk's VLANs share one entry on a bridge without VLAN filtering
                    self.fdb.append(line)
            return
        if event.error:
            self.failures.append(f"{route_label(event.target)}: {event.error}")
        else:
            self.sent += 1


def route_label(target: Target) -> str:
    """How a message names a target's route: device 'br0', or OVS port '...'."""
    return f"{'device' if target.ovs is None else 'OVS port'} {target.route!r}"


def ovs_snapshot(config: Config, timeout: float) -> tuple[Any, str | None]:
    """One read of the OVS database for a command (outside any event loop): (snapshot, None), or
    (None, why not); (None, None) when the config says never to read it."""
    from rarp_announce.resolve.ovsdb import OvsdbUnavailable, read_once

    remote = config.ovs.remote()
    if remote is None:
        return None, None
    try:
        return read_once(remote, timeout=timeout), None
    except OvsdbUnavailable as exc:
        return None, exc.reason


async def openflow_port_once(config: Config, bridge: str, port: str) -> int | None:
    """A port's OpenFlow number asked of its bridge on a connection of its own, for a command."""
    from rarp_announce.transport.openflow import OpenFlowSink

    lookup = OpenFlowSink(config.ovs.endpoint)
    try:
        return await lookup.port_number(bridge, port)
    finally:
        lookup.close()


def summary_line(targets: Sequence[Target], sink: Sink, sent: int, schedule: Schedule) -> str:
    from rarp_announce.transport.pcap import PcapSink

    routes = sorted({t.route for t in targets})
    where = f"to {sink.path}" if isinstance(sink, PcapSink) else "on " + ", ".join(routes)
    return f"announced {len({t.mac for t in targets})} MAC(s) {where}: {sent} frame(s) over {schedule.duration:.3f} s"


def report_summary(targets: Sequence[Target], sink: Sink, tally: FrameTally, schedule: Schedule) -> None:
    """What each bridge FDB step did, then the summary line (stdout, text mode)."""
    from rarp_announce.textio import emit_line

    for line in tally.fdb:
        emit_line(sys.stdout, line)
    emit_line(sys.stdout, summary_line(targets, sink, tally.sent, schedule))


def report_failures(tally: FrameTally) -> int:
    if tally.failures:
        typer.echo(f"rarp-announce: error: {tally.failures[0]} ({len(tally.failures)} frame(s) failed)", err=True)
        return 1
    return 0


def run_announcement(
    targets: Sequence[Target],
    schedule: Schedule,
    sink: Sink,
    *,
    as_json: bool,
    check: bool = True,
) -> int:
    """`send`: check every route (the readiness check), announce on one schedule, report each frame."""
    import asyncio

    from rarp_announce.announce.engine import Announcer
    from rarp_announce.cli._report import frame_reporter
    from rarp_announce.errors import DeviceError
    from rarp_announce.resolve.hostnet import device_problems
    from rarp_announce.transport.dryrun import DryRunSink

    tally = FrameTally()
    observers = [tally] + ([frame_reporter()] if as_json else [])

    async def _run() -> None:
        announcer = Announcer(sink, observers=observers)
        problems = await device_problems({t.device for t in targets if t.ovs is None}) if check else {}
        problems.update(await announcer.prepare(t for t in targets if t.route not in problems))
        if problems:
            route, reason = next(iter(problems.items()))
            raise DeviceError(route, reason)
        announcer.announce(targets, schedule, trigger="cli")
        await announcer.drain()

    try:
        asyncio.run(_run())
    except KeyboardInterrupt:
        return 130
    finally:
        sink.close()
    if not as_json and not isinstance(sink, DryRunSink):
        report_summary(targets, sink, tally, schedule)
    return report_failures(tally)
