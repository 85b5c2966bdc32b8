"""Frames byte by byte: against QEMU's frame written out by hand and against scapy as an independent builder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding

from rarp_announce.errors import InputError
from rarp_announce.frames import FRAME_LEN, TAGGED_FRAME_LEN, check_vlan, frame_vlan, rarp_frame
from rarp_announce.mac import format_mac
from tests.announce._scapy import scapy_ether

MAC = bytes.fromhex("525400123456")

# QEMU net/announce.c, announce_self_create(): broadcast, ETH_P_RARP, ARPOP_RREQUEST, the MAC as
# sender and target hardware address, zero IPs, padded to 60 bytes.
QEMU_HEX = (
    "ffffffffffff 525400123456 8035 0001 0800 06 04 0003 525400123456 00000000 525400123456 00000000"
)


def scapy_frame(mac: bytes, vlan: int | None = None, priority: int = 0) -> bytes:
    """QEMU's frame as scapy builds it from the protocol fields, padded like QEMU (no FCS)."""
    text = format_mac(mac)
    arp = ARP(hwtype=1, ptype=0x0800, hwlen=6, plen=4, op=3, hwsrc=text, psrc="0.0.0.0", hwdst=text, pdst="0.0.0.0")
    return scapy_ether("ff:ff:ff:ff:ff:ff", text, 0x8035, arp, vlan, priority)


def test_untagged_frame_is_the_reference_hex() -> None:
    expected = bytes.fromhex(QEMU_HEX.replace(" ", "")) + bytes(18)
    frame = rarp_frame(MAC)
    assert len(frame) == FRAME_LEN == 60
    assert frame == expected
    assert frame.hex() == expected.hex()


def test_tagged_frame_is_the_reference_with_a_tag_after_the_source() -> None:
    untagged = rarp_frame(MAC)
    frame = rarp_frame(MAC, vlan=100, priority=5)
    assert len(frame) == TAGGED_FRAME_LEN == 64
    # TPID 0x8100, TCI = 5<<13 | 100 = 0xa064, then the untagged frame from the ethertype on.
    assert frame == untagged[:12] + bytes.fromhex("8100a064") + untagged[12:]


def test_untagged_matches_scapy() -> None:
    assert rarp_frame(MAC) == scapy_frame(MAC)


@pytest.mark.parametrize("vlan", [1, 2, 100, 1000, 4094])
@pytest.mark.parametrize("priority", range(8))
def test_tagged_matches_scapy(vlan: int, priority: int) -> None:
    frame = rarp_frame(MAC, vlan, priority)
    assert frame == scapy_frame(MAC, vlan, priority)
    assert frame_vlan(frame) == vlan


@settings(max_examples=150, deadline=None)
@given(
    octets=st.binary(min_size=6, max_size=6),
    vlan=st.one_of(st.none(), st.integers(1, 4094)),
    priority=st.integers(0, 7),
)
def test_any_mac_and_tag_matches_scapy(octets: bytes, vlan: int | None, priority: int) -> None:
    if vlan is None:
        priority = 0
    frame = rarp_frame(octets, vlan, priority)
    assert frame == scapy_frame(octets, vlan, priority)
    assert len(frame) == (FRAME_LEN if vlan is None else TAGGED_FRAME_LEN)


def test_scapy_decodes_our_frame_field_by_field() -> None:
    from scapy.packet import bind_layers

    bind_layers(Ether, ARP, type=0x8035)
    bind_layers(Dot1Q, ARP, type=0x8035)
    packet = Ether(rarp_frame(MAC, vlan=4094, priority=7))
    assert packet.dst == "ff:ff:ff:ff:ff:ff" and packet.src == "52:54:00:12:34:56"
    assert packet.type == 0x8100
    assert (packet[Dot1Q].vlan, packet[Dot1Q].prio, packet[Dot1Q].dei, packet[Dot1Q].type) == (4094, 7, 0, 0x8035)
    arp = packet[ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 3)
    assert (arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == ("52:54:00:12:34:56", "0.0.0.0", "52:54:00:12:34:56", "0.0.0.0")
    assert bytes(packet[Padding]) == bytes(18)


def test_untagged_frame_has_no_vlan() -> None:
    assert frame_vlan(rarp_frame(MAC)) is None


@pytest.mark.parametrize(
    ("vlan", "priority", "message"),
    [
        (0, 0, "invalid VLAN id 0: expected 1..4094 (0 and 4095 are reserved)"),
        (4095, 0, "invalid VLAN id 4095: expected 1..4094 (0 and 4095 are reserved)"),
        (-1, 0, "invalid VLAN id -1: expected 1..4094"),
        (5000, 0, "invalid VLAN id 5000: expected 1..4094"),
        (10, 8, "invalid priority 8: expected an 802.1p PCP of 0..7"),
        (10, -1, "invalid priority -1: expected an 802.1p PCP of 0..7"),
        (None, 3, "a priority needs a VLAN: the PCP lives in the 802.1Q tag"),
    ],
)
def test_bad_tag_is_refused_with_its_reason(vlan: int | None, priority: int, message: str) -> None:
    with pytest.raises(InputError) as caught:
        rarp_frame(MAC, vlan, priority)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError):
        check_vlan(vlan, priority)


@pytest.mark.parametrize("octets", [b"", b"\x52\x54\x00\x12\x34", MAC + b"\x00"])
def test_mac_of_wrong_length_is_refused(octets: bytes) -> None:
    with pytest.raises(InputError, match=f"a MAC has 6 octets, got {len(octets)}"):
        rarp_frame(octets)
