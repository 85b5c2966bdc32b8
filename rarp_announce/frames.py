"""QEMU's self-announce frame (net/announce.c), byte for byte, optionally 802.1Q-tagged.

libvirt's nwfilter `qemu-announce-self-rarp` and OVN's `activation-strategy=rarp` match this
exact shape, so no byte may differ from what QEMU sends.
"""

from __future__ import annotations

import struct

from rarp_announce.errors import InputError
from rarp_announce.model import FrameType

ETH_P_RARP = 0x8035
ETH_P_8021Q = 0x8100
ARP_HRD_ETHER = 0x0001
ETH_P_IP = 0x0800
RARP_OP_REQUEST_REVERSE = 3

FRAME_LEN = 60
TAGGED_FRAME_LEN = 64
BROADCAST = b"\xff" * 6

# hw type, proto type, hlen, plen, opcode, sender mac, sender ip, target mac, target ip
_RARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
_PADDING = bytes(FRAME_LEN - 14 - _RARP_BODY.size)
_ZERO_IP = bytes(4)


def _ethernet_header(dst: bytes, mac: bytes, ethertype: int, vlan: int | None, priority: int) -> bytes:
    if vlan is None:
        return dst + mac + struct.pack("!H", ethertype)
    return dst + mac + struct.pack("!HHH", ETH_P_8021Q, (priority << 13) | vlan, ethertype)


def _check_octets(what: str, value: bytes, size: int, hint: str = "") -> None:
    if len(value) != size:
        raise InputError(f"{what} has {size} octets, got {len(value)}{hint}")


def check_vlan(vlan: int | None, priority: int = 0) -> None:
    if vlan is not None and not 1 <= vlan <= 4094:
        raise InputError(f"invalid VLAN id {vlan}: expected 1..4094 (0 and 4095 are reserved)")
    if not 0 <= priority <= 7:
        raise InputError(f"invalid priority {priority}: expected an 802.1p PCP of 0..7")
    if priority and vlan is None:
        raise InputError("a priority needs a VLAN: the PCP lives in the 802.1Q tag")


def rarp_frame(mac: bytes, vlan: int | None = None, priority: int = 0) -> bytes:
    """The 60-byte RARP announce for `mac`, or the 64-byte tagged one when `vlan` is given."""
    _check_octets("a MAC", mac, 6)
    check_vlan(vlan, priority)
    body = _RARP_BODY.pack(
        ARP_HRD_ETHER, ETH_P_IP, 6, 4, RARP_OP_REQUEST_REVERSE, mac, _ZERO_IP, mac, _ZERO_IP
    )
    return _ethernet_header(BROADCAST, mac, ETH_P_RARP, vlan, priority) + body + _PADDING


def frame_vlan(frame: bytes) -> int | None:
    """The VLAN id of a frame built here (None when untagged)."""
    if frame[12:14] == b"\x81\x00":
        return struct.unpack_from("!H", frame, 14)[0] & 0x0FFF
    return None


# --- IP announcements -------------------------------------------------------------------------
# RARP carries no IP, so fabrics that learn MAC-IP bindings (EVPN ARP suppression, routers,
# OTV) only move a guest's IP when they see it announced with a gratuitous ARP (IPv4) or an
# unsolicited neighbour advertisement (IPv6), as the guest itself would send after moving.
# Built with struct like the RARP above: importing scapy alone costs 0.4-2 s.

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARP_OP_REQUEST = 1
IPPROTO_ICMPV6 = 58
ICMPV6_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LL_ADDR = 2
NA_FLAG_OVERRIDE = 0x20000000
NA_FRAME_LEN = 86
TAGGED_NA_FRAME_LEN = 90

# RFC 4291 2.7.1 / RFC 2464 7: all-nodes ff02::1 maps to Ethernet 33:33 + its low 32 bits.
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")

# RFC 826 ARP body: hw type, proto type, hlen, plen, opcode, sender mac, sender ip, target mac, target ip
_ARP_BODY = _RARP_BODY
_ZERO_MAC = bytes(6)
# RFC 8200 3: version/traffic class/flow label, payload length, next header, hop limit, src, dst
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
# RFC 4861 4.4 NA: type, code, checksum, R|S|O flags + reserved, target;
# then RFC 4861 4.6.1 option: type, length in units of 8 octets, link-layer address
_NA_MESSAGE = struct.Struct("!BBHI16sBB6s")
# RFC 8200 8.1 pseudo-header: source, destination, upper-layer length (32 bits), 3 zero octets, next header
_PSEUDO_HEADER = struct.Struct("!16s16sI3xB")
_IPV6_VERSION_WORD = 6 << 28  # traffic class 0 and flow label 0, as the kernel's own NA
# RFC 4861 7.1.2: a receiver drops an NA whose hop limit is not 255 (proof it was not routed).
_ND_HOP_LIMIT = 255


