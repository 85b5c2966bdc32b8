"""What one lab migration showed: frames on the wire, the switch, the destination's own bridges,
and the only thing a user cares about: whether traffic for the guest reaches the guest.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rarp_announce.lab.agent import Rewiring

if TYPE_CHECKING:
    from rarp_announce.lab.evpn import EvpnMove
    from rarp_announce.lab.observe import Seen
    from rarp_announce.lab.frametrace import MigrationTrace

NOMINAL_MS = (0.0, 50.0, 200.0, 450.0, 800.0)


@dataclass
class NicOutcome:
    """One vNIC after one migration, seen from the destination host."""

    mac: str
    bridge: str  # br0 or ovsbr0
    tap: str | None = None  # the guest's tap on the destination (libvirt's live <target dev>)
    bridge_port: str | None = None  # where the destination's bridge has learned the MAC
    bridge_state: str | None = None  # Linux bridge: dynamic, static or permanent (= local: swallowed by the host)
    bridge_vlan: int | None = None
    trace: str | None = None  # OVS: what ofproto/trace says a frame for the guest does
    delivered: float | None = None  # first client frame written to the guest's tap (wall clock)

    @property
    def on_guest_port(self) -> bool:
        """The destination's bridge sends the guest's traffic to the guest's tap (never LOCAL)."""
        if self.bridge == "ovsbr0":
            return self.bridge_port == self.tap and self.trace == "learned"
        # A Linux bridge learns nothing from frames sent on the bridge device: the MAC is on the
        # guest's tap because QEMU's RARP entered through it (when let through) or because the
        # announcer wrote the entry there first. It must be dynamic: a permanent entry is local
        # (the host swallows the guest's traffic) and neither it nor a static one ever moves.
        return self.bridge_port == self.tap and self.bridge_state == "dynamic"


