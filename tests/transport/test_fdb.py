"""The destination bridge's own FDB, on a real Linux bridge in network namespaces of this test.

    client netns:  sw0 ==veth== up0  (uplink)  \\
    host netns:                        br0  (STP off)
    guest netns:   g0  ==veth== vnet0 (the guest's tap) /

The client first teaches br0 the guest's MAC on the uplink (the earlier floods of a previous
stay elsewhere), then sends unicast frames for the guest. What reaches the guest is counted on
g0; the FDB is read back with iproute2's `bridge -j fdb show`, an independent decoder of what
the kernel holds. VLAN-filtering bridges (one entry per VLAN, NDA_VLAN) cannot be tried on this
kernel: it refuses `vlan_filtering 1`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from rarp_announce.announce.engine import Announcer
from rarp_announce.schedule import Schedule
from rarp_announce.errors import DeviceError
from rarp_announce.lab.netns import inside, learning_frame, send_raw, unique, wait_until
from rarp_announce.model import BridgePort, FrameEvent, Target
from rarp_announce.transport.fdb import BridgeFdb
from rarp_announce.transport.wire import WireSink
from tests.conftest import CLI

MAC = "52:54:00:aa:00:01"
CLIENT_MAC = "52:54:00:cc:00:01"
PROBE_TYPE = 0x88B5  # IEEE local experimental ethertype: nothing on the path acts on it
TARGET = Target(MAC, "br0", None, "bridge", "vnet0", bridge_port=BridgePort("br0", "vnet0"))


@dataclass
class Net:
    host: str
    client: str
    guest: str

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.host, *args], capture_output=True, text=True, timeout=10,
                              check=True)

    def entry(self, mac: str = MAC) -> dict | None:
        """The bridge's entry for `mac` as iproute2 decodes it."""
        entries = json.loads(self.ip("bridge", "-j", "fdb", "show", "br", "br0").stdout or "[]")
        return next((e for e in entries if e.get("mac") == mac and e.get("master") == "br0"), None)

    def learn_on_uplink(self, mac: str = MAC) -> None:
        send_raw(self.client, "sw0", learning_frame(mac))
        assert wait_until(lambda: (self.entry(mac) or {}).get("ifname") == "up0", 3.0), self.entry(mac)

    def delivered(self, count: int = 20) -> int:
        """Send `count` unicast frames for the guest from the client; how many reached the guest."""
        from rarp_announce.lab.netns import capture_socket

        sock = capture_socket(self.guest, "g0")
        try:
            sock.settimeout(0.2)
            probe = bytes.fromhex(MAC.replace(":", "")) + bytes.fromhex(CLIENT_MAC.replace(":", "")) + \
                PROBE_TYPE.to_bytes(2, "big") + bytes(46)
            for _ in range(count):
                send_raw(self.client, "sw0", probe)
            got = 0
            deadline = time.monotonic() + 2.0
            while got < count and time.monotonic() < deadline:
                try:
                    frame = sock.recv(2048)
                except OSError:
                    break
                if frame[12:14] == PROBE_TYPE.to_bytes(2, "big") and frame[:6] == probe[:6]:
                    got += 1
            return got
        finally:
            sock.close()


