"""The address policy under attack (issue 17): a guest that poisons its host's neighbour table, and
a guest agent that answers any address it likes, against a real bridge in a netns of this test's
own and the real resolver, `targets` and `domain`.

The host netns: bridge br0 with 192.168.0.2/24 and fd00:77::2/64, default routes via 192.168.0.1
and fd00:77::1; a veth "guest port" gp on br0 whose peer gst sends ARP requests with the guest's
MACs; 192.168.0.4 held by another MAC (02:00:00:00:00:44, a permanent entry); a second device
oth0 (10.5.0.2/24) with an entry 10.5.0.9 -> the guest's first MAC, on an unrelated device in
another subnet. Every poisoning frame is the issue's: "who-has 192.168.0.2 tell <claimed>" from
the guest's MAC, which makes the kernel write "<claimed> lladdr <guest MAC> STALE" on br0.

No qemu-guest-agent can run here: the agent's answer comes from a stand-in at the fetcher
boundary (the domain's interfaceAddresses for the AGENT source only; everything else is the real
test-driver domain and connection). The commands run against a test-driver node file.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

from rarp_announce.config import Config, parse_config
from rarp_announce.model import Address, RefusedAddress
from rarp_announce.resolve.neighbours import HostTables, neighbour_addresses
from rarp_announce.resolve.trust import vet

CLI = [sys.executable, "-m", "rarp_announce"]
MACS = [f"52:54:00:77:00:0{i}" for i in range(1, 6)]
OTHER_MAC = "02:00:00:00:00:44"
GUEST_UUID = "11111111-2222-3333-4444-000000007701"
NS_PREFIX = "trust"
# The commands open libvirt read-only, where libvirt refuses the AGENT source ("read only access
# prevents virDomainInterfaceAddresses"): the agent is tested in-process, through the resolver.
ARP_SOURCES = '["metadata", "config", "nwfilter", "arp"]'


def guest_xml(name: str = "guest", uuid: str = GUEST_UUID) -> str:
    nics = "".join(f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/></interface>" for mac in MACS)
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory>"
            f"<os><type>hvm</type></os><devices>{nics}</devices></domain>")


def neighbour_xml(name: str = "neighbour", uuid: str = "11111111-2222-3333-4444-000000007702") -> str:
    """Another running guest, whose operator declared 192.168.0.5 for it."""
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory><os><type>hvm</type></os>"
            "<metadata><ra:addresses xmlns:ra='urn:x-rarp-announce:addresses:1'><ra:interface mac='52:54:00:88:00:05'>"
            "<ra:ip address='192.168.0.5'/></ra:interface></ra:addresses></metadata><devices/></domain>")


# --- the policy alone ------------------------------------------------------------------------

TABLES = HostTables(
    own={"192.168.0.2": "br0", "fd00:77::2": "br0"},
    next_hops={"192.168.0.1": "default via 192.168.0.1 dev br0", "fd00:77::1": "default via fd00:77::1 dev br0"},
    neighbours={"192.168.0.4": {OTHER_MAC: "br0"}, "192.168.0.1": {MACS[0]: "br0"}},
)


def agent(*ips: str) -> list[Address]:
    return [Address(ip, "agent") for ip in ips]


def test_every_rule_refuses_with_its_reason():
    candidates = {MACS[0]: agent("192.168.0.2", "192.168.0.1", "fd00:77::1", "192.168.0.4", "192.168.0.5",
                                 "192.168.0.6", "192.168.1.7", "2001:db8::7", "192.168.0.9")}
    trusted = {MACS[0]: (Address("192.168.0.9", "metadata"),), MACS[1]: (Address("192.168.0.6", "config"),)}
    elsewhere = {"192.168.0.5": [("52:54:00:88:00:05", "the metadata of domain 'neighbour'")]}
    allowed, refused = vet(candidates, {MACS[0]: {"br0"}}, trusted, {"br0": ("192.168.0.0/24",)}, TABLES, elsewhere)
    assert allowed == {}
    assert [(r.ip, r.reason, r.detail) for r in refused] == [
        ("192.168.0.2", "host_address", "an address of this host (on br0)"),
        ("192.168.0.1", "next_hop", "the next hop of this host's route default via 192.168.0.1 dev br0"),
        ("fd00:77::1", "next_hop", "the next hop of this host's route default via fd00:77::1 dev br0"),
        ("192.168.0.4", "other_mac", f"held by {OTHER_MAC} on br0 in this host's neighbour table"),
        ("192.168.0.5", "other_guest", "declared for 52:54:00:88:00:05 by the metadata of domain 'neighbour'"),
        ("192.168.0.6", "other_guest", f"declared for {MACS[1]} by this domain's config source"),
        ("192.168.1.7", "not_allowed", "outside the prefixes [addresses.allow] gives br0 (192.168.0.0/24)"),
        ("2001:db8::7", "not_allowed", "outside the prefixes [addresses.allow] gives br0 (192.168.0.0/24)"),
    ]  # 192.168.0.9: the operator already vouched for it on this MAC: no verdict needed
    assert all(isinstance(r, RefusedAddress) and r.mac == MACS[0] and r.source == "agent" for r in refused)


def test_nothing_is_allowed_where_the_operator_allowed_nothing():
    candidates = {MACS[2]: agent("192.168.0.3")}
    allowed, refused = vet(candidates, {MACS[2]: {"br0"}}, {}, {}, TABLES, {})
    assert allowed == {}
    assert refused == [RefusedAddress(MACS[2], "192.168.0.3", "agent", "not_allowed",
                                      "[addresses.allow] has no entry for br0: no guest-reported address is allowed there")]
    allowed, refused = vet(candidates, {MACS[2]: {"br0"}}, {}, {"br0": ("192.168.0.0/24",)}, TABLES, {})
    assert (allowed, refused) == ({MACS[2]: agent("192.168.0.3")}, [])
    # a MAC on two bridges must be allowed on both; a MAC without targets is passed over
    allowed, refused = vet(candidates, {MACS[2]: {"br0", "br1"}}, {}, {"br0": ("192.168.0.0/24",)}, TABLES, {})
    assert allowed == {} and [r.reason for r in refused] == ["not_allowed"]
    assert vet(candidates, {}, {}, {"br0": ("192.168.0.0/24",)}, TABLES, {}) == ({}, [])


def test_neighbour_source_reads_only_the_bridge_and_its_subnets():
    import ipaddress

    tables = HostTables(
        subnets={"br0": (ipaddress.ip_network("192.168.0.0/24"),), "oth0": (ipaddress.ip_network("10.5.0.0/24"),)},
        on_device={"br0": (("192.168.0.3", MACS[0]), ("172.16.5.5", MACS[0]), ("192.168.0.4", OTHER_MAC)),
                   "oth0": (("10.5.0.9", MACS[0]),)},
    )
    found, reasons = neighbour_addresses(tables, {MACS[0]: ["br0"]})
    assert found == {MACS[0]: [Address("192.168.0.3", "arp")]}
    assert reasons == [f"arp: 172.16.5.5 bound to {MACS[0]} on br0 is outside br0's subnets (192.168.0.0/24): ignored"]


# --- a real bridge, poisoned -----------------------------------------------------------------


@pytest.fixture
def poisoned(root_netns):
    """The host netns of the module docstring, its neighbour table poisoned by the guest's MACs."""
    from pyroute2 import NetNS, netns

    from rarp_announce.lab.netns import send_raw, unique, wait_until

    name = unique(NS_PREFIX)
    netns.create(name)
    try:
        commands = [
            "link set lo up", "link add br0 type bridge", "link add gp type veth peer name gst",
            "link set gp master br0 up", "link set gst up", "link set br0 up",
            "addr add 192.168.0.2/24 dev br0", "addr add fd00:77::2/64 dev br0 nodad",
            "route add default via 192.168.0.1 dev br0", "-6 route add default via fd00:77::1 dev br0",
            f"neigh add 192.168.0.4 lladdr {OTHER_MAC} dev br0 nud permanent",
            "link add oth0 type veth peer name oth1", "link set oth0 up", "link set oth1 up",
            "addr add 10.5.0.2/24 dev oth0", f"neigh add 10.5.0.9 lladdr {MACS[0]} dev oth0 nud permanent",
        ]
        for command in commands:
            subprocess.run(["ip", "-n", name, *command.split()], check=True, capture_output=True, timeout=10)
        from scapy.layers.l2 import ARP, Ether

        claims = [(MACS[0], "192.168.0.1"), (MACS[0], "172.16.5.5"), (MACS[2], "192.168.0.3")]
        for mac, claimed in claims:
            # The ethertype spelled out: once a test bound ARP to 0x8035 (RARP decoding), scapy
            # would fill the last binding in, and the kernel ignores a "RARP" that says who-has.
            frame = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / ARP(op=1, hwsrc=mac, psrc=claimed,
                                                                              pdst="192.168.0.2")
            send_raw(name, "gst", bytes(frame))

        def poisoned_now() -> bool:
            with NetNS(name) as ns:
                entries = {(m.get("NDA_DST"), m.get("NDA_LLADDR")) for m in ns.neigh("dump")}
            return all((claimed, mac) in entries for mac, claimed in claims)

        assert wait_until(poisoned_now, timeout=10), "the kernel did not learn the poisoning entries"
        yield name
    finally:
        netns.remove(name)


