"""addresses.py: the <metadata> declarations as libvirt writes them, the merge, libvirt's
virDomainInterfaceAddresses against the test driver, a hung source, and QMP announce-self."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rarp_announce.config import AddressesConfig
from rarp_announce.errors import InputError
from rarp_announce.model import Address
from rarp_announce.resolve import addresses as module
from rarp_announce.resolve.addresses import (
    MAX_ENTRIES,
    MAX_PER_MAC,
    MAX_REASONS,
    MAX_TOTAL,
    METADATA_NS,
    announce_self_command,
    declared_addresses,
    guest_announce,
    libvirt_addresses,
    merge,
    metadata_addresses,
    tag_addresses,
)
from rarp_announce.resolve.domxml import parse_domain

# Exactly what `virsh dumpxml` prints after
#   virsh metadata DOM --uri urn:x-rarp-announce:addresses:1 --key ra --set '<addresses>...</addresses>'
# (checked against libvirt 9.0: libvirt puts every element of the block in the namespace).
DUMPXML = """<domain type='kvm' id='7'>
  <name>web</name>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>web</nova:name>
    </nova:instance>
    <ra:addresses xmlns:ra="urn:x-rarp-announce:addresses:1">
      <ra:interface mac="52:54:00:12:34:56">
        <ra:ip address="192.0.2.10"/>
        <ra:ip address="2001:db8::10"/>
      </ra:interface>
      <ra:interface mac="52:54:00:12:34:57">
        <ra:ip address="198.51.100.7"/>
      </ra:interface>
    </ra:addresses>
  </metadata>
  <devices/>
