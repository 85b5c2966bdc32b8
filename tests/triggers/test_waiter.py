"""The hook's standalone waiter, in-process, against libvirt's test driver and a real netns.

libvirt's test driver is private to each process, so the waiter's own code runs here: the test
defines, starts, suspends and resumes a domain through a second connection, the waiter sees the
events through its own, and its frames are captured on the 'physical switch' port of the host
whose bridge the domain's vNICs sit on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rarp_announce.virt import arrival_steps as arrivals
from rarp_announce.triggers import waiter
from rarp_announce.virt.arrival_steps import Step
from rarp_announce.config import Config, DaemonConfig
from rarp_announce.errors import InputError
from rarp_announce.schedule import Schedule
from rarp_announce.names import check_uuid
from rarp_announce.transport.factory import open_sink
from rarp_announce.transport.wire import WireSink
from tests.libvirt_loop import run_scenario

MAC_A = "52:54:00:5a:00:01"
MAC_B = "52:54:00:5a:00:02"
FAST = Schedule(initial_ms=20, max_ms=100, rounds=3, step_ms=20)  # sends at 0, 20, 60 ms
_serial = itertools.count()


def domain_xml(name: str, uuid: str, bridge: str = "br0") -> str:
    return f"""<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <devices>
    <interface type='bridge'><mac address='{MAC_A}'/><source bridge='{bridge}'/><target dev='vnet90'/></interface>
    <interface type='bridge'><mac address='{MAC_B}'/><source bridge='{bridge}'/><vlan><tag id='100'/></vlan></interface>
  </devices>
</domain>"""


def fresh() -> tuple[str, str]:
    return f"waiter{os.getpid()}x{next(_serial)}", str(uuidlib.uuid4())


def run_in(ns: str | None, coroutine_factory):
    """Run a coroutine on the session's one libvirt loop (tests/libvirt_loop.py), its thread in
    netns `ns` if given (sockets are made there)."""
    return run_scenario(coroutine_factory, ns)


async def connect():
    """The test's own "virsh": it keeps the in-process test driver's domains alive."""
    import libvirt

    from rarp_announce.virt.events import register_event_loop

    register_event_loop(asyncio.get_running_loop())
    return libvirt.open("test:///default")


def make_waiter(uuid, config, sink, *, timeout, name=None, xml=None) -> waiter.Waiter:
    """The waiter as `hook wait` runs it, on its own connection to the same test driver."""
    return waiter.Waiter(uuid, name=name, uri="test:///default", config=config, sink=sink, timeout=timeout, xml=xml)


def wait_for_arrival(uuid, config, sink, *, timeout, name=None, xml=None):
    return make_waiter(uuid, config, sink, timeout=timeout, name=name, xml=xml).run()


@dataclasses.dataclass
class Scene:
    conn: Any  # the test's own "virsh"
    sink: WireSink
    tasks: list[asyncio.Future] = dataclasses.field(default_factory=list)

    async def started(self, follower: waiter.Waiter) -> asyncio.Future:
        """Run the waiter; return once libvirt's events reach it (what a hook's waiter has long
        before the destination's prepare phase, seconds after `migrate begin`)."""
        task = asyncio.ensure_future(follower.run())
        self.tasks.append(task)
        await asyncio.wait_for(follower.listening.wait(), 5)
        return task


@contextlib.asynccontextmanager
async def scene(name: str | None = None) -> AsyncIterator[Scene]:
    """A connection and a sink; afterwards, whatever happened, a waiter still running is
    cancelled, the sink closed, the domain `name` removed and the connection closed."""
    here = Scene(await connect(), open_sink())  # the network sink, as the hook's waiter opens it
    try:
        yield here
    finally:
        for task in here.tasks:
            task.cancel()
        # Their ends run here, not in the next test: the loop outlives this one.
        await asyncio.gather(*here.tasks, return_exceptions=True)
        here.sink.close()
        if name is not None:
            remove(here.conn, name)
        here.conn.close()


def remove(conn, name: str) -> None:
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def decode(raw: bytes):
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import bind_layers

    bind_layers(Ether, ARP, type=0x8035)
    bind_layers(Dot1Q, ARP, type=0x8035)
    return Ether(raw)