@pytest.fixture
def net(root_netns) -> Iterator[Net]:
    names = Net(unique("fh"), unique("fc"), unique("fg"))
    made: list[str] = []
    try:
        for name in (names.host, names.client, names.guest):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
            made.append(name)
        steps = [
            ["ip", "-n", names.host, "link", "add", "br0", "type", "bridge", "stp_state", "0"],
            ["ip", "-n", names.host, "link", "add", "up0", "type", "veth", "peer", "name", "sw0", "netns", names.client],
            ["ip", "-n", names.host, "link", "add", "vnet0", "type", "veth", "peer", "name", "g0", "netns", names.guest],
            ["ip", "-n", names.host, "link", "set", "up0", "master", "br0"],
            ["ip", "-n", names.host, "link", "set", "vnet0", "master", "br0"],
        ] + [["ip", "-n", names.host, "link", "set", dev, "up"] for dev in ("br0", "up0", "vnet0")] + [
            ["ip", "-n", names.client, "link", "set", "sw0", "up"],
            ["ip", "-n", names.guest, "link", "set", "g0", "up"],
        ]
        for step in steps:
            subprocess.run(step, check=True, timeout=10, capture_output=True)
        # The ports forward once the bridge says so (STP off: at once, with carrier).
        assert wait_until(lambda: "forwarding" in subprocess.run(
            ["ip", "netns", "exec", names.host, "bridge", "link", "show", "dev", "vnet0"],
            capture_output=True, text=True, timeout=10).stdout, 5.0)
        yield names
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _claim(net: Net, target: Target = TARGET) -> str:
    with inside(net.host):
        fdb = BridgeFdb()
        try:
            assert asyncio.run(fdb.prepare(target)) is None
            return fdb.claim(target)
        finally:
            fdb.close()


def test_the_guests_mac_learned_on_the_uplink_is_moved_to_its_tap_dynamic_and_traffic_follows(net: Net) -> None:
    net.learn_on_uplink()
    assert net.delivered() == 0, "br0 sends the guest's traffic back to the uplink it came from"
    assert _claim(net) == f"set {MAC} on vnet0 dynamic (was on up0)"
    entry = net.entry()
    assert entry is not None and entry["ifname"] == "vnet0"
    assert "state" not in entry or entry["state"] not in ("permanent", "static"), entry  # dynamic: iproute2 prints no state
    assert net.delivered() == 20
    # Dynamic, so it still roams: the MAC showing up behind the uplink moves it back.
    net.learn_on_uplink()


def test_an_entry_on_the_guests_port_is_left_alone(net: Net) -> None:
    assert _claim(net) == f"set {MAC} on vnet0 dynamic"  # none before: written
    assert _claim(net) == "already on vnet0"
    assert net.entry()["ifname"] == "vnet0"


@pytest.mark.parametrize("state", ["static", "permanent"])
def test_a_static_or_permanent_entry_is_never_replaced(net: Net, state: str) -> None:
    """What libvirt (macTableManager='libvirt') or an operator set stays as it is."""
    net.ip("bridge", "fdb", "replace", MAC, "dev", "up0", "master", state)
    assert _claim(net) == f"left the {state} entry on up0 as it is (set by libvirt or an operator)"
    entry = net.entry()
    assert (entry["ifname"], entry["state"]) == ("up0", state)


def test_a_port_that_cannot_learn_refuses_and_says_why(net: Net) -> None:
    subprocess.run(["ip", "-n", net.guest, "link", "set", "g0", "down"], check=True, timeout=10)  # no carrier
    assert wait_until(lambda: "disabled" in net.ip("bridge", "link", "show", "dev", "vnet0").stdout, 5.0)
    with pytest.raises(DeviceError) as caught:
        _claim(net)
    assert caught.value.device == "br0:vnet0"
    assert "port vnet0 cannot learn now" in caught.value.reason
    assert net.entry() is None


def test_a_missing_port_is_named(net: Net) -> None:
    target = Target(MAC, "br0", None, "bridge", "vnet9", bridge_port=BridgePort("br0", "vnet9"))
    with inside(net.host):
        fdb = BridgeFdb()
        try:
            assert asyncio.run(fdb.prepare(target)) == "the guest's port vnet9 does not exist (yet)"
            with pytest.raises(DeviceError) as caught:
                fdb.claim(target)
        finally:
            fdb.close()
    assert caught.value.reason == "br0 or the guest's port vnet9 does not exist"


