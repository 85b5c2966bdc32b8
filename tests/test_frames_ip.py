"""GARP and unsolicited NA byte by byte: against RFC 5227 / RFC 4861 written out by hand, against
scapy as an independent builder, and decoded back by scapy (which recomputes the checksum)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, ICMPv6ND_NS
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding

from rarp_announce.frames import (
    FRAME_LEN,
    NA_FRAME_LEN,
    TAGGED_FRAME_LEN,
    TAGGED_NA_FRAME_LEN,
    frame_kind,
    frame_vlan,
    garp_frame,
    icmpv6_checksum,
    na_frame,
    rarp_frame,
)
from rarp_announce.errors import InputError
from rarp_announce.mac import format_mac
from tests.announce._scapy import scapy_ether

MAC = bytes.fromhex("525400123456")
V4 = ["192.0.2.10", "10.0.0.1", "169.254.7.7", "100.64.0.1", "203.0.113.255"]
V6 = ["2001:db8::10", "fe80::5054:ff:fe12:3456", "fe80::1", "fd00:1:2:3::4", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"]
TAGS = [(None, 0), (1, 0), (100, 5), (4094, 7)]


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def scapy_garp(mac: bytes, ip: str, vlan: int | None = None, priority: int = 0) -> bytes:
    """RFC 5227 2.3 announcement as scapy builds it from the protocol fields, zero-padded (no FCS)."""
    text = format_mac(mac)
    arp = ARP(hwtype=1, ptype=0x0800, hwlen=6, plen=4, op=1, hwsrc=text, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip)
    return scapy_ether("ff:ff:ff:ff:ff:ff", text, 0x0806, arp, vlan, priority)


def scapy_na(mac: bytes, ip: str, vlan: int | None = None, priority: int = 0) -> bytes:
    """RFC 4861 7.2.6 unsolicited NA as scapy builds it (scapy computes the checksum itself)."""
    text = format_mac(mac)
    body = (
        IPv6(tc=0, fl=0, src=ip, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(R=0, S=0, O=1, tgt=ip)
        / ICMPv6NDOptDstLLAddr(lladdr=text)
    )
    return scapy_ether("33:33:00:00:00:01", text, 0x86DD, body, vlan, priority)


# --- GARP -------------------------------------------------------------------------------------


def test_garp_is_reference_section_10_written_out() -> None:
    # dst broadcast, src, 0806, htype 1, ptype 0800, 6, 4, op 1, sender MAC, sender IP, zero MAC, target IP
    expected = bytes.fromhex(
        "ffffffffffff 525400123456 0806 0001 0800 06 04 0001 525400123456 c000020a 000000000000 c000020a".replace(" ", "")
    ) + bytes(18)
    frame = garp_frame(MAC, packed("192.0.2.10"))
    assert len(frame) == FRAME_LEN == 60
    assert frame == expected


def test_tagged_garp_has_the_tag_after_the_source_mac() -> None:
    untagged = garp_frame(MAC, packed("192.0.2.10"))
    frame = garp_frame(MAC, packed("192.0.2.10"), vlan=100, priority=5)
    assert len(frame) == TAGGED_FRAME_LEN == 64
    assert frame == untagged[:12] + bytes.fromhex("8100a064") + untagged[12:]
    assert frame_vlan(frame) == 100


@pytest.mark.parametrize("ip", V4)
@pytest.mark.parametrize(("vlan", "priority"), TAGS)
def test_garp_matches_scapy(ip: str, vlan: int | None, priority: int) -> None:
    assert garp_frame(MAC, packed(ip), vlan, priority) == scapy_garp(MAC, ip, vlan, priority)


@pytest.mark.parametrize(("vlan", "priority"), TAGS)
def test_scapy_decodes_our_garp_field_by_field(vlan: int | None, priority: int) -> None:
    packet = Ether(garp_frame(MAC, packed("10.1.2.3"), vlan, priority))
    assert (packet.dst, packet.src) == ("ff:ff:ff:ff:ff:ff", "52:54:00:12:34:56")
    if vlan is None:
        assert packet.type == 0x0806 and Dot1Q not in packet
    else:
        assert packet.type == 0x8100
        assert (packet[Dot1Q].vlan, packet[Dot1Q].prio, packet[Dot1Q].dei, packet[Dot1Q].type) == (vlan, priority, 0, 0x0806)
    arp = packet[ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 1)
    assert (arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == ("52:54:00:12:34:56", "10.1.2.3", "00:00:00:00:00:00", "10.1.2.3")
    assert bytes(packet[Padding]) == bytes(18)


# --- NA ---------------------------------------------------------------------------------------


def test_na_is_reference_section_10_written_out() -> None:
    target = packed("2001:db8::10")
    frame = na_frame(MAC, target)
    assert len(frame) == NA_FRAME_LEN == 86
    ethernet = bytes.fromhex("333300000001 525400123456 86dd".replace(" ", ""))
    # version 6, tc 0, flow 0 | payload 32 | next header 58 | hop limit 255 | src | ff02::1
    ipv6 = bytes.fromhex("60000000 0020 3a ff".replace(" ", "")) + target + packed("ff02::1")
    checksum = frame[56:58]
    icmp = bytes.fromhex("88 00".replace(" ", "")) + checksum + bytes.fromhex("20000000") + target
    option = bytes.fromhex("02 01 525400123456".replace(" ", ""))
    assert frame == ethernet + ipv6 + icmp + option


def test_na_checksum_sums_to_all_ones_with_the_pseudo_header() -> None:
    # RFC 1071 4: summing the data with its checksum in place gives 0xffff, i.e. our helper
    # returns 0 over the message as sent.
    frame = na_frame(MAC, packed("fe80::1"))
    assert icmpv6_checksum(frame[22:38], frame[38:54], frame[54:]) == 0
    assert frame[56:58] != b"\x00\x00"


def test_tagged_na_has_the_tag_after_the_source_mac() -> None:
    untagged = na_frame(MAC, packed("2001:db8::10"))
    frame = na_frame(MAC, packed("2001:db8::10"), vlan=4094, priority=7)
    assert len(frame) == TAGGED_NA_FRAME_LEN == 90
    assert frame == untagged[:12] + bytes.fromhex("8100effe") + untagged[12:]
    assert frame_vlan(frame) == 4094


@pytest.mark.parametrize("ip", V6)
@pytest.mark.parametrize(("vlan", "priority"), TAGS)
def test_na_matches_scapy(ip: str, vlan: int | None, priority: int) -> None:
    assert na_frame(MAC, packed(ip), vlan, priority) == scapy_na(MAC, ip, vlan, priority)


@pytest.mark.parametrize("ip", V6)
@pytest.mark.parametrize(("vlan", "priority"), TAGS)
def test_scapy_decodes_our_na_and_agrees_on_the_checksum(ip: str, vlan: int | None, priority: int) -> None:
    frame = na_frame(MAC, packed(ip), vlan, priority)
    packet = Ether(frame)
    assert (packet.dst, packet.src) == ("33:33:00:00:00:01", "52:54:00:12:34:56")
    if vlan is not None:
        assert (packet[Dot1Q].vlan, packet[Dot1Q].prio, packet[Dot1Q].type) == (vlan, priority, 0x86DD)
    ipv6 = packet[IPv6]
    assert (ipv6.version, ipv6.tc, ipv6.fl, ipv6.plen, ipv6.nh, ipv6.hlim) == (6, 0, 0, 32, 58, 255)
    assert (ipv6.src, ipv6.dst) == (ip, "ff02::1")
    na = packet[ICMPv6ND_NA]
    assert (na.type, na.code, na.R, na.S, na.O, na.res, na.tgt) == (136, 0, 0, 0, 1, 0, ip)
    option = packet[ICMPv6NDOptDstLLAddr]
    assert (option.type, option.len, option.lladdr) == (2, 1, "52:54:00:12:34:56")
    assert not option.payload  # nothing after the option, no padding
    ours = na.cksum
    del packet[ICMPv6ND_NA].cksum  # scapy recomputes it on build
    assert Ether(bytes(packet))[ICMPv6ND_NA].cksum == ours


# --- both, any input --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    mac=st.binary(min_size=6, max_size=6),
    v4=st.ip_addresses(v=4),
    v6=st.ip_addresses(v=6),
    vlan=st.one_of(st.none(), st.integers(1, 4094)),
    priority=st.integers(0, 7),
)
def test_any_mac_address_and_tag_match_scapy(
    mac: bytes, v4: ipaddress.IPv4Address, v6: ipaddress.IPv6Address, vlan: int | None, priority: int
) -> None:
    if vlan is None:
        priority = 0
    garp = garp_frame(mac, v4.packed, vlan, priority)
    na = na_frame(mac, v6.packed, vlan, priority)
    assert garp == scapy_garp(mac, str(v4), vlan, priority)
    assert na == scapy_na(mac, str(v6), vlan, priority)
    assert len(garp) == (60 if vlan is None else 64)
    assert len(na) == (86 if vlan is None else 90)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [garp_frame, na_frame])
@pytest.mark.parametrize("octets", [b"", MAC[:5], MAC + b"\x00"])
def test_mac_of_wrong_length_is_refused(build, octets: bytes) -> None:  # noqa: ANN001
    ip = packed("192.0.2.1") if build is garp_frame else packed("2001:db8::1")
    with pytest.raises(InputError, match=f"^a MAC has 6 octets, got {len(octets)}$"):
        build(octets, ip)


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        (b"", "an IPv4 address has 4 octets, got 0"),
        (b"\x0a\x00\x00", "an IPv4 address has 4 octets, got 3"),
        (packed("2001:db8::1"), "an IPv4 address has 4 octets, got 16 (an IPv6 address is announced with na_frame)"),
        (b"10.0.0.1", "an IPv4 address has 4 octets, got 8"),
    ],
)
def test_garp_refuses_what_is_not_four_octets(ip: bytes, message: str) -> None:
    with pytest.raises(InputError) as caught:
        garp_frame(MAC, ip)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        (b"", "an IPv6 address has 16 octets, got 0"),
        (packed("192.0.2.1"), "an IPv6 address has 16 octets, got 4 (an IPv4 address is announced with garp_frame)"),
        (packed("2001:db8::1") + b"\x00", "an IPv6 address has 16 octets, got 17"),
    ],
)
def test_na_refuses_what_is_not_sixteen_octets(ip: bytes, message: str) -> None:
    with pytest.raises(InputError) as caught:
        na_frame(MAC, ip)
    assert str(caught.value) == message


@pytest.mark.parametrize("build", [garp_frame, na_frame])
@pytest.mark.parametrize(
    ("vlan", "priority", "message"),
    [
        (0, 0, "invalid VLAN id 0: expected 1..4094"),
        (4095, 0, "invalid VLAN id 4095: expected 1..4094"),
        (5000, 0, "invalid VLAN id 5000"),
        (10, 8, "invalid priority 8: expected an 802.1p PCP of 0..7"),
        (None, 3, "a priority needs a VLAN"),
    ],
)
def test_bad_tag_is_refused_as_for_rarp(build, vlan: int | None, priority: int, message: str) -> None:  # noqa: ANN001
    ip = packed("192.0.2.1") if build is garp_frame else packed("2001:db8::1")
    with pytest.raises(InputError, match=message):
        build(MAC, ip, vlan, priority)


# --- frame_kind -------------------------------------------------------------------------------


@pytest.mark.parametrize(("vlan", "priority"), TAGS)
def test_frame_kind_of_our_frames(vlan: int | None, priority: int) -> None:
    assert frame_kind(rarp_frame(MAC, vlan, priority)) == "rarp"
    assert frame_kind(garp_frame(MAC, packed("192.0.2.1"), vlan, priority)) == "garp"
    assert frame_kind(na_frame(MAC, packed("fe80::1"), vlan, priority)) == "na"


def test_frame_kind_by_protocol_alone() -> None:
    src = format_mac(MAC)
    # type given: sniff.decode binds ARP to 0x8035 too, which changes what scapy fills in after it.
    plain_arp = Ether(src=src, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / ARP(op=2, psrc="10.0.0.1", pdst="10.0.0.2")
    assert frame_kind(bytes(plain_arp)) == "garp"  # any ARP: sniff says why it is not an announcement
    ns = Ether(src=src, dst="33:33:ff:00:00:02") / IPv6(src="fe80::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2")
    assert frame_kind(bytes(ns)) is None
    udp6 = Ether(src=src, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1") / UDP(sport=136, dport=136)
    assert frame_kind(bytes(udp6)) is None
    assert frame_kind(bytes(Ether(src=src, dst="52:54:00:00:00:01") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP())) is None
    assert frame_kind(bytes(Ether(src=src, type=0x88B5) / Padding(load=bytes(46)))) is None
    assert frame_kind(b"") is None
    assert frame_kind(bytes(12)) is None
    assert frame_kind(na_frame(MAC, packed("fe80::1"))[:54]) is None  # no ICMPv6 byte at all


def test_builders_import_no_scapy() -> None:
    # scapy costs 0.4-2 s to import (`make bench`, bench_cli): the send path must never pull it in.
    code = (
        "import sys, rarp_announce.frames, rarp_announce.ipaddr, rarp_announce.sniff; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
