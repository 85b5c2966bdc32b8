"""Every frame of one lab migration, for its timeline: the client's frames sent and where each was
delivered (the source host's guest tap, the destination's, or nowhere: lost), QEMU's RARPs and
ours on the destination, the destination bridge's FDB entry on the guest's tap, and the wiring.

Gathered by the lab after each migration (session.py) from what it already watches: the
client's send times (traffic.ClientTraffic), each host's guest taps (traffic.Delivered), the
destination's RARP sniffer (observe.Sniffer) and bridge FDB notifications (fdbwatch.FdbWatch).
Plain data, standard library only: lab/timeline.py draws it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rarp_announce.lab.fdbwatch import FdbEvent
from rarp_announce.lab.observe import Seen
from rarp_announce.lab.traffic import Arrived


@dataclass
class ClientTrace:
    """One vNIC's client frames across one migration."""

    mac: str
    bridge: str  # br0 or ovsbr0
    sent: list[tuple[int, float]] = field(default_factory=list)  # (sequence, sent at)
    at_source: dict[int, float] = field(default_factory=dict)  # sequence -> written to the source's tap
    at_destination: dict[int, float] = field(default_factory=dict)  # ... to the destination's tap
    refused: frozenset[int] = frozenset()  # never left the client (a full queue): not lost
    paused: float | None = None  # the guest paused on the source: its tap is read no more

    def lost(self) -> list[tuple[int, float]]:
        """Frames sent that reached neither guest: not the destination's tap, and not the source's
        while the guest still ran there (QEMU reads no tap while paused, and the paused source
        QEMU is ended after the switch-over: what its tap was handed then is gone)."""
        return [(seq, at) for seq, at in self.sent
                if seq not in self.refused and seq not in self.at_destination and not self._ran_at_source(seq)]

    def _ran_at_source(self, sequence: int) -> bool:
        delivered = self.at_source.get(sequence)
        return delivered is not None and (self.paused is None or delivered < self.paused)

    def first_at_destination(self, since: float) -> float | None:
        return min((at for at in self.at_destination.values() if at >= since), default=None)


@dataclass
class MigrationTrace:
    start: float  # the migration's start (wall clock)
    end: float  # when the lab stopped looking
    resumed: float | None
    wired: float | None  # the OVS port's late wiring, if any
    paused: float | None = None  # SUSPENDED on the source: the guest stopped running there
    clients: dict[str, ClientTrace] = field(default_factory=dict)
    qemu: list[tuple[float, str]] = field(default_factory=list)  # QEMU's RARPs entering the destination's bridges
    ours: list[tuple[float, str]] = field(default_factory=list)  # our frames leaving the destination
    fdb: dict[str, float] = field(default_factory=dict)  # MAC -> destination bridge's entry first on the guest's tap


def gather(*, start: float, end: float, resumed: float | None, wired: float | None, paused: float | None,
           nics: Iterable[tuple[str, str]], sent: list[tuple[int, float]], refused: Iterable[tuple[str, int]],
           at_source: Iterable[Arrived], at_destination: Iterable[Arrived], host_seen: Iterable[Seen],
           fdb_events: Iterable[FdbEvent], taps: dict[str, str]) -> MigrationTrace:
    """The trace of one migration; `nics` are (MAC, bridge); `taps` MAC -> its tap on the
    destination (where the bridge FDB entry must point)."""
    trace = MigrationTrace(start, end, resumed, wired, paused)
    refused_by_mac: dict[str, set[int]] = {}
    for mac, sequence in refused:
        refused_by_mac.setdefault(mac, set()).add(sequence)
    for mac, bridge in nics:
        trace.clients[mac] = ClientTrace(mac, bridge, list(sent), refused=frozenset(refused_by_mac.get(mac, ())),
                                         paused=paused)
    for arrivals, side in ((at_source, "at_source"), (at_destination, "at_destination")):
        for arrived in arrivals:
            client = trace.clients.get(arrived.mac)
            if client is None or not start <= arrived.time <= end or arrived.sequence < 0:
                continue
            delivered: dict[int, float] = getattr(client, side)
            delivered.setdefault(arrived.sequence, arrived.time)
    for seen in host_seen:
        if seen.mac in trace.clients and start <= seen.time <= end:
            (trace.ours if seen.sent else trace.qemu).append((seen.time, seen.mac))
    for event in fdb_events:
        if event.mac in trace.clients and taps.get(event.mac) == event.device and start <= event.time <= end:
            trace.fdb.setdefault(event.mac, event.time)
    return trace