@dataclass
class Migration:
    number: int
    source: str
    destination: str
    started: float
    duration: float = 0.0
    resumed: float | None = None  # RESUMED as the lab's libvirt client received it (late under load)
    qemu_resumed: float | None = None  # QEMU's own stamp of its RESUME event: when the guest resumed
    qemu_first: float | None = None
    qemu_frames: int = 0  # QEMU's own RARPs seen entering the destination's bridges from its taps
    qemu_last: float | None = None  # ... the last of them
    qemu_by_mac: dict[str, int] = field(default_factory=dict)  # ... per MAC
    sent_first: float | None = None  # our first frame as it left the destination host
    frames: list[Seen] = field(default_factory=list)  # RARPs seen at the switch, from the destination
    stray: list[Seen] = field(default_factory=list)  # RARPs seen at the switch from the source: must stay empty
    moved: dict[str, str | None] = field(default_factory=dict)  # mac -> switch port afterwards
    expected: dict[str, str] = field(default_factory=dict)  # mac -> destination switch port
    bad_frames: list[str] = field(default_factory=list)
    fdb_before: list[tuple[str, str]] = field(default_factory=list)  # the switch's (port, MAC)
    fdb_after: list[tuple[str, str]] = field(default_factory=list)
    nics: dict[str, NicOutcome] = field(default_factory=dict)
    rewiring: Rewiring | None = None
    ovs_mac: str | None = None
    router: dict[str, str] = field(default_factory=dict)  # guest IP -> MAC the router learned for it
    trace: MigrationTrace | None = None  # every frame, for the timeline (frametrace.py, timeline.py)
    evpn: list[EvpnMove] = field(default_factory=list)  # fabric "evpn": what VTEP c did for each br0 vNIC

    @property
    def first(self) -> float | None:
        return min((s.time for s in self.frames), default=None)

    def first_of(self, mac: str) -> float | None:
        return min((s.time for s in self.frames if s.mac == mac), default=None)

    @property
    def lag_resumed_ms(self) -> float | None:
        return None if self.first is None or self.resumed is None else (self.first - self.resumed) * 1000

    @property
    def lag_qemu_resumed_ms(self) -> float | None:
        """Our first frame at the switch after QEMU's own stamp of the guest's resume (one clock)."""
        return None if self.first is None or self.qemu_resumed is None else (self.first - self.qemu_resumed) * 1000

    @property
    def lag_qemu_ms(self) -> float | None:
        return None if self.first is None or self.qemu_first is None else (self.first - self.qemu_first) * 1000

    @property
    def lag_qemu_host_ms(self) -> float | None:
        """Our first frame leaving the destination vs QEMU's entering from its tap: both seen in
        the destination's netns, free of the hop to the switch."""
        if self.sent_first is None or self.qemu_first is None:
            return None
        return (self.sent_first - self.qemu_first) * 1000

    def traffic_ms(self, mac: str) -> float | None:
        """From the RESUMED event to the first client frame reaching the guest on its new host."""
        nic = self.nics.get(mac)
        if nic is None or nic.delivered is None or self.resumed is None:
            return None
        return (nic.delivered - self.resumed) * 1000

    @property
    def wired(self) -> float | None:
        return self.rewiring.wired_at if self.rewiring is not None else None

    @property
    def traffic_after_wiring_ms(self) -> float | None:
        """Late wiring: from the rewiring command's return to the OVS vNIC's first client frame."""
        if self.ovs_mac is None or self.wired is None:
            return None
        nic = self.nics.get(self.ovs_mac)
        return None if nic is None or nic.delivered is None else (nic.delivered - self.wired) * 1000

    @property
    def frame_after_wiring_ms(self) -> float | None:
        """Late wiring: from the rewiring command's start to our first OVS frame at the switch."""
        if self.ovs_mac is None or self.rewiring is None or self.rewiring.wired_start is None:
            return None
        first = self.first_of(self.ovs_mac)
        return None if first is None else (first - self.rewiring.wired_start) * 1000

    def per_mac(self) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for seen in sorted(self.frames, key=lambda s: s.time):
            times.setdefault(seen.mac, []).append(seen.time)
        return times

    def offsets_ms(self) -> list[float]:
        """Each frame's deviation from QEMU's nominal schedule, from its MAC's first frame."""
        deviations = []
        for times in self.per_mac().values():
            for index, stamp in enumerate(times[: len(NOMINAL_MS)]):
                deviations.append((stamp - times[0]) * 1000 - NOMINAL_MS[index])
        return deviations

    @property
    def switch_moved(self) -> bool:
        return all(self.moved.get(mac) == port for mac, port in self.expected.items())

    @property
    def reachable(self) -> bool:
        """Traffic for every vNIC reaches the guest on its new host, through the guest's own port."""
        return bool(self.nics) and all(n.delivered is not None and n.on_guest_port for n in self.nics.values())

    @property
    def ok(self) -> bool:
        return (self.switch_moved and self.reachable and not self.bad_frames and not self.stray and bool(self.frames)
                and all(move.moved for move in self.evpn))


def series(migrations: list[Migration]) -> dict[str, list[float]]:
    """The samples of each figure over `migrations`, in migration order, missing ones left out."""
    samples: dict[str, list[float | None]] = {
        "lag_resumed_ms": [m.lag_resumed_ms for m in migrations],
        "lag_qemu_resumed_ms": [m.lag_qemu_resumed_ms for m in migrations],
        "lag_qemu_ms": [m.lag_qemu_ms for m in migrations],
        "lag_qemu_host_ms": [m.lag_qemu_host_ms for m in migrations],
        "offset_ms": [abs(o) for m in migrations for o in m.offsets_ms()],
        "traffic_ms": [m.traffic_ms(mac) for m in migrations for mac in m.nics],
        "traffic_after_wiring_ms": [m.traffic_after_wiring_ms for m in migrations],
        "frame_after_wiring_ms": [m.frame_after_wiring_ms for m in migrations],
    }
    return {name: [v for v in values if v is not None] for name, values in samples.items()}


def summary(migrations: list[Migration]) -> dict[str, float | None]:
    """Median and max of the lags, the schedule offsets and the time until traffic reached the guest."""
    out: dict[str, float | None] = {}
    for name, values in series(migrations).items():
        out[f"{name}_median"], out[f"{name}_max"] = (statistics.median(values), max(values)) if values else (None, None)
    return out