def _config(sources: str | None = None, allow: str | None = None) -> Config:
    text = "[ovs]\ndb = \"\"\n[addresses]\n" + (f"sources = {sources}\n" if sources else "")
    if allow:
        text += f"[addresses.allow]\nbr0 = {allow}\n"
    import tomllib

    return parse_config(tomllib.loads(text))


def _resolve(ns: str, config: Config, xml: str = guest_xml(), conn=None):
    from rarp_announce.lab.netns import inside
    from rarp_announce.resolve.host import HostResolver

    resolver = HostResolver(lambda: config, connection=lambda: conn)
    with inside(ns):
        return asyncio.run(resolver.resolve(xml))


def _addresses(resolution) -> dict[str, list[tuple[str, str]]]:
    return {t.mac: [(a.ip, a.source) for a in t.addresses] for t in resolution.targets if t.addresses}


def test_defaults_announce_nothing_of_a_poisoned_table(poisoned):
    resolution = _resolve(poisoned, _config())
    assert [t.mac for t in resolution.targets] == MACS
    assert _addresses(resolution) == {}
    assert resolution.refused == []  # no guest source is on, so nothing of it is even looked at


def test_opted_in_neighbour_source_refuses_every_out_of_policy_address(poisoned):
    resolution = _resolve(poisoned, _config('["metadata", "arp"]'))
    assert _addresses(resolution) == {}
    assert [(r.mac, r.ip, r.source, r.reason) for r in resolution.refused] == [
        (MACS[0], "192.168.0.1", "arp", "next_hop"),
        (MACS[2], "192.168.0.3", "arp", "not_allowed"),
    ]
    # the entry on another device is never read; the one outside br0's subnets is said and left out
    # (br0's link-local fe80::/64 may or may not be listed yet: the kernel adds it when br0 goes up)
    prefix = f"address not announced: arp: 172.16.5.5 bound to {MACS[0]} on br0 is outside br0's subnets (192.168.0.0/24, fd00:77::/64"
    assert [note for note in resolution.notes if note.startswith(prefix) and note.endswith("): ignored")] != []
    assert "10.5.0.9" not in json.dumps(resolution.record())


