"""The types every stage shares: what to announce (Target), what was not (Skipped), what one
domain resolves to (Resolution), and what left the host (FrameEvent).

Nothing here does I/O or imports another stage, so triggers, the resolver, the announcer and
the transports all speak these types without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal[
    "bridge", "openvswitch", "network", "direct", "hostdev", "ethernet", "vhostuser", "manual"
]
"""Where a target came from: the libvirt interface type, `openvswitch` for any vNIC on an OVS
bridge, `manual` for `rarp-announce send`."""

VlanSource = Literal["xml", "ovsdb", "cli"]
"""Who said which VLAN the MAC lives in: the domain XML, the OVS database, or the operator."""

AddressSource = Literal["metadata", "config", "nwfilter", "lease", "arp", "agent", "cli"]
"""Who said the guest has an IP address. The one list of names; address_sources says who vouches
for each, and checks on import that its table names exactly these."""

RefusalReason = Literal["not_allowed", "host_address", "next_hop", "other_mac", "other_guest"]
"""Why the policy (resolve.trust) refused an address a guest source named: the metric's labels."""

FrameType = Literal["rarp", "garp", "na"]

StepType = Literal["rarp", "garp", "na", "fdb"]
"""What one step of a round did: sent a frame of that type, or (`fdb`) pointed the host bridge's
forwarding entry for the guest's MAC at the guest's own port before the target's first frame."""

TargetKey = tuple[str, str, "int | None"]
"""(MAC, route, VLAN): a target asked for twice while its schedule runs joins that schedule."""


@dataclass(frozen=True)
class Address:
    """One IP address of a vNIC, in canonical text form, and who reported it."""

    ip: str
    source: AddressSource

    def record(self) -> dict[str, str]:
        return {"ip": self.ip, "source": self.source}


@dataclass(frozen=True)
class RefusedAddress:
    """An address a guest-vouched source named for a vNIC and the policy refused: never announced."""

    mac: str
    ip: str
    source: AddressSource
    reason: RefusalReason
    detail: str  # one line for people: which rule, and what on this host it matched

    def record(self) -> dict[str, str]:
        return {"mac": self.mac, "ip": self.ip, "source": self.source, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class OvsPort:
    """The guest's own port on an Open vSwitch bridge: frames are injected as if it sent them."""

    bridge: str
    name: str  # the OVS Interface name (libvirt's <target dev>, or the vhost-user port)
    ofport: int | None  # its OpenFlow port number (the packet-out's in_port); None until known


@dataclass(frozen=True)
class BridgePort:
    """The guest's own port (its tap) on a Linux bridge of this host.

    A Linux bridge learns a source MAC only from frames entering one of its ports, never from a
    frame its own bridge device sends (net/bridge/br_input.c learns in br_handle_frame_finish;
    br_dev_xmit does not). On the destination it has usually learned the guest's MAC on its
    uplink from earlier floods, so before the first frame the bridge's FDB entry for the MAC is
    pointed at this port, as QEMU's own RARP entering through the tap would have done.
    """

    bridge: str
    name: str

    @property
    def label(self) -> str:
        """`bridge:port`, as errors, logs and reports name it."""
        return f"{self.bridge}:{self.name}"


@dataclass(frozen=True)
class Target:
    """One announcement destination: this MAC, reaching the network through this route, in this VLAN.

    For a Linux device `device` is where a packet socket writes the frame, tagged with `vlan`.
    For an OVS port (`ovs` set) `device` is the bridge and the frame enters through the guest's
    port; `tagged` False means the port is an access port that adds `vlan` itself, so the frame
    leaves untagged, exactly as the guest would send it. `bridge_port` set: `device` is (or
    forwards to) a Linux bridge whose FDB entry for the MAC is pointed at the guest's port first.
    """

    mac: str  # lower-case, colon-separated
    device: str
    vlan: int | None = None
    kind: Kind = "manual"
    interface: str = ""  # the vNIC's target dev or alias, for people reading logs
    priority: int = 0
    ovs: OvsPort | None = None
    tagged: bool = True
    vlan_source: VlanSource = "xml"
    addresses: tuple[Address, ...] = ()
    bridge_port: BridgePort | None = None
    # Of `addresses`, those the operator or the host's control plane vouches for: written as
    # neighbour entries on the destination's SVI at the arrival (EVPN MAC+IP routes), never a
    # guest-claimed one.
    neighbours: tuple[str, ...] = ()

    @property
    def route(self) -> str:
        """Where frames enter the network: a device name, or `bridge:port` for an OVS port."""
        return self.device if self.ovs is None else f"{self.ovs.bridge}:{self.ovs.name}"

    @property
    def key(self) -> TargetKey:
        return (self.mac, self.route, self.vlan)

    @property
    def frame_vlan(self) -> int | None:
        """The 802.1Q tag written into the frame (None: untagged)."""
        return self.vlan if self.tagged else None

    def record(self) -> dict[str, object]:
        """The JSON shape of one target (`targets --json`, status)."""
        entry: dict[str, object] = {
            "mac": self.mac,
            "device": self.device,
            "vlan": self.vlan,
            "kind": self.kind,
            "interface": self.interface,
        }
        if self.ovs is not None:
            entry.update(port=self.ovs.name, ofport=self.ovs.ofport, tagged=self.tagged)
        if self.bridge_port is not None:
            entry.update(bridge=self.bridge_port.bridge, port=self.bridge_port.name)
            if self.neighbours:
                entry["neighbours"] = list(self.neighbours)
        if self.vlan is not None:
            entry["vlan_source"] = self.vlan_source
        entry["addresses"] = [address.record() for address in self.addresses]
        return entry


@dataclass(frozen=True)
class Skipped:
    """A vNIC that gets no announcement, and why."""

    mac: str | None
    kind: str
    interface: str
    reason: str

    def record(self) -> dict[str, object]:
        return {"mac": self.mac, "kind": self.kind, "interface": self.interface, "reason": self.reason}


@dataclass
class Resolution:
    """Everything one domain XML says about where to announce, and what stops it now."""

    targets: list[Target] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # route -> why it cannot carry frames now
    domain: str | None = None
    uuid: str | None = None
    notes: list[str] = field(default_factory=list)  # resolution-wide remarks (OVSDB unreachable, ...)
    refused: list[RefusedAddress] = field(default_factory=list)  # guest-reported addresses not announced

    def record(self) -> dict[str, object]:
        """The JSON shape of `rarp-announce targets --json`."""
        targets = []
        for target in self.targets:
            entry = target.record()
            if target.route in self.problems:
                entry["problem"] = self.problems[target.route]
            targets.append(entry)
        result: dict[str, object] = {"targets": targets, "skipped": [s.record() for s in self.skipped]}
        if self.notes:
            result["notes"] = list(self.notes)
        if self.refused:
            result["refused"] = [refused.record() for refused in self.refused]
        return result


@dataclass(frozen=True)
class Frame:
    """One prebuilt frame of a target: its RARP, or a GARP / NA for one of its addresses."""

    type: FrameType
    data: bytes
    address: str | None = None


@dataclass(frozen=True)
class FrameEvent:
    """One frame that left (error None) or could not (error says why); with type `fdb`, the
    bridge FDB step before a target's first frame (`detail` says what it did)."""

    t: float  # seconds since its announcement started
    target: Target
    burst: int
    round: int
    trigger: str
    domain: str | None
    error: str | None = None
    type: StepType = "rarp"
    address: str | None = None
    detail: str | None = None
