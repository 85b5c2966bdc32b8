"""PrivateOVS: a real userspace-datapath OVS in a private folder and netns, learning per VLAN."""

from __future__ import annotations

import shutil

import pytest

from rarp_announce.lab.netns import send_raw, wait_until

from tests.conftest import require


@pytest.fixture
def ovs_ns(root_netns, tmp_path):
    from pyroute2 import NetNS, netns

    from rarp_announce.lab.netns import unique
    from rarp_announce.lab.ovs import PrivateOVS

    for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl"):
        require(shutil.which(tool) is not None, f"needs Open vSwitch's {tool}")
    name = unique("ovs")
    netns.create(name)
    try:
        with NetNS(name) as ns:
            for port in ("trunk", "access"):
                ns.link("add", ifname=port, kind="veth", peer=f"{port}-h")
                ns.link("set", ifname=port, state="up")
                ns.link("set", ifname=f"{port}-h", state="up")
        with PrivateOVS(tmp_path / "ovs", netns=name) as ovs:
            ovs.add_bridge("br")
            ovs.add_port("br", "trunk", ofport=1)
            ovs.add_port("br", "access", ofport=2, tag=100)
            yield name, ovs
    finally:
        netns.remove(name)




def test_learns_each_mac_in_its_vlan_on_its_port(ovs_ns):
    from rarp_announce.frames import rarp_frame
    from rarp_announce.mac import parse_mac

    ns, ovs = ovs_ns
    send_raw(ns, "trunk-h", rarp_frame(parse_mac("52:54:00:00:00:01"), 200, 0))
    send_raw(ns, "access-h", rarp_frame(parse_mac("52:54:00:00:00:02"), None, 0))
    assert wait_until(lambda: ovs.fdb_port("br", "52:54:00:00:00:02", 100) == "access")
    assert ovs.fdb_port("br", "52:54:00:00:00:01", 200) == "trunk"
    assert ("trunk", 200, "52:54:00:00:00:01") in ovs.fdb("br")
    # The same MAC seen on the trunk in VLAN 100 moves there: the switch behaviour the lab relies on.
    send_raw(ns, "trunk-h", rarp_frame(parse_mac("52:54:00:00:00:02"), 100, 0))
    assert wait_until(lambda: ovs.fdb_port("br", "52:54:00:00:00:02", 100) == "trunk")


def test_stop_leaves_no_process_and_no_internal_port(ovs_ns):
    from pyroute2 import NetNS

    from rarp_announce.pids import alive

    ns, ovs = ovs_ns
    pids = ovs.pids()
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    ovs.stop()
    assert not [pid for pid in pids if alive(pid)]
    with NetNS(ns) as net:
        assert net.link_lookup(ifname="br") == []


def test_a_failing_command_raises_one_line(ovs_ns):
    from rarp_announce.lab.ovs import OVSError

    _ns, ovs = ovs_ns
    with pytest.raises(OVSError) as error:
        ovs.vsctl("add-port", "no-such-bridge", "x")
    assert "\n" not in str(error.value) and "no-such-bridge" in str(error.value)
