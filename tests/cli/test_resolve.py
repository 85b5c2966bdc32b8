"""`rarp-announce targets` and `rarp-announce domain` end to end: libvirt's test driver from a node
file, pcap files read back with scapy, a netns switch learning the MAC, and Open vSwitch learning
it in the right VLAN with the frame leaving its trunk tagged."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rarp_announce.lab.netns import Topology
from tests.conftest import require
from tests.test_frames import scapy_frame
from tests.resolve.test_interfaces import EXPECTED_SKIPPED, EXPECTED_TARGETS

CLI = [sys.executable, "-m", "rarp_announce"]
FIXTURES = Path(__file__).parent.parent / "fixtures"
DOMAINS = FIXTURES / "domains"
SYSFS = FIXTURES / "sysfs"

# A domain that lives on the test topology: br0 exists in host netns 'a', ovsbr0 only in the OVS test.
WIRED = """<domain type='test'>
  <name>wired</name>
  <uuid>11111111-2222-3333-4444-0000000000a1</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type>hvm</type></os>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:0a:00:01'/>
      <source bridge='br0'/>
      <target dev='vnet0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:0a:00:02'/>
      <source bridge='br0'/>
      <vlan trunk='yes'><tag id='100'/><tag id='200'/></vlan>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:0a:00:03'/>
      <source bridge='ovsbr0'/>
      <virtualport type='openvswitch'/>
      <vlan><tag id='100'/></vlan>
      <target dev='vm0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:0a:00:04'/>
    </interface>
  </devices>
</domain>"""

OVSVM = """<domain type='test'>
  <name>ovsvm</name>
  <uuid>11111111-2222-3333-4444-0000000000a2</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type>hvm</type></os>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:0a:00:03'/>
      <source bridge='ovsbr0'/>
      <virtualport type='openvswitch'/>
      <vlan><tag id='100'/></vlan>
      <target dev='vm0'/>
    </interface>
  </devices>
</domain>"""

# vhost-user (OVS-DPDK): QEMU sends no RARP for it from the host. Its OVS port is found by the
# socket's name; DPDK is absent here, so a plain port named like the socket (vm0) stands in.
VHOSTVM = """<domain type='test'>
  <name>vhostvm</name>
  <uuid>11111111-2222-3333-4444-0000000000a3</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type>hvm</type></os>
  <devices>
    <interface type='vhostuser'>
      <mac address='52:54:00:0a:00:05'/>
      <source type='unix' path='/run/openvswitch/vm0' mode='client'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""

NETWORKS = [
    "<network><name>default</name><bridge name='virbr0'/></network>",  # a node file starts with none
    "<network><name>lab</name><bridge name='labbr0'/></network>",
    "<network><name>ovs-net</name><forward mode='bridge'/><bridge name='ovsbr1'/><virtualport type='openvswitch'/></network>",
    "<network><name>macvtap-net</name><forward mode='bridge'><interface dev='eth1'/></forward></network>",
]
# Through the test driver, network interfaces lose <source bridge> and <actual>: the bridge comes
# from the network look-up, and the macvtap network (no bridge) is skipped.
THROUGH_LIBVIRT = {
    "networks": [("52:54:00:02:00:01", "virbr0", None), ("52:54:00:02:00:02", "labbr0", 300), ("52:54:00:02:00:04", "ovsbr1", None)],
}


