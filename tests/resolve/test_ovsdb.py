"""resolve.ovsdb against a real Open vSwitch: a private ovsdb-server + ovs-vswitchd per test, in a
folder and network namespace of the test's own, removed even on failure.

Every wait is bounded: the live view is awaited through its on_change callback under
asyncio.wait_for, never with sleeps standing in for assertions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from rarp_announce.resolve.ovsport import vlan_plan, wiring_problem

from tests.conftest import require

T = TypeVar("T")
BOUND = 20.0  # seconds any single scenario may take before it counts as hung


@pytest.fixture
def ovs_netns(root_netns) -> Iterator[str]:
    for tool in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl"):
        require(shutil.which(tool) is not None, f"needs Open vSwitch's {tool}")
    from pyroute2 import netns

    from rarp_announce.lab.netns import unique

    name = unique("odb")
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def private_ovs(ovs_netns, tmp_path):
    """An OVS that is not started yet (tests that need it down first start it themselves)."""
    from rarp_announce.lab.ovs import PrivateOVS

    ovs = PrivateOVS(tmp_path / "ovs", netns=ovs_netns)
    try:
        yield ovs
    finally:
        ovs.stop()


@pytest.fixture
def ovs(private_ovs):
    private_ovs.start()
    private_ovs.add_bridge("br0")
    return private_ovs


def remote_of(ovs) -> str:
    return f"unix:{ovs.rundir}/db.sock"


def add_internal(ovs, bridge: str, name: str, *settings: str) -> None:
    """An internal port (a tap ovs-vswitchd makes itself): a real port with a real ofport."""
    ovs.vsctl("add-port", bridge, name, "--", "set", "interface", name, "type=internal", *settings)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), BOUND)

    return asyncio.run(bounded())


class Changes:
    """An on_change callback that lets a test wait, bounded, for a condition on the view."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = asyncio.Event()
        self.seen_connected: list[bool] = []
        self.view = None

    def __call__(self) -> None:
        self.calls += 1
        if self.view is not None:
            self.seen_connected.append(self.view.connected)
        self.event.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async def watch() -> None:
            while not condition():
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(watch(), timeout)


async def vsctl(ovs, *args: str) -> str:
    """ovs-vsctl off the loop, so the view keeps running while it waits for ovs-vswitchd."""
    return await asyncio.to_thread(ovs.vsctl, *args)


def open_view(ovs_or_remote, changes: Changes | None = None):
    from rarp_announce.resolve.ovsdb import OvsdbView

    remote = ovs_or_remote if isinstance(ovs_or_remote, str) else remote_of(ovs_or_remote)
    view = OvsdbView(remote, on_change=changes)
    if changes is not None:
        changes.view = view
    return view


# -- without OVS ---------------------------------------------------------------------------


def test_default_remote_follows_ovs_rundir(monkeypatch):
    from rarp_announce.resolve.ovsdb import default_remote

    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    assert default_remote() == "unix:/run/openvswitch/db.sock"
    monkeypatch.setenv("OVS_RUNDIR", "/tmp/x/run")
    assert default_remote() == "unix:/tmp/x/run/db.sock"


def test_waits_shim_keeps_poller_semantics():
    import ovs.poller
    import ovs.timeval

    from rarp_announce.resolve.ovsdb import _Waits

    waits = _Waits()
    waits.fd_wait(5, ovs.poller.POLLIN)
    waits.fd_wait(5, ovs.poller.POLLOUT)
    waits.timer_wait(300)
    waits.timer_wait(100)
    waits.timer_wait(200)
    assert waits.fds == {5: ovs.poller.POLLIN | ovs.poller.POLLOUT}
    assert waits.timeout_ms == 100
    waits.timer_wait_until(ovs.timeval.msec() - 1)  # a deadline already past: wake at once
    assert waits.timeout_ms == 0
    other = _Waits()
    other.timer_wait(0)
    assert other.timeout_ms == 0


# -- one-shot reads ----------------------------------------------------------------------------


