"""Network devices as netlink reports them (pyroute2), and look-ups shared by many callers.

A neutral floor below the stages: the resolver's readiness check (resolve/hostnet.py) and the
transport's bridge FDB step (transport/fdb.py) both ask it, so neither imports the other.
Netlink rather than `ip` subprocesses: one socket answers every look-up in microseconds, and
nothing depends on the output format of a tool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rarp_announce.names import valid_ifname

K = TypeVar("K")
V = TypeVar("V")
_IFF_UP = 0x1
_DUMP_ABOVE = 16  # names asked one by one up to this many; more are read from one dump


@dataclass(frozen=True)
class Link:
    """One network device as netlink reports it."""

    name: str
    index: int
    up: bool  # administratively up (IFF_UP)
    operstate: str  # UP, DOWN, UNKNOWN, LOWERLAYERDOWN, ...
    kind: str | None  # bridge, veth, tun, openvswitch, ... (None for physical NICs)
    master: str | None  # the bridge or bond it is enslaved to
    vlan_filtering: bool = False  # a Linux bridge that forwards by VLAN (its FDB entries carry one)

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
        vlan_filtering=bool(message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_VLAN_FILTERING")),
    )


class Shared(Generic[K, V]):
    """A look-up for many callers at once: the calls made in one turn of the event loop share one
    look-up of every key they ask about (`lookup(keys)` -> {key: answer}, keys without an
    answer left out).

    10,000 arrivals prepared together each asked on their own socket (thousands of descriptors
    open at once, the loop held for seconds); now they cost a look-up per loop turn. A call made
    while a look-up is under way waits for the next one: it may follow a change that look-up
    has not seen.
    """

    def __init__(self, lookup: Callable[[set[K]], Awaitable[dict[K, V]]]) -> None:
        self._lookup = lookup
        self._wanted: set[K] = set()
        self._next: asyncio.Future[dict[K, V]] | None = None

    async def get(self, keys: Iterable[K]) -> dict[K, V]:
        asked = set(keys)
        if not asked:
            return {}
        self._wanted |= asked
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            loop.call_soon(self._start)
        answer = await asyncio.shield(self._next)
        return {key: value for key, value in answer.items() if key in asked}

    def _start(self) -> None:
        future, wanted = self._next, self._wanted
        self._next, self._wanted = None, set()
        assert future is not None
        task = asyncio.ensure_future(self._lookup(wanted))

        def done(task: asyncio.Task[dict[K, V]]) -> None:
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


async def _found_links(names: set[str]) -> dict[str, Link]:
    return {name: link for name, link in (await links(names)).items() if link is not None}


class SharedLinks(Shared[str, Link]):
    """links() shared by the calls of one loop turn; a device that does not exist is left out."""

    def __init__(self) -> None:
        super().__init__(_found_links)