def check_qemu_frame(raw: bytes, mac: str, vlan: int | None) -> None:
    """Byte for byte QEMU's frame (net/announce.c), and scapy (an independent decoder) agrees."""
    from scapy.layers.l2 import ARP, Dot1Q

    m = bytes.fromhex(mac.replace(":", ""))
    body = bytes.fromhex("0001 0800 06 04 0003") + m + bytes(4) + m + bytes(4) + bytes(18)
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
    assert raw[: 60 + len(tag)] == b"\xff" * 6 + m + tag + b"\x80\x35" + body
    assert not any(raw[60 + len(tag):])
    packet = decode(raw)
    assert packet.src == mac and packet.dst == "ff:ff:ff:ff:ff:ff"
    arp = packet[ARP]
    assert (arp.op, arp.hwsrc, arp.hwdst, arp.psrc, arp.pdst) == (3, mac, mac, "0.0.0.0", "0.0.0.0")
    assert (packet[Dot1Q].vlan if Dot1Q in packet else None) == vlan


def test_state_step_maps_what_a_late_waiter_finds() -> None:
    assert waiter.state_step(arrivals.DOMAIN_RUNNING, arrivals.RUNNING_MIGRATED) is Step.ARRIVED
    assert waiter.state_step(arrivals.DOMAIN_RUNNING, 10) is Step.ARRIVED  # postcopy
    assert waiter.state_step(arrivals.DOMAIN_RUNNING, 5) is Step.ARRIVED  # unpaused after a paused arrival
    assert waiter.state_step(arrivals.DOMAIN_RUNNING, 1) is None  # booted here: not an arrival
    assert waiter.state_step(arrivals.DOMAIN_PAUSED, arrivals.PAUSED_MIGRATION) is Step.PARKED
    assert waiter.state_step(5, 0) is None  # shut off


def test_check_uuid_accepts_canonical_and_refuses_the_rest() -> None:
    assert check_uuid("4DEA22B3-1D52-D8F3-2516-782E98AB3FA0") == "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
    assert check_uuid("4dea22b31d52d8f32516782e98ab3fa0") == "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"  # as virUUIDParse
    for bad in ("", "--config=/etc/x", "4dea22b3-1d52-d8f3-2516-782e98ab3fzz", "4dea-22b31d52-d8f3-2516-782e98ab3fa0"):
        with pytest.raises(InputError, match="invalid --uuid"):
            check_uuid(bad)


def test_waits_for_the_resume_then_announces_qemu_frames_on_the_bridge(topology, libvirt_module) -> None:
    name, uuid = fresh()
    config = Config()  # QEMU's schedule: 0, 50, 200, 450, 800 ms
    seen_before_resume: list = []

    async def scenario():
        async with scene(name) as s:
            task = await s.started(make_waiter(uuid, config, s.sink, timeout=120, name=name))
            # the domain does not exist yet, as after `migrate begin`
            dom = s.conn.defineXML(domain_xml(name, uuid))
            dom.create()
            dom.suspend()  # arrived paused: the next resume is the arrival
            await asyncio.sleep(0.2)
            seen_before_resume.extend(capture.frames(count=1, timeout=0.05))
            assert not task.done()
            resumed = time.time()
            dom.resume()
            result = await asyncio.wait_for(task, 120)
            return result, resumed

    with topology.capture("switch", "port_a") as capture:
        result, resumed = run_in(topology.ns["a"], scenario)
        frames = capture.frames(count=10, timeout=30)
    assert seen_before_resume == []
    assert result.outcome == "announced", result.detail
    # 10 RARPs, and as many gratuitous ARPs: the test driver invents a lease for each vNIC
    # (192.168.0.1 and .2), which the default [addresses] sources ask libvirt for
    assert result.frames == 20 and result.failed_frames == 0
    assert {(t.mac, tuple(a.ip for a in t.addresses)) for t in result.targets} == {
        (MAC_A, ("192.168.0.1",)), (MAC_B, ("192.168.0.2",))}
    assert {(t.mac, t.device, t.vlan) for t in result.targets} == {(MAC_A, "br0", None), (MAC_B, "br0", 100)}
    assert len(frames) == 10
    by_mac = {MAC_A: [], MAC_B: []}
    for captured in frames:
        mac = ":".join(f"{b:02x}" for b in captured.frame[6:12])
        check_qemu_frame(captured.frame, mac, None if mac == MAC_A else 100)
        by_mac[mac].append(captured.time)
    # QEMU's five rounds per vNIC; their offsets are proven on a virtual clock in
    # tests/announce/test_engine.py and their lateness is a figure in `make bench`.
    for times in by_mac.values():
        assert len(times) == 5
    assert min(times[0] for times in by_mac.values()) >= resumed - 0.01  # nothing before the resume