def test_read_once_finds_ports_by_name_mac_and_vhost_socket(ovs, tmp_path):
    from rarp_announce.resolve.ovsdb import read_once

    add_internal(ovs, "br0", "vnet0", "external_ids:attached-mac=52:54:00:AA:00:01")
    ovs.vsctl("set", "port", "vnet0", "tag=100")
    # dpdkvhostuser serves $OVS_RUNDIR/<name>: any port of that name stands in (no DPDK here).
    add_internal(ovs, "br0", "vhu0")
    # dpdkvhostuserclient connects to options:vhost-server-path; without DPDK ovs-vswitchd
    # cannot open it, so the row gets ofport -1 and an error: real data for wiring_problem.
    client_path = str(tmp_path / "qemu" / "vhc0.sock")
    ovs.vsctl("add-port", "br0", "vhc0", "--", "set", "interface", "vhc0", "type=dpdkvhostuserclient",
              f"options:vhost-server-path={client_path}")

    snapshot = read_once(remote_of(ovs))

    assert snapshot.bridges() == ["br0"] and snapshot.is_bridge("br0") and not snapshot.is_bridge("vnet0")
    by_name = snapshot.find_port(name="vnet0")
    assert by_name is not None
    assert (by_name.bridge, by_name.port, by_name.interface, by_name.tag) == ("br0", "vnet0", "vnet0", 100)
    assert by_name.iface_type == "internal" and by_name.ofport is not None and by_name.ofport > 0
    assert wiring_problem(by_name) is None and vlan_plan(by_name) == [(100, False)]
    # by attached-mac, case-insensitive, when the name is unknown (or not given)
    assert snapshot.find_port(mac="52:54:00:aa:00:01") == by_name
    assert snapshot.find_port(name="tap-gone", mac="52-54-00-AA-00-01") == by_name
    assert snapshot.find_port(mac="52:54:00:aa:00:99") is None
    # vhost-user by socket path
    standin = snapshot.find_port(socket_path=f"{ovs.rundir}/vhu0")
    assert standin is not None and standin.interface == "vhu0"
    client = snapshot.find_port(socket_path=client_path)
    assert client is not None and client.interface == "vhc0" and client.iface_type == "dpdkvhostuserclient"
    assert client.options["vhost-server-path"] == client_path
    assert client.ofport == -1 and client.error
    problem = wiring_problem(client)
    assert problem is not None and "ofport -1" in problem and client.error in problem
    assert snapshot.find_port(socket_path="/nowhere/else.sock") is None
    assert snapshot.find_port() is None


def test_read_once_reads_vlan_columns(ovs):
    from rarp_announce.resolve.ovsdb import read_once

    add_internal(ovs, "br0", "access")
    add_internal(ovs, "br0", "trunk")
    add_internal(ovs, "br0", "native")
    add_internal(ovs, "br0", "all")
    ovs.vsctl("set", "port", "access", "tag=10",
              "--", "set", "port", "trunk", "vlan_mode=trunk", "trunks=30,20",
              "--", "set", "port", "native", "tag=5", "vlan_mode=native-untagged", "trunks=5,6")

    snapshot = read_once(remote_of(ovs))

    found = {name: snapshot.find_port(name=name) for name in ("access", "trunk", "native", "all")}
    assert all(info is not None for info in found.values())
    access, trunk, native, every = (found[n] for n in ("access", "trunk", "native", "all"))
    assert (access.tag, access.trunks, access.vlan_mode) == (10, (), None)
    assert (trunk.tag, trunk.trunks, trunk.vlan_mode) == (None, (20, 30), "trunk")
    assert (native.tag, native.trunks, native.vlan_mode) == (5, (5, 6), "native-untagged")
    assert (every.tag, every.trunks, every.vlan_mode) == (None, (), None)
    assert vlan_plan(access) == [(10, False)]
    assert vlan_plan(trunk) == [(20, True), (30, True)]
    assert vlan_plan(native) == [(5, False), (6, True)]
    assert vlan_plan(every) == [(None, False)]