def test_without_cap_net_admin_the_write_is_refused_with_the_capability_named(net: Net) -> None:
    net.learn_on_uplink()
    script = (
        "import asyncio\n"
        "from rarp_announce.transport.fdb import BridgeFdb\n"
        "from rarp_announce.model import BridgePort, Target\n"
        "from rarp_announce.errors import DeviceError\n"
        f"t = Target({MAC!r}, 'br0', None, 'bridge', 'vnet0', bridge_port=BridgePort('br0', 'vnet0'))\n"
        "f = BridgeFdb()\n"
        "asyncio.run(f.prepare(t))\n"
        "try:\n    print(f.claim(t))\nexcept DeviceError as e:\n    print('refused:', e.reason)\n"
    )
    done = subprocess.run(["ip", "netns", "exec", net.host, "setpriv", "--bounding-set", "-net_admin",
                           "--inh-caps", "-net_admin", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("refused: writing the bridge FDB needs CAP_NET_ADMIN (root, or the systemd unit's "
                                   "capability)")
    assert net.entry()["ifname"] == "up0"


def test_the_fdb_step_comes_before_the_first_frame_once_per_burst_and_a_refusal_keeps_the_frames(net: Net) -> None:
    net.learn_on_uplink()
    events: list[FrameEvent] = []
    other = Target("52:54:00:aa:00:02", "br0", None, "bridge", "vnet9", bridge_port=BridgePort("br0", "vnet9"))

    async def run() -> None:
        sink = WireSink()
        announcer = Announcer(sink, observers=[events.append])
        try:
            assert await announcer.prepare([TARGET, other]) == {}
            announcer.announce([TARGET, other], Schedule(initial_ms=10, step_ms=10, rounds=3, repeat=2,
                                                         repeat_interval_s=0.1))
            await announcer.drain()
        finally:
            sink.close()

    with inside(net.host):
        asyncio.run(run())
    ours = [(e.type, e.burst, e.round) for e in events if e.target == TARGET]
    assert ours == [("fdb", 1, 1), ("rarp", 1, 1), ("rarp", 1, 2), ("rarp", 1, 3),
                    ("fdb", 2, 1), ("rarp", 2, 1), ("rarp", 2, 2), ("rarp", 2, 3)]
    fdb = [e for e in events if e.type == "fdb" and e.target == TARGET]
    assert [e.detail for e in fdb] == [f"set {MAC} on vnet0 dynamic (was on up0)", "already on vnet0"]
    refused = [e for e in events if e.target == other]
    assert refused[0].type == "fdb" and refused[0].error == "br0 or the guest's port vnet9 does not exist"
    assert [e.error for e in refused if e.type == "rarp"] == [None] * 6  # its frames still left
    assert net.entry()["ifname"] == "vnet0"


def test_the_fdb_is_written_at_the_arrival_never_at_the_prepare_phase(net: Net) -> None:
    """Before RESUMED the guest still runs on the source: preparing (STARTED/MIGRATED, a hook's
    hand-off) must leave the bridge sending its traffic to the uplink."""
    from rarp_announce.announce.arrivals import ArrivalSettings, ArrivalTable
    from rarp_announce.config import Config
    from rarp_announce.resolve.host import HostResolver

    net.learn_on_uplink()
    uuid = "5a3f0b1e-0000-4000-8000-000000000001"
    xml = (f"<domain type='kvm'><name>g</name><uuid>{uuid}</uuid><devices><interface type='bridge'>"
           f"<mac address='{MAC}'/><source bridge='br0'/><target dev='vnet0'/></interface></devices></domain>")
    config = Config()
    seen: dict[str, object] = {}

    async def run() -> None:
        sink = WireSink()
        table = ArrivalTable(Announcer(sink), HostResolver(lambda: config), ArrivalSettings.from_config(config))
        try:
            entry = await table.expect(uuid, "g", xml=xml, source="hook")
            assert entry.targets and entry.targets[0].bridge_port == BridgePort("br0", "vnet0")
            seen["prepared"] = net.entry()["ifname"]
            table.arrive(uuid, "g", trigger="test")
            seen["arrived"] = net.entry()["ifname"]  # the first round left inside arrive()
            await table.announcer.drain()
        finally:
            table.close()
            sink.close()

    with inside(net.host):
        asyncio.run(run())
    assert seen == {"prepared": "up0", "arrived": "vnet0"}
    assert net.delivered() == 20


def test_send_with_port_on_a_linux_bridge_writes_the_entry_and_dry_run_only_prints_it(net: Net) -> None:
    net.learn_on_uplink()
    dry = subprocess.run(["ip", "netns", "exec", net.host, *CLI, "send", MAC, "--iface", "br0", "--port", "vnet0",
                          "--rounds", "1", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"fdb replace {MAC} dev vnet0 master dynamic (not written)" in dry.stdout.splitlines()[0]
    assert net.entry()["ifname"] == "up0"
    real = subprocess.run(["ip", "netns", "exec", net.host, *CLI, "send", MAC, "--iface", "br0", "--port", "vnet0",
                           "--rounds", "1"], capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[0] == f"bridge FDB on br0:vnet0: set {MAC} on vnet0 dynamic (was on up0)"
    assert net.entry()["ifname"] == "vnet0"
    assert net.delivered() == 20
    wrong = subprocess.run(["ip", "netns", "exec", net.host, *CLI, "send", MAC, "--iface", "br0", "--port", "up9"],
                           capture_output=True, text=True, timeout=60)
    assert (wrong.returncode, wrong.stderr.strip()) == (
        2, "rarp-announce: error: --port up9: no such device on this host (check: bridge link show master br0)")


def test_vouched_addresses_become_dynamic_neighbours_on_the_svi_in_its_subnet_only(net: Net) -> None:
    """EVPN MAC+IP routes come from the SVI's neighbour table; the host learns nothing from its
    own GARP, so the vouched addresses are written there, dynamic, never over a static entry."""
    net.ip("ip", "addr", "add", "192.0.2.1/24", "dev", "br0")
    net.ip("ip", "addr", "add", "2001:db8:5::1/64", "dev", "br0", "nodad")
    net.ip("ip", "neigh", "replace", "192.0.2.11", "lladdr", "52:54:00:ee:ee:ee", "dev", "br0", "nud", "permanent")
    # What zebra installs for an address behind a remote VTEP: NOARP, but the control plane's
    # (extern_learn), not an operator's: the guest is here now, so it is replaced.
    net.ip("ip", "neigh", "replace", "192.0.2.12", "lladdr", MAC, "dev", "br0", "nud", "noarp", "extern_learn")
    target = Target(MAC, "br0", None, "bridge", "vnet0", bridge_port=BridgePort("br0", "vnet0"),
                    neighbours=("192.0.2.10", "192.0.2.11", "192.0.2.12", "2001:db8:5::10", "198.51.100.7"))

    async def run() -> str:
        sink = WireSink()
        try:
            await sink.prepare(target, [])
            return sink.claim(target)
        finally:
            sink.close()

    with inside(net.host):
        detail = asyncio.run(run())
    assert detail == (f"set {MAC} on vnet0 dynamic; neighbour 192.0.2.10 -> {MAC} on br0; "
                      "left the static neighbour 192.0.2.11 on br0 as it is; "
                      f"neighbour 192.0.2.12 -> {MAC} on br0; neighbour 2001:db8:5::10 -> {MAC} on br0")
    shown = {(e["dst"], e.get("lladdr"), tuple(e.get("state", []))) for e in json.loads(
        net.ip("ip", "-j", "neigh", "show", "dev", "br0").stdout)}
    assert ("192.0.2.10", MAC, ("REACHABLE",)) in shown
    assert ("2001:db8:5::10", MAC, ("REACHABLE",)) in shown
    assert ("192.0.2.11", "52:54:00:ee:ee:ee", ("PERMANENT",)) in shown
    assert ("192.0.2.12", MAC, ("REACHABLE",)) in shown  # no longer NOARP nor extern_learn
    assert not any(dst == "198.51.100.7" for dst, _m, _s in shown)  # in no SVI's subnet: nothing written


def test_the_answer_is_read_as_pyroute2_decodes_it(net: Net) -> None:
    """The hot path reads the fixed ndmsg header with struct: checked against pyroute2's decoder."""
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    from rarp_announce.transport import _rtnl

    net.ip("bridge", "fdb", "replace", MAC, "dev", "up0", "master", "static")
    with inside(net.host):
        rtnl = _rtnl.Rtnl()
        try:
            import socket

            request = rtnl._message(_rtnl.RTM_GETNEIGH, _rtnl.NLM_F_REQUEST, _rtnl.AF_BRIDGE, 0, 0, 0,
                                    [("NDA_LLADDR", MAC), ("NDA_MASTER", socket.if_nametoindex("br0"))])
            answer = rtnl._request(request, "br0")
            up0 = socket.if_nametoindex("up0")
        finally:
            rtnl.close()
    assert answer is not None
    decoded = ndmsg(answer)
    decoded.decode()
    assert _rtnl.ndm_place(answer) == (decoded["ifindex"], decoded["state"]) == (up0, _rtnl.NUD_NOARP)
    assert decoded.get_attr("NDA_LLADDR") == MAC


def test_an_arrival_prepared_from_an_xml_without_the_tap_takes_the_fdb_step_from_the_live_xml(
        net: Net, libvirt_module) -> None:
    """A hook hands over libvirt's migratable XML, which names no tap (libvirt drops auto-named
    <target dev>): the first round goes out without the step, and the reconcile that reads the
    live XML right after the arrival takes it, once: the FDB entry and the SVI neighbour of the
    vouched address both (a waiter that connects after the resume, on a loaded host, announces
    from the hand-off's XML; the neighbour is what EVPN's MAC+IP route comes from)."""
    from rarp_announce.resolve.addresses import METADATA_NS

    from rarp_announce.announce.arrivals import ArrivalSettings, ArrivalTable
    from rarp_announce.config import Config
    from rarp_announce.resolve.host import HostResolver

    uuid = "5a3f0b1e-0000-4000-8000-0000000000aa"
    migratable = (f"<domain type='test'><name>hx</name><uuid>{uuid}</uuid><memory>65536</memory><os><type>hvm</type>"
                  f"</os><metadata><ra:addresses xmlns:ra='{METADATA_NS}'><ra:interface mac='{MAC}'>"
                  "<ra:ip address='192.0.2.10'/></ra:interface></ra:addresses></metadata>"
                  f"<devices><interface type='bridge'><mac address='{MAC}'/><source bridge='br0'/></interface>"
                  "</devices></domain>")
    conn = libvirt_module.open("test:///default")
    dom = conn.createXML(migratable, 0)
    try:
        tap = dom.XMLDesc(0).split("<target dev='")[1].split("'")[0]  # the test driver's own name
        net.ip("ip", "link", "set", "vnet0", "name", tap)
        net.learn_on_uplink()
        net.ip("ip", "addr", "add", "192.0.2.1/24", "dev", "br0")  # br0 is the SVI of 192.0.2.0/24
        events: list[FrameEvent] = []
        config = Config()

        async def run() -> None:
            sink = WireSink()
            table = ArrivalTable(Announcer(sink, observers=[events.append]), HostResolver(lambda: config,
                                 connection=lambda: conn), ArrivalSettings.from_config(config))
            try:
                entry = await table.expect(uuid, "hx", xml=migratable, source="handoff")
                assert [t.bridge_port for t in entry.targets] == [None]
                table.arrive(uuid, "hx", trigger="test")
                await table.settled(uuid)
                await table.announcer.drain()
                await table.reconcile(uuid, reread=True)  # again: nothing more
            finally:
                table.close()
                sink.close()

        with inside(net.host):
            asyncio.run(run())
    finally:
        dom.destroy()
        conn.close()
    steps = [e for e in events if e.type == "fdb"]
    assert [(s.detail, s.error) for s in steps] == [
        (f"set {MAC} on {tap} dynamic (was on up0); neighbour 192.0.2.10 -> {MAC} on br0", None)]
    assert steps[0].target.bridge_port == BridgePort("br0", tap)
    assert sum(e.type == "rarp" for e in events) == 5  # one schedule
    assert net.entry()["ifname"] == tap
    shown = json.loads(net.ip("ip", "-j", "neigh", "show", "dev", "br0").stdout)
    assert [(e["dst"], e.get("lladdr"), e.get("state")) for e in shown] == [("192.0.2.10", MAC, ["REACHABLE"])]
