"""A one-host lab for the daemon: a host netns with bridges br0 (uplink to a switch netns) and
br1 (a veth whose far end `cap1` we capture on), the libvirt test driver, and helpers to run a
Daemon in-process inside that netns and check captured frames with scapy."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

FAST = dict(initial_ms=5, max_ms=20, rounds=3, step_ms=5)  # sends at 0, 5, 15 ms
ROUNDS = FAST["rounds"]


def domain_xml(name: str, nics: Iterable[tuple[str, str, int | None, str | None]], uuid: str | None = None) -> str:
    """A test-driver domain; each nic is (mac, bridge, vlan or None, alias or None)."""
    parts = []
    for mac, bridge, vlan, alias in nics:
        tag = f"<vlan><tag id='{vlan}'/></vlan>" if vlan is not None else ""
        alias_xml = f"<alias name='{alias}'/>" if alias else ""
        parts.append(
            f"<interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>{tag}{alias_xml}</interface>"
        )
    uuid_xml = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (
        f"<domain type='test'><name>{name}</name>{uuid_xml}<memory>65536</memory><os><type>hvm</type></os>"
        f"<devices>{''.join(parts)}</devices></domain>"
    )


def decode(frame: bytes) -> tuple[str, int | None]:
    """(source MAC, VLAN) of a captured frame, after checking it is exactly QEMU's announcement."""
    from rarp_announce.frames import frame_vlan
    from rarp_announce.lab.observe import check_frame

    mac, vlan = frame[6:12].hex(":"), frame_vlan(frame)
    why = check_frame(frame, mac, vlan)
    assert why is None, why
    return mac, vlan


def tally(captured) -> collections.Counter:
    return collections.Counter(decode(c.frame) for c in captured)


class HostLab:
    def __init__(self, tmp_path: Path) -> None:
        from rarp_announce.lab.netns import Topology

        self.tmp = tmp_path
        self.topo = Topology(hosts=("a",))
        self.ns = self.topo.ns["a"]
        try:
            self.add_bridge("br1", "cap1")
        except BaseException:
            self.topo.close()
            raise

    def add_bridge(self, bridge: str, capture_end: str, *, up: bool = True) -> None:
        """A bridge in the host netns whose only port is a veth; its peer `capture_end` sees the flood."""
        from pyroute2 import NetNS

        with NetNS(self.ns) as host:
            host.link("add", ifname=bridge, kind="bridge", br_stp_state=0)
            host.link("add", ifname=f"p{capture_end}", kind="veth", peer={"ifname": capture_end})
            index = host.link_lookup(ifname=bridge)[0]
            host.link("set", ifname=f"p{capture_end}", master=index, state="up")
            host.link("set", ifname=capture_end, state="up")
            if up:
                host.link("set", ifname=bridge, state="up")

    def capture(self, device: str = "br0"):
        """A capture of what leaves on host device br0 (seen on the switch port) or on capture end `device`."""
        from rarp_announce.lab.netns import Capture

        if device == "br0":
            return self.topo.capture("switch", "port_a")
        return Capture(self.ns, device)

    def run(self, scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Run an asyncio scenario with this thread inside the host netns (the daemon's sockets live
        there), on the session's one libvirt loop (tests/libvirt_loop.py)."""
        from tests.libvirt_loop import run_scenario

        return run_scenario(scenario, self.ns)

    def config(self, **daemon: Any):
        from rarp_announce.config import Config, DaemonConfig
        from rarp_announce.schedule import Schedule

        settings = dict(retry_timeout=1.0, retry_interval=0.05, device_added_window=300.0)
        settings.update(daemon)
        return Config(schedule=Schedule(**FAST), daemon=DaemonConfig(**settings))

    def daemon(self, config=None, *, name: str = "d", **kwargs: Any):
        from rarp_announce.triggers.daemon.service import Daemon

        return Daemon(
            config or self.config(),
            uri="test:///default",
            control_socket=str(self.tmp / f"{name}.sock"),
            state_dir=str(self.tmp / f"{name}-state"),
            **kwargs,
        )

    def close(self) -> None:
        self.topo.close()


@contextlib.asynccontextmanager
async def running(daemon):
    """A started daemon plus a second test-driver connection (the test's own "virsh") that keeps
    the in-process test driver's domains alive while the daemon's connection comes and goes."""
    import libvirt

    await daemon.start()
    holder = libvirt.open("test:///default")
    try:
        yield holder
    finally:
        await daemon.stop()
        holder.close()


def lifecycle(daemon, dom, event: int, detail: int) -> None:
    """Deliver an event exactly as libvirt does: through the daemon's registered callback."""
    daemon.on_lifecycle(daemon.watcher.conn, dom, event, detail, None)


async def settle(daemon, seconds: float = 0.05, bound: float = 120.0) -> None:
    """Let libvirt's events reach the loop (`seconds`), then wait until every task the daemon's
    parts started (a prepare, a reconcile, a catch-up) is done and every schedule in flight has
    finished: the state the test wants, however slow the machine; `bound` only ends a hang."""
    await asyncio.sleep(seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound

    def busy() -> bool:
        return bool(daemon.table._tasks or daemon.libvirt_trigger._tasks)

    while loop.time() < deadline:
        while busy() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await daemon.announcer.drain()
        await asyncio.sleep(0)
        if not busy():
            return
    raise AssertionError(f"the daemon was still busy {bound:g} s after the events")