</domain>"""


def domain_with(block: str) -> str:
    return f"<domain type='kvm'><name>d</name><metadata>{block}</metadata><devices/></domain>"


def ours(body: str) -> str:
    return f'<ra:addresses xmlns:ra="{METADATA_NS}">{body}</ra:addresses>'


def one_line(reasons: list[str]) -> None:
    for reason in reasons:
        assert "\n" not in reason and "\r" not in reason and len(reason) < 400, reason


# --- metadata ---------------------------------------------------------------------------------


def test_metadata_as_virsh_dumpxml_prints_it():
    found, reasons = metadata_addresses(parse_domain(DUMPXML))
    assert found == {
        "52:54:00:12:34:56": ["192.0.2.10", "2001:db8::10"],
        "52:54:00:12:34:57": ["198.51.100.7"],
    }
    assert reasons == []


def test_metadata_set_through_libvirt_is_read_back(test_domain):
    # The operator's command line, through the real API virsh calls (virDomainSetMetadata):
    # the block is given without a namespace and libvirt adds it.
    libvirt, dom = test_domain
    block = ('<addresses><interface mac="52-54-00-AA-BB-01"><ip address="192.0.2.33"/>'
             '<ip address="2001:DB8:0:0::33"/></interface></addresses>')
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, block, "ra", METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    xml = dom.XMLDesc(0)
    assert f'<ra:addresses xmlns:ra="{METADATA_NS}">' in xml and "<ra:ip address=" in xml
    assert metadata_addresses(parse_domain(xml)) == ({"52:54:00:aa:bb:01": ["192.0.2.33", "2001:db8::33"]}, [])


@pytest.mark.parametrize(
    "block",
    [
        # a default namespace instead of a prefix: the same namespace, so the same element
        f'<addresses xmlns="{METADATA_NS}"><interface mac="52:54:00:12:34:56"><ip address="192.0.2.10"/></interface></addresses>',
        # hand-written: a prefixed block with plain children (no namespace)
        ours('<interface mac="52:54:00:12:34:56"><ip address=" 192.0.2.10 "/></interface>'),
        # another prefix, Cisco spelling of the MAC
        f'<x:addresses xmlns:x="{METADATA_NS}"><x:interface mac="5254.0012.3456"><x:ip address="192.0.2.10"/></x:interface></x:addresses>',
    ],
)
def test_metadata_namespace_not_prefix_decides(block):
    assert metadata_addresses(parse_domain(domain_with(block))) == ({"52:54:00:12:34:56": ["192.0.2.10"]}, [])


@pytest.mark.parametrize(
    "block",
    [
        '<addresses><interface mac="52:54:00:12:34:56"><ip address="192.0.2.10"/></interface></addresses>',
        '<o:addresses xmlns:o="urn:x-other"><o:interface mac="52:54:00:12:34:56"><o:ip address="192.0.2.10"/></o:interface></o:addresses>',
        # what libvirt 9.0 keeps when the operator's block declares a default namespace of its own
        f'<addresses xmlns="urn:foo" xmlns:ra="{METADATA_NS}"><interface mac="52:54:00:12:34:56"><ip address="192.0.2.10"/></interface></addresses>',
    ],
)
def test_metadata_in_another_namespace_is_ignored(block):
    assert metadata_addresses(parse_domain(domain_with(block))) == ({}, [])


def test_our_element_outside_metadata_is_not_a_declaration():
    block = ours('<ra:interface mac="52:54:00:12:34:56"><ra:ip address="192.0.2.10"/></ra:interface>')
    assert metadata_addresses(parse_domain(f"<domain><name>d</name>{block}<description>{block}</description></domain>")) == ({}, [])


def test_foreign_children_inside_our_block_are_ignored():
    block = ours(
        '<o:note xmlns:o="urn:x-other">hello</o:note><!-- a comment -->'
        '<ra:interface mac="52:54:00:12:34:56"><o:ip xmlns:o="urn:x-other" address="203.0.113.1"/>'
        '<ra:ip address="192.0.2.10"/></ra:interface>'
    )
    assert metadata_addresses(parse_domain(domain_with(block))) == ({"52:54:00:12:34:56": ["192.0.2.10"]}, [])


def test_no_metadata_no_addresses():
    assert metadata_addresses(parse_domain("<domain><name>d</name></domain>")) == ({}, [])


def test_bad_entries_are_skipped_with_reasons():
    block = ours(
        '<ra:interface mac="52:54:00:12:34:56">'
        '<ra:ip address="192.0.2.10"/>'
        '<ra:ip address="127.0.0.1"/>'
        '<ra:ip address="ff02::1"/>'
        '<ra:ip address="192.0.2.0/24"/>'
        '<ra:ip address="fe80::1%eth0"/>'
        '<ra:ip address="nonsense"/>'
        '<ra:ip addr="192.0.2.11"/>'
        '<ra:ipv4 address="192.0.2.12"/>'
        '<ra:ip address="192.0.2.10"/>'  # a repeat: kept once, nothing to report
        '<ra:ip address="169.254.1.1"/>'  # link-local IPv4 (RFC 3927) is a guest's own address
        '<ra:ip address="fe80::1"/>'
        "</ra:interface>"
        '<ra:interface mac="zz:54:00:12:34:56"><ra:ip address="192.0.2.20"/></ra:interface>'
        '<ra:interface mac="01:00:5e:00:00:01"><ra:ip address="192.0.2.21"/></ra:interface>'
        '<ra:interface><ra:ip address="192.0.2.22"/></ra:interface>'
        f'<ra:interface mac="{"5" * 5000}"/>'
        '<ra:iface mac="52:54:00:12:34:58"/>'
        '<ra:interface mac="52:54:00:12:34:59"><ra:ip address="0.0.0.0"/></ra:interface>'
    )
    found, reasons = metadata_addresses(parse_domain(domain_with(block)))
    assert found == {"52:54:00:12:34:56": ["192.0.2.10", "169.254.1.1", "fe80::1"]}
    assert reasons == [
        "metadata: interface 52:54:00:12:34:56: IP address '127.0.0.1' is a loopback address: it never leaves its host: skipped",
        "metadata: interface 52:54:00:12:34:56: IP address 'ff02::1' is a multicast address: only a unicast address can be announced: skipped",
        "metadata: interface 52:54:00:12:34:56: IP address '192.0.2.0/24' is a prefix: expected one IPv4 address like 192.0.2.10 or one IPv6 address like 2001:db8::10, without a /length: skipped",
        "metadata: interface 52:54:00:12:34:56: IP address 'fe80::1%eth0' has a zone index (%...): give the address without it: skipped",
        "metadata: interface 52:54:00:12:34:56: invalid IP address 'nonsense': expected one IPv4 address like 192.0.2.10 or one IPv6 address like 2001:db8::10: skipped",
        "metadata: interface 52:54:00:12:34:56: <ip> without an address attribute: skipped",
        "metadata: interface 52:54:00:12:34:56: unknown element <'ipv4'>: expected <ip address=...>",
        "metadata: <interface mac=...> skipped: invalid MAC 'zz:54:00:12:34:56': expected six octets as 52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456",
        "metadata: <interface mac=...> skipped: MAC '01:00:5e:00:00:01' is a multicast address (lowest bit of the first octet set): only a unicast MAC can be announced",
        "metadata: <interface> without a mac attribute: skipped",
        f"metadata: <interface mac=...> skipped: invalid MAC '{'5' * 37}...': too long for a MAC",
        "metadata: unknown element <'iface'> in <addresses>: expected <interface mac=...>",
        "metadata: interface 52:54:00:12:34:59: IP address '0.0.0.0' is the unspecified address: no host owns it: skipped",
    ]
    one_line(reasons)


def test_a_mac_listed_twice_has_its_lists_joined():
    block = ours(
        '<ra:interface mac="52:54:00:12:34:56"><ra:ip address="192.0.2.10"/></ra:interface>'
        '<ra:interface mac="52-54-00-12-34-56"><ra:ip address="192.0.2.10"/><ra:ip address="192.0.2.11"/></ra:interface>'
    )
    assert metadata_addresses(parse_domain(domain_with(block))) == (
        {"52:54:00:12:34:56": ["192.0.2.10", "192.0.2.11"]}, [])


def test_metadata_is_bounded_per_mac():
    ips = "".join(f'<ra:ip address="10.0.0.{i}"/>' for i in range(1, MAX_PER_MAC + 11))
    found, reasons = metadata_addresses(parse_domain(domain_with(ours(f'<ra:interface mac="52:54:00:12:34:56">{ips}</ra:interface>'))))
    assert found["52:54:00:12:34:56"] == [f"10.0.0.{i}" for i in range(1, MAX_PER_MAC + 1)]
    assert reasons == [f"metadata: interface 52:54:00:12:34:56: more than {MAX_PER_MAC} addresses: the rest is ignored"]


def test_metadata_is_bounded_in_all():
    per_mac = MAX_PER_MAC
    macs = MAX_TOTAL // per_mac + 2
    body = "".join(
        f'<ra:interface mac="52:54:00:00:{m // 256:02x}:{m % 256:02x}">'
        + "".join(f'<ra:ip address="10.{m // 256}.{m % 256}.{i}"/>' for i in range(1, per_mac + 1))
        + "</ra:interface>"
        for m in range(macs)
    )
    found, reasons = metadata_addresses(parse_domain(domain_with(ours(body))))
    assert sum(len(ips) for ips in found.values()) == MAX_TOTAL
    assert len(found) == MAX_TOTAL // per_mac
    assert reasons == [f"metadata: more than {MAX_TOTAL} addresses in all: the rest is ignored"]


def test_reasons_are_bounded_but_a_cut_is_always_said():
    body = "".join(f'<ra:interface mac="bad{i}"/>' for i in range(1000))
    found, reasons = metadata_addresses(parse_domain(domain_with(ours(body))))
    assert found == {}
    assert len(reasons) == MAX_REASONS + 1
    assert reasons[-1] == f"metadata: {1000 - MAX_REASONS} more entries skipped"


def test_the_work_is_bounded_too():
    # Invalid entries cost a parse each and count towards no result: without a bound on the
    # elements looked at, a 4 MiB document of them would hold the resolver for most of a second.
    # The bound is proven by the count of elements looked at (the last reason); what it costs in
    # time is a figure in benchmarks/bench_resolve.py.
    body = '<ra:interface mac="52:54:00:12:34:56">' + '<ra:ip address="not-an-ip"/>' * (MAX_ENTRIES + 100) + "</ra:interface>"
    found, reasons = metadata_addresses(parse_domain(domain_with(ours(body))))
    assert found == {}
    assert reasons[-2:] == [f"metadata: {MAX_ENTRIES - 1 - MAX_REASONS} more entries skipped",
                            f"metadata: more than {MAX_ENTRIES} elements: the rest is ignored"]


@settings(max_examples=200, deadline=None)
@given(mac=st.text(max_size=60), address=st.text(max_size=60))
def test_metadata_never_raises_and_every_reason_is_one_line(mac, address):
    from xml.sax.saxutils import quoteattr

    xml = domain_with(ours(f"<ra:interface mac={quoteattr(mac)}><ra:ip address={quoteattr(address)}/></ra:interface>"))
    try:
        root = parse_domain(xml)
    except InputError:
        return  # characters XML cannot carry: refused before this module sees them
    found, reasons = metadata_addresses(root)
    one_line(reasons)
    for mac_key, ips in found.items():
        assert ips and all(ipaddress.ip_address(ip) for ip in ips), mac_key


# --- merge ------------------------------------------------------------------------------------


def A(ip: str, source: str) -> Address:
    return Address(ip, source)  # type: ignore[arg-type]


def test_merge_ranks_by_source_order_and_keeps_the_first_claim():
    metadata = tag_addresses("metadata", {"52:54:00:00:00:01": ["192.0.2.1", "192.0.2.2"]})
    config = tag_addresses("config", {"52:54:00:00:00:01": ["192.0.2.2", "192.0.2.3"], "52:54:00:00:00:02": ["2001:db8::2"]})
    lease = {"52:54:00:00:00:01": [A("192.0.2.4", "lease"), A("192.0.2.1", "lease")]}
    merged, reasons = merge([lease, metadata, config], ["config", "metadata", "lease"])
    assert merged == {
        "52:54:00:00:00:01": (A("192.0.2.2", "config"), A("192.0.2.3", "config"), A("192.0.2.1", "metadata"), A("192.0.2.4", "lease")),
        "52:54:00:00:00:02": (A("2001:db8::2", "config"),),
    }
    assert reasons == []
    assert list(merged) == ["52:54:00:00:00:01", "52:54:00:00:00:02"]  # first seen first


def test_merge_default_order_and_unlisted_sources_last():
    parts = [{"52:54:00:00:00:01": [A("192.0.2.9", "cli"), A("192.0.2.8", "agent"), A("192.0.2.7", "metadata")]}]
    assert merge(parts)[0]["52:54:00:00:00:01"] == (A("192.0.2.7", "metadata"), A("192.0.2.8", "agent"), A("192.0.2.9", "cli"))
    assert merge(parts, ["agent"])[0]["52:54:00:00:00:01"] == (A("192.0.2.8", "agent"), A("192.0.2.9", "cli"), A("192.0.2.7", "metadata"))


def test_merge_is_bounded_per_mac():
    part = {"52:54:00:00:00:01": [A(f"10.0.0.{i}", "lease") for i in range(1, 10)]}
    merged, reasons = merge([part], limit=4)
    assert [a.ip for a in merged["52:54:00:00:00:01"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert reasons == ["interface 52:54:00:00:00:01: more than 4 addresses from all sources: the rest is ignored"]


def test_merge_of_nothing():
    assert merge([]) == ({}, [])
    assert merge([{"52:54:00:00:00:01": []}]) == ({}, [])


def test_declared_addresses_follow_the_configured_sources():
    root = parse_domain(DUMPXML)
    config = AddressesConfig(macs={"52:54:00:12:34:56": ("2001:db8::10", "192.0.2.99")})
    declared, reasons = declared_addresses(root, config)
    assert declared == {
        "52:54:00:12:34:56": [A("192.0.2.10", "metadata"), A("2001:db8::10", "metadata"), A("192.0.2.99", "config")],
        "52:54:00:12:34:57": [A("198.51.100.7", "metadata")],
    }
    assert reasons == []
    config_first = AddressesConfig(sources=("config", "metadata"), macs=config.macs)
    assert declared_addresses(root, config_first)[0]["52:54:00:12:34:56"] == [
        A("2001:db8::10", "config"), A("192.0.2.99", "config"), A("192.0.2.10", "metadata")]
    assert declared_addresses(root, AddressesConfig(sources=("lease",), macs=config.macs)) == ({}, [])
    assert declared_addresses(None, config) == ({"52:54:00:12:34:56": [A("2001:db8::10", "config"), A("192.0.2.99", "config")]}, [])


# --- libvirt sources --------------------------------------------------------------------------


@pytest.fixture
def test_domain(libvirt_module):
    """A running domain of this test's own on test:///default (one network vNIC, one bridge
    vNIC, one more network vNIC), destroyed and undefined afterwards."""
    from rarp_announce.virt.connection import open_connection

    conn = open_connection("test:///default")
    name = f"addr-{uuid.uuid4().hex[:8]}"
    xml = (
        f"<domain type='test'><name>{name}</name><memory>1024</memory><os><type>hvm</type></os><devices>"
        "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default'/></interface>"
        "<interface type='bridge'><mac address='52:54:00:aa:00:02'/><source bridge='br0'/></interface>"
        "<interface type='network'><mac address='52:54:00:aa:00:03'/><source network='default'/></interface>"
        "</devices></domain>"
    )
    dom = conn.defineXML(xml)
    dom.create()
    try:
        yield libvirt_module, dom
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


def test_source_numbers_match_libvirt(libvirt_module):
    lv = libvirt_module
    # libvirt's ARP source is not used (it matches any device; resolve/neighbours.py reads the table).
    assert module.LIBVIRT_SOURCES == {
        "lease": lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        "agent": lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    }


def driver_addresses(dom) -> dict[str, str]:
    """What libvirt 9.0's test driver (testDomainInterfaceAddresses) answers, observed here: it
    ignores the source and invents one IPv4 per vNIC: for a vNIC on a libvirt network the
    network's DHCP range start (default: 192.168.122.2) + 20 * (domain id - 1) + index + 1, for
    any other vNIC 192.168.0.(index + 1)."""
    first = ipaddress.IPv4Address("192.168.122.2") + 20 * (dom.ID() - 1)
    return {
        "52:54:00:aa:00:01": str(first + 1),
        "52:54:00:aa:00:02": "192.168.0.2",
        "52:54:00:aa:00:03": str(first + 3),
    }


@pytest.mark.parametrize("source", ["lease", "agent"])
def test_each_libvirt_source_against_the_test_driver(test_domain, source):
    _libvirt, dom = test_domain
    found, reasons = asyncio.run(libvirt_addresses(dom, [source], timeout=5))
    expected = driver_addresses(dom)
    assert found == {mac: [A(ip, source)] for mac, ip in expected.items()}
    assert reasons == []


def test_all_sources_at_once_keep_the_first_source(test_domain):
    _libvirt, dom = test_domain
    found, reasons = asyncio.run(libvirt_addresses(dom, ["metadata", "arp", "config", "agent", "lease"], timeout=5))
    assert found == {mac: [A(ip, "agent")] for mac, ip in driver_addresses(dom).items()}
    assert reasons == []


def test_a_stopped_domain_gives_one_reason_per_source(test_domain):
    _libvirt, dom = test_domain
    dom.destroy()
    found, reasons = asyncio.run(libvirt_addresses(dom, ["lease", "arp", "agent"], timeout=5))
    assert found == {}
    assert reasons == [f"{source}: Requested operation is not valid: domain is not running" for source in ("lease", "agent")]


def test_a_domain_that_is_gone_gives_one_reason_per_source(test_domain):
    # A transient domain vanishes when it stops (what a migrated-away guest does on its source).
    _libvirt, dom = test_domain
    conn = dom.connect()
    gone = conn.createXML(dom.XMLDesc(0).replace(dom.name(), dom.name() + "-t").replace(dom.UUIDString(), str(uuid.uuid4())), 0)
    gone.destroy()
    found, reasons = asyncio.run(libvirt_addresses(gone, ["lease"], timeout=5))
    assert found == {}
    assert reasons == [f"lease: Domain not found: no domain with matching uuid '{gone.UUIDString()}' ({gone.name()})"]


def test_a_source_the_driver_does_not_support_is_a_reason(test_domain, monkeypatch):
    # The test driver implements all three sources; a source number it does not know takes the
    # same error path in libvirt (VIR_ERR_ARGUMENT_UNSUPPORTED) as a driver without that source.
    _libvirt, dom = test_domain
    monkeypatch.setitem(module.LIBVIRT_SOURCES, "agent", 3)
    found, reasons = asyncio.run(libvirt_addresses(dom, ["agent", "lease"], timeout=5))
    assert reasons == ["agent: argument unsupported: Unknown IP address data source 3"]
    assert found == {mac: [A(ip, "lease")] for mac, ip in driver_addresses(dom).items()}


def test_an_unknown_source_name_is_a_reason_without_a_call():
    class Untouchable:
        def interfaceAddresses(self, source, flags=0):  # noqa: N802 - libvirt's name
            raise AssertionError("must not be called")

    found, reasons = asyncio.run(libvirt_addresses(Untouchable(), ["dhcp", "metadata", "config"], timeout=1))
    assert found == {}
    assert reasons == ["'dhcp': not an address source (expected one of metadata, config, nwfilter, lease, arp, agent)"]


class AgentShaped:
    """A dom whose every source answers like libvirt-python does for qemu-guest-agent
    (libvirt-override.c, virDomainInterfaceAddresses): the guest's own interfaces, its loopback
    included. The test driver never lists a loopback or an IPv6 address, so this is a stand-in."""

    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def interfaceAddresses(self, source, flags=0):  # noqa: N802 - libvirt's name
        self.calls.append((source, flags))
        return self.reply


def test_agent_shaped_reply_is_filtered_with_reasons():
    reply = {
        "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"addr": "127.0.0.1", "prefix": 8, "type": 0}, {"addr": "::1", "prefix": 128, "type": 1}]},
        "eth0": {"hwaddr": "52:54:00:12:34:56", "addrs": [
            {"addr": "192.0.2.10", "prefix": 24, "type": 0},
            {"addr": "2001:db8::10", "prefix": 64, "type": 1},
            {"addr": "fe80::5054:ff:fe12:3456", "prefix": 64, "type": 1},
            {"addr": "224.0.0.1", "prefix": 4, "type": 0},
            {"addr": "192.0.2.10", "prefix": 24, "type": 0},
            {"prefix": 24, "type": 0},
        ]},
        "eth1": {"hwaddr": "52:54:00:12:34:57", "addrs": []},
        "weird": {"hwaddr": "01:02:03:04:05:06", "addrs": [{"addr": "192.0.2.30", "prefix": 24, "type": 0}]},
        "broken": "not a dict",
        "sit0": {"hwaddr": None, "addrs": None},
    }
    dom = AgentShaped(reply)
    found, reasons = asyncio.run(libvirt_addresses(dom, ["agent"], timeout=5))
    assert dom.calls == [(1, 0)]
    assert found == {"52:54:00:12:34:56": [A("192.0.2.10", "agent"), A("2001:db8::10", "agent"), A("fe80::5054:ff:fe12:3456", "agent")]}
    assert reasons == [
        "agent: interface 52:54:00:12:34:56: IP address '224.0.0.1' is a multicast address: only a unicast address can be announced: skipped",
        "agent: interface 52:54:00:12:34:56: an entry without an address: skipped",
        "agent: interface 'weird': MAC '01:02:03:04:05:06' is a multicast address (lowest bit of the first octet set): only a unicast MAC can be announced: skipped",
        "agent: interface 'broken': unexpected entry str: skipped",
    ]
    one_line(reasons)


def test_libvirt_replies_are_bounded():
    reply = {f"eth{m}": {"hwaddr": f"52:54:00:00:{m // 256:02x}:{m % 256:02x}",
                          "addrs": [{"addr": f"10.{m // 256}.{m % 256}.{i}"} for i in range(1, MAX_PER_MAC + 2)]}
             for m in range(MAX_TOTAL // MAX_PER_MAC + 1)}
    found, reasons = asyncio.run(libvirt_addresses(AgentShaped(reply), ["lease"], timeout=5))
    assert sum(len(v) for v in found.values()) == MAX_TOTAL
    assert all(len(v) == MAX_PER_MAC for v in found.values())
    assert reasons[0] == f"lease: interface 52:54:00:00:00:00: more than {MAX_PER_MAC} addresses: the rest is ignored"
    assert reasons[-1] == f"lease: more than {MAX_TOTAL} addresses in all: the rest is ignored"
    assert len(reasons) <= MAX_REASONS + 2


class Hung:
    """A stand-in for a hung qemu-guest-agent: libvirt's agent call can block for as long as the
    guest does not answer, which the test driver cannot produce. Only the agent hangs; the
    other sources answer at once, as libvirt's lease and ARP sources (local files) do."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()  # the agent's call is under way (and blocked)

    def interfaceAddresses(self, source, flags=0):  # noqa: N802 - libvirt's name
        if source == module.LIBVIRT_SOURCES["agent"]:
            self.entered.set()
            self.release.wait(30)
            return {"eth0": {"hwaddr": "52:54:00:12:34:56", "addrs": [{"addr": "192.0.2.66"}]}}
        return {"eth0": {"hwaddr": "52:54:00:12:34:56", "addrs": [{"addr": "192.0.2.10"}]}}


