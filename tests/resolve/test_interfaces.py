"""resolve.py and domxml.py: every interface type and VLAN form, exact targets and skip reasons, hostile XML, fuzz."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rarp_announce.announce.engine import frames_for
from rarp_announce.config import Config
from rarp_announce.errors import InputError
from rarp_announce.lab.netns import inside
from rarp_announce.model import BridgePort, OvsPort, Resolution, Skipped, Target
from rarp_announce.resolve.domxml import MAX_XML_BYTES, parse_domain
from rarp_announce.resolve.interfaces import resolve_xml

FIXTURES = Path(__file__).parent.parent / "fixtures"
DOMAINS = FIXTURES / "domains"
SYSFS = str(FIXTURES / "sysfs")
CONFIG = Config(sysfs_root=SYSFS)
NETWORKS = {"lab": "labbr0", "default": "virbr0"}.get


def resolve(name: str, config: Config = CONFIG, **kwargs) -> Resolution:
    kwargs.setdefault("network_bridge", NETWORKS)
    return resolve_xml((DOMAINS / name).read_text(), config, **kwargs)


def T(mac, device, vlan, kind, interface):
    # A vNIC on a Linux bridge (type bridge or network) carries its tap: the bridge's FDB entry
    # is pointed there before the frames leave the bridge device.
    port = BridgePort(device, interface) if kind in ("bridge", "network") else None
    return Target(mac, device, vlan, kind, interface, bridge_port=port)


def OVS(mac, bridge, vlan, interface, *, tagged=False):
    """A vNIC on OVS resolved without OVSDB: through its own port, VLANs from the XML."""
    return Target(mac, bridge, vlan, "openvswitch", interface, ovs=OvsPort(bridge, interface, None), tagged=tagged)


EXPECTED_TARGETS = {
    "bridges.xml": [
        T("52:54:00:01:00:01", "br0", None, "bridge", "vnet0"),
        T("52:54:00:01:00:02", "br0", 100, "bridge", "vnet1"),
        T("52:54:00:01:00:03", "br0", 10, "bridge", "vnet2"),
        T("52:54:00:01:00:03", "br0", 20, "bridge", "vnet2"),
        T("52:54:00:01:00:03", "br0", 30, "bridge", "vnet2"),
        OVS("52:54:00:01:00:04", "ovsbr0", 200, "vnet3"),  # an access port: the port adds the tag
        OVS("52:54:00:01:00:05", "ovsbr0", 201, "vnet4"),  # the trunk's native VLAN enters untagged
        OVS("52:54:00:01:00:05", "ovsbr0", 202, "vnet4", tagged=True),
    ],
    "networks.xml": [
        T("52:54:00:02:00:01", "virbr0", None, "network", "vnet10"),
        T("52:54:00:02:00:02", "labbr0", 300, "network", "vnet11"),
        T("52:54:00:02:00:03", "eth1", None, "direct", "macvtap0"),
        OVS("52:54:00:02:00:04", "ovsbr1", 400, "vnet12"),
    ],
    "direct.xml": [
        T("52:54:00:03:00:01", "eth0", None, "direct", "macvtap0"),
        T("52:54:00:03:00:02", "bond0", 500, "direct", "macvtap1"),
        T("52:54:00:03:00:03", "enp3s0f1", None, "direct", "macvtap2"),
        T("52:54:00:03:00:04", "eth0", None, "direct", "macvtap3"),
    ],
    "sriov.xml": [
        T("52:54:00:04:00:01", "enp3s0f0", 42, "hostdev", "hostdev0"),
        T("52:54:00:04:00:02", "enp3s0f0", None, "hostdev", "hostdev1"),
    ],
    "ethernet.xml": [],
    "nol2.xml": [],
    "bad.xml": [],
}

TAP_REASON = 'unmanaged tap (type ethernet): no uplink is known; set [uplinks] {} = "<uplink device>" in the config'
EXPECTED_SKIPPED = {
    "bridges.xml": [
        Skipped("52:54:00:01:00:06", "bridge", "ua-ovs", "OVS bridge ovsbr0: no <target dev> names the guest's port and the OVS database was not read"),
    ],
    "networks.xml": [],
    "direct.xml": [],
    "sriov.xml": [
        Skipped("52:54:00:04:00:03", "hostdev", "hostdev2", "hostdev: SR-IOV VF 0000:05:02.0: its physical function 0000:05:00.0 has no network device (bound to vfio or a DPDK driver?)"),
        Skipped("52:54:00:04:00:04", "hostdev", "hostdev3", "hostdev: PCI device 0000:04:00.0 is not an SR-IOV virtual function (no physfn in sysfs)"),
        Skipped("52:54:00:04:00:05", "hostdev", "hostdev4", f"hostdev: PCI device 0000:81:00.2 does not exist on this host ({SYSFS}/bus/pci/devices/0000:81:00.2)"),
    ],
    "ethernet.xml": [
        Skipped("52:54:00:05:00:01", "ethernet", "tap-web", TAP_REASON.format("tap-web")),
        Skipped("52:54:00:05:00:02", "ethernet", "tap-db", TAP_REASON.format("tap-db")),
    ],
    "nol2.xml": [
        Skipped("52:54:00:06:00:01", "user", "net0", "user-mode networking (SLIRP/passt): the MAC exists on no host network, nothing to announce"),
        Skipped("52:54:00:06:00:02", "mcast", "net1", "QEMU socket backend (mcast): frames travel inside UDP, no switch learns this MAC"),
        Skipped("52:54:00:06:00:03", "udp", "net2", "QEMU socket backend (udp): frames travel inside UDP, no switch learns this MAC"),
        Skipped("52:54:00:06:00:04", "server", "net3", "QEMU socket backend (server): frames travel inside TCP, no switch learns this MAC"),
        Skipped("52:54:00:06:00:05", "client", "net4", "QEMU socket backend (client): frames travel inside TCP, no switch learns this MAC"),
        Skipped("52:54:00:06:00:06", "vhostuser", "net5", "vhost-user: its OVS port is found in the Open vSwitch database, which was not read"),
        Skipped("52:54:00:06:00:07", "vdpa", "net6", "vDPA: not announced yet; the host device behind a vDPA device is not resolved"),
        Skipped("52:54:00:06:00:08", "teleport", "net7", "unknown interface type 'teleport': no rule says where its frames would go"),
    ],
    "bad.xml": [
        Skipped(None, "bridge", "vnet20", "no <mac address='...'/>: libvirt assigns one at start; resolve the running domain's XML"),
        Skipped(None, "bridge", "vnet21", "invalid MAC '52:54:00:zz:00:02': expected six octets as 52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456"),
        Skipped(None, "bridge", "vnet22", "MAC '01:00:5e:00:00:01' is a multicast address (lowest bit of the first octet set): only a unicast MAC can be announced"),
        Skipped("52:54:00:07:00:04", "bridge", "vnet23", "invalid VLAN id '4095': expected 1..4094 (0 and 4095 are reserved)"),
        Skipped("52:54:00:07:00:05", "bridge", "vnet24", "invalid VLAN id 'ten': expected 1..4094 (0 and 4095 are reserved)"),
        Skipped("52:54:00:07:00:06", "bridge", "vnet25", "<vlan> without any <tag id='N'/>: fix the domain XML"),
        Skipped("52:54:00:07:00:07", "bridge", "vnet26", "type bridge without <source bridge='...'/>"),
        Skipped("52:54:00:07:00:08", "bridge", "vnet27", "resolved device 'vnet20' is a guest's tap: frames written there go to the guest, not the switch"),
        Skipped("52:54:00:07:00:09", "", "interface #9", "<interface> has no type attribute: libvirt always writes one; is this a domain XML?"),
        Skipped("52:54:00:07:00:0a", "network", "vnet28", "type network without <source network='...'/>"),
        Skipped("52:54:00:07:00:0b", "hostdev", "hostdev9", "hostdev PCI address has an invalid slot '0x40': expected 0..0x1f"),
        Skipped("52:54:00:07:00:0c", "bridge", "vnet29", "invalid VLAN id '0': expected 1..4094 (0 and 4095 are reserved)"),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TARGETS))
def test_fixture_resolves_exactly(name):
    resolution = resolve(name)
    assert resolution.targets == EXPECTED_TARGETS[name]
    assert resolution.skipped == EXPECTED_SKIPPED[name]
    assert resolution.problems == {}
    assert resolution.domain == name.removesuffix(".xml")
    assert re.fullmatch(r"11111111-2222-3333-4444-00000000000\d", resolution.uuid)


def test_every_fixture_is_covered():
    assert sorted(p.name for p in DOMAINS.glob("*.xml")) == sorted(EXPECTED_TARGETS)


def test_no_target_is_ever_a_tap():
    for name in EXPECTED_TARGETS:
        for target in resolve(name).targets:
            assert not re.match(r"^(vnet|macvtap|tap)", target.device), target


def test_network_without_bridge_and_without_libvirt_is_skipped():
    resolution = resolve("networks.xml", network_bridge=None)
    assert [t.mac for t in resolution.targets] == ["52:54:00:02:00:01", "52:54:00:02:00:03", "52:54:00:02:00:04"]
    assert resolution.skipped == [
        Skipped("52:54:00:02:00:02", "network", "vnet11", "network 'lab': the XML names no bridge and libvirt was not asked (resolve the running domain with --domain)")
    ]


def test_network_libvirt_does_not_know_is_skipped():
    resolution = resolve("networks.xml", network_bridge=lambda name: None)
    assert resolution.skipped == [
        Skipped("52:54:00:02:00:02", "network", "vnet11", "network 'lab' has no bridge on this host (not active, or a macvtap/hostdev network: resolve the live XML of the running domain)")
    ]


def test_ethernet_taps_use_configured_uplinks():
    config = Config(sysfs_root=SYSFS, uplinks={"tap-web": "eth1", "tap-db": "bond0"})
    resolution = resolve("ethernet.xml", config)
    assert resolution.targets == [
        T("52:54:00:05:00:01", "eth1", None, "ethernet", "tap-web"),
        T("52:54:00:05:00:02", "bond0", 600, "ethernet", "tap-db"),
    ]
    assert resolution.skipped == []


def test_bridge_uplink_override_announces_on_the_uplink():
    config = Config(uplinks={"br0": "bond0", "ovsbr0": "eth2"})
    targets = resolve("bridges.xml", config).targets
    assert [(t.mac, t.device, t.vlan) for t in targets] == [
        ("52:54:00:01:00:01", "bond0", None),
        ("52:54:00:01:00:02", "bond0", 100),
        ("52:54:00:01:00:03", "bond0", 10),
        ("52:54:00:01:00:03", "bond0", 20),
        ("52:54:00:01:00:03", "bond0", 30),
        ("52:54:00:01:00:04", "eth2", 200),
        ("52:54:00:01:00:05", "eth2", 201),
        ("52:54:00:01:00:05", "eth2", 202),
        ("52:54:00:01:00:06", "eth2", None),
    ]
    # On the uplink's wire the VLAN is a real tag, even for an access port's VLAN.
    assert all(t.tagged and t.ovs is None for t in targets)


def test_uplink_override_onto_a_tap_is_refused():
    resolution = resolve("bridges.xml", Config(uplinks={"br0": "vnet7"}))
    assert {t.device for t in resolution.targets} == {"ovsbr0"}
    assert all(t.ovs is not None for t in resolution.targets)
    assert {s.reason for s in resolution.skipped} >= {
        "resolved device 'vnet7' is a guest's tap: frames written there go to the guest, not the switch"
    }


def test_ignored_macs_and_domains():
    config = Config(sysfs_root=SYSFS, ignore_macs=frozenset({"52:54:00:01:00:03"}))
    resolution = resolve("bridges.xml", config)
    assert "52:54:00:01:00:03" not in {t.mac for t in resolution.targets}
    assert resolution.skipped[0] == Skipped("52:54:00:01:00:03", "bridge", "vnet2", "MAC 52:54:00:01:00:03 is listed in [ignore] macs")
    for key in ("bridges", "11111111-2222-3333-4444-000000000001"):
        resolution = resolve("bridges.xml", Config(ignore_domains=frozenset({key})))
        assert resolution.targets == []
        assert len(resolution.skipped) == 7
        assert {s.reason for s in resolution.skipped} == {f"domain {key!r} is listed in [ignore] domains"}


def test_json_record_shape():
    resolution = resolve("sriov.xml")
    resolution.problems = {"enp3s0f0": "no such device on this host"}
    record = json.loads(json.dumps(resolution.record()))
    assert record["targets"][0] == {
        "mac": "52:54:00:04:00:01", "device": "enp3s0f0", "vlan": 42, "kind": "hostdev",
        "interface": "hostdev0", "vlan_source": "xml", "addresses": [], "problem": "no such device on this host",
    }
    assert set(record) == {"targets", "skipped"}
    ovs = json.loads(json.dumps(resolve("bridges.xml").record()))["targets"][5]
    assert ovs == {"mac": "52:54:00:01:00:04", "device": "ovsbr0", "vlan": 200, "kind": "openvswitch",
                   "interface": "vnet3", "port": "vnet3", "ofport": None, "tagged": False, "vlan_source": "xml",
                   "addresses": []}
    assert set(record["skipped"][0]) == {"mac", "kind", "interface", "reason"}


def test_a_domain_without_devices_has_nothing():
    resolution = resolve_xml("<domain><name>empty</name></domain>", CONFIG)
    assert resolution == Resolution([], [], {}, "empty", None)


def test_bytes_and_str_give_the_same_result():
    text = (DOMAINS / "bridges.xml").read_text()
    assert resolve_xml(text.encode(), CONFIG) == resolve_xml(text, CONFIG)


def test_readiness_is_checked_in_this_network_namespace(topology):
    # Host 'a' of the topology has br0 (up) and uplink; nothing else from the fixture exists there.
    import asyncio

    from rarp_announce.resolve.hostnet import device_problems

    resolution = resolve("bridges.xml")
    with inside(topology.ns["a"]):
        problems = asyncio.run(device_problems(t.device for t in resolution.targets if t.ovs is None))
    assert problems == {}
    with inside(topology.ns["a"]):
        problems = asyncio.run(device_problems(["br0", "ovsbr0", "vnet0"]))
    assert problems == {"ovsbr0": "no such device on this host", "vnet0": "no such device on this host"}


# --- hostile and malformed documents -------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<domain><name>&lol9;</name></domain>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<domain><name>&xxe;</name></domain>"""

