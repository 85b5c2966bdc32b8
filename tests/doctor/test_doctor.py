"""`rarp-announce doctor` run for real inside network namespaces built here: each problem made
on purpose (a port that does not learn, an nft rule dropping RARP, OVS down, a drop flow, FRR's
duplicate-address freeze, libvirt down, a static FDB entry in the way) must be the right line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rarp_announce.lab.netns import Topology
from tests.conftest import require

CLI = [sys.executable, "-m", "rarp_announce"]
GUEST_MAC = "52:54:00:0d:00:01"
OVS_MAC = "52:54:00:0d:00:03"
NODE = f"""<node>
<domain type='test'><name>web</name><uuid>11111111-2222-3333-4444-0000000000d1</uuid>
  <memory unit='KiB'>65536</memory><os><type>hvm</type></os><devices>
  <interface type='bridge'><mac address='{GUEST_MAC}'/><source bridge='br0'/><target dev='vnet0'/></interface>
  <interface type='bridge'><mac address='52:54:00:0d:00:02'/><source bridge='br9'/><target dev='vnet1'/></interface>
</devices></domain>
<domain type='test'><name>ovsweb</name><uuid>11111111-2222-3333-4444-0000000000d2</uuid>
  <memory unit='KiB'>65536</memory><os><type>hvm</type></os><devices>
  <interface type='bridge'><mac address='{OVS_MAC}'/><source bridge='ovsbr0'/>
    <virtualport type='openvswitch'/><vlan><tag id='100'/></vlan><target dev='vm0'/></interface>
</devices></domain>
</node>"""


class Doctor:
    """A host netns (br0 with its uplink), a config, a hook installed in a folder of the test's own."""

    def __init__(self, topology: Topology, tmp_path: Path) -> None:
        self.topology = topology
        self.tmp = tmp_path
        self.hooks = tmp_path / "hooks"
        self.node = tmp_path / "node.xml"
        self.node.write_text(NODE)
        self.config(ovs=f'rundir = "{tmp_path}"\n')  # no OVSDB socket there: "no Open vSwitch here"
        installed = subprocess.run(
            [*CLI, "hook", "install", "--hooks-dir", str(self.hooks), "--mode", "standalone",
             "--connect", "test:///default", "--control-socket", str(tmp_path / "ctl.sock"),
             "--log-file", str(tmp_path / "hook.log"), "--python", sys.executable,
             "--waiter-dir", str(tmp_path / "waiters")], capture_output=True, text=True, timeout=60)
        assert installed.returncode == 0, installed.stderr

    def config(self, *, ovs: str) -> None:
        # No libvirt address source: libvirt 9.0's test driver dies answering them for some vNICs.
        (self.tmp / "config.toml").write_text(
            f'[daemon]\ncontrol_socket = "{self.tmp}/ctl.sock"\n[ovs]\n{ovs}'
            '[addresses]\nsources = ["metadata", "config"]\n')

    def sh(self, command: str) -> None:
        done = self.topology.exec("a", ["sh", "-c", command])
        assert done.returncode == 0, done.stderr

    def run(self, *extra: str, connect: str | None = None, as_json: bool = True) -> subprocess.CompletedProcess:
        argv = [*CLI, "doctor", "--config", str(self.tmp / "config.toml"), "--hooks-dir", str(self.hooks),
                "--connect", connect or f"test://{self.node}", *(["--json"] if as_json else []), *extra]
        return self.topology.exec("a", argv, timeout=90)

    def record(self, *extra: str, connect: str | None = None) -> dict:
        result = self.run(*extra, connect=connect)
        assert result.stderr == "", result.stderr
        record = json.loads(result.stdout)
        assert result.returncode == record["exit"]
        return record


def lines(record: dict, group: str, status: str | None = None) -> list[str]:
    return [f"{c['status']}: {c['what']}" for c in record["checks"]
            if c["group"] == group and (status is None or c["status"] == status)]


@pytest.fixture
def doctor(root_netns, tmp_path):
    with Topology(hosts=("a",)) as topology:
        yield Doctor(topology, tmp_path)


