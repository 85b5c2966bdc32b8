"""The policy every address from a guest-vouched source (address_sources.py) passes, or is refused.

A frame the host sends for a guest passes none of the per-guest anti-spoofing filters (libvirt's
nwfilter ``clean-traffic``, OpenStack port security): those sit on the guest's tap, and our
frames leave from the bridge. So an address only the guest vouches for (the neighbour table it
can fill with one ARP request, the guest agent's answer) is announced only when all hold:

1. it is not an address of this host (``host_address``);
2. it is not the next hop of one of this host's routes (``next_hop``): the gateway a poisoned
   neighbour entry would hijack;
3. no different MAC holds it in this host's neighbour table (``other_mac``);
4. no other vNIC, of this guest or another running one, is declared with it by the operator
   (domain metadata, ``[addresses.macs]``) (``other_guest``);
5. it lies inside the prefixes ``[addresses.allow]`` gives the bridge the vNIC's frames leave
   on (``not_allowed``; none are allowed where the key is unset).

Each refusal names its rule (the fixed set model.RefusalReason, the metric's label) and one line
saying what matched. Pure functions, except ``declared_elsewhere``, which asks libvirt and runs
off the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rarp_announce.config import AddressesConfig
from rarp_announce.model import Address, RefusedAddress, Target
from rarp_announce.names import one_line
from rarp_announce.resolve.neighbours import HostTables
from rarp_announce.address_sources import GUEST

Elsewhere = Mapping[str, Sequence[tuple[str, str]]]
"""IP -> (MAC, who declares it) for every address the operator declared on this host."""


def bridge_of(target: Target) -> str:
    """The bridge a target's vNIC plugs into: the Linux bridge of its tap, the OVS bridge of its
    port, else the device its frames leave on (an uplink, a macvtap's parent, a VF's PF)."""
    port = getattr(target, "bridge_port", None)
    if port is not None:
        return str(port.bridge)
    if target.ovs is not None:
        return target.ovs.bridge
    return target.device


def guest_sources(config: AddressesConfig) -> list[str]:
    """The guest-vouched sources the operator named, in their order (none by default)."""
    return [source for source in config.sources if source in GUEST]


def vet(
    candidates: Mapping[str, Sequence[Address]],
    bridges: Mapping[str, Iterable[str]],
    trusted: Mapping[str, Sequence[Address]],
    allow: Mapping[str, Sequence[str]],
    tables: HostTables,
    elsewhere: Elsewhere,
) -> tuple[dict[str, list[Address]], list[RefusedAddress]]:
    """The candidates that pass, per MAC, and those refused, each once (MAC, IP, source).

    ``candidates``: MAC -> addresses from guest sources; ``bridges``: MAC -> the bridges its
    targets use (a MAC with none is passed over: nothing would carry its frames); ``trusted``:
    MAC -> addresses the operator or the host vouched for in this resolution (an IP its own MAC
    already has needs no vetting; another MAC's is refused).
    """
    allowed: dict[str, list[Address]] = {}
    refused: list[RefusedAddress] = []
    seen: set[tuple[str, str, str]] = set()
    owners: dict[str, list[tuple[str, str]]] = {}
    for mac, addresses in trusted.items():
        for address in addresses:
            owners.setdefault(address.ip, []).append((mac, f"this domain's {address.source} source"))
    networks = {bridge: [ipaddress.ip_network(prefix) for prefix in prefixes] for bridge, prefixes in allow.items()}
    for mac, addresses in candidates.items():
        on = sorted(set(bridges.get(mac, ())))
        if not on:
            continue
        own = {address.ip for address in trusted.get(mac, ())}
        for address in addresses:
            if address.ip in own or (mac, address.ip, address.source) in seen:
                continue
            seen.add((mac, address.ip, address.source))
            verdict = _verdict(mac, address.ip, on, networks, tables, owners, elsewhere)
            if verdict is None:
                kept = allowed.setdefault(mac, [])
                if all(a.ip != address.ip for a in kept):
                    kept.append(address)
            else:
                reason, detail = verdict
                refused.append(RefusedAddress(mac, address.ip, address.source, reason, one_line(detail)[:300]))
    return allowed, refused


def _verdict(mac: str, ip: str, bridges: list[str], networks: Mapping[str, list[Any]], tables: HostTables,
             owners: Mapping[str, Sequence[tuple[str, str]]], elsewhere: Elsewhere) -> tuple[Any, str] | None:
    if ip in tables.own:
        return "host_address", f"an address of this host (on {tables.own[ip]})"
    if ip in tables.next_hops:
        return "next_hop", f"the next hop of this host's route {tables.next_hops[ip]}"
    holders = {other: device for other, device in tables.neighbours.get(ip, {}).items() if other != mac}
    if holders:
        other, device = next(iter(sorted(holders.items())))
        return "other_mac", f"held by {other} on {device} in this host's neighbour table"
    for owner, who in [*owners.get(ip, ()), *elsewhere.get(ip, ())]:
        if owner != mac:
            return "other_guest", f"declared for {owner} by {who}"
    address = ipaddress.ip_address(ip)
    for bridge in bridges:
        if bridge not in networks:
            return "not_allowed", f"[addresses.allow] has no entry for {bridge}: no guest-reported address is allowed there"
        if not any(address.version == net.version and address in net for net in networks[bridge]):
            shown = ", ".join(str(net) for net in networks[bridge]) or "none"
            return "not_allowed", f"outside the prefixes [addresses.allow] gives {bridge} ({shown})"
    return None


def declared_elsewhere(conn: Any, config: AddressesConfig) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """IP -> (MAC, who) for what the operator declared for the vNICs on this host: every MAC of
    ``[addresses.macs]``, and the metadata of every running domain; and why any could not be
    read. Blocking (libvirt calls): run it off the event loop. The caller's own domain is not
    left out: one answer serves every domain, and ``vet`` passes over a MAC's own entries.

    One ``virDomainGetMetadata`` per running domain, which returns only our small element, not
    ``virDomainGetXMLDesc``'s whole document: the other domains' nwfilter parameters are
    therefore not looked at. The caller asks this only when a guest source is on, and shares one
    answer between the resolutions of a few seconds (a burst of arrivals costs one scan).
    """
    found: dict[str, list[tuple[str, str]]] = {}
    reasons: list[str] = []
    for mac, ips in config.macs.items():
        for ip in ips:
            found.setdefault(ip, []).append((mac, "[addresses.macs]"))
    if conn is None:
        return found, reasons
    import libvirt

    from rarp_announce.errors import InputError
    from rarp_announce.resolve.addresses import METADATA_NS, metadata_addresses
    from rarp_announce.resolve.domxml import parse_domain

    try:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except libvirt.libvirtError as exc:
        return found, [f"other guests' addresses not read: {one_line(str(exc))[:200]}"]
    for dom in domains:
        try:
            fragment = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
            name = dom.name()
        except libvirt.libvirtError:
            continue  # no metadata of ours (VIR_ERR_NO_DOMAIN_METADATA), or the domain just went away
        try:
            root = parse_domain(f"<domain><metadata>{fragment}</metadata></domain>")
        except InputError as exc:
            reasons.append(f"domain {name!r}: metadata not read: {exc}")
            continue
        # libvirt hands the element back without its namespace (it selected it by that URI).
        for block in root.iterfind("metadata/addresses"):
            block.tag = f"{{{METADATA_NS}}}addresses"
        declared, _skipped = metadata_addresses(root)
        for mac, listed in declared.items():
            for ip in listed:
                found.setdefault(ip, []).append((mac, f"the metadata of domain {name!r}"))
    return found, reasons