def octets(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def as_test_domain(name: str) -> str:
    root = ET.fromstring((DOMAINS / f"{name}.xml").read_text())
    root.set("type", "test")
    root.attrib.pop("id", None)
    return ET.tostring(root, encoding="unicode")


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> str:
    """A test-driver node file: its domains run in every process that opens the URI."""
    require(_has_libvirt(), "needs libvirt-python")
    folder = tmp_path_factory.mktemp("node")
    body = "".join(as_test_domain(name) for name in ("bridges", "networks", "sriov", "direct", "ethernet")) + WIRED + OVSVM + VHOSTVM
    networks = "".join(NETWORKS)
    path = folder / "node.xml"
    path.write_text(f"<node>{networks}{body}</node>")
    return f"test://{path}"


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "config.toml"
    # Config schedule: 3 rounds 20 ms apart; CLI options override it per run.
    # No Open vSwitch here: OVS vNICs resolve from the XML, their OpenFlow socket is missing.
    # No libvirt address sources: libvirt 9.0's test driver dies (SIGSEGV) answering
    # virDomainInterfaceAddresses for a vNIC on a network without <ip>, as the node file's are.
    path.write_text(f'sysfs_root = "{SYSFS}"\n[schedule]\nrounds = 3\ninitial = 20\nstep = 1\nmax = 20\n'
                    f'[ovs]\ndb = ""\nrundir = "{tmp_path}"\n[addresses]\nsources = ["metadata", "config"]\n')
    return str(path)


def openflow_missing(tmp_path_or_config: str, bridge: str) -> str:
    rundir = Path(tmp_path_or_config).parent
    return (f"cannot reach bridge {bridge}'s OpenFlow socket unix:{rundir}/{bridge}.mgmt: No such file or directory "
            "(is ovs-vswitchd running and does the bridge exist?)")


def frame_of(target) -> bytes:
    """The frame a target puts on its route: an OVS access port's is untagged (the port tags it)."""
    return scapy_frame(octets(target.mac), target.vlan if target.tagged else None)


# bridges.xml read back through libvirt: the test driver names every tap, so the unnamed OVS port is announced too
BRIDGES_LIVE = EXPECTED_TARGETS["bridges.xml"] + [
    dataclasses.replace(EXPECTED_TARGETS["bridges.xml"][-1], mac="52:54:00:01:00:06", vlan=None, tagged=False)
]


def _has_libvirt() -> bool:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return False
    return True


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run([*CLI, *argv], **kwargs)


def read_pcap(path: Path):
    from scapy.utils import rdpcap

    return [(float(packet.time), bytes(packet)) for packet in rdpcap(str(path))]


def expected_frame(target: dict) -> bytes:
    return scapy_frame(octets(target["mac"]), target["vlan"])


# --- targets -------------------------------------------------------------------------------

def test_targets_json_from_a_file_in_a_netns_with_br0(topology: Topology, config: str) -> None:
    result = topology.exec("a", [*CLI, "targets", "--xml", str(DOMAINS / "bridges.xml"), "--json", "--config", config])
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record) == {"targets", "skipped"}
    expected = []
    for target in EXPECTED_TARGETS["bridges.xml"]:
        entry = target.record()
        if target.ovs is not None:
            entry["problem"] = openflow_missing(config, "ovsbr0")
        expected.append(entry)
    assert record["targets"] == expected
    assert record["skipped"] == [s.record() for s in EXPECTED_SKIPPED["bridges.xml"]]


def test_targets_reports_a_down_and_a_missing_bridge(topology: Topology, config: str) -> None:
    argv = [*CLI, "targets", "--xml", str(DOMAINS / "bridges.xml"), "--json", "--config", config]
    topology.exec("a", ["ip", "link", "set", "br0", "down"], check=True)
    down = json.loads(topology.exec("a", argv).stdout)
    assert {t["device"]: t.get("problem") for t in down["targets"]} == {
        "br0": "device is down (ip link set dev br0 up)",
        "ovsbr0": openflow_missing(config, "ovsbr0"),
    }
    topology.exec("a", ["ip", "link", "del", "br0"], check=True)
    gone = json.loads(topology.exec("a", argv).stdout)
    assert {t["device"]: t.get("problem") for t in gone["targets"]} == {
        "br0": "no such device on this host",
        "ovsbr0": openflow_missing(config, "ovsbr0"),
    }


def test_targets_skipped_json_and_stdin(config: str) -> None:
    result = run(["targets", "--xml", "-", "--json", "--config", config], input=(DOMAINS / "sriov.xml").read_text())
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert [(t["mac"], t["device"], t["vlan"], t["kind"], t["interface"]) for t in record["targets"]] == [
        (t.mac, t.device, t.vlan, t.kind, t.interface) for t in EXPECTED_TARGETS["sriov.xml"]
    ]
    assert record["skipped"] == [s.record() for s in EXPECTED_SKIPPED["sriov.xml"]]