def test_a_hung_source_is_given_up_within_the_timeout():
    # No clock here: the agent's call stays blocked until after asyncio.run returned (it would
    # answer 192.0.2.66 if it were waited for), so a result without it, and the reason, prove it
    # was given up; ticks counted while the call is blocked prove the loop kept running. How long
    # giving up takes is a figure in benchmarks/bench_resolve.py.
    dom = Hung()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            if dom.entered.is_set():
                ticks += 1

    async def main():
        task = asyncio.create_task(ticker())
        try:
            return await libvirt_addresses(dom, ["agent", "lease"], timeout=0.3)
        finally:
            task.cancel()

    try:
        found, reasons = asyncio.run(main())  # asyncio.run returns too: nothing joins the stuck thread
    finally:
        dom.release.set()
    assert dom.entered.is_set()
    assert ticks >= 1  # the loop kept running while the agent hung
    assert found == {"52:54:00:12:34:56": [A("192.0.2.10", "lease")]}
    assert reasons == ["agent: no answer within 0.3 s: given up (the call may still be blocked in libvirt)"]


def test_stuck_calls_are_bounded(monkeypatch):
    monkeypatch.setattr(module, "_THREADS", module._DaemonThreads(1))
    dom = Hung()
    try:
        first = asyncio.run(libvirt_addresses(dom, ["agent"], timeout=0.1))
        second = asyncio.run(libvirt_addresses(dom, ["agent"], timeout=0.1))
    finally:
        dom.release.set()
    assert first == ({}, ["agent: no answer within 0.1 s: given up (the call may still be blocked in libvirt)"])
    assert second == ({}, ["agent: 1 earlier libvirt calls are still blocked (a hung guest agent?): not asked"])


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        asyncio.run(libvirt_addresses(Hung(), ["lease"], timeout=0))