UTF16_SMUGGLED = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY x "y">]><domain/>'.encode("utf-16")


@pytest.mark.parametrize(
    "document, message",
    [
        (BILLION_LAUGHS, "domain XML contains <!DOCTYPE: refused"),
        (EXTERNAL_ENTITY, "domain XML contains <!DOCTYPE: refused"),
        ("<domain><!ENTITY x 'y'></domain>", "domain XML contains <!ENTITY: refused"),
        ("<domain>" + " " * MAX_XML_BYTES + "</domain>", "larger than the 4194304-byte limit"),
        (b"<domain>" + b" " * MAX_XML_BYTES + b"</domain>", "larger than the 4194304-byte limit"),
        (UTF16_SMUGGLED, "domain XML is not UTF-8"),
        (b"<domain><name>\xff</name></domain>", "domain XML is not UTF-8 (byte 14)"),
        ("", "malformed domain XML: no element found: line 1, column 0"),
        ("<domain><devices></domain>", "malformed domain XML: mismatched tag: line 1, column 19"),
        ("<domain>\x00</domain>", "domain XML contains a NUL character"),
        ("<network><name>default</name></network>", "not a libvirt domain XML: the root element is <network>, expected <domain>"),
        ("<domain><name>&undefined;</name></domain>", "malformed domain XML: undefined entity"),
        ("not xml at all", "malformed domain XML: syntax error"),
    ],
)
def test_hostile_or_malformed_xml_is_one_line_input_error(document, message):
    with pytest.raises(InputError) as caught:
        resolve_xml(document, CONFIG)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_domain_accepts_an_xml_declaration():
    root = parse_domain(b"<?xml version='1.0' encoding='UTF-8'?>\n<domain><name>x</name></domain>")
    assert root.findtext("name") == "x"


