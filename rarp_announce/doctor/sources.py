"""The address sources in use, and which of them the guest controls (address_sources.py).

Frames the host sends pass no per-guest anti-spoofing filter, so a source only the guest
vouches for (the neighbour table, the guest agent) is announced only through the policy of
resolve/trust.py, inside [addresses.allow]'s prefixes for the vNIC's bridge."""

from __future__ import annotations

from rarp_announce.config import Config
from rarp_announce.doctor.report import Check, info, ok, warn
from rarp_announce.address_sources import BY_NAME


def source_checks(config: Config) -> list[Check]:
    addresses = config.addresses
    if not addresses.sources:
        return [info("addresses", "no address source is on: RARP only, no gratuitous ARP or neighbour advertisement")]
    named = ", ".join(f"{name} ({BY_NAME[name].vouched_by})" for name in addresses.sources if name in BY_NAME)
    found = [ok("addresses", f"sources on, in order: {named}")]
    guest = [name for name in addresses.sources if name in BY_NAME and BY_NAME[name].vouched_by == "guest"]
    allowed = ", ".join(f"{bridge}: {', '.join(prefixes)}" for bridge, prefixes in sorted(addresses.allow.items()))
    for name in guest:
        what = f"source {name} is guest-controlled ({BY_NAME[name].what})"
        if not addresses.allow:
            found.append(warn("addresses", what, "its addresses are announced only inside [addresses.allow]'s prefixes "
                              "for the vNIC's bridge, and none are set: it announces nothing",
                              "set [addresses.allow] BRIDGE = [\"PREFIX\", ...], or drop it from [addresses] sources"))
        else:
            found.append(info("addresses", what, f"its addresses pass resolve/trust.py's policy first, only inside "
                              f"[addresses.allow] ({allowed})"))
    if not guest:
        found.append(ok("addresses", "no guest-controlled source: every address announced is vouched for by the "
                        "operator or the host"))
    if addresses.guest_announce:
        found.append(info("addresses", "guest_announce is on: QEMU's announce-self also makes each virtio guest "
                          "announce its own addresses (libvirt marks the domain tainted)"))
    return found