def test_read_once_on_a_missing_socket_raises_one_line(tmp_path):
    from rarp_announce.errors import AnnounceError
    from rarp_announce.resolve.ovsdb import OvsdbUnavailable, read_once

    remote = f"unix:{tmp_path}/db.sock"
    with pytest.raises(OvsdbUnavailable) as caught:
        read_once(remote, timeout=5.0)
    assert isinstance(caught.value, AnnounceError)
    assert str(caught.value) == (
        f"cannot read the Open vSwitch database at {remote}: No such file or directory "
        "(is ovsdb-server running? set [ovs] db)"
    )
    assert caught.value.reason == "No such file or directory"


def rarp(mac: str, vlan: int | None) -> bytes:
    """A QEMU-style RARP (QEMU net/announce.c), 802.1Q-tagged when `vlan` is given."""
    octets = bytes.fromhex(mac.replace(":", ""))
    tag = b"\x81\x00" + vlan.to_bytes(2, "big") if vlan is not None else b""
    body = b"\x80\x35" + bytes.fromhex("0001080006040003") + octets + bytes(4) + octets + bytes(4)
    return b"\xff" * 6 + octets + tag + body + bytes(18)


def test_vlan_plan_is_what_ovs_itself_does_with_the_guests_frames(ovs):
    """Each plan entry, injected as the guest would send it (packet-out with in_port = the
    guest's port, actions=NORMAL), is learned by OVS on that port in that VLAN."""
    from rarp_announce.lab.netns import wait_until
    from rarp_announce.resolve.ovsdb import read_once

    configs = {
        "access": ["tag=10"],
        "trunk": ["vlan_mode=trunk", "trunks=20,21"],
        "trunk0": ["trunks=0,22"],
        "alltrunk": [],
        "nuntag": ["tag=30", "vlan_mode=native-untagged", "trunks=31"],
        "ntag": ["tag=40", "vlan_mode=native-tagged", "trunks=40,41"],
        "tunnel": ["tag=50", "vlan_mode=dot1q-tunnel"],
    }
    for number, (name, settings) in enumerate(configs.items(), start=1):
        add_internal(ovs, "br0", name, f"ofport_request={number}")
        if settings:
            ovs.vsctl("set", "port", name, *settings)
    snapshot = read_once(remote_of(ovs))

    expected: list[tuple[str, int, str]] = []
    for number, name in enumerate(configs, start=1):
        info = snapshot.find_port(name=name)
        assert info is not None and info.ofport == number and wiring_problem(info) is None
        for index, (vlan, tagged) in enumerate(vlan_plan(info)):
            mac = f"52:54:00:00:{number:02x}:{index:02x}"
            frame = rarp(mac, vlan if tagged else None)
            ovs.ofctl("packet-out", "br0", f"in_port={info.ofport} packet={frame.hex()} actions=NORMAL")
            expected.append((name, vlan or 0, mac))
    assert len(expected) == 11
    assert wait_until(lambda: all(entry in ovs.fdb("br0") for entry in expected), timeout=5.0), (
        sorted(set(expected) - set(ovs.fdb("br0"))))
    # And the opposite of the plan is lost: a tagged frame on an access port is dropped.
    ovs.ofctl("packet-out", "br0", f"in_port=1 packet={rarp('52:54:00:00:99:01', 10).hex()} actions=NORMAL")
    ovs.ofctl("packet-out", "br0", f"in_port=2 packet={rarp('52:54:00:00:99:02', None).hex()} actions=NORMAL")
    # A frame sent after them that is learned shows OVS has handled them (in order) too.
    ovs.ofctl("packet-out", "br0", f"in_port=1 packet={rarp('52:54:00:00:99:03', None).hex()} actions=NORMAL")
    assert wait_until(lambda: ovs.fdb_port("br0", "52:54:00:00:99:03", 10) == "access", timeout=5.0)
    learned = {mac for _port, _vlan, mac in ovs.fdb("br0")}
    assert "52:54:00:00:99:01" not in learned and "52:54:00:00:99:02" not in learned


# -- the live view -----------------------------------------------------------------------------


