"""LabTopology, the wiring agent and the client's traffic without libvirt: switch learning per VLAN,
QEMU-style RARPs from VM ports dropped on br0 and lost in OVS's dead VLAN, ours injected as the guest."""

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


def test_teach_and_where(lab_net):
    other = "52:54:00:aa:00:02"
    lab_net.teach("a", MAC, None)
    lab_net.teach("b", other, 100)
    assert wait_until(lambda: lab_net.where(MAC) == "a-br" and lab_net.where(other) == "b-ovs")
    lab_net.teach("b", MAC, None)  # a move is learned at once: the switch is the kernel's bridge
    assert wait_until(lambda: lab_net.where(MAC) == "b-br", 5.0, 0.005)


def test_rarp_from_a_vm_port_on_br0_is_dropped_other_frames_pass(lab_net):
    from rarp_announce.frames import rarp_frame
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


def test_a_dead_ovs_port_loses_qemus_rarp_and_a_packet_out_as_the_guest_reaches_the_guest(lab_net):
    """The lab's silencing for OVS is the real one (the dead VLAN): QEMU's frame from the tap is
    lost, ours (a packet-out with the guest's in_port) moves the switch once the port is wired,
    OVS learns the MAC on the guest's port, and the client's traffic reaches the guest."""
    import asyncio

    from rarp_announce.frames import rarp_frame
    from rarp_announce.lab.agent import DEAD_VLAN, WiringAgent
    from rarp_announce.lab.netns import inside
    from rarp_announce.lab.topology import CLIENT_DEVICE
    from rarp_announce.lab.traffic import ClientTraffic, Delivered
    from rarp_announce.mac import parse_mac
    from rarp_announce.model import OvsPort, Target
    from rarp_announce.transport.openflow import OpenFlowSink

    net = lab_net.hosts["b"]
    guest = _vm_port(lab_net, "b", "vnet1", ovs_tag=100)
    net.ovs.vsctl("set", "Interface", "vnet1", f'external_ids:attached-mac="{MAC}"', "ofport_request=7")
    agent = WiringAgent(MAC, 100)
    assert wait_until(lambda: net.ovs.vsctl("get", "Interface", "vnet1", "ofport").strip() == "7")
    agent.kill(net.ovs, "vnet1")  # Neutron's port_dead(): VLAN 4095 and a drop flow
    assert net.ovs.vsctl("get", "Port", "vnet1", "tag").strip() == str(DEAD_VLAN)
    lab_net.teach("a", MAC, 100)
    assert wait_until(lambda: lab_net.where(MAC, 100) == "a-ovs")
    traffic = ClientTraffic(lab_net.client_ns, CLIENT_DEVICE, [(MAC, 100)])
    delivered = Delivered(net.netns)
    try:
        send_raw(net.netns, guest, rarp_frame(parse_mac(MAC)))  # QEMU's, in the dead VLAN
        time.sleep(0.5)
        assert lab_net.where(MAC, 100) == "a-ovs"
        assert agent.port_of(net.ovs) == "vnet1"
        agent.wire(net.ovs, "vnet1", 100)
        wired = time.time()
        target = Target(MAC, "ovsbr0", 100, "openvswitch", "vnet1", ovs=OvsPort("ovsbr0", "vnet1", 7), tagged=False)

        async def inject() -> None:
            sink = OpenFlowSink(lambda bridge: f"unix:{net.ovs.rundir}/{bridge}.mgmt")
            try:
                frame = rarp_frame(parse_mac(MAC))
                await sink.prepare(target, [frame])
                sink.send(target, frame)
            finally:
                sink.close()

        with inside(net.netns):
            asyncio.run(inject())
        assert wait_until(lambda: lab_net.where(MAC, 100) == "b-ovs")
        assert [(port, vlan) for port, vlan, mac in net.ovs.fdb("ovsbr0") if mac == MAC] == [("vnet1", 100)]
        assert wait_until(lambda: delivered.first(MAC, wired) is not None, 3)
        assert delivered.first(MAC, wired).device == "vnet1"
    finally:
        traffic.close()
        delivered.close()


def test_close_removes_namespaces_and_ovs(root_netns):
    from rarp_announce.pids import alive
    from rarp_announce.lab.topology import LabTopology, make_workdir

    require(shutil.which("ovs-vswitchd") is not None, "needs ovs-vswitchd")
    workdir = make_workdir()
    try:
        topo = LabTopology(workdir)
        names = list(topo._made_ns)
        pids = [p for h in topo.hosts.values() for p in h.ovs.pids()]
        topo.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import subprocess

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert len(pids) == 4
    assert topo.client_ns in names
    assert not [n for n in names if n in listed.split()]
    assert not [p for p in pids if alive(p)]
