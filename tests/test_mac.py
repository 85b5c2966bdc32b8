"""MAC parsing: every spelling operators and libvirt use, in any case; refusals say why."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rarp_announce.errors import InputError
from rarp_announce.mac import format_mac, normalize_mac, parse_mac

OCTETS = bytes.fromhex("5254001234ab")


@pytest.mark.parametrize(
    "text",
    [
        "52:54:00:12:34:ab",
        "52:54:00:12:34:AB",
        "52-54-00-12-34-ab",
        "52-54-00-12-34-AB",
        "5254.0012.34ab",
        "5254.0012.34AB",
        "5254001234ab",
        "5254001234AB",
        "52:54:00:12:34:Ab",
        "  52:54:00:12:34:ab\n",
    ],
)
def test_every_spelling_and_case_is_accepted(text: str) -> None:
    assert parse_mac(text) == OCTETS
    assert normalize_mac(text) == "52:54:00:12:34:ab"


@given(st.binary(min_size=6, max_size=6).filter(lambda b: not b[0] & 1 and b != bytes(6)))
def test_round_trip_through_every_spelling(octets: bytes) -> None:
    hexed = octets.hex()
    spellings = [
        format_mac(octets),
        "-".join(hexed[i : i + 2] for i in range(0, 12, 2)).upper(),
        ".".join(hexed[i : i + 4] for i in range(0, 12, 4)),
        hexed.upper(),
    ]
    for text in spellings:
        assert parse_mac(text) == octets


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("01:00:5e:00:00:01", "is a multicast address (lowest bit of the first octet set): only a unicast MAC can be announced"),
        ("33:33:00:00:00:01", "is a multicast address"),
        ("5355.0012.3456", "is a multicast address"),
        ("ff:ff:ff:ff:ff:ff", "is the broadcast address: only a unicast MAC can be announced"),
        ("FFFF.FFFF.FFFF", "is the broadcast address"),
        ("00:00:00:00:00:00", "is all zeros: it is never a vNIC's address"),
        ("000000000000", "is all zeros"),
    ],
)
def test_never_announced_addresses_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_mac(text)
    assert str(caught.value).startswith(f"MAC {text!r} {reason}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00-12:34:56",  # mixed separators
        "52:54:0:12:34:56",
        "5254.0012.345",
        "52540012345g",
        "52 54 00 12 34 56",
        "525.400.123.456",
        "0x525400123456",
        "52:54:00:12:34:5６",  # a full-width digit
    ],
)
def test_garbage_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_mac(text)
    message = str(caught.value)
    assert message == (
        f"invalid MAC {text!r}: expected six octets as "
        "52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456"
    )


def test_format_is_lower_case_colon_separated() -> None:
    assert format_mac(bytes.fromhex("AABBCCDDEEFF")) == "aa:bb:cc:dd:ee:ff"
