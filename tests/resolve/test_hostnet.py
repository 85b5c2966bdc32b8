"""hostnet.py, the one readiness check, against real netlink in a test netns; SR-IOV look-ups in the sysfs fixture tree."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pyroute2 import NetNS

from rarp_announce import netdev
from rarp_announce.resolve import hostnet
from rarp_announce.lab.netns import inside

SYSFS = str(Path(__file__).parent.parent / "fixtures" / "sysfs")


def links(names):
    return asyncio.run(hostnet.links(names))


def problems_of(names):
    return asyncio.run(hostnet.device_problems(names))


def test_bridge_up_down_missing_tap_and_no_carrier(topology):
    ns = topology.ns["a"]
    with NetNS(ns) as ipr:
        # a guest-style tap enslaved to br0; a bridge whose only port has no carrier (its veth
        # peer is down); a bridge that is down
        ipr.link("add", ifname="vnet0", kind="tuntap", mode="tap")
        ipr.link("set", ifname="vnet0", master=ipr.link_lookup(ifname="br0")[0], state="up")
        ipr.link("add", ifname="lonely", kind="bridge", br_stp_state=0)
        ipr.link("add", ifname="lp0", kind="veth", peer={"ifname": "lp1"})
        ipr.link("set", ifname="lp0", master=ipr.link_lookup(ifname="lonely")[0], state="up")
        ipr.link("set", ifname="lonely", state="up")
        ipr.link("add", ifname="sleepy", kind="bridge")
    with inside(ns):
        # the kernel's linkwatch updates operstate asynchronously: wait for it, bounded
        deadline = time.monotonic() + 30  # bounded generously
        while links(["lonely"])["lonely"].operstate != "DOWN" and time.monotonic() < deadline:
            time.sleep(0.02)
        problems = problems_of(["br0", "uplink", "vnet0", "lonely", "sleepy", "gone0", "a/b", "br0"])
        same = hostnet.device_problems_now(["br0", "uplink", "vnet0", "lonely", "sleepy", "gone0", "a/b", "br0"])
        found = links(["br0", "uplink", "vnet0", "gone0"])
    assert problems == {
        "vnet0": "is a guest's tap port on bridge br0: frames written there reach the guest",
        "lonely": "device is up but has no carrier (its uplink or every bridge port is down)",
        "sleepy": "device is down (ip link set dev sleepy up)",
        "gone0": "no such device on this host",
        "a/b": "not a valid interface name",
    }
    assert found["br0"].kind == "bridge" and found["br0"].up and found["br0"].master is None
    assert found["uplink"].kind == "veth" and found["uplink"].master == "br0"
    assert found["vnet0"].kind == "tun" and found["vnet0"].guest_tap
    assert found["gone0"] is None
    assert same == problems


def test_many_names_are_read_from_one_dump_with_the_same_answers(topology, monkeypatch):
    ns = topology.ns["a"]
    with NetNS(ns) as ipr:
        for index in range(0, 20, 2):
            ipr.link("add", ifname=f"d{index}", kind="veth", peer={"ifname": f"d{index + 1}"})
        ipr.link("set", ifname="d3", master=ipr.link_lookup(ifname="br0")[0])
        ipr.link("set", ifname="d4", state="up")
    names = ["br0", "uplink", "gone0", "a/b", *(f"d{index}" for index in range(20))]
    assert len([n for n in names if hostnet.valid_ifname(n)]) > netdev._DUMP_ABOVE
    with inside(ns):
        deadline = time.monotonic() + 30  # linkwatch sets d4's operstate asynchronously: bounded wait
        while links(["d4"])["d4"].operstate != "LOWERLAYERDOWN" and time.monotonic() < deadline:
            time.sleep(0.02)
        dumped = links(names)
        monkeypatch.setattr(netdev, "_DUMP_ABOVE", 1000)  # the same names asked one by one
        asked = links(names)
    assert dumped == asked
    assert dumped["gone0"] is None and dumped["a/b"] is None
    assert dumped["d3"].master == "br0" and dumped["uplink"].master == "br0"
    assert dumped["d4"].up and not dumped["d5"].up and dumped["d5"].kind == "veth"


def test_calls_in_one_loop_turn_share_one_lookup(topology, monkeypatch):
    real = hostnet.device_problems
    lookups: list[set[str]] = []

    async def counted(devices):
        lookups.append(set(devices))
        return await real(devices)

    monkeypatch.setattr(hostnet, "device_problems", counted)

    async def scenario():
        shared = hostnet.SharedCheck()
        asked = [["br0"], ["gone0"], ["br0", "uplink"], ["a/b", "gone1"]] * 50
        together = await asyncio.gather(*(shared.problems(names) for names in asked))
        later = await shared.problems(["gone0"])
        return asked, together, later

    with inside(topology.ns["a"]):
        asked, together, later = asyncio.run(scenario())
        alone = [asyncio.run(real(names)) for names in asked[:4]]
    assert lookups == [{"br0", "gone0", "uplink", "a/b", "gone1"}, {"gone0"}]
    assert together == alone * 50
    assert later == {"gone0": "no such device on this host"}


def test_bridge_going_down_and_away_is_reported(topology):
    ns = topology.ns["b"]
    with inside(ns):
        assert problems_of(["br0"]) == {}
    with NetNS(ns) as ipr:
        ipr.link("set", ifname="br0", state="down")
    with inside(ns):
        assert problems_of(["br0"]) == {"br0": "device is down (ip link set dev br0 up)"}
    with NetNS(ns) as ipr:
        ipr.link("del", ifname="br0")
    with inside(ns):
        assert problems_of(["br0"]) == {"br0": "no such device on this host"}
        assert links(["uplink"])["uplink"].master is None


def test_links_of_nothing_opens_no_socket():
    assert links([]) == {}
    assert links(["", "x" * 16]) == {"": None, "x" * 16: None}


@pytest.mark.parametrize(
    "address, expected",
    [("0000:03:10.1", "enp3s0f0"), ("0000:03:10.3", "enp3s0f0")],
)
def test_vf_to_pf_netdev(address, expected):
    assert hostnet.pf_netdev(address, SYSFS) == expected


@pytest.mark.parametrize(
    "address, message",
    [
        ("0000:05:02.0", "SR-IOV VF 0000:05:02.0: its physical function 0000:05:00.0 has no network device (bound to vfio or a DPDK driver?)"),
        ("0000:04:00.0", "PCI device 0000:04:00.0 is not an SR-IOV virtual function (no physfn in sysfs)"),
        ("0000:81:00.2", f"PCI device 0000:81:00.2 does not exist on this host ({SYSFS}/bus/pci/devices/0000:81:00.2)"),
        ("../../../etc", "'../../../etc' is not a PCI address (dddd:bb:ss.f)"),
    ],
)
def test_vf_lookup_failures_say_why(address, message):
    with pytest.raises(hostnet.SysfsLookupError) as caught:
        hostnet.pf_netdev(address, SYSFS)
    assert str(caught.value) == message


def test_pci_address_spelling():
    assert hostnet.pci_address(0, 3, 16, 1) == "0000:03:10.1"
    assert hostnet.pci_address(0x10, 0xAB, 0x1F, 7) == "0010:ab:1f.7"


def test_real_sysfs_root_answers_for_a_missing_device():
    # The machine's own sysfs: a PCI address that does not exist is a clean look-up failure.
    with pytest.raises(hostnet.SysfsLookupError, match="does not exist on this host"):
        hostnet.pf_netdev("ffff:ff:1f.7")
