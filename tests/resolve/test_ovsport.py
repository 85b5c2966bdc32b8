"""resolve.ovsport: is an OVS port wired, and in which VLANs does the guest's MAC live on it.

Expected plans follow ovs-vswitchd.conf.db(5), Port table, "VLAN Configuration".
"""

from __future__ import annotations

import dataclasses

import pytest

from rarp_announce.resolve.ovsport import PortInfo, ovn_bridge_name, vlan_plan, wiring_problem


def port(**columns) -> PortInfo:
    columns.setdefault("ofport", 7)
    return PortInfo(bridge="br-int", port="vnet0", interface="vnet0", **columns)


# -- wiring_problem ------------------------------------------------------------------------


def test_a_plain_port_with_an_ofport_is_wired():
    assert wiring_problem(port()) is None
    assert wiring_problem(port(tag=100)) is None
    assert wiring_problem(port(vlan_mode="trunk", trunks=(100, 200))) is None


def test_no_ofport_yet_is_not_wired():
    problem = wiring_problem(port(ofport=None))
    assert problem is not None
    assert "vnet0" in problem and "br-int" in problem and "no OpenFlow port number yet" in problem


def test_ofport_minus_one_is_not_wired_and_says_why():
    problem = wiring_problem(port(ofport=-1, error="could not open network device vnet0 (No such device)"))
    assert problem is not None
    assert "ofport -1" in problem and "could not open network device vnet0 (No such device)" in problem
    assert "no error recorded" in (wiring_problem(port(ofport=-1)) or "")


def test_none_and_minus_one_stay_distinguishable():
    assert port(ofport=None).ofport is None
    assert port(ofport=-1).ofport == -1
    assert wiring_problem(port(ofport=None)) != wiring_problem(port(ofport=-1))


@pytest.mark.parametrize("columns", [
    {"tag": 4095},  # Neutron's port_dead()
    {"tag": 4095, "vlan_mode": "trunk", "trunks": (4095,)},  # os-vif isolate_vif
    {"vlan_mode": "trunk", "trunks": (4095,)},
    {"trunks": (4095,)},  # no tag, no vlan_mode: a trunk by default
    {"tag": 4095, "vlan_mode": "native-untagged"},
])
def test_the_dead_vlan_is_not_wired(columns):
    problem = wiring_problem(port(**columns))
    assert problem is not None and "dead VLAN 4095" in problem


def test_a_trunk_that_also_carries_other_vlans_than_4095_is_not_dead():
    assert wiring_problem(port(vlan_mode="trunk", trunks=(100, 4095))) is None


def test_rewired_out_of_the_dead_vlan_is_wired():
    dead = port(tag=4095, vlan_mode="trunk", trunks=(4095,))
    assert wiring_problem(dead) is not None
    assert wiring_problem(dataclasses.replace(dead, tag=3, vlan_mode=None, trunks=())) is None


def test_ovn_port_waits_for_ovn_installed():
    ids = {"iface-id": "0f0c1a7e-port", "attached-mac": "52:54:00:12:34:56"}
    pending = port(external_ids=ids, ovn_bridge=True)
    problem = wiring_problem(pending)
    assert problem is not None and "ovn-installed" in problem and "0f0c1a7e-port" in problem
    assert wiring_problem(port(external_ids={**ids, "ovn-installed": "false"}, ovn_bridge=True)) is not None
    assert wiring_problem(port(external_ids={**ids, "ovn-installed": "true"}, ovn_bridge=True)) is None


def test_ovn_installed_only_matters_on_the_ovn_bridge_for_ports_ovn_manages():
    # The Neutron OVS agent also sets iface-id, on a host without ovn-controller.
    assert wiring_problem(port(external_ids={"iface-id": "x"}, ovn_bridge=False)) is None
    # A port on br-int without iface-id (a patch port, the tunnel endpoint) is not OVN's to bind.
    assert wiring_problem(port(external_ids={}, ovn_bridge=True)) is None


def test_problems_are_reported_first_things_first():
    # No ofport beats everything else: nothing can be injected through it at all.
    problem = wiring_problem(port(ofport=None, tag=4095, external_ids={"iface-id": "x"}, ovn_bridge=True))
    assert problem is not None and "no OpenFlow port number" in problem


