"""scapy as an independent builder of whole frames, to hold frames.py's bytes against."""

from __future__ import annotations

from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Padding

ETHERNET_MINIMUM = 60  # without the FCS, which neither QEMU nor a packet socket hands over


def scapy_ether(dst: str, src: str, ethertype: int, payload: Packet, vlan: int | None = None, priority: int = 0) -> bytes:
    """`payload` in an Ethernet frame (802.1Q-tagged when `vlan` is given), zero-padded to
    Ethernet's minimum, which a tag raises by its 4 bytes."""
    if vlan is None:
        packet = Ether(dst=dst, src=src, type=ethertype) / payload
        minimum = ETHERNET_MINIMUM
    else:
        packet = Ether(dst=dst, src=src, type=0x8100) / Dot1Q(prio=priority, dei=0, vlan=vlan, type=ethertype) / payload
        minimum = ETHERNET_MINIMUM + 4
    short = minimum - len(bytes(packet))
    return bytes(packet / Padding(load=bytes(short)) if short > 0 else packet)