# --- announce-self ----------------------------------------------------------------------------


def test_announce_self_command_is_qmp():
    command = announce_self_command(rounds=5, initial_ms=50, max_ms=550, step_ms=100)
    assert json.loads(command) == {"execute": "announce-self", "arguments": {"initial": 50, "max": 550, "rounds": 5, "step": 100}}
    with pytest.raises(InputError, match="invalid rounds 0"):
        announce_self_command(rounds=0, initial_ms=50, max_ms=550, step_ms=100)


def test_guest_announce_on_the_test_driver_is_one_line(test_domain):
    # The test driver has no QEMU monitor: the real libvirt error, as one line.
    _libvirt, dom = test_domain
    reason = asyncio.run(guest_announce(dom, rounds=5, initial_ms=50, max_ms=550, step_ms=100, timeout=5))
    assert reason == "announce-self: this function is not supported by the connection driver: virDomainQemuMonitorCommand"


def test_guest_announce_bad_arguments_are_one_line():
    reason = asyncio.run(guest_announce(object(), rounds=5, initial_ms=50, max_ms=550, step_ms=0, timeout=5))
    assert reason == "announce-self: invalid step 0: expected an integer 1..10000 ms"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"return":{},"id":"libvirt-412"}', None),
        ('{"id":"libvirt-9","error":{"class":"CommandNotFound","desc":"The command announce-self has not been found"}}',
         "announce-self: QEMU refused it: CommandNotFound: The command announce-self has not been found"),
        ('{"error":{"class":"GenericError","desc":"line one\\nline two"}}', "announce-self: QEMU refused it: GenericError: line one line two"),
        ("not json\nat all", "announce-self: QEMU's reply is not QMP: 'not json\\nat all'"),
        ('{"id":"x"}', "announce-self: QEMU's reply has neither return nor error: '{\"id\":\"x\"}'"),
    ],
)
def test_guest_announce_reads_the_qmp_reply(monkeypatch, reply, expected, libvirt_module):
    import libvirt_qemu

    sent = []
    monkeypatch.setattr(libvirt_qemu, "qemuMonitorCommand", lambda dom, cmd, flags: sent.append((dom, cmd, flags)) or reply)
    dom = object()
    assert asyncio.run(guest_announce(dom, rounds=3, initial_ms=10, max_ms=200, step_ms=20, timeout=5)) == expected
    assert sent == [(dom, '{"execute":"announce-self","arguments":{"initial":10,"max":200,"rounds":3,"step":20}}', 0)]


