"""virt/connection.py and resolve/host.py against libvirt's test driver: fixture domains defined,
started, read back and resolved as this host resolves running domains."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rarp_announce.config import AddressesConfig, Config, OvsConfig
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.model import Resolution, Skipped
from rarp_announce.resolve.host import HostResolver
from rarp_announce.virt.connection import lookup_domain, network_bridge_lookup, open_connection, running_domain_xml

from tests.resolve.test_interfaces import EXPECTED_SKIPPED, EXPECTED_TARGETS

FIXTURES = Path(__file__).parent.parent / "fixtures"
DOMAINS = FIXTURES / "domains"
# No libvirt address sources here: libvirt 9.0's test driver dies (SIGSEGV) answering
# virDomainInterfaceAddresses for a vNIC on a network without <ip> (these fixtures' networks);
# tests/resolve/test_addresses.py asks it about bridged vNICs instead.
CONFIG = Config(sysfs_root=str(FIXTURES / "sysfs"), ovs=OvsConfig(db=""),
                addresses=AddressesConfig(sources=("metadata", "config")))


def resolve_domain(conn, name: str, config: Config) -> Resolution:
    """A running domain resolved the way the daemon and `domain` resolve it (OVSDB not read here)."""
    _domain, xml = running_domain_xml(conn, name)
    return asyncio.run(HostResolver(lambda: config, connection=lambda: conn).resolve(xml))
# What libvirt accepts: bad.xml has MACs it refuses, and it knows no type 'teleport'.
LIBVIRT_FIXTURES = ["bridges", "networks", "direct", "sriov", "ethernet", "nol2"]
NETWORKS = [
    "<network><name>lab</name><bridge name='labbr0'/></network>",
    "<network><name>ovs-net</name><forward mode='bridge'/><bridge name='ovsbr1'/><virtualport type='openvswitch'/></network>",
    "<network><name>macvtap-net</name><forward mode='bridge'><interface dev='eth1'/></forward></network>",
]


def libvirt_xml(name: str) -> str:
    root = ET.fromstring((DOMAINS / f"{name}.xml").read_text())
    devices = root.find("devices")
    for interface in devices.findall("interface"):
        if interface.get("type") == "teleport":
            devices.remove(interface)
    root.set("type", "test")
    root.attrib.pop("id", None)
    return ET.tostring(root, encoding="unicode")


@pytest.fixture(scope="module")
def conn():
    try:
        import libvirt  # noqa: F401
    except ImportError:
        from tests.conftest import require

        require(False, "needs libvirt-python")
    # test:///default keeps its state per process while a connection is open: define and
    # start here, in the process that resolves.
    connection = open_connection("test:///default")
    made_networks = [connection.networkCreateXML(xml) for xml in NETWORKS]
    made = []
    for name in LIBVIRT_FIXTURES:
        domain = connection.defineXML(libvirt_xml(name))
        domain.create()
        made.append(domain)
    idle = connection.defineXML(libvirt_xml("direct").replace("<name>direct</name>", "<name>idle</name>").replace(
        "11111111-2222-3333-4444-000000000003", "11111111-2222-3333-4444-0000000000ff"))
    made.append(idle)
    yield connection
    for domain in made:
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    for network in made_networks:
        network.destroy()
    connection.close()


def without_interface(items):
    return [(t.mac, t.device, t.vlan, t.kind) for t in items]


def test_the_live_xml_comes_from_libvirt_by_uuid(conn):
    resolver = HostResolver(lambda: CONFIG, connection=lambda: conn)
    assert "<name>direct</name>" in resolver.live_xml("11111111-2222-3333-4444-000000000003")
    assert resolver.live_xml("11111111-2222-3333-4444-00000000dead") is None
    assert HostResolver(lambda: CONFIG).live_xml("11111111-2222-3333-4444-000000000003") is None


@pytest.mark.parametrize("name", ["bridges", "direct", "sriov", "ethernet"])
def test_domains_read_back_through_libvirt_resolve_like_their_xml(conn, name):
    resolution = resolve_domain(conn, name, CONFIG)
    assert resolution.domain == name
    expected_targets = list(EXPECTED_TARGETS[f"{name}.xml"])
    expected_skipped = list(EXPECTED_SKIPPED[f"{name}.xml"])
    if name == "bridges":
        # libvirt gives every vNIC a target dev: the OVS port the saved XML left unnamed is named live
        expected_skipped = []
        expected_targets.append(dataclasses.replace(expected_targets[-1], mac="52:54:00:01:00:06", vlan=None))
    assert without_interface(resolution.targets) == without_interface(expected_targets)
    # the test driver names every tap testnetN; unmanaged taps keep their own names
    assert all(t.interface.startswith("testnet") for t in resolution.targets)
    # OVS ports are found by their live target dev (testnetN here); OpenFlow was not asked
    for target in resolution.targets:
        if target.ovs is not None:
            assert target.ovs.name == target.interface
            assert resolution.problems[target.route] == f"no port {target.interface} on OVS bridge ovsbr0 (asked over OpenFlow)"
    assert [(s.mac, s.kind, s.reason) for s in resolution.skipped] == [
        (s.mac, s.kind, s.reason) for s in expected_skipped
    ]


def test_network_interfaces_use_libvirt_for_the_bridge(conn):
    # The test driver drops the bridge attribute of <source network>: every bridge comes from
    # the network look-up, as for a domain whose live XML does not name it.
    resolution = resolve_domain(conn, "networks", CONFIG)
    assert without_interface(resolution.targets) == [
        ("52:54:00:02:00:01", "virbr0", None, "network"),
        ("52:54:00:02:00:02", "labbr0", 300, "network"),
        ("52:54:00:02:00:04", "ovsbr1", 400, "openvswitch"),
    ]
    assert resolution.skipped == [
        Skipped("52:54:00:02:00:03", "network", "testnet2", "network 'macvtap-net' has no bridge on this host (not active, or a macvtap/hostdev network: resolve the live XML of the running domain)")
    ]


def test_no_l2_interfaces_are_all_skipped(conn):
    resolution = resolve_domain(conn, "nol2", CONFIG)
    assert resolution.targets == []
    assert [(s.kind, s.reason) for s in resolution.skipped] == [
        (s.kind, s.reason) for s in EXPECTED_SKIPPED["nol2.xml"] if s.kind != "teleport"
    ]


def test_lookup_by_uuid_and_id(conn):
    by_uuid = resolve_domain(conn, "11111111-2222-3333-4444-000000000003", CONFIG)
    assert by_uuid.domain == "direct" and by_uuid.uuid == "11111111-2222-3333-4444-000000000003"
    domain_id = conn.lookupByName("direct").ID()
    assert lookup_domain(conn, str(domain_id)).name() == "direct"


def test_network_bridge_lookup(conn):
    lookup = network_bridge_lookup(conn)
    assert lookup("default") == "virbr0"
    assert lookup("lab") == "labbr0"
    assert lookup("no-such-network") is None


def test_missing_domain_is_input_error(conn):
    with pytest.raises(InputError) as caught:
        resolve_domain(conn, "ghost", CONFIG)
    assert str(caught.value) == "no domain 'ghost' at test:///default: check the name with virsh -c test:///default list --all"


def test_defined_but_stopped_domain_is_input_error(conn):
    with pytest.raises(InputError) as caught:
        resolve_domain(conn, "idle", CONFIG)
    assert str(caught.value) == "domain 'idle' is not running (shut off): only a running domain has live interfaces to announce"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("qemu+unix:///system?socket=/nonexistent/libvirt-sock", "cannot connect to libvirt at 'qemu+unix:///system?socket=/nonexistent/libvirt-sock': Failed to connect socket to '/nonexistent/libvirt-sock'"),
        ("nosuchdriver:///x", "cannot connect to libvirt at 'nosuchdriver:///x': "),
    ],
)
def test_unreachable_uri_is_one_line(uri, message):
    with pytest.raises(AnnounceError) as caught:
        open_connection(uri)
    assert not isinstance(caught.value, InputError)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_libvirt_prints_nothing_itself():
    # libvirt's default error handler would print each error on stderr a second time.
    code = (
        "from rarp_announce.virt.connection import open_connection\n"
        "try:\n    open_connection('qemu+unix:///system?socket=/nonexistent/sock')\n"
        "except Exception as e:\n    print('caught')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "caught"
    assert done.stderr == ""


def _one_vnic(body: str) -> str:
    return (f"<domain type='kvm'><name>probe</name><uuid>11111111-2222-3333-4444-00000000f001</uuid>"
            f"<devices><interface {body}<mac address='52:54:00:0f:00:01'/></interface></devices></domain>")


@pytest.mark.parametrize("body, needed", [
    ("type='bridge'><source bridge='lo'/><target dev='vnet0'/>", False),  # a device that is no OVS bridge
    ("type='bridge'><source bridge='nosuchbr0'/>", False),  # missing: the readiness check says so, not OVSDB
    ("type='direct'><source dev='lo' mode='bridge'/>", False),
    ("type='bridge'><source bridge='br-int'/><virtualport type='openvswitch'/>", True),
    ("type='vhostuser'><source type='unix' path='/run/vhu/sock0' mode='server'/>", True),
    ("type='user'>", False),
])
def test_ovsdb_is_needed_only_for_a_vnic_on_open_vswitch(body: str, needed: bool) -> None:
    """What `domain` and `targets` ask before contacting OVSDB: a host without Open vSwitch is
    never asked for a guest without an OVS vNIC (tests/cli/test_resolve.py runs the commands)."""
    resolver = HostResolver(lambda: CONFIG)
    assert asyncio.run(resolver.needs_ovs(_one_vnic(body))) is needed