def test_a_healthy_bridge_is_ok_and_exit_0(doctor: Doctor) -> None:
    require(shutil.which("nft") is not None, "needs nftables' nft")
    result = doctor.run(as_json=False)
    assert result.returncode == 0, result.stdout
    out = result.stdout.splitlines()
    assert "ok: bridge: br0: learning on all 1 port(s), no VLAN filtering" in out
    assert "ok: firewall: no nftables rule drops RARP, ARP or neighbour advertisements" in out
    assert "ok: mode: hook only: a standalone waiter per incoming migration" in out
    assert any(line.startswith("ok: capabilities: this process (pid ") and "CAP_NET_RAW" in line for line in out)
    assert f"info: ovs: no Open vSwitch on this host (no OVSDB socket at {doctor.tmp}/db.sock)" in out
    assert not [line for line in out if line.startswith(("warn:", "fail:"))], out
    assert out[-1].startswith("doctor: ") and out[-1].endswith("nothing stops an announcement here")


def test_json_shape(doctor: Doctor) -> None:
    record = doctor.record()
    assert set(record) == {"checks", "counts", "exit"}
    assert set(record["counts"]) == {"ok", "info", "warn", "fail", "skip"}
    assert sum(record["counts"].values()) == len(record["checks"])
    for check in record["checks"]:
        assert set(check) == {"group", "status", "what", "why", "fix"}
        assert check["status"] in record["counts"]
        assert check["what"] and "\n" not in check["what"]
        assert (check["fix"] != "") == (check["status"] in ("warn", "fail")), check
    groups = [c["group"] for c in record["checks"]]
    assert {"daemon", "hook", "mode", "capabilities", "libvirt", "bridge", "firewall", "ovs", "evpn", "addresses"} <= set(groups)


def test_a_port_with_learning_off_is_a_warning_naming_it(doctor: Doctor) -> None:
    doctor.sh("bridge link set dev uplink learning off")
    # A tap with learning and flooding off, as libvirt's macTableManager='libvirt' leaves a guest's port.
    doctor.sh("ip tuntap add vnet7 mode tap && ip link set vnet7 master br0 && bridge link set dev vnet7 learning off flood off")
    record = doctor.record()
    assert record["exit"] == 0  # warnings only
    warned = lines(record, "bridge", "warn")
    assert warned == ["warn: br0 port uplink has learning off"]
    assert "bridge link set dev uplink learning on" in next(c["fix"] for c in record["checks"] if c["status"] == "warn")
    assert ("info: br0 port vnet7: learning off, flooding off (libvirt's macTableManager='libvirt' pattern)"
            in lines(record, "bridge"))


def test_nft_rules_dropping_announcements_are_named_and_placed(doctor: Doctor) -> None:
    require(shutil.which("nft") is not None, "needs nftables' nft")
    # QEMU's own RARPs dropped where they enter from the taps (the lab's "port not wired yet").
    doctor.sh("nft add table bridge lab && nft add chain bridge lab pre '{ type filter hook prerouting priority -300; }' && "
              "nft add rule bridge lab pre iifname 'vnet*' ether type 0x8035 drop")
    record = doctor.record()
    warned = lines(record, "firewall", "warn")
    assert len(warned) == 1 and record["exit"] == 0
    assert ("nft rule 'meta iifname \"vnet*\" ether type 0x8035 drop' (table bridge lab, chain pre, handle "
            in warned[0]) and warned[0].endswith("drops RARP (0x8035)")
    # Frames sent from the bridge device pass `output`: a drop there stops ours, a failure.
    doctor.sh("nft add chain bridge lab out '{ type filter hook output priority 0; }' && "
              "nft add rule bridge lab out ether type '{ arp, 0x8035 }' counter drop")
    record = doctor.record()
    failed = [c for c in record["checks"] if c["status"] == "fail"]
    assert record["exit"] == 1 and len(failed) == 1
    assert failed[0]["what"].startswith("nft rule 'ether type { arp, 0x8035 } drop' (table bridge lab, chain out")
    assert failed[0]["what"].endswith("drops RARP (0x8035), ARP (0x0806)")
    assert "pass hook output" in failed[0]["why"] and failed[0]["fix"].startswith("nft delete rule bridge lab out handle ")


