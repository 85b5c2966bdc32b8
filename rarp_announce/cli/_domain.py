"""`rarp-announce domain`: one arrival, announced now through the arrival table the daemon uses.

Imported only when the command runs: the table pulls in asyncio and the announce engine, which
`--help` and every other command do without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from rarp_announce.announce.arrivals import Arrival, ArrivalSettings, ArrivalTable, Observer
from rarp_announce.announce.engine import Announcer
from rarp_announce.cli._common import FrameTally, report_failures, report_summary, route_label
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.model import RefusedAddress, Resolution, Target

if TYPE_CHECKING:
    from rarp_announce.config import Config
    from rarp_announce.transport.base import Sink


class _Report(Observer):
    """What `domain` says on stderr: skipped vNICs, notes, and each route it could not use."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}
        self.refused: set[RefusedAddress] = set()

    def resolved(self, arrival: Arrival, resolution: Resolution) -> None:
        for skipped in resolution.skipped:
            typer.echo(f"rarp-announce: note: skipped {skipped.interface} ({skipped.kind}): {skipped.reason}", err=True)
        for note in resolution.notes:
            typer.echo(f"rarp-announce: note: {note}", err=True)
        for refused in resolution.refused:
            if refused in self.refused:
                continue  # said once: a retry's resolution repeats it
            self.refused.add(refused)
            typer.echo(f"rarp-announce: note: refused {refused.mac} {refused.ip} ({refused.source}): "
                       f"{refused.reason}: {refused.detail}", err=True)

    def resolve_failed(self, arrival: Arrival, error: str) -> None:
        typer.echo(f"rarp-announce: error: domain {arrival.name!r}: {error}", err=True)

    def waiting(self, arrival: Arrival, target: Target, reason: str, timeout: float) -> None:
        if timeout > 0:
            typer.echo(f"rarp-announce: note: {route_label(target)} not ready ({reason}); waiting up to {timeout:g} s",
                       err=True)

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None:
        typer.echo(f"rarp-announce: note: {route_label(target)} ready after {waited:.3f} s", err=True)

    def guest_announced(self, arrival: Arrival, problem: str | None) -> None:
        if problem is not None:
            typer.echo(f"rarp-announce: note: guest announce failed: {problem}", err=True)

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None:
        if target.route not in self.failed:
            self.failed[target.route] = reason
            typer.echo(f"rarp-announce: error: {route_label(target)}: {reason}", err=True)


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


async def announce_domain(dom: Any, document: str, config: Config, settings: ArrivalSettings, conn: Any,
                          sink: Sink, *, as_json: bool) -> int:
    """The arrival table, as the daemon uses it, for one arrival of `dom` announced now."""
    from rarp_announce.cli._report import frame_reporter
    from rarp_announce.resolve.host import command_resolver

    name, uuid = dom.name(), dom.UUIDString()
    tally = FrameTally()
    announcer = Announcer(sink, observers=[tally] + ([frame_reporter()] if as_json else []))
    host = command_resolver(config, conn, sink.port_number)
    resolver: Any = _Offline(host) if sink.offline else host
    report = _Report()
    table = ArrivalTable(announcer, resolver, settings, observers=[report])
    # The live replica, as the daemon has it (with --wait, a port rewired meanwhile is seen);
    # only for a domain with a vNIC on Open vSwitch: a host without it is never asked.
    view = host.follow_ovs(table.ovs_changed) if await host.needs_ovs(document) else None
    if view is not None and not await view.start(timeout=1.0):
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
    if not as_json:
        report_summary(announced, sink, tally, settings.schedule)
    return report_failures(tally) or (1 if report.failed or len(announced) < len(entry.targets) else 0)
