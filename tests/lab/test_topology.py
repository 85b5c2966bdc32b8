"""LabTopology without libvirt: switch learning per VLAN, and QEMU-style RARPs from VM ports dropped."""

from __future__ import annotations

import shutil
import time

import pytest

from rarp_announce.lab.netns import send_raw, wait_until

from tests.conftest import require

MAC = "52:54:00:aa:00:01"


@pytest.fixture
def lab_net(root_netns):
    from rarp_announce.lab.topology import LabTopology, make_workdir

    for tool in ("ovs-vswitchd", "nft"):
        require(shutil.which(tool) is not None, f"needs {tool}")
    workdir = make_workdir()
    try:
        with LabTopology(workdir) as topo:
            yield topo
    finally:
        shutil.rmtree(workdir, ignore_errors=True)




def _vm_port(topo, host: str, name: str, *, ovs_tag: int | None = None) -> str:
    """A veth standing in for a guest tap: `name` on the bridge, its peer is 'the guest'."""
    from pyroute2 import NetNS

    net = topo.hosts[host]
    with NetNS(net.netns) as ns:
        ns.link("add", ifname=name, kind="veth", peer=f"{name}g")
        ns.link("set", ifname=f"{name}g", state="up")
        if ovs_tag is None:
            ns.link("set", ifname=name, master=ns.link_lookup(ifname="br0")[0], state="up")
        else:
            ns.link("set", ifname=name, state="up")
    if ovs_tag is not None:
        net.ovs.add_port("ovsbr0", name, tag=ovs_tag)
    return f"{name}g"


def test_teach_and_where_per_vlan(lab_net):
    lab_net.teach("a", MAC, None)
    lab_net.teach("b", MAC, 100)
    assert wait_until(lambda: lab_net.where(MAC, 0) == "a-br" and lab_net.where(MAC, 100) == "b-ovs")


def test_rarp_from_a_vm_port_on_br0_is_dropped_other_frames_pass(lab_net):
    from rarp_announce.announce.frames import rarp_frame
    from rarp_announce.mac import parse_mac

    guest = _vm_port(lab_net, "b", "vnet7")
    lab_net.teach("a", MAC, None)
    assert wait_until(lambda: lab_net.where(MAC, 0) == "a-br")
    for _ in range(3):
        send_raw(lab_net.hosts["b"].netns, guest, rarp_frame(parse_mac(MAC), None, 0))
    time.sleep(0.5)
    assert lab_net.where(MAC, 0) == "a-br"
    assert lab_net.nft_drops("b") == 3
    # Our announcement on the bridge device itself is not from a vnet port: it moves the MAC.
    send_raw(lab_net.hosts["b"].netns, "br0", rarp_frame(parse_mac(MAC), None, 0))
    assert wait_until(lambda: lab_net.where(MAC, 0) == "b-br")


def test_rarp_from_a_vm_port_on_ovsbr0_is_dropped_tagged_frame_on_local_passes(lab_net):
    from rarp_announce.announce.frames import rarp_frame
    from rarp_announce.mac import parse_mac

    guest = _vm_port(lab_net, "b", "vm1", ovs_tag=100)
    lab_net.teach("a", MAC, 100)
    assert wait_until(lambda: lab_net.where(MAC, 100) == "a-ovs")
    send_raw(lab_net.hosts["b"].netns, guest, rarp_frame(parse_mac(MAC), None, 0))
    time.sleep(0.5)
    assert lab_net.where(MAC, 100) == "a-ovs"
    send_raw(lab_net.hosts["b"].netns, "ovsbr0", rarp_frame(parse_mac(MAC), 100, 0))
    assert wait_until(lambda: lab_net.where(MAC, 100) == "b-ovs")


def test_close_removes_namespaces_and_ovs(root_netns):
    from rarp_announce.pids import alive
    from rarp_announce.lab.topology import LabTopology, make_workdir

    require(shutil.which("ovs-vswitchd") is not None, "needs ovs-vswitchd")
    workdir = make_workdir()
    try:
        topo = LabTopology(workdir)
        names = list(topo._made_ns)
        pids = topo.switch.pids() + [p for h in topo.hosts.values() for p in h.ovs.pids()]
        topo.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import subprocess

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert len(pids) == 6
    assert not [n for n in names if n in listed.split()]
    assert not [p for p in pids if alive(p)]