# -- vlan_plan -----------------------------------------------------------------------------


@pytest.mark.parametrize(("columns", "plan"), [
    # access (implicit: tag set, vlan_mode empty): untagged frame, OVS adds the tag
    ({"tag": 100}, [(100, False)]),
    ({"tag": 100, "vlan_mode": "access"}, [(100, False)]),
    # with vlan_mode empty a tag wins over trunks (bridge.c: "ignoring trunks in favor of implicit vlan")
    ({"tag": 100, "trunks": (200, 300)}, [(100, False)]),
    # no tag, no trunks: a trunk of every VLAN; the guest's untagged frames are VLAN 0
    ({}, [(None, False)]),
    ({"vlan_mode": "trunk"}, [(None, False)]),
    # a trunk with trunks: one tagged frame per VLAN it carries
    ({"vlan_mode": "trunk", "trunks": (200, 100)}, [(100, True), (200, True)]),
    ({"trunks": (100, 200)}, [(100, True), (200, True)]),
    # trunk mode ignores the tag column
    ({"tag": 5, "vlan_mode": "trunk", "trunks": (100,)}, [(100, True)]),
    # VLAN 0 on a trunk is the untagged traffic
    ({"vlan_mode": "trunk", "trunks": (0, 100)}, [(None, False), (100, True)]),
    # native modes: untagged input is the native VLAN; the other trunks tagged
    ({"tag": 10, "vlan_mode": "native-untagged", "trunks": (10, 20, 30)}, [(10, False), (20, True), (30, True)]),
    ({"tag": 10, "vlan_mode": "native-tagged", "trunks": (20, 30)}, [(10, False), (20, True), (30, True)]),
    # "prohibit trunking VLAN 0" on a native port (ofproto-dpif.c bundle_set())
    ({"tag": 10, "vlan_mode": "native-untagged", "trunks": (0, 20)}, [(10, False), (20, True)]),
    # native without trunks trunks every VLAN: only the native one is known
    ({"tag": 10, "vlan_mode": "native-tagged"}, [(10, False)]),
    # native without a tag: native VLAN 0
    ({"vlan_mode": "native-untagged", "trunks": (20,)}, [(None, False), (20, True)]),
    # dot1q-tunnel: the service VLAN never appears in the guest's frame
    ({"tag": 300, "vlan_mode": "dot1q-tunnel"}, [(300, False)]),
    # tag 0 is VLAN 0, "no VLAN"
    ({"tag": 0}, [(None, False)]),
    # vlan_mode access without a tag: VLAN 0
    ({"vlan_mode": "access"}, [(None, False)]),
])
def test_vlan_plan(columns, plan):
    assert vlan_plan(port(**columns)) == plan


def test_vlan_plan_of_a_dead_port_is_what_its_columns_say():
    assert vlan_plan(port(tag=4095)) == [(4095, False)]
    assert vlan_plan(port(vlan_mode="trunk", trunks=(4095,))) == [(4095, True)]


# -- PortInfo and ovn_bridge_name ------------------------------------------------------------


def test_portinfo_is_frozen_and_hashable():
    info = port(trunks=(30, 10), external_ids={"a": "b"})
    assert info.trunks == (10, 30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.tag = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.external_ids["a"] = "c"  # type: ignore[index]
    assert hash(info) == hash(port(trunks=(10, 30), external_ids={"x": "y"}))
    assert info == port(trunks=(10, 30), external_ids={"a": "b"})


def test_ovn_bridge_name():
    assert ovn_bridge_name({}) is None
    assert ovn_bridge_name({"ovn-bridge": "br-ovn"}) is None  # no ovn-remote: no ovn-controller here
    assert ovn_bridge_name({"ovn-remote": "tcp:10.0.0.1:6642"}) == "br-int"
    assert ovn_bridge_name({"ovn-remote": "tcp:10.0.0.1:6642", "ovn-bridge": "br-ovn"}) == "br-ovn"
    assert ovn_bridge_name({"ovn-remote": "", "ovn-bridge": "br-ovn"}) is None
