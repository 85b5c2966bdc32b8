"""What this host's network looks like to the resolver: devices over netlink, SR-IOV PFs via sysfs.

Netlink (pyroute2) rather than `ip` subprocesses: one socket answers every look-up of a
resolution in microseconds, and nothing depends on the output format of a tool. The sysfs root
is a parameter so tests point it at a fixture tree of PCI devices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

_IFF_UP = 0x1
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


class SysfsLookupError(LookupError):
    """An SR-IOV look-up found no answer; the message says why, for a skipped entry."""


@dataclass(frozen=True)
class Link:
    """One network device as netlink reports it."""

    name: str
    index: int
    up: bool  # administratively up (IFF_UP)
    operstate: str  # UP, DOWN, UNKNOWN, LOWERLAYERDOWN, ...
    kind: str | None  # bridge, veth, tun, openvswitch, ... (None for physical NICs)
    master: str | None  # the bridge or bond it is enslaved to

    @property
    def guest_tap(self) -> bool:
        """A tap enslaved to a bridge is a vNIC's host side: frames written there reach the guest."""
        return self.kind == "tun" and self.master is not None


def valid_ifname(name: str) -> bool:
    # the kernel's dev_valid_name(): 1..15 bytes, no "/", ":" or whitespace, not "." or ".."
    return (
        bool(name)
        and len(name.encode()) <= 15
        and "/" not in name
        and ":" not in name
        and not any(c.isspace() for c in name)
        and name not in (".", "..")
    )


def links(names: Iterable[str]) -> dict[str, Link | None]:
    """Look each device up in this process's network namespace; None for one that does not exist."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    wanted = list(dict.fromkeys(names))
    found: dict[str, Link | None] = {name: None for name in wanted}
    if not any(valid_ifname(name) for name in wanted):
        return found
    with IPRoute() as ipr:
        for name in wanted:
            if not valid_ifname(name):
                continue
            try:
                (message,) = ipr.link("get", ifname=name)
            except NetlinkError:
                continue
            master = message.get("master")
            master_name = None
            if master:
                try:
                    (parent,) = ipr.link("get", index=master)
                    master_name = parent.get("ifname")
                except NetlinkError:
                    master_name = f"#{master}"
            found[name] = Link(
                name=name,
                index=message["index"],
                up=bool(message["flags"] & _IFF_UP),
                operstate=message.get("operstate") or "UNKNOWN",
                kind=message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                master=master_name,
            )
    return found


def link_problem(name: str, link: Link | None) -> str | None:
    """Why frames cannot leave on this device now, or None when they can."""
    if not valid_ifname(name):
        return "not a valid interface name"
    if link is None:
        return "no such device on this host"
    if link.guest_tap:
        return f"is a guest's tap port on bridge {link.master}: frames written there reach the guest"
    if not link.up:
        return f"device is down (ip link set dev {name} up)"
    if link.operstate in ("DOWN", "LOWERLAYERDOWN"):
        return "device is up but has no carrier (its uplink or every bridge port is down)"
    return None


def device_problems(devices: Iterable[str]) -> dict[str, str]:
    """{device: why it cannot carry frames now} for the devices that are missing, down or taps."""
    problems: dict[str, str] = {}
    for name, link in links(devices).items():
        problem = link_problem(name, link)
        if problem:
            problems[name] = problem
    return problems


def bridge_of(device: str) -> str | None:
    """The bridge (or bond) `device` is enslaved to, or None."""
    link = links([device]).get(device)
    return link.master if link else None


def pci_address(domain: int, bus: int, slot: int, function: int) -> str:
    """The sysfs spelling of a PCI address: dddd:bb:ss.f."""
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def pf_netdev(address: str, sysfs_root: str = "/sys") -> str:
    """The netdev of the SR-IOV physical function behind virtual function `address` (dddd:bb:ss.f).

    The switch learns a VF's MAC on the PF's uplink, so that is where the frame must leave.
    Raises SysfsLookupError with a reason a person understands.
    """
    if not _PCI_ADDRESS.match(address):
        raise SysfsLookupError(f"{address!r} is not a PCI address (dddd:bb:ss.f)")
    device_dir = os.path.join(sysfs_root, "bus", "pci", "devices", address)
    if not os.path.isdir(device_dir):
        raise SysfsLookupError(f"PCI device {address} does not exist on this host ({device_dir})")
    physfn = os.path.join(device_dir, "physfn")
    if not os.path.isdir(physfn):
        raise SysfsLookupError(f"PCI device {address} is not an SR-IOV virtual function (no physfn in sysfs)")
    net_dir = os.path.join(physfn, "net")
    try:
        names = sorted(entry for entry in os.listdir(net_dir) if valid_ifname(entry))
    except OSError:
        names = []
    if not names:
        pf = os.path.basename(os.path.realpath(physfn))
        raise SysfsLookupError(
            f"SR-IOV VF {address}: its physical function {pf} has no network device "
            "(bound to vfio or a DPDK driver?)"
        )
    return names[0]
