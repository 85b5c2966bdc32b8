"""The kernel's neighbour-learning switches (Documentation/networking/ip-sysctl.rst), end to
end: a Linux router learns `IP lladdr MAC` from exactly one garp_frame and one na_frame, sent
with a plain packet socket from a neighbouring netns.

The kernel is an independent receiver: it checks the ICMPv6 checksum and hop limit (RFC 4861
7.1.2) and the ARP fields, so a neighbour entry proves the frames are right on the wire.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

import pytest

from rarp_announce.frames import garp_frame, na_frame
from rarp_announce.lab.netns import send_raw, wait_until
from rarp_announce.lab.router import Router
from rarp_announce.mac import parse_mac
from tests.conftest import HOST_DEVICE, ROUTER_DEVICE

MAC = "52:54:00:ab:cd:ef"
GUEST_V4 = "192.0.2.10"
GUEST_V6 = "2001:db8:1::10"
GUEST_LL = "fe80::5054:ff:feab:cdef"
LEARN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Lab:
    router: Router
    guest: str

    def neighbours(self) -> dict[str, tuple[str, str]]:
        return self.router.neighbours()

    def learned(self, ip: str) -> bool:
        return self.router.learned(ip, MAC)

    def send(self, frame: bytes) -> None:
        send_raw(self.guest, HOST_DEVICE, frame)


@pytest.fixture
def lab(router: tuple[Router, str]) -> Lab:
    return Lab(*router)


def test_router_learns_ipv4_and_ipv6_from_one_garp_and_one_na(lab: Lab) -> None:
    assert GUEST_V4 not in lab.neighbours() and GUEST_V6 not in lab.neighbours()
    mac = parse_mac(MAC)
    lab.send(garp_frame(mac, ipaddress.ip_address(GUEST_V4).packed))
    lab.send(na_frame(mac, ipaddress.ip_address(GUEST_V6).packed))
    assert wait_until(lambda: lab.learned(GUEST_V4) and lab.learned(GUEST_V6), timeout=LEARN_TIMEOUT), lab.neighbours()
    table = lab.neighbours()
    # Learned from an announcement, never confirmed: STALE (until the router talks to it).
    assert table[GUEST_V4] == (MAC, "STALE")
    assert table[GUEST_V6] == (MAC, "STALE")
    shown = subprocess.run(["ip", "-n", lab.router.ns, "neigh", "show", "dev", ROUTER_DEVICE], capture_output=True, text=True).stdout
    assert f"{GUEST_V4} lladdr {MAC}" in shown
    assert f"{GUEST_V6} lladdr {MAC}" in shown


def test_router_learns_a_link_local_address(lab: Lab) -> None:
    lab.send(na_frame(parse_mac(MAC), ipaddress.ip_address(GUEST_LL).packed))
    assert wait_until(lambda: lab.learned(GUEST_LL), timeout=LEARN_TIMEOUT), lab.neighbours()


def test_router_drops_an_na_it_must_not_trust_and_keeps_ours(lab: Lab) -> None:
    mac = parse_mac(MAC)
    bad_checksum = bytearray(na_frame(mac, ipaddress.ip_address("2001:db8:1::66").packed))
    bad_checksum[57] ^= 0xFF
    routed = bytearray(na_frame(mac, ipaddress.ip_address("2001:db8:1::67").packed))
    routed[21] = 64  # hop limit: RFC 4861 7.1.2, an NA that may have crossed a router
    lab.send(bytes(bad_checksum))
    lab.send(bytes(routed))
    lab.send(na_frame(mac, ipaddress.ip_address(GUEST_V6).packed))
    # One veth queue, processed in order: once ours is learned, the two before it were handled.
    assert wait_until(lambda: lab.learned(GUEST_V6), timeout=LEARN_TIMEOUT), lab.neighbours()
    table = lab.neighbours()
    assert "2001:db8:1::66" not in table
    assert "2001:db8:1::67" not in table