def test_guest_announce_gives_up_a_hung_monitor(monkeypatch, libvirt_module):
    import libvirt_qemu

    release = threading.Event()
    monkeypatch.setattr(libvirt_qemu, "qemuMonitorCommand", lambda dom, cmd, flags: release.wait(30) and "{}")
    try:
        # The monitor call stays blocked until after the answer (waited for, it would return
        # nothing usable after 30 s): this reason proves it was given up; how fast is in bench_resolve.
        reason = asyncio.run(guest_announce(object(), rounds=5, initial_ms=50, max_ms=550, step_ms=100, timeout=0.2))
    finally:
        release.set()
    assert reason == "announce-self: no answer within 0.2 s: given up (the call may still be blocked in libvirt)"


# --- nwfilter parameters (operator-vouched) ----------------------------------------------------

NWFILTER_XML = """<domain type='kvm'><name>web</name><devices>
  <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/>
    <filterref filter='clean-traffic'>
      <parameter name='IP' value='10.0.0.5'/><parameter name='IP' value='10.0.0.6'/>
      <parameter name='IPV6' value='2001:DB8::5'/><parameter name='CTRL_IP_LEARNING' value='none'/>
      <parameter name='IP' value='224.0.0.1'/>
    </filterref></interface>
  <interface type='bridge'><mac address='52:54:00:12:34:57'/><source bridge='br0'/></interface>
  <interface type='bridge'><source bridge='br0'/><filterref filter='clean-traffic'><parameter name='IP' value='10.0.0.9'/></filterref></interface>
</devices></domain>"""