# --- fuzz: whatever comes in, only InputError or skips come out -----------------------------

_TYPES = ["bridge", "network", "direct", "hostdev", "ethernet", "vhostuser", "user", "mcast", "udp", "server",
          "client", "vdpa", "null", "", "b\u00e9"]
_ATTR = st.one_of(
    st.sampled_from(["br0", "vnet0", "virbr0", "eth0", "0x03", "0x10", "1", "4095", "0", "-1", "ten", "lab", "", " ",
                     "52:54:00:12:34:56", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "x" * 30, "../../etc", "a/b"]),
    # XML 1.0 allows no control characters: keep generated documents well-formed
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
)


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")


@st.composite
def _interfaces(draw) -> str:
    kind = draw(st.sampled_from(_TYPES))
    parts = [f"<interface type='{_attr(kind)}'>"]
    if draw(st.booleans()):
        parts.append(f"<mac address='{_attr(draw(_ATTR))}'/>")
    if draw(st.booleans()):
        attrs = " ".join(f"{name}='{_attr(draw(_ATTR))}'" for name in draw(st.lists(st.sampled_from(["bridge", "network", "dev", "mode"]), max_size=3, unique=True)))
        inner = ""
        if draw(st.booleans()):
            inner = "<address " + " ".join(f"{n}='{_attr(draw(_ATTR))}'" for n in ("type", "domain", "bus", "slot", "function") if draw(st.booleans())) + "/>"
        parts.append(f"<source {attrs}>{inner}</source>")
    if draw(st.booleans()):
        tags = "".join(f"<tag id='{_attr(draw(_ATTR))}'/>" for _ in range(draw(st.integers(0, 3))))
        parts.append(f"<vlan trunk='{_attr(draw(_ATTR))}'>{tags}</vlan>")
    if draw(st.booleans()):
        parts.append(f"<virtualport type='{draw(st.sampled_from(['openvswitch', '802.1Qbh', '']))}'/>")
    if draw(st.booleans()):
        parts.append(f"<target dev='{_attr(draw(_ATTR))}'/>")
    if draw(st.booleans()):
        parts.append(f"<actual type='{_attr(draw(st.sampled_from(_TYPES)))}'><source dev='{_attr(draw(_ATTR))}'/></actual>")
    parts.append("</interface>")
    return "".join(parts)


