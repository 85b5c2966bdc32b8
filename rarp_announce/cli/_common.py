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
    from rarp_announce.schedule import Schedule
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
InitialOpt = Annotated[Optional[int], typer.Option("--initial", metavar="MS", help="First gap in ms (QEMU announce-initial; default: the config's [schedule] initial, else 50).", show_default=False)]
MaxOpt = Annotated[Optional[int], typer.Option("--max", metavar="MS", help="Largest gap in ms (QEMU announce-max; default: the config's [schedule] max, else 550).", show_default=False)]
RoundsOpt = Annotated[Optional[int], typer.Option("--rounds", metavar="N", help="Frames per burst (QEMU announce-rounds; default: the config's [schedule] rounds, else 5).", show_default=False)]
StepOpt = Annotated[Optional[int], typer.Option("--step", metavar="MS", help="Gap increase per round in ms (QEMU announce-step; default: the config's [schedule] step, else 100).", show_default=False)]
RepeatOpt = Annotated[Optional[int], typer.Option("--repeat", metavar="N", help="Repeat the whole burst N times, for fabrics that need longer (Nova's workaround; default: [schedule] repeat, else 1).", show_default=False)]
RepeatIntervalOpt = Annotated[Optional[float], typer.Option("--repeat-interval", metavar="S", help="Seconds between the starts of two bursts (default: [schedule] repeat_interval, else 1.0).", show_default=False)]
ConnectOpt = Annotated[Optional[str], typer.Option("--connect", "-c", metavar="URI", help="libvirt URI. Default: the config's `connect`, else $LIBVIRT_DEFAULT_URI, else qemu:///system.")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", metavar="FILE", help="TOML config file. Default: /etc/rarp-announce/config.toml when it exists.")]
PcapOpt = Annotated[Optional[str], typer.Option("--pcap", help="Write the frames to this pcap file instead of the wire.", metavar="FILE")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be sent and when; send nothing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line instead of text.")]


def schedule_from_options(base: Schedule, **given: int | float | None) -> Schedule:
    """The config's schedule (`base`), overridden by the options actually given: every command
    that announces reads [schedule] the way the daemon does."""
    import dataclasses

    overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(base, **overrides)


def open_command_sink(pcap: str | None, dry_run: bool, config: Config) -> Sink:
    """The sink the options ask for (transport.open_sink): a pcap file, a dry run, or the network."""
    from rarp_announce.transport.factory import open_sink

    return open_sink(pcap=pcap, dry_run=dry_run, openflow_endpoint=config.ovs.endpoint, stream=sys.stdout)


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


def summary_line(targets: Sequence[Target], sink: Sink, sent: int, schedule: Schedule) -> str:
    where = sink.destination({t.route for t in targets})
    return f"announced {len({t.mac for t in targets})} MAC(s) {where}: {sent} frame(s) over {schedule.duration:.3f} s"


def report_summary(targets: Sequence[Target], sink: Sink, tally: FrameTally, schedule: Schedule) -> None:
    """What each bridge FDB step did, then the summary line (stdout, text mode); nothing for a
    sink that showed each frame itself (the dry run)."""
    from rarp_announce.textio import emit_line

    if sink.prints_frames:
        return
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
) -> int:
    """`send`: find OVS ports' numbers the database did not give (on the sink's own connection),
    check every route (the readiness check, not for an offline sink), announce on one schedule,
    report each frame."""
    import asyncio

    from rarp_announce.announce.engine import Announcer
    from rarp_announce.cli._report import frame_reporter
    from rarp_announce.errors import DeviceError
    from rarp_announce.resolve.hostnet import device_problems

    tally = FrameTally()
    observers = [tally] + ([frame_reporter()] if as_json else [])

    async def _run() -> None:
        routed = [await _with_ofport(t, sink) for t in targets]
        announcer = Announcer(sink, observers=observers)
        problems = {} if sink.offline else await device_problems({t.device for t in routed if t.ovs is None})
        problems.update(await announcer.prepare(t for t in routed if t.route not in problems))
        if problems:
            route, reason = next(iter(problems.items()))
            raise DeviceError(route, reason)
        announcer.announce(routed, schedule, trigger="cli")
        await announcer.drain()

    try:
        asyncio.run(_run())
    except KeyboardInterrupt:
        return 130
    finally:
        sink.close()
    if not as_json:
        report_summary(targets, sink, tally, schedule)
    return report_failures(tally)


async def _with_ofport(target: Target, sink: Sink) -> Target:
    """`target` with its OVS port's OpenFlow number asked of the bridge when OVSDB did not give it
    (`send --port` on a host whose OVSDB is unreadable); an offline sink leaves it unknown."""
    import dataclasses

    from rarp_announce.errors import InputError

    port = target.ovs
    if port is None or port.ofport is not None or sink.offline:
        return target
    number = await sink.port_number(port.bridge, port.name)
    if number is None:
        raise InputError(f"no port {port.name} on Open vSwitch bridge {port.bridge} "
                         f"(check: ovs-vsctl list-ports {port.bridge})")
    return dataclasses.replace(target, ovs=dataclasses.replace(port, ofport=number))