def test_an_allowed_address_of_the_neighbour_table_is_still_announced(poisoned):
    resolution = _resolve(poisoned, _config('["metadata", "arp"]', '["192.168.0.0/24"]'))
    assert _addresses(resolution) == {MACS[2]: [("192.168.0.3", "arp")]}
    assert [(r.ip, r.reason) for r in resolution.refused] == [("192.168.0.1", "next_hop")]


class _AgentAnswers:
    """The real test-driver connection, whose domains answer the AGENT source with `reply`: the
    stand-in for a qemu-guest-agent that cannot run here, at the fetcher boundary."""

    def __init__(self, conn, reply: dict) -> None:
        self._conn, self._reply = conn, reply

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def lookupByUUIDString(self, uuid):  # noqa: N802 - libvirt's name
        return _AgentDomain(self._conn.lookupByUUIDString(uuid), self._reply)


class _AgentDomain:
    def __init__(self, dom, reply: dict) -> None:
        self._dom, self._reply = dom, reply

    def __getattr__(self, name):
        return getattr(self._dom, name)

    def interfaceAddresses(self, source, flags=0):  # noqa: N802 - libvirt's name
        import libvirt

        if source == libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT:
            return self._reply
        return self._dom.interfaceAddresses(source, flags)


@pytest.fixture
def test_driver(libvirt_module):
    """guest (five vNICs on br0) and neighbour (declares 192.168.0.5) running on test:///default."""
    from rarp_announce.virt.connection import open_connection

    conn = open_connection("test:///default")
    tag = uuidlib.uuid4().hex[:8]
    guest_uuid, other_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    made = []
    try:
        for xml in (guest_xml(f"guest-{tag}", guest_uuid), neighbour_xml(f"neighbour-{tag}", other_uuid)):
            made.append(conn.createXML(xml, 0))
        yield conn, made[0]
    finally:
        for dom in made:
            dom.destroy()
        conn.close()


