"""The address sources: one table of what can name a vNIC's IP addresses, and who vouches for each.

Frames sent from the host pass no per-guest anti-spoofing filter (libvirt's nwfilter
``clean-traffic`` and OpenStack's port security sit on the guest's tap, not on the host's
bridge), so an address is announced only when someone other than the guest vouches for it:

- ``operator``: what the operator wrote down (the domain's metadata, the config file, the IP
  parameters of the vNIC's nwfilter reference, an ``--ip`` on the command line);
- ``host``: the host's own control plane (the DHCP leases libvirt's dnsmasq handed to this MAC);
- ``guest``: what the guest alone says (the host's neighbour table, which any frame the guest
  sends can fill, and the guest agent). These are never on by default; named in ``[addresses]
  sources`` their addresses must still pass the policy in resolve.trust.

Everything else derives from ``SOURCES``: the names the config accepts and its defaults
(config.py), which sources libvirt answers and which the policy vets (resolve.addresses,
resolve.host). The names themselves are ``model.AddressSource``: model.py is the neutral types
module and imports nothing, so its Literal cannot be derived from this table; instead this module
checks, when it is imported, that the table and the Literal name the same sources, so a source
added to one and not the other fails at once. Standard library and model only: the hook loads
this through config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from rarp_announce.model import AddressSource

Vouch = Literal["operator", "host", "guest"]
Reads = Literal["domain-xml", "config", "libvirt", "netlink", "command"]
"""How a source is fetched: from the domain XML and the config without I/O, through libvirt's
``virDomainInterfaceAddresses``, from the host's netlink tables, or given on the command line."""


@dataclass(frozen=True)
class Source:
    name: AddressSource
    vouched_by: Vouch
    reads: Reads
    default: bool  # in the default [addresses] sources
    what: str  # for people: where the addresses come from
    libvirt: int | None = None  # virDomainInterfaceAddressesSource (include/libvirt/libvirt-domain.h)


# In the order the config's error messages list them. The libvirt numbers are fixed ABI values,
# written out so that importing this does not load libvirt (tests check them against libvirt's).
SOURCES: tuple[Source, ...] = (
    Source("metadata", "operator", "domain-xml", True, "the domain's <metadata> in urn:x-rarp-announce:addresses:1"),
    Source("config", "operator", "config", True, "[addresses.macs] in the config file"),
    Source("nwfilter", "operator", "domain-xml", True,
           "the IP parameters of the vNIC's <filterref> (clean-traffic) in the domain XML"),
    Source("lease", "host", "libvirt", True, "the DHCP leases of libvirt's networks (dnsmasq, bound to the MAC)", 0),
    Source("arp", "guest", "netlink", False, "the host's neighbour table on the vNIC's own bridge, in its subnets"),
    Source("agent", "guest", "libvirt", False, "qemu-guest-agent inside the guest", 1),
    Source("cli", "operator", "command", False, "rarp-announce send --ip"),
)

BY_NAME: dict[str, Source] = {source.name: source for source in SOURCES}
CONFIGURABLE: tuple[AddressSource, ...] = tuple(s.name for s in SOURCES if s.reads != "command")
DEFAULTS: tuple[AddressSource, ...] = tuple(s.name for s in SOURCES if s.default)
GUEST: frozenset[str] = frozenset(s.name for s in SOURCES if s.vouched_by == "guest")
LIBVIRT_SOURCES: dict[str, int] = {s.name: s.libvirt for s in SOURCES if s.libvirt is not None}


def vouched_by(name: str) -> Vouch:
    """Who vouches for source `name`; an unknown name counts as the guest's (refused by default)."""
    source = BY_NAME.get(name)
    return source.vouched_by if source is not None else "guest"


def _check_table() -> None:
    named, listed = set(get_args(AddressSource)), [s.name for s in SOURCES]
    if len(set(listed)) != len(listed) or set(listed) != named:
        raise RuntimeError(f"address_sources: the table names {sorted(listed)}, model.AddressSource {sorted(named)}")
    if GUEST & set(DEFAULTS):
        raise RuntimeError(f"address_sources: guest sources {sorted(GUEST & set(DEFAULTS))} must not be defaults")


_check_table()