def test_targets_table(config: str) -> None:
    result = run(["targets", "--xml", str(DOMAINS / "ethernet.xml"), "--config", config])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "domain ethernet (11111111-2222-3333-4444-000000000005)",
        "no targets",
        'skipped 52:54:00:05:00:01 tap-web (ethernet): unmanaged tap (type ethernet): no uplink is known; set [uplinks] tap-web = "<uplink device>" in the config',
        'skipped 52:54:00:05:00:02 tap-db (ethernet): unmanaged tap (type ethernet): no uplink is known; set [uplinks] tap-db = "<uplink device>" in the config',
    ]
    direct = run(["targets", "--xml", str(DOMAINS / "direct.xml"), "--config", config]).stdout.splitlines()
    assert direct[1].split() == ["MAC", "DEVICE", "PORT", "VLAN", "KIND", "INTERFACE", "ADDRESSES", "STATUS"]
    assert direct[3].split()[:7] == ["52:54:00:03:00:02", "bond0", "-", "500", "(xml)", "direct", "macvtap1"]


def test_targets_of_a_running_domain_through_libvirt(node: str, config: str) -> None:
    result = run(["targets", "--domain", "sriov", "--connect", node, "--json", "--config", config])
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert [(t["mac"], t["device"], t["vlan"], t["kind"]) for t in record["targets"]] == [
        (t.mac, t.device, t.vlan, t.kind) for t in EXPECTED_TARGETS["sriov.xml"]
    ]
    assert [s["reason"] for s in record["skipped"]] == [s.reason for s in EXPECTED_SKIPPED["sriov.xml"]]