def test_a_resume_before_the_waiter_looked_is_announced_at_once(topology, libvirt_module) -> None:
    name, uuid = fresh()
    config = dataclasses.replace(Config(), schedule=FAST)

    async def scenario():
        async with scene(name) as s:
            dom = s.conn.defineXML(domain_xml(name, uuid))
            dom.create()
            dom.suspend()
            dom.resume()  # state RUNNING, reason UNPAUSED: it arrived and ran before we connected
            # No event will come: "announced", not "timeout", proves it read the state at once.
            return await wait_for_arrival(uuid, config, s.sink, timeout=5, name=name)

    with topology.capture("switch", "port_a") as capture:
        result = run_in(topology.ns["a"], scenario)
        frames = capture.frames(count=6, timeout=30)
    assert result.outcome == "announced", result.detail
    assert len(frames) == 6 and result.frames == 12  # a RARP and a gratuitous ARP per vNIC and round


def test_a_migration_that_fails_ends_the_waiter(libvirt_module) -> None:
    name, uuid = fresh()

    async def scenario():
        async with scene(name) as s:
            task = await s.started(make_waiter(uuid, Config(), s.sink, timeout=120))
            dom = s.conn.defineXML(domain_xml(name, uuid))
            dom.create()
            dom.suspend()
            dom.destroy()  # STOPPED before any resume: the incoming guest is gone
            return await asyncio.wait_for(task, 120)

    result = run_in(None, scenario)
    assert result.outcome == "gone" and result.exit_code == 0
    assert result.frames == 0


def test_no_resume_within_the_timeout_gives_up(libvirt_module) -> None:
    _name, uuid = fresh()

    async def scenario():
        async with scene() as s:
            return await wait_for_arrival(uuid, Config(), s.sink, timeout=0.2)

    result = run_in(None, scenario)  # bounded by the waiter's own timeout: a hang fails the run
    assert result.outcome == "timeout" and result.exit_code == 1


def test_a_domain_booted_here_is_not_an_arrival(libvirt_module) -> None:
    name, uuid = fresh()

    async def scenario():
        async with scene(name) as s:
            dom = s.conn.defineXML(domain_xml(name, uuid, bridge="nosuch0"))
            dom.create()  # RUNNING/BOOTED: not what a migration leaves
            return await wait_for_arrival(uuid, Config(), s.sink, timeout=0.2)

    assert run_in(None, scenario).outcome == "timeout"


def test_a_bridge_that_appears_late_is_announced_once_it_exists(topology, libvirt_module) -> None:
    """os-vif wires ports after QEMU's burst: the waiter retries the device, then announces."""
    from pyroute2 import NetNS

    name, uuid = fresh()
    config = dataclasses.replace(
        Config(), schedule=FAST, daemon=DaemonConfig(retry_timeout=60.0, retry_interval=0.05)
    )
    ns = topology.ns["a"]

    def plug_late_bridge() -> None:
        with NetNS(ns) as host:  # in front of the uplink, as os-vif would wire the port
            host.link("add", ifname="brlate", kind="bridge", br_stp_state=0)
            host.link("set", ifname="uplink", master=host.link_lookup(ifname="brlate")[0])
            host.link("set", ifname="brlate", state="up")

    async def scenario():
        async with scene(name) as s:
            dom = s.conn.defineXML(domain_xml(name, uuid, bridge="brlate"))
            dom.create()
            dom.suspend()
            task = asyncio.ensure_future(wait_for_arrival(uuid, config, s.sink, timeout=120))
            await asyncio.sleep(0.05)
            dom.resume()
            await asyncio.sleep(0.3)
            assert not task.done()
            # pyroute2 runs its own asyncio loop: plug the late bridge from another thread.
            await asyncio.get_running_loop().run_in_executor(None, plug_late_bridge)
            return await asyncio.wait_for(task, 120)

    with topology.capture("switch", "port_a") as capture:
        result = run_in(ns, scenario)
        frames = capture.frames(count=6, timeout=30)
    assert result.outcome == "announced", result.detail
    assert len(frames) == 6


