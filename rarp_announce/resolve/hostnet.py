"""What this host's network looks like: devices over netlink (the one readiness check), SR-IOV PFs via sysfs.

Netlink (pyroute2) rather than `ip` subprocesses: one socket answers every look-up of a
resolution in microseconds, and nothing depends on the output format of a tool. The sysfs root
is a parameter so tests point it at a fixture tree of PCI devices.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rarp_announce.names import valid_ifname

_IFF_UP = 0x1
_DUMP_ABOVE = 16  # names asked one by one up to this many; more are read from one dump
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


async def links(names: Iterable[str]) -> dict[str, Link | None]:
    """Look each device up in this thread's network namespace; None for one that does not exist.

    One netlink socket per call, asynchronous: it runs on the daemon's loop between rounds
    without holding it, where pyroute2's blocking API would start a loop of its own. A few
    names are asked one by one; more than _DUMP_ABOVE are read from one dump of every link.
    """
    from pyroute2 import AsyncIPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    wanted = list(dict.fromkeys(names))
    found: dict[str, Link | None] = {name: None for name in wanted}
    asked = [name for name in wanted if valid_ifname(name)]
    if not asked:
        return found
    async with AsyncIPRoute() as ipr:
        if len(asked) > _DUMP_ABOVE:
            messages = [message async for message in await ipr.link("dump")]
            by_index = {message["index"]: message.get("ifname") for message in messages}
            for message in messages:
                name = message.get("ifname")
                if name in found:
                    master = message.get("master")
                    found[name] = _link(name, message, (by_index.get(master) or f"#{master}") if master else None)
            return found
        for name in asked:
            try:
                (message,) = await ipr.link("get", ifname=name)
            except NetlinkError:
                continue
            master = message.get("master")
            master_name = None
            if master:
                try:
                    (parent,) = await ipr.link("get", index=master)
                    master_name = parent.get("ifname")
                except NetlinkError:
                    master_name = f"#{master}"
            found[name] = _link(name, message, master_name)
    return found


def _link(name: str, message: Any, master: str | None) -> Link:
    return Link(
        name=name,
        index=message["index"],
        up=bool(message["flags"] & _IFF_UP),
        operstate=message.get("operstate") or "UNKNOWN",
        kind=message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
        master=master,
    )


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


class SharedCheck:
    """device_problems for many callers at once: the calls made in one turn of the event loop
    share one netlink look-up of every device they ask about.

    10,000 arrivals prepared together each asked on their own socket (thousands of descriptors
    open at once, the loop held for seconds); now they cost a look-up per loop turn. A call made
    while a look-up is under way waits for the next one: it may follow a change that look-up
    has not seen.
    """

    def __init__(self) -> None:
        self._wanted: set[str] = set()
        self._next: asyncio.Future[dict[str, str]] | None = None

    async def problems(self, devices: Iterable[str]) -> dict[str, str]:
        asked = set(devices)
        if not asked:
            return {}
        self._wanted |= asked
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            loop.call_soon(self._start)
        answer = await asyncio.shield(self._next)
        return {name: why for name, why in answer.items() if name in asked}

    def _start(self) -> None:
        future, wanted = self._next, self._wanted
        self._next, self._wanted = None, set()
        assert future is not None
        task = asyncio.ensure_future(device_problems(wanted))

        def done(task: asyncio.Task[dict[str, str]]) -> None:
            if future.done():
                return
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())  # type: ignore[arg-type]
                future.exception()  # each waiter raises it; none left must not log it as lost
            else:
                future.set_result(task.result())

        task.add_done_callback(done)


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