def test_connect_comes_from_the_environment_then_the_config(node: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LIBVIRT_DEFAULT_URI": node}
    assert run(["targets", "--domain", "direct", "--json", "--config", str(tmp_path / "none.toml")], env=env).returncode == 2
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    from_env = run(["targets", "--domain", "direct", "--json", "--config", str(empty)], env=env)
    assert from_env.returncode == 0, from_env.stderr
    configured = tmp_path / "connect.toml"
    configured.write_text(f'connect = "{node}"\n')
    env["LIBVIRT_DEFAULT_URI"] = "qemu+unix:///system?socket=/nonexistent/sock"
    from_config = run(["targets", "--domain", "direct", "--json", "--config", str(configured)], env=env)
    assert from_config.returncode == 0, from_config.stderr
    assert json.loads(from_config.stdout) == json.loads(from_env.stdout)


# --- domain --------------------------------------------------------------------------------

def test_domain_pcap_announces_every_target_on_the_config_schedule(node: str, config: str, tmp_path: Path) -> None:
    pcap = tmp_path / "bridges.pcap"
    result = run(["domain", "bridges", "--connect", node, "--config", config, "--pcap", str(pcap)])
    assert result.returncode == 0, result.stderr
    targets = BRIDGES_LIVE
    frames = read_pcap(pcap)
    assert len(frames) == 3 * len(targets)  # [schedule] rounds = 3
    expected = [frame_of(t) for t in targets]
    for round_index in range(3):
        batch = frames[round_index * len(targets) : (round_index + 1) * len(targets)]
        assert [frame for _, frame in batch] == expected  # byte for byte against scapy
    # The rounds never interleave: each round's timer is set when the previous round ran.
    stamps = [stamp for stamp, _ in frames]
    assert stamps == sorted(stamps)
    *fdb, summary = result.stdout.strip().splitlines()
    # The config's [schedule] (3 rounds 20 ms apart, not QEMU's 5 over 0.8 s), read from the
    # schedule the command ran, not from a clock; how close the stamps come to it is in `make bench`.
    assert summary == f"announced 6 MAC(s) to {pcap}: 27 frame(s) over 0.040 s"
    # The Linux-bridge vNICs' FDB step is reported, never made, with --pcap.
    assert_fdb_reported(fdb, [t for t in targets if t.bridge_port is not None], "pcap")


@pytest.mark.parametrize("name", ["bridges", "networks", "direct", "sriov"])
def test_domain_pcap_of_each_fixture_domain_matches_its_targets(node: str, config: str, tmp_path: Path, name: str) -> None:
    pcap = tmp_path / f"{name}.pcap"
    result = run(["domain", name, "--connect", node, "--config", config, "--pcap", str(pcap), "--rounds", "1"])
    assert result.returncode == 0, result.stderr
    live = BRIDGES_LIVE if name == "bridges" else EXPECTED_TARGETS[f"{name}.xml"]
    wanted = THROUGH_LIBVIRT.get(name) or [(t.mac, t.device, t.vlan if t.tagged else None) for t in live]
    assert [frame for _, frame in read_pcap(pcap)] == [scapy_frame(octets(mac), vlan) for mac, _device, vlan in wanted]
    *fdb, summary = result.stdout.strip().splitlines()
    assert summary.startswith(f"announced {len({mac for mac, _d, _v in wanted})} MAC(s) to {pcap}: {len(wanted)} frame(s)")
    assert_fdb_reported(fdb, [t for t in live if t.bridge_port is not None], "pcap")


def assert_fdb_reported(lines: list[str], targets: list, how: str) -> None:
    """One line per Linux-bridge vNIC (a trunk's VLANs share its entry), naming its MAC and tap."""
    pattern = re.compile(rf"bridge FDB on (\S+):(\S+): not written \({how}\): fdb replace (\S+) dev \2 master dynamic")
    matches = [pattern.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert sorted(m.group(3) for m in matches if m) == sorted({t.mac for t in targets})


def test_domain_with_nothing_to_announce_says_why(node: str, config: str) -> None:
    result = run(["domain", "ethernet", "--connect", node, "--config", config, "--dry-run"])
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == "rarp-announce: error: domain 'ethernet' has nothing to announce: every interface was skipped"
    assert lines[0] == 'rarp-announce: note: skipped tap-web (ethernet): unmanaged tap (type ethernet): no uplink is known; set [uplinks] tap-web = "<uplink device>" in the config'


def test_domain_options_override_the_config_and_json_reports_each_frame(node: str, config: str, tmp_path: Path) -> None:
    pcap = tmp_path / "sriov.pcap"
    result = run(["domain", "sriov", "--connect", node, "--config", config, "--pcap", str(pcap), "--rounds", "2", "--json"])
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["mac"], r["device"], r["vlan"], r["round"], r["domain"]) for r in records] == [
        ("52:54:00:04:00:01", "enp3s0f0", 42, 1, "sriov"),
        ("52:54:00:04:00:02", "enp3s0f0", None, 1, "sriov"),
        ("52:54:00:04:00:01", "enp3s0f0", 42, 2, "sriov"),
        ("52:54:00:04:00:02", "enp3s0f0", None, 2, "sriov"),
    ]
    assert [frame for _, frame in read_pcap(pcap)] == [
        scapy_frame(octets("52:54:00:04:00:01"), 42), scapy_frame(octets("52:54:00:04:00:02")),
    ] * 2
    # the three VFs that cannot be resolved are named on stderr, one line each
    notes = result.stderr.splitlines()
    assert len(notes) == 3 and all(line.startswith("rarp-announce: note: skipped testnet") for line in notes)


def test_domain_on_the_wire_moves_the_mac_and_reports_the_missing_device(topology: Topology, node: str, config: str) -> None:
    mac = "52:54:00:0a:00:02"
    topology.learn("b", mac)  # the guest used to live behind host b
    assert topology.fdb_port(mac) == "port_b"
    with topology.capture("switch", "port_a") as capture:
        result = topology.exec("a", [*CLI, "domain", "wired", "--connect", node, "--config", config, "--rounds", "2", "--initial", "10"])
        captured = capture.frames(count=6, timeout=5)
    # no Open vSwitch in host a: the OVS vNIC is left out (never written into a bridge's own
    # port), the others leave, exit 1
    assert result.returncode == 1
    assert f"rarp-announce: error: OVS port 'ovsbr0:vm0': {openflow_missing(config, 'ovsbr0')}" in result.stderr.splitlines()
    assert "announced 2 MAC(s) on br0: 6 frame(s)" in result.stdout
    assert topology.fdb_port(mac) == "port_a"
    expected = [
        scapy_frame(octets("52:54:00:0a:00:01")),
        scapy_frame(octets("52:54:00:0a:00:02"), 100),
        scapy_frame(octets("52:54:00:0a:00:02"), 200),
    ]
    assert [item.frame for item in captured] == expected * 2