def test_a_device_that_never_comes_fails_after_the_retry_window(topology, libvirt_module) -> None:
    name, uuid = fresh()
    config = dataclasses.replace(
        Config(), schedule=FAST, daemon=DaemonConfig(retry_timeout=0.3, retry_interval=0.05)
    )

    async def scenario():
        async with scene(name) as s:
            dom = s.conn.defineXML(domain_xml(name, uuid, bridge="nosuch0"))
            dom.create()
            dom.suspend()
            dom.resume()
            return await wait_for_arrival(uuid, config, s.sink, timeout=5)

    result = run_in(topology.ns["a"], scenario)
    assert result.outcome == "failed" and result.exit_code == 1
    assert "nosuch0" in result.detail


def test_wait_for_process_exit_sees_a_zombie_as_gone() -> None:
    import subprocess

    child = subprocess.Popen(["true"])
    try:
        time.sleep(0.1)  # exited, not yet reaped: a zombie, as the hook is until libvirt reaps it
        assert waiter.wait_for_process_exit(child.pid, limit=1.0)
    finally:
        child.wait()
    sleeper = subprocess.Popen(["sleep", "5"])
    try:
        assert not waiter.wait_for_process_exit(sleeper.pid, limit=0.05)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_hook_wait_refuses_a_bad_uuid_in_one_line() -> None:
    import subprocess

    from tests.conftest import CLI

    done = subprocess.run([*CLI, "hook", "wait", "--uuid", "../../etc", "--timeout", "1"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "invalid --uuid '../../etc'" in done.stderr
    assert "Traceback" not in done.stderr


def test_hook_wait_gives_up_on_an_unreachable_libvirt_within_its_timeout() -> None:
    import subprocess

    from tests.conftest import CLI

    done = subprocess.run(  # bounded generously: a waiter that ignored its timeout fails, never hangs
        [*CLI, "hook", "wait", "--uuid", str(uuidlib.uuid4()), "--timeout", "1.5", "--connect", "qemu:///system?socket=/nonexistent/sock"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "is not reachable yet" in done.stderr and "failed: cannot connect to libvirt" in done.stderr


def test_the_hooks_xml_is_prepared_before_libvirt_defines_the_domain(topology, libvirt_module) -> None:
    """Hook-only mode: the waiter resolves the XML the hook saved and opens its sockets while the
    migration runs, so the resume finds nothing left to do but send."""
    name, uuid = fresh()
    config = dataclasses.replace(Config(), schedule=FAST)

    async def scenario():
        async with scene(name) as s:
            follower = make_waiter(uuid, config, s.sink, timeout=120, name=name, xml=domain_xml(name, uuid))
            task = await s.started(follower)
            entry = follower.table.entries[uuid]
            await asyncio.wait_for(asyncio.shield(entry.preparing), 2)
            prepared = (entry.phase, entry.source, sorted(t.key for t in entry.targets), s.sink.raw.devices)
            dom = s.conn.defineXML(domain_xml(name, uuid))
            dom.create()
            dom.suspend()
            dom.resume()
            return prepared, await asyncio.wait_for(task, 120)

    with topology.capture("switch", "port_a") as capture:
        prepared, result = run_in(topology.ns["a"], scenario)
        frames = capture.frames(count=6, timeout=30)
    assert prepared == ("incoming", "hook", [(MAC_A, "br0", None), (MAC_B, "br0", 100)], ["br0"])
    assert result.outcome == "announced", result.detail
    assert len(frames) == 6


def test_one_waiter_per_domain_holds_its_lock(tmp_path) -> None:
    import subprocess
    import sys

    _name, uuid = fresh()
    probe = (
        "import sys\nfrom rarp_announce.triggers.waiter import claim\n"
        f"with claim({str(tmp_path)!r}, {uuid!r}) as mine:\n    print(mine)\n"
    )
    (tmp_path / f"{uuid}.xml").write_text("<domain/>")
    with waiter.claim(str(tmp_path), uuid) as mine:
        assert mine
        # Read by another process: closing any descriptor of the file here would drop our POSIX
        # lock (fcntl(2), "Advisory record locking"), which is why the waiter never reopens it.
        held = subprocess.run(["cat", str(tmp_path / f"{uuid}.pid")], capture_output=True, text=True, timeout=30)
        assert held.stdout.strip() == str(os.getpid())
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == "False"
        assert waiter.read_hook_xml(str(tmp_path), uuid) == "<domain/>"
        assert waiter.read_hook_xml(str(tmp_path), uuid) is None  # read once
    assert not (tmp_path / f"{uuid}.pid").exists()
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert again.stdout.strip() == "True"