@st.composite
def _domains(draw) -> str:
    interfaces = "".join(draw(st.lists(_interfaces(), max_size=5)))
    return f"<domain><name>{_attr(draw(_ATTR))}</name><devices>{interfaces}</devices></domain>"


def _check_resolution(resolution: Resolution, document_interfaces: int | None = None) -> None:
    for target in resolution.targets:
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", target.mac)
        assert target.vlan is None or 1 <= target.vlan <= 4094
        assert not re.match(r"^(vnet\d+|macvtap\d+)$", target.device)
        assert 0 < len(target.device.encode()) <= 15 and "/" not in target.device
        frames_for(target)  # every target must make valid frames
    for skipped in resolution.skipped:
        assert skipped.reason and "\n" not in skipped.reason


FUZZ_CONFIG = Config(sysfs_root=SYSFS, uplinks={"vnet0": "eth0", "br0": "bond0"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_domains())
def test_fuzz_generated_domains(document):
    resolution = resolve_xml(document, FUZZ_CONFIG, network_bridge=NETWORKS)
    _check_resolution(resolution)
    assert len(resolution.targets) + len(resolution.skipped) >= document.count("<interface ")


_SEEDS = [(DOMAINS / name).read_bytes() for name in sorted(EXPECTED_TARGETS)]


@st.composite
def _mutations(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "delete", "insert", "duplicate"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 40))]
        elif action == "insert":
            data[position:position] = draw(st.sampled_from([b"<", b">", b"'", b"&", b"<!DOCTYPE x>", b"&amp;", b"\x00", b"\xc3", b"</interface>", b"<vlan><tag id='7'/></vlan>", b"<interface type='bridge'>"]))
        else:
            end = min(len(data), position + draw(st.integers(1, 200)))
            data[position:position] = data[position:end]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_fuzz_mutated_fixtures(document):
    try:
        resolution = resolve_xml(document, FUZZ_CONFIG, network_bridge=NETWORKS)
    except InputError as error:
        assert "\n" not in str(error)
        return
    _check_resolution(resolution)


