"""This host's own IP tables over netlink: its addresses, its routes' next hops, its neighbours.

Two users: the address policy (resolve.trust), which never lets a guest source name an address
of the host, a next hop of its routes, or an address a different MAC holds; and the ``arp``
source, which reads the neighbour table itself, only on the vNIC's own bridge and in that
bridge's subnets. libvirt's ARP source (virDomainInterfaceAddresses, VIR_DOMAIN_INTERFACE_
ADDRESSES_SRC_ARP) is not used: it matches the MAC on any device of the host, in any subnet, and
libvirt 9.0 fails on this kernel with "internal error: wrong nlmsg len" unless the table is large.

One asynchronous netlink socket (pyroute2's AsyncIPRoute, as hostnet.py) reads every table of
the thread's network namespace in one go: the event loop is never blocked. Nothing is cut
short: a table read in part could let an address through. The one table a guest can fill, the
neighbour table, the kernel bounds itself (net.ipv4.neigh.default.gc_thresh3, 1024 by default);
the routes are the operator's (a host carrying a full BGP table pays for its dump, shared by the
resolutions of two seconds: resolve.host).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rarp_announce.model import Address

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# include/uapi/linux/neighbour.h
_NUD_INCOMPLETE, _NUD_FAILED, _NUD_NOARP = 0x01, 0x20, 0x40
_NO_LLADDR = _NUD_INCOMPLETE | _NUD_FAILED | _NUD_NOARP  # no usable link-layer address


@dataclass(frozen=True)
class HostTables:
    """What netlink reported, already canonical (ipaddress's text of each address)."""

    own: dict[str, str] = field(default_factory=dict)  # IP of this host -> the device holding it
    next_hops: dict[str, str] = field(default_factory=dict)  # gateway IP -> one of its routes, for people
    neighbours: dict[str, dict[str, str]] = field(default_factory=dict)  # IP -> {MAC: device} holding it
    subnets: dict[str, tuple[IPNetwork, ...]] = field(default_factory=dict)  # device -> its addresses' prefixes
    on_device: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # device -> (IP, MAC) entries


async def read_tables() -> HostTables:
    """Every address, route and neighbour entry of this network namespace (all tables, IPv4 and IPv6)."""
    from pyroute2 import AsyncIPRoute

    tables = HostTables()
    async with AsyncIPRoute() as ipr:
        names = {message["index"]: message.get("ifname") or f"#{message['index']}"
                 async for message in await ipr.link("dump")}
        subnets: dict[str, list[IPNetwork]] = {}
        async for message in await ipr.addr("dump"):
            ip = _canonical(message.get("IFA_LOCAL") or message.get("IFA_ADDRESS"))
            if ip is None:
                continue
            device = names.get(message["index"], f"#{message['index']}")
            tables.own.setdefault(ip, device)
            subnets.setdefault(device, []).append(ipaddress.ip_network(f"{ip}/{message['prefixlen']}", strict=False))
        tables.subnets.update({device: tuple(dict.fromkeys(nets)) for device, nets in subnets.items()})
        for family in (2, 10):  # AF_INET, AF_INET6
            async for message in await ipr.route("dump", family=family):
                for gateway, oif in _gateways(message):
                    ip = _canonical(gateway)
                    if ip is not None and ip not in tables.next_hops:
                        tables.next_hops[ip] = _route_text(message, ip, names.get(oif or 0))
        on_device: dict[str, list[tuple[str, str]]] = {}
        async for message in await ipr.neigh("dump"):
            ip, mac = _canonical(message.get("NDA_DST")), message.get("NDA_LLADDR")
            if ip is None or not isinstance(mac, str) or message["state"] & _NO_LLADDR or mac == "00:00:00:00:00:00":
                continue
            device = names.get(message["ifindex"], f"#{message['ifindex']}")
            tables.neighbours.setdefault(ip, {})[mac.lower()] = device
            on_device.setdefault(device, []).append((ip, mac.lower()))
        tables.on_device.update({device: tuple(entries) for device, entries in on_device.items()})
    return tables


def neighbour_addresses(tables: HostTables, bridges: Mapping[str, Iterable[str]]) -> tuple[dict[str, list[Address]], list[str]]:
    """The ``arp`` source: MAC -> addresses the neighbour table binds to it on its own bridge
    (``bridges``: MAC -> the bridge devices its targets leave on), inside that bridge's subnets;
    and one line per entry on the bridge left out for being outside them."""
    found: dict[str, list[Address]] = {}
    reasons: list[str] = []
    wanted: dict[str, set[str]] = {}
    for mac, devices in bridges.items():
        for device in devices:
            wanted.setdefault(device, set()).add(mac)
    for device, macs in wanted.items():
        subnets = tables.subnets.get(device, ())
        for ip, mac in tables.on_device.get(device, ()):
            if mac not in macs:
                continue
            address = ipaddress.ip_address(ip)
            if not any(address in subnet for subnet in subnets):
                if len(reasons) < 16:
                    reasons.append(f"arp: {ip} bound to {mac} on {device} is outside {device}'s subnets "
                                   f"({', '.join(str(s) for s in subnets) or 'none'}): ignored")
                continue
            addresses = found.setdefault(mac, [])
            if all(a.ip != ip for a in addresses):
                addresses.append(Address(ip, "arp"))
    # In the targets' order, each MAC's addresses in numeric order (the kernel's hash order is no order).
    ordered = {mac: sorted(found[mac], key=lambda a: (ipaddress.ip_address(a.ip).version, ipaddress.ip_address(a.ip)))
               for mac in bridges if mac in found}
    return ordered, reasons


def _gateways(message: Any) -> list[tuple[str, int | None]]:
    """(gateway, output ifindex) of a route: its RTA_GATEWAY and each RTA_MULTIPATH hop's."""
    hops = []
    gateway = message.get("RTA_GATEWAY")
    if gateway:
        hops.append((gateway, message.get("RTA_OIF")))
    for hop in message.get("RTA_MULTIPATH") or []:
        via = hop.get("RTA_GATEWAY") if hasattr(hop, "get") else None
        if via:
            hops.append((via, hop.get("oif") if hasattr(hop, "get") else None))
    return hops


def _route_text(message: Any, gateway: str, device: str | None) -> str:
    dst = message.get("RTA_DST")
    where = f"{dst}/{message['dst_len']}" if dst else "default"
    table = message.get("RTA_TABLE") or message.get("table")
    return f"{where} via {gateway}" + (f" dev {device}" if device else "") + (f" table {table}" if table not in (None, 254) else "")


def _canonical(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        return str(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        return None