def test_an_inet_rule_dropping_na_matters_only_through_br_netfilter(doctor: Doctor) -> None:
    require(shutil.which("nft") is not None, "needs nftables' nft")
    doctor.sh("nft add table inet f && nft add chain inet f fw '{ type filter hook forward priority 0; }' && "
              "nft add rule inet f fw icmpv6 type nd-neighbor-advert drop")
    calls = doctor.topology.exec("a", ["cat", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"]).stdout.strip() == "1"
    record = doctor.record()
    found = [c for c in record["checks"] if c["group"] == "firewall" and "nd-neighbor-advert" in c["what"]]
    assert len(found) == 1 and "drops neighbour advertisements (ICMPv6 136)" in found[0]["what"]
    assert found[0]["status"] == ("warn" if calls else "ok")


def test_ovs_down_is_the_ovsdb_warning_and_the_bridges_are_still_checked(doctor: Doctor) -> None:
    doctor.config(ovs=f'db = "unix:{doctor.tmp}/nowhere/db.sock"\n')
    record = doctor.record()
    warned = lines(record, "ovs", "warn")
    assert len(warned) == 1 and warned[0].startswith(f"warn: OVSDB at unix:{doctor.tmp}/nowhere/db.sock is unreachable: ")
    why = next(c["why"] for c in record["checks"] if c["group"] == "ovs")
    assert "OVS vNICs" in why and "not announced" in why
    assert "ok: br0: learning on all 1 port(s), no VLAN filtering" in lines(record, "bridge")
    assert record["exit"] == 0


def test_libvirt_down_says_so_once_and_still_checks_the_bridges(doctor: Doctor) -> None:
    down = f"qemu+unix:///system?socket={doctor.tmp}/no-libvirt.sock"
    record = doctor.record(connect=down)
    assert len(lines(record, "libvirt", "warn")) == 1
    assert "ok: br0: learning on all 1 port(s), no VLAN filtering" in lines(record, "bridge")
    with_domain = doctor.record("--domain", "web", connect=down)
    assert with_domain["exit"] == 1
    assert lines(with_domain, "targets") == [f"fail: domain web not resolved: libvirt at {down} is unreachable"]
    assert "ok: br0: learning on all 1 port(s), no VLAN filtering" in lines(with_domain, "bridge")


def test_a_domain_s_targets_where_and_whether_ready_and_a_static_entry_in_the_way(doctor: Doctor) -> None:
    # libvirt's test driver names the taps testnet0, testnet1... whatever the XML says.
    doctor.sh("ip tuntap add testnet0 mode tap && ip link set testnet0 master br0 && ip link set testnet0 up")
    record = doctor.record("--domain", "web")
    targets = lines(record, "targets")
    assert f"ok: web {GUEST_MAC} (testnet0): from br0 after the FDB write on br0:testnet0, untagged, RARP only: ready" in targets
    missing = [line for line in targets if line.startswith("fail: web 52:54:00:0d:00:02 (testnet1): from br9")]
    assert len(missing) == 1 and "not ready" in missing[0]
    assert record["exit"] == 1  # a target that cannot be announced now
    # Someone pinned the guest's MAC on the uplink as a static entry: rarp-announce never replaces it.
    doctor.sh(f"bridge fdb add {GUEST_MAC} dev uplink master static")
    record = doctor.record("--domain", "web")
    assert f"fail: br0: static FDB entry for {GUEST_MAC} on uplink, not on the guest's tap testnet0" in lines(record, "bridge")
    fix = next(c["fix"] for c in record["checks"] if "static FDB entry" in c["what"])
    assert fix == f"bridge fdb del {GUEST_MAC} dev uplink master"


def test_ovs_reachable_and_a_drop_flow_seen_in_the_flows_and_the_trace(doctor: Doctor) -> None:
    from rarp_announce.lab.ovs import PrivateOVS

    require(shutil.which("ovs-vswitchd") is not None, "needs openvswitch-switch")
    doctor.sh("ip link add vm0 type veth peer name vm0guest && ip link set vm0 up && ip link set vm0guest up && "
              "ip link add trunk type veth peer name trunkpeer && ip link set trunk up && ip link set trunkpeer up")
    with PrivateOVS(doctor.tmp / "ovs", netns=doctor.topology.ns["a"]) as ovs:
        ovs.add_bridge("ovsbr0")
        ovs.add_port("ovsbr0", "trunk", ofport=1, trunks=[100])
        ovs.add_port("ovsbr0", "vm0", ofport=2, tag=100)
        doctor.config(ovs=f'db = "unix:{ovs.rundir}/db.sock"\nrundir = "{ovs.rundir}"\n')
        record = doctor.record("--domain", "ovsweb")
        assert lines(record, "ovs", "ok")[0] == f"ok: OVSDB at unix:{ovs.rundir}/db.sock answers: 1 bridge(s) (ovsbr0)"
        assert any(line.startswith(f"ok: ovsbr0 port vm0: a RARP from {OVS_MAC} leaves (push_vlan(vid=100,")
                   for line in lines(record, "ovs")), lines(record, "ovs")
        assert not lines(record, "ovs", "warn")
        # A high-priority drop of RARP on the bridge: the packet-out runs into it.
        ovs.ofctl("add-flow", "ovsbr0", "priority=100,rarp,actions=drop")
        record = doctor.record("--domain", "ovsweb")
        warned = lines(record, "ovs", "warn")
        assert any(line.startswith("warn: bridge ovsbr0: flow '") and "priority=100,rarp actions=drop'" in line
                   for line in warned), warned
        assert f"warn: ovsbr0 port vm0: a RARP from {OVS_MAC} entering there is dropped" in "\n".join(warned)


def test_frr_duplicate_address_freeze_is_a_warning(doctor: Doctor) -> None:
    from rarp_announce.lab.frr import Frr, frr_missing

    why = frr_missing()
    require(why is None, why or "")
    doctor.sh("ip addr add 10.0.0.1/32 dev lo && "  # the VTEP address (no dummy module in this kernel)
              "ip link add vxlan100 type vxlan id 100 local 10.0.0.1 dstport 4789 nolearning && "
              "ip link set vxlan100 master br0 && bridge link set dev vxlan100 learning off && ip link set vxlan100 up")
    frr = Frr("doc", doctor.topology.ns["a"], doctor.tmp / "frr")
    frr.write_config("10.0.0.1", [], 65000)
    vty = ("--frr-vty", str(frr.run_dir))

    def evpn_until(wanted: str) -> list[str]:
        deadline = time.monotonic() + 30
        while True:
            found = lines(doctor.record(*vty), "evpn")
            if any(wanted in line for line in found) or time.monotonic() > deadline:
                return found
            time.sleep(0.3)

    try:
        frr.start()
        evpn_until("duplicate-address")  # zebra knows the VNI
        # Set at run time: bgpd hands the settings to zebra then (at start-up it may miss zebra).
        configure = ("configure terminal", "router bgp 65000", "address-family l2vpn evpn")
        frr.vtysh(*configure, "dup-addr-detection freeze permanent")
        assert evpn_until("freezes") == [
            "warn: FRR's duplicate-address detection freezes a MAC for good after 5 moves in 180 s"]
        # The VXLAN port learns nothing on purpose (EVPN's control plane does): not a warning.
        assert not lines(doctor.record(*vty), "bridge", "warn")
        frr.vtysh(*configure, "no dup-addr-detection freeze permanent")
        assert evpn_until("without freeze") == [
            "ok: FRR's duplicate-address detection is on (5 moves in 180 s) without freeze"]
    finally:
        frr.stop()


def test_without_frr_the_evpn_line_says_so(doctor: Doctor) -> None:
    record = doctor.record("--frr-vty", str(doctor.tmp / "no-frr"))
    evpn = lines(record, "evpn")
    assert evpn in (["info: FRR does not answer (not running here): no EVPN checks"],
                    ["skip: FRR not checked: tool not installed (vtysh)"])


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "doctor", "--config", str(tmp_path / "none.toml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"rarp-announce: error: config file '{tmp_path / 'none.toml'}' does not exist: create it or drop --config\n"