def garp_frame(mac: bytes, ipv4: bytes, vlan: int | None = None, priority: int = 0) -> bytes:
    """The RFC 5227 2.3 ARP announcement of `ipv4` at `mac`: 60 bytes, 64 with an 802.1Q tag.

    An announcement is a request (op 1) whose sender and target IP are both the address and
    whose target MAC is zero: every neighbour that already caches the IP updates it (RFC 826's
    "merge" step), and nobody answers, since the only owner of the target IP is the sender.
    """
    _check_octets("a MAC", mac, 6)
    _check_octets("an IPv4 address", ipv4, 4, " (an IPv6 address is announced with na_frame)" if len(ipv4) == 16 else "")
    check_vlan(vlan, priority)
    body = _ARP_BODY.pack(ARP_HRD_ETHER, ETH_P_IP, 6, 4, ARP_OP_REQUEST, mac, ipv4, _ZERO_MAC, ipv4)
    # Same 42 bytes as a RARP announce, so the same zero padding to Ethernet's 60-byte minimum.
    return _ethernet_header(BROADCAST, mac, ETH_P_ARP, vlan, priority) + body + _PADDING


def icmpv6_checksum(source: bytes, destination: bytes, message: bytes) -> int:
    """RFC 4443 2.3: the one's complement of the one's complement sum of the RFC 8200 8.1
    pseudo-header and the ICMPv6 message (its checksum field zero when computing)."""
    data = _PSEUDO_HEADER.pack(source, destination, len(message), IPPROTO_ICMPV6) + message
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def na_frame(mac: bytes, ipv6: bytes, vlan: int | None = None, priority: int = 0) -> bytes:
    """The RFC 4861 7.2.6 unsolicited neighbour advertisement of `ipv6` at `mac`: 86 bytes, 90 tagged.

    Sent to all-nodes with Override set (so caches replace the old MAC, RFC 4861 7.2.5) and
    Solicited clear (nobody asked); Router clear, as a guest's own NA for a host address would
    be. The target link-layer address option carries `mac`, which is what receivers record.
    """
    _check_octets("a MAC", mac, 6)
    _check_octets("an IPv6 address", ipv6, 16, " (an IPv4 address is announced with garp_frame)" if len(ipv6) == 4 else "")
    check_vlan(vlan, priority)
    unsummed = _NA_MESSAGE.pack(ICMPV6_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE, ipv6, ND_OPT_TARGET_LL_ADDR, 1, mac)
    checksum = icmpv6_checksum(ipv6, ALL_NODES, unsummed)
    message = _NA_MESSAGE.pack(ICMPV6_NEIGHBOR_ADVERT, 0, checksum, NA_FLAG_OVERRIDE, ipv6, ND_OPT_TARGET_LL_ADDR, 1, mac)
    # The source is the advertised address itself, as Linux's own unsolicited NA (ndisc_send_unsol_na).
    ip_header = _IPV6_HEADER.pack(_IPV6_VERSION_WORD, len(message), IPPROTO_ICMPV6, _ND_HOP_LIMIT, ipv6, ALL_NODES)
    # 86 bytes is above Ethernet's 60-byte minimum: no padding.
    return _ethernet_header(ALL_NODES_MAC, mac, ETH_P_IPV6, vlan, priority) + ip_header + message


FrameKind = FrameType


def frame_kind(frame: bytes) -> FrameKind | None:
    """Which announcement `frame` is by its protocol (past one 802.1Q tag), or None.

    By protocol only: every ARP frame is "garp" and every ICMPv6 NA is "na", whether or not it
    has the exact shape built here (telling those apart is the sniffer's job).
    """
    offset = 16 if frame[12:14] == b"\x81\x00" else 12
    if len(frame) < offset + 2:
        return None
    ethertype = int.from_bytes(frame[offset : offset + 2], "big")
    if ethertype == ETH_P_RARP:
        return "rarp"
    if ethertype == ETH_P_ARP:
        return "garp"
    ip = offset + 2
    # Only an NA right after the fixed header: the kernel's and ours carry no extension header.
    if (
        ethertype == ETH_P_IPV6
        and len(frame) >= ip + _IPV6_HEADER.size + 1
        and frame[ip] >> 4 == 6
        and frame[ip + 6] == IPPROTO_ICMPV6
        and frame[ip + _IPV6_HEADER.size] == ICMPV6_NEIGHBOR_ADVERT
    ):
        return "na"
    return None