def test_agent_claims_are_refused_unless_allowed(poisoned, test_driver):
    conn, dom = test_driver
    reply = {"eth0": {"hwaddr": MACS[0], "addrs": [
        {"addr": ip, "prefix": 24, "type": 0} for ip in ("192.168.0.1", "192.168.0.2", "192.168.0.4", "192.168.0.5",
                                                          "192.168.0.3", "192.168.0.33", "10.9.9.9")
    ] + [{"addr": "fd00:77::1", "prefix": 64, "type": 1}, {"addr": "fd00:77::33", "prefix": 64, "type": 1}]}}
    xml = dom.XMLDesc(0)
    for allow, announced in ((None, {}), ('["192.168.0.0/24", "fd00:77::/64"]',
                                          {MACS[0]: [("192.168.0.33", "agent"), ("fd00:77::33", "agent")]})):
        resolution = _resolve(poisoned, _config('["metadata", "agent"]', allow), xml, _AgentAnswers(conn, reply))
        assert _addresses(resolution) == announced
        # 192.168.0.3: the poisoning put it in the table for the guest's third MAC, not this one
        expected = [("192.168.0.1", "next_hop"), ("192.168.0.2", "host_address"), ("192.168.0.4", "other_mac"),
                    ("192.168.0.3", "other_mac"), ("192.168.0.5", "other_guest"), ("10.9.9.9", "not_allowed")]
        expected += [("192.168.0.33", "not_allowed")] if allow is None else []
        expected += [("fd00:77::1", "next_hop")] + ([("fd00:77::33", "not_allowed")] if allow is None else [])
        assert sorted((r.ip, r.reason) for r in resolution.refused) == sorted(expected)
        assert {r.source for r in resolution.refused} == {"agent"}


# --- the commands: targets and domain --------------------------------------------------------


@pytest.fixture
def node(tmp_path, libvirt_module) -> str:
    path = tmp_path / "node.xml"
    path.write_text(f"<node>{guest_xml()}{neighbour_xml()}</node>")
    return f"test://{path}"