def test_view_sees_a_tag_change_through_on_change(ovs):
    add_internal(ovs, "br0", "vnet0", "external_ids:attached-mac=52:54:00:aa:00:02")
    ovs.vsctl("set", "port", "vnet0", "tag=100")

    async def scenario() -> None:
        changes = Changes()
        view = open_view(ovs, changes)
        try:
            assert await view.start(timeout=5.0)
            assert view.connected and view.last_error is None and changes.calls >= 1
            assert view.bridges() == ["br0"] and view.is_bridge("br0")
            first = view.find_port(name="vnet0")
            assert first is not None and first.tag == 100
            assert view.find_port(mac="52:54:00:AA:00:02") == first

            await vsctl(ovs, "set", "port", "vnet0", "tag=200")
            await changes.until(lambda: view.find_port(name="vnet0").tag == 200)
            assert vlan_plan(view.find_port(name="vnet0")) == [(200, False)]

            await vsctl(ovs, "set", "port", "vnet0", "vlan_mode=trunk", "trunks=300,400", "--",
                        "clear", "port", "vnet0", "tag")
            await changes.until(lambda: view.find_port(name="vnet0").trunks == (300, 400))
            assert vlan_plan(view.find_port(name="vnet0")) == [(300, True), (400, True)]
        finally:
            view.close()

    run(scenario)


def test_a_failing_on_change_is_logged_and_the_view_keeps_following(ovs, caplog):
    from rarp_announce.resolve.ovsdb import OvsdbView

    add_internal(ovs, "br0", "vnet0")

    async def scenario() -> None:
        changes = Changes()

        def explode() -> None:
            changes()
            raise RuntimeError("callback bug")

        view = OvsdbView(remote_of(ovs), on_change=explode)
        try:
            assert await view.start(timeout=5.0)
            await vsctl(ovs, "set", "port", "vnet0", "tag=7")
            await changes.until(lambda: view.find_port(name="vnet0").tag == 7)
            assert changes.calls >= 2 and view.connected
        finally:
            view.close()

    with caplog.at_level(logging.ERROR, logger="rarp_announce.resolve"):
        run(scenario)
    failures = [r for r in caplog.records if "on_change callback failed" in r.getMessage()]
    assert failures and failures[0].exc_info is not None


def test_dead_vlan_then_rewired(ovs):
    # os-vif's isolate_vif: plugged into the dead VLAN until the agent binds the port.
    add_internal(ovs, "br0", "tap1", "external_ids:attached-mac=52:54:00:aa:00:03")
    ovs.vsctl("set", "port", "tap1", "tag=4095", "vlan_mode=trunk", "trunks=4095")

    async def scenario() -> None:
        changes = Changes()
        view = open_view(ovs, changes)
        try:
            assert await view.start(timeout=5.0)
            parked = view.find_port(mac="52:54:00:aa:00:03")
            assert parked is not None and parked.tag == 4095 and parked.trunks == (4095,)
            problem = wiring_problem(parked)
            assert problem is not None and "dead VLAN 4095" in problem

            # What the Neutron OVS agent does when it binds the port: its local VLAN, access mode.
            await vsctl(ovs, "set", "port", "tap1", "tag=3", "--", "clear", "port", "tap1", "vlan_mode", "trunks")
            await changes.until(lambda: wiring_problem(view.find_port(name="tap1")) is None)
            wired = view.find_port(name="tap1")
            assert (wired.tag, wired.trunks, wired.vlan_mode) == (3, (), None)
            assert vlan_plan(wired) == [(3, False)]
        finally:
            view.close()

    run(scenario)


def test_ovn_port_is_wired_once_ovn_installed(ovs):
    ovs.add_bridge("br-phys")
    add_internal(ovs, "br0", "tap-ovn", "external_ids:iface-id=lsp-1", "external_ids:attached-mac=52:54:00:aa:00:04")
    add_internal(ovs, "br-phys", "tap-other", "external_ids:iface-id=lsp-2")

    async def scenario() -> None:
        changes = Changes()
        view = open_view(ovs, changes)
        try:
            assert await view.start(timeout=5.0)
            # No ovn-controller configured: iface-id alone means nothing (Neutron OVS agent does that too).
            assert wiring_problem(view.find_port(name="tap-ovn")) is None

            await vsctl(ovs, "set", "open_vswitch", ".", "external_ids:ovn-remote=tcp:127.0.0.1:6642",
                        "external_ids:ovn-bridge=br0")
            await changes.until(lambda: view.find_port(name="tap-ovn").ovn_bridge)
            pending = view.find_port(name="tap-ovn")
            problem = wiring_problem(pending)
            assert problem is not None and "ovn-installed" in problem and "lsp-1" in problem
            # The same iface-id on a bridge that is not OVN's is not OVN's to bind.
            other = view.find_port(name="tap-other")
            assert other is not None and not other.ovn_bridge and wiring_problem(other) is None

            await vsctl(ovs, "set", "interface", "tap-ovn", "external_ids:ovn-installed=true")
            await changes.until(lambda: wiring_problem(view.find_port(name="tap-ovn")) is None)
        finally:
            view.close()

    run(scenario)


