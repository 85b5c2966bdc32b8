"""IP address parsing: the unicast IPv4 and IPv6 addresses a guest can own, and nothing else.

A gratuitous ARP or unsolicited NA tells every neighbour "this IP is at this MAC": one for an
address no single host can own (loopback, multicast, broadcast, unspecified) would at best be
ignored and at worst poison caches, so such addresses are refused before any frame is built.
"""

from __future__ import annotations

import ipaddress

from rarp_announce.errors import InputError
from rarp_announce.names import quoted

_FORMS = "one IPv4 address like 192.0.2.10 or one IPv6 address like 2001:db8::10"

# RFC 1122 3.2.1.3 (a)/(b): 0.0.0.0/8 means "this host on this network", valid only as the
# source of a host that does not know its address yet; no host owns it.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def check_ip(text: str) -> tuple[str | None, str | None]:
    """(canonical text, None) for an address a guest can own, else (None, why not)."""
    spelled = text.strip()
    shown = quoted(text)
    if "/" in spelled:
        return None, f"IP address {shown} is a prefix: expected {_FORMS}, without a /length"
    if "%" in spelled:
        # A zone index (RFC 4007 11) names a link on *this* host; the frame carries none.
        return None, f"IP address {shown} has a zone index (%...): give the address without it"
    try:
        address = ipaddress.ip_address(spelled)
    except ValueError:
        if "-" in spelled or "," in spelled or " " in spelled:
            return None, f"IP address {shown} looks like a range or a list: expected {_FORMS}"
        return None, f"invalid IP address {shown}: expected {_FORMS}"
    canonical = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # RFC 4291 2.5.5.2: ::ffff:a.b.c.d is how a dual-stack socket shows an IPv4 peer;
        # on the wire that host is announced by ARP, not by NA.
        return None, (
            f"IP address {shown} is IPv4-mapped IPv6: give the IPv4 address {address.ipv4_mapped} instead"
        )
    if address.is_unspecified:
        return None, f"IP address {shown} is the unspecified address: no host owns it"
    if address.is_loopback:
        return None, f"IP address {shown} is a loopback address: it never leaves its host"
    if address.is_multicast:
        return None, f"IP address {shown} is a multicast address: only a unicast address can be announced"
    if isinstance(address, ipaddress.IPv4Address):
        if address == ipaddress.IPv4Address("255.255.255.255"):
            return None, (
                f"IP address {shown} is the limited broadcast address: only a unicast address can be announced"
            )
        if address in _THIS_NETWORK:
            return None, f"IP address {shown} is in 0.0.0.0/8 (\"this network\"): no host owns it"
    return canonical, None


def parse_ip(text: str) -> str:
    """The canonical text of a unicast IPv4 or IPv6 address a guest can own, or raise InputError."""
    canonical, problem = check_ip(text)
    if canonical is None:
        raise InputError(problem)
    return canonical


def ip_problem(text: str) -> str | None:
    """Why `text` is not an address a guest can own, or None when it is (for libvirt's addresses,
    which are skipped with a reason rather than refused)."""
    return check_ip(text)[1]


def ip_octets(text: str) -> bytes:
    """The 4 or 16 network-order octets of a valid address (what garp_frame / na_frame take)."""
    return ipaddress.ip_address(parse_ip(text)).packed