def _write_config(tmp_path: Path, sources: str | None, allow: str | None) -> str:
    path = tmp_path / f"config-{uuidlib.uuid4().hex[:6]}.toml"
    text = "[schedule]\nrounds = 1\n[ovs]\ndb = \"\"\n[addresses]\n" + (f"sources = {sources}\n" if sources else "")
    path.write_text(text + (f"[addresses.allow]\nbr0 = {allow}\n" if allow else ""))
    return str(path)


def _run(ns: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *CLI, *argv], capture_output=True, text=True, timeout=60)


def test_targets_shows_refused_addresses_with_their_reason(poisoned, tmp_path):
    xml = tmp_path / "guest.xml"
    xml.write_text(guest_xml())
    default = _run(poisoned, ["targets", "--xml", str(xml), "--config", _write_config(tmp_path, None, None), "--json"])
    assert default.returncode == 0, default.stderr
    record = json.loads(default.stdout)
    assert [t["addresses"] for t in record["targets"]] == [[]] * 5 and "refused" not in record
    opted = _run(poisoned, ["targets", "--xml", str(xml), "--config", _write_config(tmp_path, '["arp"]', None), "--json"])
    record = json.loads(opted.stdout)
    assert [(r["mac"], r["ip"], r["source"], r["reason"]) for r in record["refused"]] == [
        (MACS[0], "192.168.0.1", "arp", "next_hop"), (MACS[2], "192.168.0.3", "arp", "not_allowed")]
    table = _run(poisoned, ["targets", "--xml", str(xml), "--config", _write_config(tmp_path, '["arp"]', None)])
    assert (f"refused {MACS[0]} 192.168.0.1 (arp): next_hop: the next hop of this host's route default via "
            "192.168.0.1 dev br0") in table.stdout.splitlines()


def _garps(pcap: Path) -> list[tuple[str, str]]:
    """(sender MAC, IP) of every gratuitous ARP in the file, decoded by scapy."""
    from scapy.layers.l2 import ARP
    from scapy.utils import rdpcap

    found = []
    for packet in rdpcap(str(pcap)):
        if packet.haslayer(ARP) and packet[ARP].op == 1:
            arp = packet[ARP]
            assert arp.psrc == arp.pdst and arp.hwdst == "00:00:00:00:00:00", packet.summary()
            found.append((arp.hwsrc, arp.psrc))
    return found


@pytest.mark.parametrize("sources, allow, garps, refused", [
    (None, None, [], []),
    (ARP_SOURCES, None, [], [(0, "192.168.0.1", "arp", "next_hop"), (2, "192.168.0.3", "arp", "not_allowed")]),
    (ARP_SOURCES, '["192.168.0.0/24"]', [(2, "192.168.0.3")], [(0, "192.168.0.1", "arp", "next_hop")]),
])
def test_domain_announces_only_what_passes(poisoned, node, tmp_path, sources, allow, garps, refused):
    # No lease source here: libvirt's test driver invents the same addresses for every source,
    # leases included, which a real libvirt only has for its own networks' DHCP.
    config = _write_config(tmp_path, sources or '["metadata", "config", "nwfilter"]', allow)
    pcap = tmp_path / "out.pcap"
    done = _run(poisoned, ["domain", "guest", "--connect", node, "--config", config, "--pcap", str(pcap)])
    assert done.returncode == 0, done.stderr
    assert sorted(_garps(pcap)) == sorted((MACS[i], ip) for i, ip in garps)
    said = [re.fullmatch(r"rarp-announce: note: refused (\S+) (\S+) \((\w+)\): (\w+): .+", line)
            for line in done.stderr.splitlines() if line.startswith("rarp-announce: note: refused ")]
    assert sorted(match.groups() for match in said if match) == sorted((MACS[i], ip, source, reason)
                                                                       for i, ip, source, reason in refused)
    assert len(said) == len(refused)
    dry = _run(poisoned, ["domain", "guest", "--connect", node, "--config", config, "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    planned = sorted(line.split("garp ")[1].split()[0] for line in dry.stdout.splitlines() if " garp " in line)
    assert planned == sorted(ip for _i, ip in garps)
