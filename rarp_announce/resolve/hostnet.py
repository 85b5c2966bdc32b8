"""What this host's network looks like: the one readiness check of devices (netlink, through
netdev.py), SR-IOV PFs via sysfs.

The sysfs root is a parameter so tests point it at a fixture tree of PCI devices.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable

from rarp_announce.names import valid_ifname
from rarp_announce.netdev import Link, Shared, links

__all__ = ["Link", "links", "link_problem", "device_problems", "SharedCheck", "device_problems_now", "pf_netdev",
           "pci_address", "SysfsLookupError"]

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


class SysfsLookupError(LookupError):
    """An SR-IOV look-up found no answer; the message says why, for a skipped entry."""


def link_problem(name: str, link: Link | None) -> str | None:
    """Why frames cannot leave on this device now, or None when they can."""
    if not valid_ifname(name):
        return "not a valid interface name"
    if link is None:
        return "no such device on this host"
    if link.guest_tap:
        return f"is a guest's tap port on bridge {link.master}: frames written there reach the guest"
    if link.kind == "openvswitch":
        # A frame with a guest's MAC written into an OVS bridge's own port makes OVS learn the
        # guest on the host (it is then black-holed until it transmits).
        return "is an Open vSwitch bridge's own port: inject through the guest's OVS port instead (send --port)"
    if not link.up:
        return f"device is down (ip link set dev {name} up)"
    if link.operstate in ("DOWN", "LOWERLAYERDOWN"):
        return "device is up but has no carrier (its uplink or every bridge port is down)"
    return None


async def device_problems(devices: Iterable[str]) -> dict[str, str]:
    """The readiness check: {device: why it cannot carry frames now} for those that cannot.

    Every trigger asks this one function (through the arrival pipeline), so a device is judged
    the same way by the daemon, the hook's waiter and the command line.
    """
    problems: dict[str, str] = {}
    for name, link in (await links(devices)).items():
        problem = link_problem(name, link)
        if problem:
            problems[name] = problem
    return problems


class SharedCheck(Shared[str, str]):
    """device_problems shared by the calls of one loop turn (the readiness check's)."""

    def __init__(self) -> None:
        super().__init__(device_problems)

    async def problems(self, devices: Iterable[str]) -> dict[str, str]:
        return await self.get(devices)


def device_problems_now(devices: Iterable[str]) -> dict[str, str]:
    """device_problems for a caller outside any event loop (the `targets` command)."""
    return asyncio.run(device_problems(devices))


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
