"""MAC address parsing: the spellings operators and libvirt use, refusing what must never be announced."""

from __future__ import annotations

import re

from rarp_announce.errors import InputError
from rarp_announce.names import shown

_SEPARATED = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_CISCO = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")
_BARE = re.compile(r"^[0-9a-f]{12}$")

_FORMS = "52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456"


def parse_mac(text: str) -> bytes:
    """Return the six octets of a unicast MAC, or raise InputError saying what is wrong."""
    spelled = text.strip().lower()
    if _SEPARATED.match(spelled) or _CISCO.match(spelled) or _BARE.match(spelled):
        octets = bytes.fromhex(re.sub(r"[:.\-]", "", spelled))
        text = text.strip()  # a MAC's length now: blanks around it are not echoed
    else:
        raise InputError(f"invalid MAC {shown(text)!r}: expected six octets as {_FORMS}")
    if octets == b"\x00" * 6:
        raise InputError(f"MAC {text!r} is all zeros: it is never a vNIC's address")
    if octets == b"\xff" * 6:
        raise InputError(f"MAC {text!r} is the broadcast address: only a unicast MAC can be announced")
    if octets[0] & 1:
        raise InputError(
            f"MAC {text!r} is a multicast address (lowest bit of the first octet set): "
            "only a unicast MAC can be announced"
        )
    return octets


def format_mac(octets: bytes) -> str:
    """Lower-case, colon-separated: the one spelling used in output, logs and JSON."""
    return ":".join(f"{b:02x}" for b in octets)


def normalize_mac(text: str) -> str:
    return format_mac(parse_mac(text))
