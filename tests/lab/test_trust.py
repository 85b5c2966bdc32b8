"""Issue 17's reproduction against a real libvirtd (QEMU driver) and a running QEMU guest.

The host: bridge br0 with 192.168.0.2/24 and its default route via 192.168.0.1; the guest's vNIC
(tap vnet0) on br0; a veth port gp on br0 whose peer gst plays the guest: it sends "who-has
192.168.0.2 tell 192.168.0.1" and "... tell 192.168.0.3" from the guest's MAC, which puts both
addresses into the host's neighbour table with the guest's MAC (the firmware-only lab guest
cannot send frames itself); oth0, another device in another subnet, holds an entry for the
guest's MAC too. Then `targets` and `domain` run in the host, as an operator would:

- default configuration: nothing of it is listed, planned or sent;
- the guest source `arp` opted in, nothing allowed: every address refused with its reason;
- with 192.168.0.0/24 allowed on br0: 192.168.0.3 is announced (GARP on the wire, decoded by
  scapy), the gateway's address still refused and never sent.

The guest agent cannot run in this guest (no disk, no OS): its policy is tested with answers
injected at the fetcher boundary in tests/resolve/test_trust.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.conftest import lab_prerequisites

pytestmark = pytest.mark.lab

CLI = [sys.executable, "-m", "rarp_announce"]
SETUP = [
    "addr add 192.168.0.2/24 dev br0", "route add default via 192.168.0.1 dev br0",
    "link add gp type veth peer name gst", "link set gp master br0 up", "link set gst up",
    "link add oth0 type veth peer name oth1", "link set oth0 up", "link set oth1 up", "addr add 10.5.0.2/24 dev oth0",
]


@pytest.fixture
def host(tmp_path):
    from rarp_announce.lab.netns import send_raw, wait_until
    from rarp_announce.lab.onehost import OneHost

    lab_prerequisites()
    lab = OneHost(tmp_path, setup=SETUP).up()
    try:
        from scapy.layers.l2 import ARP, Ether

        assert wait_until(lambda: "vnet0" in lab.ip("link show master br0"), timeout=30), "the guest's tap is not on br0"
        lab.ip(f"neigh add 10.5.0.9 lladdr {lab.mac} dev oth0 nud permanent")
        for claimed in ("192.168.0.1", "192.168.0.3"):
            frame = Ether(src=lab.mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / ARP(op=1, hwsrc=lab.mac, psrc=claimed, pdst="192.168.0.2")
            send_raw(lab.ns, "gst", bytes(frame))
        assert wait_until(lambda: all(f"{ip} lladdr {lab.mac}" in lab.ip("neigh show dev br0")
                                      for ip in ("192.168.0.1", "192.168.0.3")), timeout=10), lab.ip("neigh")
        yield lab
    finally:
        lab.close()


def _config(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text('[schedule]\nrounds = 2\ninitial = 10\nstep = 10\nmax = 30\n[ovs]\ndb = ""\n' + text)
    return str(path)


def _run(lab, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.ns, *CLI, *argv, "--connect", lab.uri],
                          capture_output=True, text=True, timeout=120)


def _targets(lab, config: str) -> dict:
    done = _run(lab, ["targets", "--domain", lab.guest.name, "--config", config, "--json"])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _arp_frames(pcap: Path) -> list[tuple[str, str, str]]:
    """(sender MAC, sender IP, target IP) of every ARP request in the file, decoded by scapy."""
    from scapy.layers.l2 import ARP
    from scapy.utils import rdpcap

    return [(p[ARP].hwsrc, p[ARP].psrc, p[ARP].pdst) for p in rdpcap(str(pcap)) if p.haslayer(ARP) and p[ARP].op == 1]


def test_a_guest_poisoning_the_neighbour_table_cannot_make_the_host_announce(host, tmp_path):
    mac = host.mac
    # The poisoning worked: the host's table binds the gateway's address to the guest's MAC.
    assert f"lladdr {mac}" in host.ip("neigh show 192.168.0.1 dev br0")

    # 1. Defaults: no guest source; the lease source is asked of the real QEMU driver and has
    #    nothing for a bridge vNIC. Nothing listed, nothing sent but the RARPs.
    default = _config(tmp_path, "default", "")
    record = _targets(host, default)
    assert [(t["mac"], t["device"], t["addresses"]) for t in record["targets"]] == [(mac, "br0", [])]
    assert "refused" not in record
    pcap = tmp_path / "default.pcap"
    done = _run(host, ["domain", host.guest.name, "--config", default, "--pcap", str(pcap)])
    assert done.returncode == 0, done.stderr
    assert _arp_frames(pcap) == []

    # 2. The neighbour table opted in, nothing allowed: each address refused with its reason; the
    #    entry on oth0 (another device, another subnet) is never even read.
    opted = _config(tmp_path, "opted", '[addresses]\nsources = ["metadata", "config", "nwfilter", "lease", "arp"]\n')
    record = _targets(host, opted)
    assert record["targets"][0]["addresses"] == []
    assert [(r["mac"], r["ip"], r["source"], r["reason"]) for r in record["refused"]] == [
        (mac, "192.168.0.1", "arp", "next_hop"), (mac, "192.168.0.3", "arp", "not_allowed")]
    assert "10.5.0.9" not in json.dumps(record)
    dry = _run(host, ["domain", host.guest.name, "--config", opted, "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert " garp " not in dry.stdout
    assert (f"rarp-announce: note: refused {mac} 192.168.0.1 (arp): next_hop: the next hop of this host's route "
            "default via 192.168.0.1 dev br0") in dry.stderr.splitlines()

    # 3. 192.168.0.0/24 allowed on br0: the free address is announced, on the wire, and the
    #    gateway's address is still refused and never sent.
    allowed = _config(tmp_path, "allowed", '[addresses]\nsources = ["metadata", "lease", "arp"]\n'
                                           '[addresses.allow]\nbr0 = ["192.168.0.0/24"]\n')
    record = _targets(host, allowed)
    assert record["targets"][0]["addresses"] == [{"ip": "192.168.0.3", "source": "arp"}]
    assert [(r["ip"], r["reason"]) for r in record["refused"]] == [("192.168.0.1", "next_hop")]
    from rarp_announce.lab.netns import Capture

    with Capture(host.ns, "gst") as capture:
        done = _run(host, ["domain", host.guest.name, "--config", allowed])
        seen = capture.frames(0x0806, timeout=3)  # everything the run left in the socket (the kernel's own ARPs too)
    assert done.returncode == 0, done.stderr
    from scapy.layers.l2 import ARP, Ether

    garps = [(Ether(c.frame)[ARP].hwsrc, Ether(c.frame)[ARP].psrc, Ether(c.frame)[ARP].pdst) for c in seen]
    assert [g for g in garps if g[0] == mac] == [(mac, "192.168.0.3", "192.168.0.3")] * 2
    pcap = tmp_path / "allowed.pcap"
    done = _run(host, ["domain", host.guest.name, "--config", allowed, "--pcap", str(pcap)])
    assert done.returncode == 0, done.stderr
    assert _arp_frames(pcap) == [(mac, "192.168.0.3", "192.168.0.3")] * 2
