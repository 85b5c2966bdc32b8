"""Checks of the names and identifiers operators and documents give us, shared by every stage."""

from __future__ import annotations

from rarp_announce.errors import InputError

_HEX = frozenset("0123456789abcdef")


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name() (net/core/dev.c): 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate from a non-UTF-8 argv
        return False
    return (
        0 < size <= 15
        and "/" not in name
        and ":" not in name
        and not any(c.isspace() for c in name)
        and name not in (".", "..")
    )


def check_ifname(name: str, what: str = "device") -> str:
    """`name` when it is a valid network device name, else InputError naming the rule."""
    if not valid_ifname(name):
        raise InputError(
            f"invalid {what} name {shown(name)!r}: expected 1..15 characters without '/', ':' or spaces"
        )
    return name


def canonical_uuid(text: str) -> str | None:
    """A domain UUID in libvirt's canonical form (lower case, dashed), or None.

    libvirt also accepts the 32 digits without dashes (virUUIDParse, src/util/viruuid.c).
    """
    digits = text.strip().lower().replace("-", "")
    if len(digits) != 32 or not set(digits) <= _HEX:
        return None
    if "-" in text and [len(p) for p in text.strip().split("-")] != [8, 4, 4, 4, 12]:
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def check_uuid(text: str, what: str = "--uuid") -> str:
    """The canonical UUID, or InputError in one line."""
    uuid = canonical_uuid(text) if isinstance(text, str) else None
    if uuid is None:
        raise InputError(f"invalid {what} {shown(str(text))!r}: expected a UUID such as 4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    return uuid


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(text.split())


def shown(text: str, limit: int = 40) -> str:
    """Text safe to echo in a one-line message: whitespace folded, long input cut."""
    text = one_line(str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(text: str, limit: int = 40) -> str:
    """`text` quoted for a one-line message, long input cut. repr() escapes its newlines and
    control characters, so the text is echoed as given rather than folded as by shown()."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)
