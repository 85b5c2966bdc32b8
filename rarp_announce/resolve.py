"""Live domain XML in, announce targets out: for each vNIC, the host device and VLANs its MAC lives in.

Rules per `<interface type=...>` follow REFERENCE section 5. Whatever cannot or need not be
announced comes back as a Skipped entry with a reason a person understands, never an exception:
only a document that is not a domain XML at all raises InputError. The device is never a guest's
tap (vnetX): a frame written to a tap's host side goes to the guest, not to the switch.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from rarp_announce import hostnet
from rarp_announce.announcer import Target
from rarp_announce.config import Config
from rarp_announce.domxml import parse_domain
from rarp_announce.errors import InputError
from rarp_announce.mac import normalize_mac

NetworkBridge = Callable[[str], "str | None"]

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
    "vhostuser": (
        "vhost-user (OVS-DPDK): not announced yet; QEMU's own RARP is dropped here and the "
        "OVS packet-out route is not implemented"
    ),
    "vdpa": "vDPA: not announced yet; the host device behind a vDPA device is not resolved",
    "vds": "VMware distributed switch: not a host device this tool can send on",
}


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
    """Everything one domain XML says about where to announce."""

    targets: list[Target] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # device -> why it cannot carry frames now
    domain: str | None = None
    uuid: str | None = None

    @property
    def ready(self) -> list[Target]:
        """The targets whose device can carry frames now."""
        return [t for t in self.targets if t.device not in self.problems]

    def record(self) -> dict[str, object]:
        """The JSON shape of `rarp-announce targets --json`."""
        targets = []
        for target in self.targets:
            entry: dict[str, object] = {
                "mac": target.mac,
                "device": target.device,
                "vlan": target.vlan,
                "kind": target.kind,
                "interface": target.interface,
            }
            if target.device in self.problems:
                entry["problem"] = self.problems[target.device]
            targets.append(entry)
        return {"targets": targets, "skipped": [s.record() for s in self.skipped]}


class _Skip(Exception):
    """Internal: this interface is skipped for the reason in the message."""


def resolve_xml(
    xml: str | bytes,
    config: Config,
    *,
    network_bridge: NetworkBridge | None = None,
    check_host: bool = True,
) -> Resolution:
    """Resolve a live domain XML to targets; InputError only when the document itself is unusable.

    `network_bridge` names the bridge of a libvirt network when the XML does not (see
    virt.network_bridge_lookup). `check_host` fills `problems` from this network namespace.
    """
    root = parse_domain(xml)
    name = _child_text(root, "name")
    uuid = _child_text(root, "uuid")
    devices = root.find("devices")
    interfaces = devices.findall("interface") if devices is not None else []
    taps = {dev for el in interfaces if (dev := _target_dev(el))}
    resolution = Resolution(domain=name, uuid=uuid)
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
            found = _interface_targets(element, mac, label, config, network_bridge, taps)
        except _Skip as skip:
            resolution.skipped.append(Skipped(_normal_or_none(mac_text), kind, label, str(skip)))
            continue
        for target in found:
            if target.key not in seen:
                seen.add(target.key)
                resolution.targets.append(target)
    if check_host and resolution.targets:
        resolution.problems = hostnet.device_problems(t.device for t in resolution.targets)
    return resolution


def _interface_targets(
    element: ET.Element,
    mac: str,
    label: str,
    config: Config,
    network_bridge: NetworkBridge | None,
    taps: set[str],
) -> list[Target]:
    effective = _effective(element)
    kind = effective.get("type")
    if not kind:
        raise _Skip("<interface> has no type attribute: libvirt always writes one; is this a domain XML?")
    if kind in _NO_L2:
        raise _Skip(_NO_L2[kind])
    if kind in _NOT_YET:
        raise _Skip(_NOT_YET[kind])
    vlans = _vlans(_first(element, "vlan"))
    ovs = _is_openvswitch(element)
    if kind == "bridge":
        device = _source_attr(effective, "bridge", "type bridge without <source bridge='...'/>")
    elif kind == "network":
        device = _network_device(effective, network_bridge)
    elif kind == "direct":
        device = _source_attr(effective, "dev", "type direct (macvtap) without <source dev='...'/>")
    elif kind == "hostdev":
        device = _vf_uplink(effective, config.sysfs_root)
    elif kind == "ethernet":
        device = _ethernet_uplink(element, config)
    else:
        raise _Skip(f"unknown interface type {_shown(kind)!r}: no rule says where its frames would go")
    if kind != "ethernet":
        device = config.uplinks.get(device, device)
    if device in taps or _TAP_NAME.match(device):
        raise _Skip(
            f"resolved device {device!r} is a guest's tap: frames written there go to the guest, "
            "not the switch"
        )
    if not hostnet.valid_ifname(device):
        raise _Skip(f"resolved device {_shown(device)!r} is not a valid network device name")
    shown_kind = "openvswitch" if ovs and kind in ("bridge", "network") else kind
    return [Target(mac, device, vlan, shown_kind, label) for vlan in vlans]


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
            f"network {_shown(network)!r}: the XML names no bridge and libvirt was not asked "
            "(resolve the running domain with --domain)"
        )
    found = network_bridge(network)
    if not found:
        raise _Skip(
            f"network {_shown(network)!r} has no bridge on this host (not active, or a macvtap/hostdev "
            "network: resolve the live XML of the running domain)"
        )
    return found


def _vf_uplink(effective: ET.Element, sysfs_root: str) -> str:
    address = effective.find("source/address")
    if address is None:
        raise _Skip("type hostdev without <source><address type='pci' .../></source>")
    if (address.get("type") or "pci") != "pci":
        raise _Skip(f"hostdev address type {_shown(address.get('type') or '')!r}: only PCI SR-IOV VFs are resolved")
    parts = {}
    for name, high in (("domain", 0xFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 0x7)):
        raw = address.get(name, "0" if name == "domain" else None)
        try:
            value = int(raw, 0) if raw is not None else None
        except ValueError:
            value = None
        if value is None or not 0 <= value <= high:
            raise _Skip(f"hostdev PCI address has an invalid {name} {_shown(raw or '')!r}: expected 0..{high:#x}")
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
            raise _Skip(f"invalid VLAN id {_shown(raw)!r}: expected 1..4094 (0 and 4095 are reserved)")
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
        raise _Skip(_shown_error(exc)) from None


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
            return _shown(candidate)
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


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."


def _shown_error(exc: Exception) -> str:
    return " ".join(str(exc).split())
