"""libvirt connection helpers: open a URI, find a domain and its live XML, a network's bridge.

libvirt is imported inside each function: `rarp-announce --help` and the hook never pay for it,
and the hook must never call libvirt at all (libvirt waits for the hook: deadlock).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.names import canonical_uuid, one_line

if TYPE_CHECKING:  # pragma: no cover
    import libvirt

_STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down", 5: "shut off", 6: "crashed", 7: "suspended by guest power management"}


def _quiet_libvirt() -> Any:
    import libvirt

    # libvirt's default error handler prints every error on stderr besides raising it;
    # the exception already carries the message, so printing it again only clutters output.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def open_connection(uri: str, *, readonly: bool = False) -> "libvirt.virConnect":
    """A connection to `uri`, or AnnounceError in one line saying why not."""
    libvirt = _quiet_libvirt()
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise AnnounceError(f"cannot connect to libvirt at {uri!r}: {error_message(exc)}") from None
    if conn is None:  # older bindings returned None instead of raising
        raise AnnounceError(f"cannot connect to libvirt at {uri!r}")
    return conn


def network_bridge_lookup(conn: "libvirt.virConnect") -> Callable[[str], str | None]:
    """A look-up of a libvirt network's bridge name (None when it has none or does not exist)."""
    libvirt = _quiet_libvirt()

    @functools.lru_cache(maxsize=256)
    def lookup(network: str) -> str | None:
        try:
            return conn.networkLookupByName(network).bridgeName() or None
        except libvirt.libvirtError:
            # A macvtap or hostdev network has no bridge; a missing network has none either.
            return None

    return lookup


def lookup_domain(conn: "libvirt.virConnect", name_or_uuid: str) -> "libvirt.virDomain":
    """The domain by name, UUID or numeric id; InputError when there is none."""
    libvirt = _quiet_libvirt()
    attempts: list[Callable[[], Any]] = []
    if canonical_uuid(name_or_uuid) is not None:
        attempts.append(lambda: conn.lookupByUUIDString(name_or_uuid))
    attempts.append(lambda: conn.lookupByName(name_or_uuid))
    if name_or_uuid.isascii() and name_or_uuid.isdigit() and len(name_or_uuid) < 10:
        attempts.append(lambda: conn.lookupByID(int(name_or_uuid)))
    for attempt in attempts:
        try:
            return attempt()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise AnnounceError(f"cannot look up domain {name_or_uuid!r}: {error_message(exc)}") from None
    raise InputError(
        f"no domain {name_or_uuid!r} at {_uri(conn)}: check the name with virsh -c {_uri(conn)} list --all"
    )


def running_domain_xml(conn: "libvirt.virConnect", name_or_uuid: str) -> tuple["libvirt.virDomain", str]:
    """A running domain and its live XML; InputError when it is missing or not running."""
    libvirt = _quiet_libvirt()
    domain = lookup_domain(conn, name_or_uuid)
    try:
        state, _reason = domain.state()
        active = domain.isActive()
        xml = domain.XMLDesc(0) if active else ""
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise InputError(f"domain {name_or_uuid!r} disappeared while being read") from None
        raise AnnounceError(f"cannot read domain {name_or_uuid!r}: {error_message(exc)}") from None
    if not active:
        raise InputError(
            f"domain {name_or_uuid!r} is not running ({_STATES.get(state, f'state {state}')}): "
            "only a running domain has live interfaces to announce"
        )
    return domain, xml


def _uri(conn: "libvirt.virConnect") -> str:
    try:
        return conn.getURI()
    except Exception:  # noqa: BLE001 - only used to word a message
        return "this libvirt"


def error_message(exc: Exception) -> str:
    """A libvirt error as one line."""
    getter = getattr(exc, "get_error_message", None)
    return one_line((getter() if getter else None) or str(exc))
