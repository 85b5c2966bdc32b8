"""QEMU's self-announce frame (net/announce.c), byte for byte, optionally 802.1Q-tagged.

libvirt's nwfilter `qemu-announce-self-rarp` and OVN's `activation-strategy=rarp` match this
exact shape, so no byte may differ from what QEMU sends.
"""

from __future__ import annotations

import struct

from rarp_announce.errors import InputError

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


def check_vlan(vlan: int | None, priority: int = 0) -> None:
    if vlan is not None and not 1 <= vlan <= 4094:
        raise InputError(f"invalid VLAN id {vlan}: expected 1..4094 (0 and 4095 are reserved)")
    if not 0 <= priority <= 7:
        raise InputError(f"invalid priority {priority}: expected an 802.1p PCP of 0..7")
    if priority and vlan is None:
        raise InputError("a priority needs a VLAN: the PCP lives in the 802.1Q tag")


def rarp_frame(mac: bytes, vlan: int | None = None, priority: int = 0) -> bytes:
    """The 60-byte RARP announce for `mac`, or the 64-byte tagged one when `vlan` is given."""
    if len(mac) != 6:
        raise InputError(f"a MAC has 6 octets, got {len(mac)}")
    check_vlan(vlan, priority)
    body = _RARP_BODY.pack(
        ARP_HRD_ETHER, ETH_P_IP, 6, 4, RARP_OP_REQUEST_REVERSE, mac, _ZERO_IP, mac, _ZERO_IP
    )
    if vlan is None:
        header = BROADCAST + mac + struct.pack("!H", ETH_P_RARP)
    else:
        tci = (priority << 13) | vlan
        header = BROADCAST + mac + struct.pack("!HHH", ETH_P_8021Q, tci, ETH_P_RARP)
    return header + body + _PADDING


def frame_vlan(frame: bytes) -> int | None:
    """The VLAN id of a frame built here (None when untagged)."""
    if frame[12:14] == b"\x81\x00":
        return struct.unpack_from("!H", frame, 14)[0] & 0x0FFF
    return None