def test_resolution_dataclasses_are_plain_data():
    resolution = resolve("sriov.xml")
    assert dataclasses.asdict(resolution)["skipped"][0]["kind"] == "hostdev"


def test_only_vouched_addresses_become_svi_neighbours_never_a_guest_claimed_one() -> None:
    """A Linux-bridge vNIC's operator- and host-vouched addresses are written as the SVI's
    neighbour entries at the arrival (EVPN MAC+IP routes); a guest source's never are."""
    import dataclasses

    from rarp_announce.model import Address

    mac = "52:54:00:01:00:01"
    config = dataclasses.replace(CONFIG, addresses=dataclasses.replace(
        CONFIG.addresses, sources=("metadata", "config", "nwfilter", "lease", "arp")))
    found = {mac: [Address("192.0.2.50", "lease"), Address("192.0.2.99", "arp")]}
    resolution = resolve("bridges.xml", config, found_addresses=found)
    target = next(t for t in resolution.targets if t.mac == mac)
    assert target.bridge_port == BridgePort("br0", "vnet0")
    assert target.neighbours == ("192.0.2.50",)
    assert "192.0.2.99" not in [a.ip for a in target.addresses]  # guest sources join only after vetting


def test_an_ovs_port_libvirt_plugs_parked_is_announced_in_the_vlan_ovsdb_wires_it_in():
    """<vlan><tag id='4095'/></vlan> on an OVS vNIC: libvirt creates the port in the dead VLAN
    (isolated, as os-vif does) and an agent wires it in OVSDB. Parked: nothing is announced yet;
    wired: announced in OVSDB's VLAN, the XML's 4095 neither refused nor compared."""
    from rarp_announce.resolve.ovsdb import OvsSnapshot
    from rarp_announce.resolve.ovsport import PortInfo

    mac = "52:54:00:09:00:01"
    xml = (f"<domain type='kvm'><name>parked</name><devices><interface type='bridge'><mac address='{mac}'/>"
           "<source bridge='ovsbr0'/><virtualport type='openvswitch'/><vlan><tag id='4095'/></vlan>"
           "<target dev='vnet1'/></interface></devices></domain>")
    ids = {"attached-mac": mac}
    parked = OvsSnapshot(["ovsbr0"], [PortInfo("ovsbr0", "vnet1", "vnet1", 7, 4095, external_ids=ids)])
    resolution = resolve_xml(xml, CONFIG, ovs=parked)
    assert [(t.vlan, t.ovs) for t in resolution.targets] == [(None, OvsPort("ovsbr0", "vnet1", 7))]
    assert "dead VLAN 4095" in resolution.problems[resolution.targets[0].route]
    wired = OvsSnapshot(["ovsbr0"], [PortInfo("ovsbr0", "vnet1", "vnet1", 7, 100, external_ids=ids)])
    resolution = resolve_xml(xml, CONFIG, ovs=wired)
    assert [(t.vlan, t.tagged, t.ovs) for t in resolution.targets] == [(100, False, OvsPort("ovsbr0", "vnet1", 7))]
    assert resolution.skipped == [] and resolution.problems == {} and resolution.notes == []
    without_ovsdb = resolve_xml(xml, CONFIG, ovs_down="unreachable")
    assert without_ovsdb.targets == []
    assert "dead VLAN 4095" in without_ovsdb.skipped[0].reason
