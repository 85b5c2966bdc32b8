"""Live domain XML in, announce targets out: for each vNIC, the host device and VLANs its MAC lives in.

Whatever cannot or need not be announced comes back as a Skipped entry with a reason a person
understands, never an exception: only a document that is not a domain XML at all raises
InputError. The device is never a guest's tap (vnetX): a frame written to a tap's host side
goes to the guest, not to the switch (libvirt docs/formatdomain.rst, "Network interfaces").

A vNIC on a Linux bridge carries its tap as `bridge_port`: the bridge's own FDB entry for the
MAC is pointed there before the frames leave the bridge device (transport/fdb.py).

A vNIC on Open vSwitch is never announced through the bridge's own port: OVS would learn the
guest's MAC on LOCAL and send the guest's traffic to the host. It is injected through the
guest's own OVS port (its ofport), with the VLAN that OVSDB gives that port: Neutron and
os-vif set it there, never in the domain XML. The XML's <vlan> is only a fallback when the
OVS database cannot be read.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rarp_announce.config import Config
from rarp_announce.errors import InputError
from rarp_announce.mac import normalize_mac
from rarp_announce.model import Address, BridgePort, Kind, OvsPort, Resolution, Skipped, Target, VlanSource
from rarp_announce.names import one_line, shown, valid_ifname
from rarp_announce.resolve import hostnet
from rarp_announce.resolve.addresses import declared_addresses, merge
from rarp_announce.resolve.domxml import parse_domain
from rarp_announce.resolve.ovsport import DEAD_VLAN, PortInfo, vlan_plan, wiring_problem
from rarp_announce.address_sources import GUEST

NetworkBridge = Callable[[str], "str | None"]
MAX_TARGETS = 4096  # a trunk of every VLAN is 4094 on one vNIC; 59 such vNICs made 241k targets


class OvsLookup(Protocol):
    """What the resolver asks the OVS database (resolve.ovsdb's live view or one-shot snapshot)."""

    def find_port(self, *, name: str | None = None, mac: str | None = None,
                  socket_path: str | None = None) -> PortInfo | None: ...

    def is_bridge(self, name: str) -> bool: ...

    @property
    def applying(self) -> bool: ...

# Names libvirt and OpenStack give guest taps; a device so named is never where frames go.
_TAP_NAME = re.compile(r"^(vnet\d+|macvtap\d+|tap[0-9a-f]{8}-[0-9a-f]{2})$")
_VLAN_ID = re.compile(r"^\s*[0-9]{1,5}\s*$")
_NO_L2 = {
    "user": "user-mode networking (SLIRP/passt): the MAC exists on no host network, nothing to announce",
    "mcast": "QEMU socket backend (mcast): frames travel inside UDP, no switch learns this MAC",
    "udp": "QEMU socket backend (udp): frames travel inside UDP, no switch learns this MAC",
    "server": "QEMU socket backend (server): frames travel inside TCP, no switch learns this MAC",
    "client": "QEMU socket backend (client): frames travel inside TCP, no switch learns this MAC",
    "null": "null interface: connected to nothing, nothing to announce",
}
_NOT_YET = {
    "vdpa": "vDPA: not announced yet; the host device behind a vDPA device is not resolved",
    "vds": "VMware distributed switch: not a host device this tool can send on",
}


class _Skip(Exception):
    """Internal: this interface is skipped for the reason in the message."""


@dataclass
class _Context:
    config: Config
    network_bridge: NetworkBridge | None
    ovs: OvsLookup | None
    ovs_down: str | None
    ovs_pending: bool
    taps: set[str]
    resolution: Resolution


def resolve_xml(
    xml: str | bytes,
    config: Config,
    *,
    network_bridge: NetworkBridge | None = None,
    ovs: OvsLookup | None = None,
    ovs_down: str | None = None,
    ovs_pending: bool = False,
    found_addresses: Mapping[str, Sequence[Address]] | None = None,
) -> Resolution:
    """Resolve a live domain XML to targets; InputError only when the document itself is unusable.

    `network_bridge` names the bridge of a libvirt network when the XML does not (see
    virt.connection.network_bridge_lookup). `ovs` answers for Open vSwitch ports; `ovs_down`
    says why it could not be asked (then OVS ports fall back to the XML's VLANs, and their
    OpenFlow port number is left for the caller to find); `ovs_pending` says its answer is
    coming (then OVS ports wait for it instead). `found_addresses` are the vNICs' addresses libvirt
    reported (resolve.addresses.libvirt_addresses); with those the XML's metadata and the
    config declare, each target carries its MAC's addresses, in the config's source order.
    Addresses of guest-vouched sources are never taken from `found_addresses`: they must pass
    the policy first (resolve.trust, applied by resolve.host).
    Whether devices can carry frames
    now is not judged here: that is the readiness check (hostnet.device_problems); only a
    port that OVSDB shows not wired yet gets its problem here.
    """
    root = parse_domain(xml)
    name = _child_text(root, "name")
    uuid = _child_text(root, "uuid")
    devices = root.find("devices")
    interfaces = devices.findall("interface") if devices is not None else []
    resolution = Resolution(domain=name, uuid=uuid)
    context = _Context(config, network_bridge, ovs, ovs_down, ovs_pending,
                       {dev for el in interfaces if (dev := _target_dev(el))}, resolution)
    ignored = _ignored_domain(name, uuid, config)
    seen: set[tuple[str, str, int | None]] = set()
    for position, element in enumerate(interfaces, 1):
        label = _label(element, position)
        kind = _effective(element).get("type") or element.get("type") or ""
        mac_text = _mac_text(element)
        try:
            if ignored:
                raise _Skip(ignored)
            mac = _mac(mac_text)
            if mac in config.ignore_macs:
                raise _Skip(f"MAC {mac} is listed in [ignore] macs")
            if len(resolution.targets) >= MAX_TARGETS:
                # Not expanded at all: 59 trunks of every VLAN cost 5 s of CPU to build and drop.
                raise _Skip(f"more than {MAX_TARGETS} targets in one domain: this vNIC not announced")
            found = _interface_targets(element, mac, label, context)
        except _Skip as skip:
            resolution.skipped.append(Skipped(_normal_or_none(mac_text), kind, label, str(skip)))
            continue
        room = MAX_TARGETS - len(resolution.targets)
        if len(found) > room:
            resolution.skipped.append(Skipped(mac, kind, label, f"more than {MAX_TARGETS} targets in one domain: "
                                                                f"{len(found) - room} of this vNIC's VLANs not announced"))
            found = found[:room]
        for target in found:
            if target.key not in seen:
                seen.add(target.key)
                resolution.targets.append(target)
    _attach_addresses(root, config, resolution, found_addresses or {})
    if ovs_down and not ovs_pending and any(t.ovs is not None for t in resolution.targets):
        resolution.notes.append(f"Open vSwitch database not read ({ovs_down}): OVS ports use the domain XML's VLANs")
    return resolution


def _attach_addresses(root: ET.Element, config: Config, resolution: Resolution,
                      found: Mapping[str, Sequence[Address]]) -> None:
    """Each target gets its MAC's IP addresses: a GARP or NA each, in the same VLAN and route."""
    if not resolution.targets:
        return
    declared, reasons = declared_addresses(root, config.addresses)
    vouched = {mac: [a for a in addresses if a.source not in GUEST] for mac, addresses in found.items()}
    merged, cut = merge([declared, vouched], config.addresses.sources)
    resolution.notes.extend(f"address not announced: {reason}" for reason in reasons + cut)
    if merged:
        # Every address here is vouched for by the operator or the host (guest sources join later,
        # vetted, in resolve.host): on a Linux bridge they also become the SVI's neighbour entries
        # at the arrival (transport/neigh.py), for EVPN MAC+IP routes.
        resolution.targets = [
            dataclasses.replace(t, addresses=merged[t.mac],
                                neighbours=tuple(a.ip for a in merged[t.mac]) if t.bridge_port is not None else ())
            if t.mac in merged else t for t in resolution.targets
        ]


def _interface_targets(element: ET.Element, mac: str, label: str, context: _Context) -> list[Target]:
    effective = _effective(element)
    kind = effective.get("type")
    config = context.config
    if not kind:
        raise _Skip("<interface> has no type attribute: libvirt always writes one; is this a domain XML?")
    if kind in _NO_L2:
        raise _Skip(_NO_L2[kind])
    if kind in _NOT_YET:
        raise _Skip(_NOT_YET[kind])
    if kind == "vhostuser":
        return _vhostuser_targets(element, effective, mac, label, context)
    xml_vlans = _first(element, "vlan")
    if kind == "bridge":
        device = _source_attr(effective, "bridge", "type bridge without <source bridge='...'/>")
    elif kind == "network":
        device = _network_device(effective, context.network_bridge)
    elif kind == "direct":
        device = _source_attr(effective, "dev", "type direct (macvtap) without <source dev='...'/>")
    elif kind == "hostdev":
        device = _vf_uplink(effective, config.sysfs_root)
    elif kind == "ethernet":
        device = _ethernet_uplink(element, config)
    else:
        raise _Skip(f"unknown interface type {shown(kind)!r}: no rule says where its frames would go")
    on_ovs = kind in ("bridge", "network") and (
        _is_openvswitch(element) or (context.ovs is not None and context.ovs.is_bridge(device))
    )
    info = context.ovs.find_port(name=_target_dev(element), mac=mac) if on_ovs and context.ovs is not None else None
    if on_ovs and device not in config.uplinks:
        return _ovs_targets(element, xml_vlans, mac, label, device, "openvswitch", context, info)
    bridge_port = _bridge_port(element, device) if kind in ("bridge", "network") and not on_ovs else None
    if kind != "ethernet":
        device = config.uplinks.get(device, device)
    _check_device(device, context.taps)
    if on_ovs:
        # An [uplinks] entry for an OVS bridge: the frame leaves on that uplink, carrying on the
        # wire the VLAN the port lives in.
        wired = info is not None and wiring_problem(info) is None
        plan = _ovs_plan(xml_vlans, mac, info, context, wired=wired)
        return [Target(mac, device, vlan, "openvswitch", label, vlan_source=source) for vlan, _tagged, source in plan]
    shown_kind: Kind = kind  # type: ignore[assignment]  # one of the types handled above
    return [Target(mac, device, vlan, shown_kind, label, bridge_port=bridge_port) for vlan in _vlans(xml_vlans)]


def _bridge_port(element: ET.Element, bridge: str) -> BridgePort | None:
    """The guest's tap on its Linux bridge, whose FDB entry is pointed at it before the first frame
    (a frame from the bridge device teaches that bridge nothing: see model.BridgePort). None when
    the XML names no tap (an inactive domain's): then only the frames can be sent."""
    tap = _target_dev(element)
    return BridgePort(bridge, tap) if tap and valid_ifname(tap) and valid_ifname(bridge) else None


def _ovs_targets(
    element: ET.Element, xml_vlan: ET.Element | None, mac: str, label: str, bridge: str, kind: Kind,
    context: _Context, info: PortInfo | None,
) -> list[Target]:
    """Targets injected through the guest's own OVS port, one per VLAN it lives in."""
    if info is None:
        port_name = _target_dev(element) or ""
        if context.ovs_pending or context.ovs is not None:
            # Its answer is coming, or the port is not plugged yet (os-vif plugs late): a
            # placeholder that waits for the port.
            target = Target(mac, bridge, None, kind, label, ovs=OvsPort(bridge, port_name, None), tagged=False)
            if context.ovs_pending:
                why = "waiting for the Open vSwitch database's first answer"
            else:
                looked = f"name {port_name} or " if port_name else ""
                why = f"no port on OVS bridge {bridge} for this vNIC (looked up by {looked}attached-mac {mac})"
            context.resolution.problems[target.route] = f"not wired yet: {why}"
            return [target]
        if not port_name:
            raise _Skip(f"OVS bridge {bridge}: no <target dev> names the guest's port and the OVS database was not read")
        port = OvsPort(bridge, port_name, None)  # the caller finds its ofport over OpenFlow
        return [Target(mac, bridge, vlan, kind, label, ovs=port, tagged=tagged, vlan_source=source)
                for vlan, tagged, source in _ovs_plan(xml_vlan, mac, None, context, wired=False)]
    port = OvsPort(info.bridge, info.interface, info.ofport if info.ofport is not None and info.ofport > 0 else None)
    problem = wiring_problem(info)
    if problem is None and context.ovs is not None and context.ovs.applying:
        # The port's row may already say "wired" while ovs-vswitchd still forwards it the old
        # way (measured in the lab: a frame sent then left in the dead VLAN 4095).
        problem = "ovs-vswitchd has not applied the latest configuration change yet (cur_cfg < next_cfg)"
    if problem is not None:
        # Frames sent now would be lost (dead VLAN, no ofport, OVN flows not in): one placeholder
        # target waits; the VLANs it will get are only known once the port is wired.
        target = Target(mac, info.bridge, None, kind, label, ovs=port, tagged=False, vlan_source="ovsdb")
        context.resolution.problems[target.route] = f"not wired yet: {problem}"
        return [target]
    return [Target(mac, info.bridge, vlan, kind, label, ovs=port, tagged=tagged, vlan_source=source)
            for vlan, tagged, source in _ovs_plan(xml_vlan, mac, info, context, wired=True)]


def _ovs_plan(
    xml_vlan: ET.Element | None, mac: str, info: PortInfo | None, context: _Context, *, wired: bool
) -> list[tuple[int | None, bool, VlanSource]]:
    """The VLANs the guest's MAC lives in on its OVS port: OVSDB's when read, else the XML's
    (`xml_vlan`). Only a `wired` port's VLANs are compared with the XML's."""
    if info is None:
        if _parks(xml_vlan):
            raise _Skip(f"the domain XML plugs its OVS port parked in the dead VLAN {DEAD_VLAN} for an agent to "
                        "wire in OVSDB, which was not read: its VLAN is unknown (set [ovs] db)")
        return [(vlan, tagged, "xml") for vlan, tagged in _xml_ovs_plan(xml_vlan)]
    plan = vlan_plan(info)
    if xml_vlan is not None and wired and not _parks(xml_vlan):
        ours = sorted(v for v, _t in plan if v is not None)
        theirs = sorted(v for v, _t in _xml_ovs_plan(xml_vlan) if v is not None)
        if ours != theirs:
            context.resolution.notes.append(
                f"{info.interface}: OVSDB puts {mac} in VLAN {_vlan_list(ours)}, the domain XML says "
                f"{_vlan_list(theirs)}: announcing in OVSDB's (the port's real configuration)"
            )
    return [(vlan, tagged, "ovsdb") for vlan, tagged in plan]


def _parks(vlan: ET.Element | None) -> bool:
    """<vlan><tag id='4095'/></vlan> on an OVS port: libvirt creates the port with tag 4095 in
    the same ovs-vsctl transaction (src/util/virnetdevopenvswitch.c, virNetDevOpenvswitchAddPort),
    isolated as os-vif's isolate_vif does, until an agent wires it in OVSDB. The XML then names
    no VLAN of the network: OVSDB alone does (ovsport.wiring_problem says when it is wired)."""
    return vlan is not None and [(tag.get("id") or "").strip() for tag in vlan.findall("tag")] == [str(DEAD_VLAN)]


def _vlan_list(vlans: list[int]) -> str:
    return ",".join(str(v) for v in vlans) or "none (untagged)"


def _xml_ovs_plan(vlan: ET.Element | None) -> list[tuple[int | None, bool]]:
    """The XML's <vlan> read as libvirt configures the OVS port (libvirt docs/formatdomain.rst,
    "Setting VLAN tag"): one tag without trunk='yes' is an access port (untagged frame); a trunk
    carries each tag, the nativeMode tag untagged."""
    if vlan is None:
        return [(None, False)]
    ids = _vlans(vlan)
    if vlan.get("trunk") != "yes" and len(ids) == 1:
        return [(ids[0], False)]
    native = None
    for tag in vlan.findall("tag"):
        raw = (tag.get("id") or "").strip()
        if tag.get("nativeMode") in ("tagged", "untagged") and raw.isdigit():
            native = int(raw)
    return [(v, v != native) for v in ids]


def _vhostuser_targets(element: ET.Element, effective: ET.Element, mac: str, label: str, context: _Context) -> list[Target]:
    source = effective.find("source")
    path = source.get("path") if source is not None else None
    if not path:
        raise _Skip("type vhostuser without <source path='...'/>")
    if context.ovs is None:
        if context.ovs_pending:
            raise _Skip("vhost-user: waiting for the Open vSwitch database's first answer (resolved again then)")
        why = f" ({context.ovs_down})" if context.ovs_down else ""
        raise _Skip(f"vhost-user: its OVS port is found in the Open vSwitch database, which was not read{why}")
    info = context.ovs.find_port(name=_target_dev(element), mac=mac, socket_path=path)
    if info is None:
        raise _Skip(f"vhost-user socket {shown(path)!r}: no OVS port serves it (not OVS-DPDK, or not plugged yet)")
    return _ovs_targets(element, _first(element, "vlan"), mac, label, info.bridge, "vhostuser", context, info)


def _check_device(device: str, taps: set[str]) -> None:
    if device in taps or _TAP_NAME.match(device):
        raise _Skip(
            f"resolved device {device!r} is a guest's tap: frames written there go to the guest, "
            "not the switch"
        )
    if not valid_ifname(device):
        raise _Skip(f"resolved device {shown(device)!r} is not a valid network device name")


def _network_device(effective: ET.Element, network_bridge: NetworkBridge | None) -> str:
    source = effective.find("source")
    bridge = source.get("bridge") if source is not None else None
    if bridge:
        return bridge
    network = source.get("network") if source is not None else None
    if not network:
        raise _Skip("type network without <source network='...'/>")
    if network_bridge is None:
        raise _Skip(
            f"network {shown(network)!r}: the XML names no bridge and libvirt was not asked "
            "(resolve the running domain with --domain)"
        )
    found = network_bridge(network)
    if not found:
        raise _Skip(
            f"network {shown(network)!r} has no bridge on this host (not active, or a macvtap/hostdev "
            "network: resolve the live XML of the running domain)"
        )
    return found


def _vf_uplink(effective: ET.Element, sysfs_root: str) -> str:
    address = effective.find("source/address")
    if address is None:
        raise _Skip("type hostdev without <source><address type='pci' .../></source>")
    if (address.get("type") or "pci") != "pci":
        raise _Skip(f"hostdev address type {shown(address.get('type') or '')!r}: only PCI SR-IOV VFs are resolved")
    parts = {}
    for name, high in (("domain", 0xFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 0x7)):
        raw = address.get(name, "0" if name == "domain" else None)
        try:
            value = int(raw, 0) if raw is not None else None
        except ValueError:
            value = None
        if value is None or not 0 <= value <= high:
            raise _Skip(f"hostdev PCI address has an invalid {name} {shown(raw or '')!r}: expected 0..{high:#x}")
        parts[name] = value
    vf = hostnet.pci_address(parts["domain"], parts["bus"], parts["slot"], parts["function"])
    try:
        return hostnet.pf_netdev(vf, sysfs_root)
    except hostnet.SysfsLookupError as exc:
        raise _Skip(f"hostdev: {exc}") from None


def _ethernet_uplink(element: ET.Element, config: Config) -> str:
    tap = _target_dev(element)
    if tap and tap in config.uplinks:
        return config.uplinks[tap]
    key = f'[uplinks] {tap} = "<uplink device>"' if tap else '[uplinks] <tap> = "<uplink device>" (and a fixed <target dev>)'
    raise _Skip(f"unmanaged tap (type ethernet): no uplink is known; set {key} in the config")


def _vlans(vlan: ET.Element | None) -> list[int | None]:
    """One entry per VLAN the MAC lives in on the host's wire; [None] for an untagged port.

    nativeMode only says what the guest sees: the host side carries the tag all the same.
    """
    if vlan is None:
        return [None]
    ids: list[int | None] = []
    tags = vlan.findall("tag")
    if not tags:
        raise _Skip("<vlan> without any <tag id='N'/>: fix the domain XML")
    for tag in tags:
        raw = tag.get("id")
        if raw is None:
            raise _Skip("<vlan><tag> without an id: fix the domain XML")
        if not _VLAN_ID.match(raw) or not 1 <= int(raw) <= 4094:
            raise _Skip(f"invalid VLAN id {shown(raw)!r}: expected 1..4094 (0 and 4095 are reserved)")
        if int(raw) not in ids:
            ids.append(int(raw))
    return ids


def _effective(element: ET.Element) -> ET.Element:
    # A live XML may carry <actual type=...>: what a network interface really became
    # (bridge, direct, hostdev); libvirt's own code reads the actual definition first.
    actual = element.find("actual")
    return actual if actual is not None and actual.get("type") else element


def _first(element: ET.Element, tag: str) -> ET.Element | None:
    actual = element.find("actual")
    if actual is not None and actual.find(tag) is not None:
        return actual.find(tag)
    return element.find(tag)


def _is_openvswitch(element: ET.Element) -> bool:
    port = _first(element, "virtualport")
    return port is not None and port.get("type") == "openvswitch"


def _source_attr(effective: ET.Element, name: str, missing: str) -> str:
    source = effective.find("source")
    value = source.get(name) if source is not None else None
    if not value:
        raise _Skip(missing)
    return value


def _mac_text(element: ET.Element) -> str | None:
    mac = element.find("mac")
    return mac.get("address") if mac is not None else None


def _mac(text: str | None) -> str:
    if text is None:
        raise _Skip("no <mac address='...'/>: libvirt assigns one at start; resolve the running domain's XML")
    try:
        return normalize_mac(text)
    except InputError as exc:
        raise _Skip(one_line(str(exc))) from None


def _normal_or_none(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return normalize_mac(text)
    except InputError:
        return None


def _target_dev(element: ET.Element) -> str | None:
    target = element.find("target")
    return target.get("dev") if target is not None and target.get("dev") else None


def _label(element: ET.Element, position: int) -> str:
    alias = element.find("alias")
    for candidate in (_target_dev(element), alias.get("name") if alias is not None else None):
        if candidate:
            return shown(candidate)
    return f"interface #{position}"


def _child_text(root: ET.Element, tag: str) -> str | None:
    child = root.find(tag)
    text = (child.text or "").strip() if child is not None else ""
    return text or None


def _ignored_domain(name: str | None, uuid: str | None, config: Config) -> str | None:
    for value in (name, uuid, uuid.lower() if uuid else None):
        if value and value in config.ignore_domains:
            return f"domain {value!r} is listed in [ignore] domains"
    return None