def test_view_started_before_ovsdb_server_connects_when_it_comes_up(private_ovs, caplog):
    ovs = private_ovs

    async def scenario() -> None:
        changes = Changes()
        view = open_view(remote_of(ovs), changes)
        try:
            assert not await asyncio.wait_for(view.start(timeout=0.3), 5.0)
            assert not view.connected
            assert view.last_error == "No such file or directory"
            assert view.find_port(name="late") is None and view.bridges() == []

            await asyncio.to_thread(ovs.start)
            await asyncio.to_thread(ovs.add_bridge, "br0")
            await asyncio.to_thread(add_internal, ovs, "br0", "late")
            # get_schema retries at most a few seconds apart.
            await changes.until(lambda: view.connected and view.find_port(name="late") is not None, timeout=10.0)
            assert view.last_error is None
            assert True in changes.seen_connected
            assert await view.start(timeout=0.1)  # started already: just says it is connected
        finally:
            view.close()

    with caplog.at_level(logging.INFO, logger="rarp_announce.resolve"):
        run(scenario)
    messages = [r.getMessage() for r in caplog.records if r.name == "rarp_announce.resolve"]
    # Logged once each way, however many retries there were.
    assert sum("unreachable" in m for m in messages) == 1
    assert sum(m.endswith("reachable") and "unreachable" not in m for m in messages) == 1


def test_view_reconnects_after_ovsdb_server_restarts(ovs):
    add_internal(ovs, "br0", "before")

    async def scenario() -> None:
        changes = Changes()
        view = open_view(ovs, changes)
        try:
            assert await view.start(timeout=5.0)
            assert view.find_port(name="before") is not None

            await asyncio.to_thread(ovs.stop)
            await changes.until(lambda: not view.connected)
            assert view.last_error
            await asyncio.to_thread(ovs.start)
            await asyncio.to_thread(ovs.add_bridge, "br1")
            await asyncio.to_thread(add_internal, ovs, "br1", "after")
            # The Idl's reconnect FSM backs off 1 s, then up to 4 s.
            await changes.until(lambda: view.connected and view.find_port(name="after") is not None, timeout=12.0)
            assert view.find_port(name="after").bridge == "br1"
            assert view.is_bridge("br1") and view.last_error is None
            # and it keeps following after the reconnection
            await vsctl(ovs, "set", "port", "after", "tag=42")
            await changes.until(lambda: view.find_port(name="after").tag == 42)
            assert False in changes.seen_connected and changes.seen_connected[-1] is True
        finally:
            view.close()

    run(scenario)


def test_close_releases_the_connection(ovs):
    from rarp_announce.lab.netns import wait_until

    before = sessions(ovs)  # ovs-vswitchd's own

    async def scenario() -> None:
        view = open_view(ovs)
        assert await view.start(timeout=5.0)
        # One session while it runs: the get_schema connection is gone once the replica is in.
        assert await asyncio.to_thread(sessions, ovs) == before + 1
        view.close()
        view.close()
        assert not view.connected
        with pytest.raises(RuntimeError):
            await view.start()

    run(scenario)
    assert wait_until(lambda: sessions(ovs) == before, timeout=5.0)


def sessions(ovs) -> int:
    """ovsdb-server's count of client sessions (`memory/show` prints "sessions:N")."""
    out = ovs.appctl("-t", str(Path(ovs.rundir) / "ovsdb-server.ctl"), "memory/show")
    match = re.search(r"sessions:(\d+)", out)
    assert match, out
    return int(match.group(1))