def test_domain_dry_run_prints_without_sending(node: str, config: str) -> None:
    result = run(["domain", "direct", "--connect", node, "--config", config, "--dry-run", "--rounds", "1"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all("(not sent)" in line for line in lines)
    assert re.search(r"\bbond0\s+vlan 500\b.*52:54:00:03:00:02", lines[1]), lines[1]


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["domain", "ghost"], 2, "rarp-announce: error: no domain 'ghost' at test:///"),
        (["targets", "--domain", "ghost"], 2, "rarp-announce: error: no domain 'ghost' at test:///"),
        (["domain", "sriov", "--rounds", "0", "--dry-run"], 2, "rarp-announce: error: invalid rounds 0: expected an integer 1..1000"),
        (["domain", "sriov", "--pcap", "/tmp/x.pcap", "--dry-run"], 2, "rarp-announce: error: --pcap and --dry-run exclude each other: choose one"),
        (["targets"], 2, "rarp-announce: error: give exactly one of --xml FILE (or --xml - for stdin) and --domain NAME"),
        (["targets", "--xml", "/nonexistent.xml"], 2, "rarp-announce: error: XML file '/nonexistent.xml' does not exist"),
        (["targets", "--xml", "-"], 2, "rarp-announce: error: domain XML on stdin is empty"),
    ],
)
def test_bad_input_is_one_line(node: str, argv, code: int, message: str) -> None:
    connect = ["--connect", node] if argv[0] == "domain" or "--domain" in argv else []
    result = run([*argv, *connect, "--config", "/dev/null"], input="")
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "document, message",
    [
        ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><domain><name>&b;</name></domain>', "domain XML contains <!DOCTYPE: refused"),
        ('<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><domain><name>&xxe;</name></domain>', "domain XML contains <!DOCTYPE: refused"),
        ("<domain>" + "<x/>" * (1_100_000), "larger than the 4194304-byte limit"),
        ("<domain><devices>", "malformed domain XML: no element found: line 1, column 17"),
        ("<network/>", "not a libvirt domain XML: the root element is <network>, expected <domain>"),
    ],
)
def test_hostile_xml_on_stdin_is_one_line(document: str, message: str) -> None:
    result = run(["targets", "--xml", "-", "--config", "/dev/null"], input=document)
    assert result.returncode == 2
    assert result.stderr == f"rarp-announce: error: {message}\n" or (
        result.stderr.startswith("rarp-announce: error: ") and message in result.stderr and result.stderr.count("\n") == 1
    )


def test_unreachable_libvirt_and_broken_config_are_one_line(tmp_path: Path) -> None:
    result = run(["domain", "web01", "--connect", "qemu+unix:///system?socket=/nonexistent/libvirt-sock", "--config", "/dev/null"])
    assert result.returncode == 1
    assert result.stderr.startswith("rarp-announce: error: cannot connect to libvirt at 'qemu+unix:///system?socket=/nonexistent/libvirt-sock': ")
    assert result.stderr.count("\n") == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[hook]\nmode = 'sometimes'\n")
    result = run(["domain", "web01", "--config", str(broken)])
    assert result.returncode == 2
    assert result.stderr == f"rarp-announce: error: config file {str(broken)!r}: key [hook] mode: expected one of auto, daemon, standalone, got 'sometimes'\n"


