"""IP address parsing: the unicast addresses a guest can own are accepted in canonical form,
everything else is refused (or, for libvirt's addresses, skipped) with a one-line reason."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rarp_announce.errors import InputError
from rarp_announce.ipaddr import ip_octets, ip_problem, parse_ip


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("10.0.0.1", "10.0.0.1"),
        ("  172.16.5.4\n", "172.16.5.4"),
        ("169.254.1.1", "169.254.1.1"),  # IPv4 link-local (RFC 3927): a guest can own one
        ("100.64.0.1", "100.64.0.1"),
        ("1.1.1.1", "1.1.1.1"),
        ("10.0.0.255", "10.0.0.255"),  # a subnet broadcast only with a /24 we are not told about
        ("240.0.0.1", "240.0.0.1"),
        ("2001:db8::10", "2001:db8::10"),
        ("2001:DB8:0:0:0:0:0:10", "2001:db8::10"),
        ("2001:0db8:0000:0000:0000:0000:0000:0010", "2001:db8::10"),
        ("fe80::5054:ff:fe12:3456", "fe80::5054:ff:fe12:3456"),  # link-local: allowed
        ("FE80::1", "fe80::1"),
        ("fd00:1::2", "fd00:1::2"),
        ("::ffff:0:c000:20a", "::ffff:0:c000:20a"),  # IPv4-translated (RFC 2765), not IPv4-mapped
        ("64:ff9b::192.0.2.10", "64:ff9b::c000:20a"),
        ("\t2001:db8::1 ", "2001:db8::1"),
    ],
)
def test_accepted_forms_come_back_canonical(text: str, canonical: str) -> None:
    assert parse_ip(text) == canonical
    assert ip_problem(text) is None
    assert ip_octets(text) == ipaddress.ip_address(canonical).packed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid IP address '': expected one IPv4 address like 192.0.2.10 or one IPv6 address like 2001:db8::10"),
        ("banana", "invalid IP address 'banana': expected one IPv4 address"),
        ("10.0.0", "invalid IP address '10.0.0': expected"),
        ("10.0.0.256", "invalid IP address '10.0.0.256': expected"),
        ("010.0.0.1", "invalid IP address '010.0.0.1': expected"),  # leading zeros: octal or not?
        ("2001:db8:::1", "invalid IP address '2001:db8:::1': expected"),
        ("2001:db8::g", "invalid IP address '2001:db8::g': expected"),
        ("52:54:00:12:34:56", "invalid IP address '52:54:00:12:34:56': expected"),
        ("10.0.0.1/24", "IP address '10.0.0.1/24' is a prefix: expected one IPv4 address like 192.0.2.10 or one IPv6 address like 2001:db8::10, without a /length"),
        ("10.0.0.1/32", "IP address '10.0.0.1/32' is a prefix"),
        ("2001:db8::/64", "IP address '2001:db8::/64' is a prefix"),
        ("10.0.0.1-10.0.0.9", "IP address '10.0.0.1-10.0.0.9' looks like a range or a list: expected one IPv4 address"),
        ("10.0.0.1,10.0.0.2", "IP address '10.0.0.1,10.0.0.2' looks like a range or a list"),
        ("10.0.0.1 10.0.0.2", "IP address '10.0.0.1 10.0.0.2' looks like a range or a list"),
        ("fe80::1%eth0", "IP address 'fe80::1%eth0' has a zone index (%...): give the address without it"),
        ("127.0.0.1", "IP address '127.0.0.1' is a loopback address: it never leaves its host"),
        ("127.1.2.3", "IP address '127.1.2.3' is a loopback address"),
        ("::1", "IP address '::1' is a loopback address"),
        ("224.0.0.1", "IP address '224.0.0.1' is a multicast address: only a unicast address can be announced"),
        ("239.255.255.250", "IP address '239.255.255.250' is a multicast address"),
        ("ff02::1", "IP address 'ff02::1' is a multicast address"),
        ("ff02::1:ff12:3456", "IP address 'ff02::1:ff12:3456' is a multicast address"),
        ("0.0.0.0", "IP address '0.0.0.0' is the unspecified address: no host owns it"),
        ("::", "IP address '::' is the unspecified address: no host owns it"),
        ("0:0:0:0:0:0:0:0", "IP address '0:0:0:0:0:0:0:0' is the unspecified address"),
        ("0.1.2.3", "IP address '0.1.2.3' is in 0.0.0.0/8 (\"this network\"): no host owns it"),
        ("255.255.255.255", "IP address '255.255.255.255' is the limited broadcast address: only a unicast address can be announced"),
        ("::ffff:192.0.2.10", "IP address '::ffff:192.0.2.10' is IPv4-mapped IPv6: give the IPv4 address 192.0.2.10 instead"),
        ("::FFFF:c000:20a", "IP address '::FFFF:c000:20a' is IPv4-mapped IPv6: give the IPv4 address 192.0.2.10 instead"),
    ],
)
def test_refusals_say_what_is_wrong_and_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_ip(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2
    assert ip_problem(text) == str(caught.value)
    with pytest.raises(InputError):
        ip_octets(text)


def test_long_bogus_input_is_echoed_short() -> None:
    text = "x" * 5000
    message = ip_problem(text)
    assert message is not None
    assert message.startswith("invalid IP address '" + "x" * 37 + "...'")
    assert len(message) < 150
    long_prefix = "2001:db8:1234:5678:9abc:def0:1234:5678/128-and-some-more"
    assert "..." in str(ip_problem(long_prefix))
    assert long_prefix not in str(ip_problem(long_prefix))


def test_control_characters_stay_on_one_line() -> None:
    message = ip_problem("10.0.0.1\n; rm -rf /")
    assert message is not None and "\n" not in message


@given(st.ip_addresses())
def test_any_address_is_either_canonical_or_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    text = address.exploded.upper()
    problem = ip_problem(text)
    if problem is None:
        assert parse_ip(text) == str(address)
        assert not (address.is_loopback or address.is_multicast or address.is_unspecified)
    else:
        with pytest.raises(InputError):
            parse_ip(text)