def test_nwfilter_ip_parameters_are_the_operators_addresses():
    found, reasons = module.nwfilter_addresses(parse_domain(NWFILTER_XML))
    assert found == {"52:54:00:12:34:56": ["10.0.0.5", "10.0.0.6", "2001:db8::5"]}
    assert reasons == [
        "nwfilter: interface 52:54:00:12:34:56: parameter 'IP': IP address '224.0.0.1' is a multicast address: only a unicast address can be announced: skipped",
        "nwfilter: <filterref> of an interface skipped: no <mac address=...>",
    ]


def test_nwfilter_is_a_default_source_and_resolves_onto_targets():
    from rarp_announce.config import Config
    from rarp_announce.resolve.interfaces import resolve_xml

    resolution = resolve_xml(NWFILTER_XML, Config())
    assert [(t.mac, [a.record() for a in t.addresses]) for t in resolution.targets] == [
        ("52:54:00:12:34:56", [{"ip": "10.0.0.5", "source": "nwfilter"}, {"ip": "10.0.0.6", "source": "nwfilter"},
                               {"ip": "2001:db8::5", "source": "nwfilter"}]),
        ("52:54:00:12:34:57", []),
    ]
    assert resolve_xml(NWFILTER_XML, Config(addresses=AddressesConfig(sources=("metadata",)))).targets[0].addresses == ()


def test_guest_sources_given_to_resolve_xml_unvetted_are_never_attached():
    from rarp_announce.config import Config
    from rarp_announce.resolve.interfaces import resolve_xml

    config = Config(addresses=AddressesConfig(sources=("agent", "arp", "lease")))
    found = {"52:54:00:12:34:57": [A("192.0.2.1", "agent"), A("192.0.2.2", "arp"), A("192.0.2.3", "lease")]}
    resolution = resolve_xml(NWFILTER_XML, config, found_addresses=found)
    assert resolution.targets[1].addresses == (A("192.0.2.3", "lease"),)