def test_help_teaches_and_loads_neither_scapy_nor_libvirt() -> None:
    code = (
        "import sys\nfrom rarp_announce.cli import app\n"
        "try:\n    app(['domain', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('scapy', 'libvirt', 'pyroute2') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stderr.strip() == "[]"
    assert "rarp-announce domain web01 --pcap /tmp/web01.pcap" in result.stdout
    targets_help = run(["targets", "--help"]).stdout
    assert "virsh dumpxml web01 | rarp-announce targets --xml - --json" in targets_help


# --- Open vSwitch --------------------------------------------------------------------------

def _ovs_host(topology: Topology, tmp_path: Path):
    """Host a's uplink moved from br0 to an OVS bridge as a trunk of VLANs 100 and 200; vm0 is the
    guest's port (a veth standing in for the tap; vm0guest is the guest's side)."""
    from rarp_announce.lab.ovs import PrivateOVS

    topology.exec("a", ["ip", "link", "set", "uplink", "nomaster"], check=True)
    topology.exec("a", ["ip", "link", "add", "vm0", "type", "veth", "peer", "name", "vm0guest"], check=True)
    topology.exec("a", ["ip", "link", "set", "vm0", "up"], check=True)
    topology.exec("a", ["ip", "link", "set", "vm0guest", "up"], check=True)
    ovs = PrivateOVS(tmp_path / "ovs", netns=topology.ns["a"]).start()
    ovs.add_bridge("ovsbr0")
    ovs.add_port("ovsbr0", "uplink", ofport=1, trunks=[100, 200])
    ovs.add_port("ovsbr0", "vm0", ofport=2, tag=100)
    topology.exec("a", ["ip", "link", "set", "ovsbr0", "up"], check=True)
    config = tmp_path / "ovs.toml"
    config.write_text(f'[schedule]\nrounds = 2\ninitial = 10\n[ovs]\ndb = "unix:{ovs.rundir}/db.sock"\nrundir = "{ovs.rundir}"\n')
    return ovs, str(config)


def _reaches_the_guest(topology: Topology, mac: str, vlan: int) -> bool:
    """A unicast frame to `mac`, tagged `vlan`, sent by the physical switch's side of host a's uplink:
    does it come out on the guest's side of vm0?"""
    from rarp_announce.lab.netns import Capture, learning_frame, send_raw

    frame = learning_frame("02:aa:00:00:00:01", vlan, to=mac)
    with Capture(topology.ns["a"], "vm0guest") as capture:
        send_raw(topology.switch, "port_a", frame)
        got = capture.frames(ethertype=0x88B5, count=1, timeout=1)
    return len(got) == 1 and got[0].frame[:6] == bytes.fromhex(mac.replace(":", ""))


def test_domain_on_an_ovs_port_injects_through_the_guests_port(node: str, tmp_path: Path) -> None:
    require(shutil.which("ovs-vswitchd") is not None, "needs openvswitch-switch")
    mac = "52:54:00:0a:00:03"
    with Topology(hosts=("a", "b")) as topology:
        ovs, config = _ovs_host(topology, tmp_path)
        try:
            topology.learn("b", mac)  # the physical switch has the MAC behind the old host
            assert topology.fdb_port(mac) == "port_b"

            targets = json.loads(topology.exec("a", [*CLI, "targets", "--domain", "ovsvm", "--connect", node, "--json", "--config", config]).stdout)
            # The test driver invents 192.168.0.<n> as a bridged vNIC's lease and ARP address: the
            # lease source names it first, and a gratuitous ARP for it goes with the RARP.
            assert targets == {"targets": [{
                "mac": mac, "device": "ovsbr0", "vlan": 100, "kind": "openvswitch", "interface": "vm0", "port": "vm0",
                "ofport": 2, "tagged": False, "vlan_source": "ovsdb", "addresses": [{"ip": "192.168.0.1", "source": "lease"}],
            }], "skipped": []}

            with topology.capture("switch", "port_a") as capture, topology.capture("switch", "port_a") as arp:
                result = topology.exec("a", [*CLI, "domain", "ovsvm", "--connect", node, "--config", config])
                captured = capture.frames(count=2, timeout=5)
                garps = arp.frames(ethertype=0x0806, count=2, timeout=5)
            fdb = ovs.fdb("ovsbr0")
            # the GARP took the RARP's road: injected untagged as the guest, out of the trunk tagged 100
            from rarp_announce.frames import garp_frame

            assert [c.frame for c in garps] == [garp_frame(octets(mac), bytes([192, 168, 0, 1]), 100)] * 2
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("announced 1 MAC(s) on ovsbr0:vm0: 4 frame(s)")  # RARP + GARP, twice
            # OVS learned the MAC on the guest's own port in VLAN 100: never on the bridge's LOCAL port
            assert [(port, vlan) for port, vlan, learned in fdb if learned == mac] == [("vm0", 100)]
            trace = ovs.appctl("ofproto/trace", "ovsbr0", f"in_port=1,dl_vlan=100,dl_dst={mac}")
            assert "forwarding to learned port" in trace and "LOCAL" not in trace
            # out of the trunk tagged 100, byte for byte, and the physical switch moved the MAC
            assert [c.frame for c in captured] == [scapy_frame(octets(mac), 100)] * 2
            assert topology.fdb_port(mac) == "port_a"
            # and what the user cares about: traffic for the guest reaches the guest
            assert _reaches_the_guest(topology, mac, 100)
        finally:
            ovs.stop()


def test_the_vlan_comes_from_ovsdb_and_a_dead_port_is_announced_once_wired(node: str, tmp_path: Path) -> None:
    """Neutron's agent sets the port's VLAN in OVSDB (never in the XML) and plugs it dead (tag 4095)
    first: `domain --wait` waits for the rewiring and announces in the VLAN OVSDB gives."""
    import threading

    require(shutil.which("ovs-vswitchd") is not None, "needs openvswitch-switch")
    mac = "52:54:00:0a:00:03"
    with Topology(hosts=("a", "b")) as topology:
        ovs, config = _ovs_host(topology, tmp_path)
        try:
            ovs.vsctl("set", "port", "vm0", "tag=4095")
            dead = json.loads(topology.exec("a", [*CLI, "targets", "--domain", "ovsvm", "--connect", node, "--json", "--config", config]).stdout)
            assert dead["targets"][0]["problem"].startswith("not wired yet: ")
            assert "4095" in dead["targets"][0]["problem"]
            now = topology.exec("a", [*CLI, "domain", "ovsvm", "--connect", node, "--config", config])
            assert now.returncode == 1 and "not wired yet" in now.stderr
            rewire = threading.Timer(0.7, ovs.vsctl, ("set", "port", "vm0", "tag=200"))
            rewire.start()
            with topology.capture("switch", "port_a") as capture:
                waited = topology.exec("a", [*CLI, "domain", "ovsvm", "--connect", node, "--config", config, "--wait", "10", "--json"])
                captured = capture.frames(count=2, timeout=5)
            rewire.join()
            assert waited.returncode == 0, waited.stderr
            records = [json.loads(line) for line in waited.stdout.splitlines()]
            assert {(r["vlan"], r["port"], r["ofport"]) for r in records} == {(200, "vm0", 2)}
            assert "ready after" in waited.stderr
            # the XML says VLAN 100; the port is in 200: OVSDB wins, and the frame leaves tagged 200
            assert [c.frame for c in captured] == [scapy_frame(octets(mac), 200)] * 2
            assert [(port, vlan) for port, vlan, learned in ovs.fdb("ovsbr0") if learned == mac] == [("vm0", 200)]
            assert _reaches_the_guest(topology, mac, 200)
        finally:
            ovs.stop()


def test_a_vhost_user_vnic_is_found_by_its_socket_and_announced_through_that_port(node: str, tmp_path: Path) -> None:
    require(shutil.which("ovs-vswitchd") is not None, "needs openvswitch-switch")
    mac = "52:54:00:0a:00:05"
    with Topology(hosts=("a", "b")) as topology:
        ovs, config = _ovs_host(topology, tmp_path)
        try:
            topology.learn("b", mac)
            targets = json.loads(topology.exec("a", [*CLI, "targets", "--domain", "vhostvm", "--connect", node, "--json",
                                                     "--config", config]).stdout)
            [target] = targets["targets"]
            assert (target["kind"], target["device"], target["port"], target["ofport"], target["vlan"], target["tagged"]) == (
                "vhostuser", "ovsbr0", "vm0", 2, 100, False)
            result = topology.exec("a", [*CLI, "domain", "vhostvm", "--connect", node, "--config", config])
            assert result.returncode == 0, result.stderr
            assert [(port, vlan) for port, vlan, learned in ovs.fdb("ovsbr0") if learned == mac] == [("vm0", 100)]
            assert topology.fdb_port(mac) == "port_a"
            assert _reaches_the_guest(topology, mac, 100)
        finally:
            ovs.stop()


# --- Open vSwitch is asked only when a vNIC is on it ------------------------------------------


def test_domain_without_an_ovs_vnic_never_contacts_ovsdb(node: str, config: str, tmp_path: Path) -> None:
    """A host without Open vSwitch, whose config still names a database: `domain` and `targets`
    for a guest with no OVS vNIC say nothing of OVSDB; for a guest with one, they say it is
    unreachable (the socket was asked, so the other case proves it was not)."""
    socket_path = tmp_path / "no-ovs" / "db.sock"
    text = Path(config).read_text().replace('db = ""', f'db = "unix:{socket_path}"')
    assert f'db = "unix:{socket_path}"' in text
    path = tmp_path / "with-db.toml"
    path.write_text(text)
    linux_only = run(["domain", "direct", "--connect", node, "--config", str(path), "--dry-run", "--rounds", "1"])
    assert linux_only.returncode == 0, linux_only.stderr
    assert "Open vSwitch" not in linux_only.stderr and "OVSDB" not in linux_only.stderr, linux_only.stderr
    shown = run(["targets", "--domain", "direct", "--connect", node, "--config", str(path)])
    assert shown.returncode == 0, shown.stderr
    assert "Open vSwitch" not in shown.stdout + shown.stderr

    on_ovs = run(["domain", "ovsvm", "--connect", node, "--config", str(path), "--dry-run", "--rounds", "1"])
    assert f"unix:{socket_path}" in on_ovs.stderr or "Open vSwitch database not read" in on_ovs.stderr, on_ovs.stderr
    shown = run(["targets", "--domain", "ovsvm", "--connect", node, "--config", str(path)])
    assert "Open vSwitch database not read" in shown.stdout, shown.stdout


@pytest.mark.parametrize("ovsdb", ["read", "never read"])
def test_send_port_on_open_vswitch_injects_as_the_guest(tmp_path: Path, ovsdb: str) -> None:
    """`send --iface BRIDGE --port PORT` on Open vSwitch: the port's OpenFlow number comes from
    OVSDB, or (OVSDB never read) is asked of the bridge on the connection the frames then take;
    OVS learns the MAC on the guest's port and traffic for the guest reaches it. Writing into
    the bridge's own port is refused (a userspace-datapath bridge's port is a tap: OVSDB says)."""
    require(shutil.which("ovs-vswitchd") is not None, "needs openvswitch-switch")
    mac = "52:54:00:0a:00:07"
    with Topology(hosts=("a", "b")) as topology:
        ovs, config = _ovs_host(topology, tmp_path)
        try:
            if ovsdb == "never read":
                text = re.sub(r'db = "[^"]*"', 'db = ""', Path(config).read_text())
                Path(config).write_text(text)
            topology.learn("b", mac)
            assert topology.fdb_port(mac) == "port_b"
            result = topology.exec("a", [*CLI, "send", mac, "--iface", "ovsbr0", "--port", "vm0", "--config", config, "--json"])
            assert result.returncode == 0, result.stderr
            records = [json.loads(line) for line in result.stdout.splitlines()]
            assert [(r["port"], r["ofport"], r["round"]) for r in records] == [("vm0", 2, 1), ("vm0", 2, 2)]
            assert [(port, vlan) for port, vlan, learned in ovs.fdb("ovsbr0") if learned == mac] == [("vm0", 100)]
            assert topology.fdb_port(mac) == "port_a"
            assert _reaches_the_guest(topology, mac, 100)

            into_bridge = topology.exec("a", [*CLI, "send", mac, "--iface", "ovsbr0", "--config", config])
            if ovsdb == "read":
                assert into_bridge.returncode == 2
                assert "--iface ovsbr0 is an Open vSwitch bridge" in into_bridge.stderr, into_bridge.stderr
            else:
                # Without OVSDB nothing tells a userspace bridge's tap from any other device.
                assert "Open vSwitch bridge" not in into_bridge.stderr
        finally:
            ovs.stop()
