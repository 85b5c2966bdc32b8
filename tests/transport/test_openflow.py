"""The OpenFlow transport against a real ovs-vswitchd (userspace datapath) in a netns of each
test's own, and against a scripted fake switch where OVS cannot be made to misbehave.

Topology of the OVS tests: bridge `brt` (netdev datapath) with `guestport` (access port, VLAN
100, ofport 5) and `uplink` (trunk, ofport 1), both veths whose peers (`guest-peer`,
`uplink-peer`) stay in the netns for capture. Nothing is ever sent on the host's interfaces.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rarp_announce.frames import rarp_frame
from rarp_announce.errors import DeviceError
from rarp_announce.lab.netns import Capture, unique, wait_until
from rarp_announce.lab.ovs import PrivateOVS
from rarp_announce.model import OvsPort, Target
from rarp_announce.transport import _ofproto as ofp
from rarp_announce.transport.openflow import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    OpenFlowConnection,
    OpenFlowSink,
    default_endpoint,
)

from tests.conftest import require

LOGGER = "rarp_announce.transport"
MAC = "52:54:00:12:34:56"
MAC_BYTES = bytes.fromhex(MAC.replace(":", ""))
FRAME = rarp_frame(MAC_BYTES)


def _target(port: str = "guestport", ofport: int | None = 5, bridge: str = "brt", mac: str = MAC) -> Target:
    return Target(mac=mac, device=bridge, vlan=100, kind="openvswitch", interface="vnet0",
                  ovs=OvsPort(bridge, port, ofport), tagged=False)


def _frame(mac: str) -> bytes:
    return rarp_frame(bytes.fromhex(mac.replace(":", "")))


async def _until(condition: Callable[[], bool], timeout: float = 60.0, step: float = 0.02) -> bool:
    """Wait, without blocking the loop, until `condition` holds: at most `timeout` s."""
    for _ in range(int(timeout / step) + 1):
        if condition():
            return True
        await asyncio.sleep(step)
    return condition()


def _opened(sink: OpenFlowSink, bridge: str = "brt") -> OpenFlowConnection:
    connection = sink.connection(bridge)
    assert connection is not None, f"no OpenFlow connection to {bridge}"
    return connection


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


# -- a real Open vSwitch ---------------------------------------------------------------------


@dataclass
class Lab:
    ns: str
    ovs: PrivateOVS

    @property
    def rundir(self) -> Path:
        return self.ovs.rundir

    def endpoint_for(self, bridge: str) -> str:
        return default_endpoint(bridge, str(self.rundir))

    def fdb(self, bridge: str = "brt") -> list[tuple[str, int, str]]:
        """(port number or LOCAL, VLAN, MAC) from `ovs-appctl fdb/show`; unlike PrivateOVS.fdb it
        needs no `ovs-ofctl show`, which speaks OpenFlow 1.0 and fails on a 1.3-only bridge."""
        entries = []
        for line in self.ovs.appctl("fdb/show", bridge).splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                entries.append((fields[0], int(fields[1]), fields[2].lower()))
        return entries

    def learned(self, mac: str, port: int = 5, vlan: int = 100, bridge: str = "brt") -> bool:
        """Whether the bridge learns `mac` on OpenFlow port `port` in `vlan` (a bound of 60 s, not a figure)."""
        return wait_until(lambda: (str(port), vlan, mac) in self.fdb(bridge), timeout=60)


def _veths(ns: str, *pairs: tuple[str, str]) -> None:
    from pyroute2 import NetNS

    with NetNS(ns) as net:
        for port, peer in pairs:
            net.link("add", ifname=port, kind="veth", peer=peer)
            net.link("set", ifname=port, state="up")
            net.link("set", ifname=peer, state="up")


@pytest.fixture
def lab(root_netns, tmp_path) -> Iterator[Lab]:
    for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl", "ovs-ofctl"):
        require(shutil.which(tool) is not None, f"needs Open vSwitch's {tool}")
    from pyroute2 import netns

    name = unique("of")
    netns.create(name)
    try:
        _veths(name, ("guestport", "guest-peer"), ("uplink", "uplink-peer"))
        ovs = PrivateOVS(tmp_path / "ovs", netns=name)
        try:
            ovs.start()
            ovs.add_bridge("brt")
            ovs.add_port("brt", "guestport", ofport=5, tag=100)
            ovs.add_port("brt", "uplink", ofport=1, trunks=[100])
            yield Lab(name, ovs)
        finally:
            ovs.stop()
    finally:
        netns.remove(name)


def test_packet_out_enters_as_the_guest_port(lab):
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    async def inject() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            await sink.prepare(_target(), [FRAME])
            assert _opened(sink, "brt").version == ofp.OFP15  # OVS's default allows 1.0-1.5
            sink.send(_target(), FRAME)
        finally:
            sink.close()

    with Capture(lab.ns, "uplink-peer") as uplink, Capture(lab.ns, "guest-peer") as guest:
        asyncio.run(inject())
        got = [c.frame for c in uplink.frames(count=1, timeout=3)]
        back_to_guest = guest.frames(timeout=0.3)

    # Out of the trunk exactly as the guest's own frame would leave: tag 100 inserted, nothing else.
    tagged = FRAME[:12] + b"\x81\x00\x00\x64" + FRAME[12:]
    assert got == [tagged] and tagged == rarp_frame(MAC_BYTES, 100)
    packet = Ether(got[0])
    assert packet.src == MAC and packet.dst == "ff:ff:ff:ff:ff:ff"
    assert packet[Dot1Q].vlan == 100 and packet[Dot1Q].type == 0x8035
    arp = ARP(bytes(packet[Dot1Q].payload))
    assert (arp.op, arp.hwsrc, arp.hwdst, arp.psrc, arp.pdst) == (3, MAC, MAC, "0.0.0.0", "0.0.0.0")
    assert back_to_guest == []  # the bridge treats it as coming from the guest port
    # Learned on the guest's port in its access VLAN, never on LOCAL (the bridge's own port).
    assert lab.learned(MAC)
    assert [port for port, _vlan, mac in lab.fdb() if mac == MAC] == ["5"]  # not "LOCAL"
    assert lab.ovs.fdb_port("brt", MAC, 100) == "guestport"


def test_every_version_injects_and_lists_ports(lab):
    for version in ofp.VERSIONS:
        mac = f"52:54:00:00:10:{version:02x}"

        async def run() -> None:
            connection = OpenFlowConnection("brt", lab.endpoint_for("brt"), versions=(version,))
            try:
                await connection.connect(3)
                assert connection.version == version
                assert await connection.port_number("guestport") == 5
                assert await connection.port_number("uplink") == 1
                assert await connection.port_number("brt") is None  # LOCAL is never offered
                assert await connection.port_number("nosuchport") is None
                connection.send(ofp.packet_out(version, 5, _frame(mac)))
            finally:
                connection.close()

        asyncio.run(run())
        assert lab.learned(mac), f"OpenFlow {ofp.version_name(version)}"


@pytest.mark.parametrize(("protocols", "version"), [("OpenFlow13", ofp.OFP13), ("OpenFlow15", ofp.OFP15)])
def test_bridge_allowing_one_version(lab, protocols, version):
    lab.ovs.vsctl("set", "bridge", "brt", f"protocols={protocols}")

    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            assert await sink.port_number("brt", "guestport") == 5
            await sink.prepare(_target(), [FRAME])
            assert _opened(sink, "brt").version == version
            sink.send(_target(), FRAME)
        finally:
            sink.close()

    asyncio.run(run())
    assert lab.learned(MAC)


def test_no_common_version_says_what_the_bridge_allows(lab):
    lab.ovs.vsctl("set", "bridge", "brt", "protocols=OpenFlow15")

    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for, versions=(ofp.OFP10, ofp.OFP13))
        try:
            with pytest.raises(DeviceError) as error:
                await sink.prepare(_target(), [FRAME])
            text = str(error.value)
            assert text.startswith("device 'brt:guestport': bridge brt allows only OpenFlow 1.5 "
                                   "and we offered 1.0, 1.3")
            assert "protocols" in text and "\n" not in text
            assert sink.connection("brt") is None
        finally:
            sink.close()

    asyncio.run(run())


def test_unknown_ofport_is_asked_of_the_bridge(lab):
    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            assert await sink.port_number("brt", "guestport") == 5
            assert await sink.port_number("brt", "nosuchport") is None
            unknown = _target(ofport=None)  # OVSDB unreachable: the resolver left it open
            await sink.prepare(unknown, [FRAME])
            sink.send(unknown, FRAME)
            with pytest.raises(DeviceError, match="bridge brt has no port named ghost"):
                await sink.prepare(_target("ghost", None), [FRAME])
        finally:
            sink.close()

    asyncio.run(run())
    assert lab.learned(MAC)


def _vswitchd_pid(lab: Lab) -> int:
    return int((lab.rundir / "ovs-vswitchd.pid").read_text().strip())


def _stop_vswitchd(lab: Lab) -> None:
    from rarp_announce.pids import wait_gone

    pid = _vswitchd_pid(lab)
    lab.ovs.appctl("exit")  # no --cleanup: the bridge comes back from the database as configured
    assert wait_gone(pid, 10.0)


def _start_vswitchd(lab: Lab) -> None:
    """The same command line PrivateOVS.start uses, on the same database."""
    ovs = lab.ovs
    subprocess.run(
        ["ip", "netns", "exec", lab.ns, "ovs-vswitchd", f"unix:{ovs.rundir}/db.sock",
         f"--pidfile={ovs.rundir}/ovs-vswitchd.pid", f"--unixctl={ovs.rundir}/ovs-vswitchd.ctl",
         f"--log-file={ovs.logdir}/ovs-vswitchd.log", "--detach", "--no-chdir"],
        env=ovs.env, check=True, capture_output=True, timeout=30,
    )
    ovs.adopt()  # so that the fixture's stop() ends the new process


def test_vswitchd_restart_reconnects(lab, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    after = "52:54:00:00:20:01"

    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            await sink.prepare(_target(), [FRAME])
            await sink.prepare(_target(mac=after), [_frame(after)])
            sink.send(_target(), FRAME)
            connection = _opened(sink, "brt")

            await asyncio.to_thread(_stop_vswitchd, lab)
            assert await _until(lambda: not connection.connected)
            with pytest.raises(DeviceError) as error:
                sink.send(_target(mac=after), _frame(after))
            assert str(error.value) == ("device 'brt:guestport': OpenFlow connection to bridge brt is down; "
                                        "reconnecting")

            await asyncio.to_thread(_start_vswitchd, lab)
            await connection.wait_connected(60)  # backoff is capped at 2 s; a bound, not a figure
            assert _opened(sink, "brt") is connection
            sink.send(_target(mac=after), _frame(after))
        finally:
            sink.close()

    asyncio.run(run())
    assert lab.learned(after)
    assert len(_lines(caplog, "OpenFlow connection to bridge brt lost")) == 1
    assert _lines(caplog, "OpenFlow connection to bridge brt lost")[0].endswith("; reconnecting")
    assert len(_lines(caplog, "OpenFlow connection to bridge brt back")) == 1


def test_protocols_change_renegotiates_and_rebuilds(lab, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            await sink.prepare(_target(), [FRAME])
            connection = _opened(sink, "brt")
            assert connection.version == ofp.OFP15
            # ovs-vswitchd drops its connections when the allowed versions change.
            await asyncio.to_thread(lab.ovs.vsctl, "set", "bridge", "brt", "protocols=OpenFlow13")
            assert await _until(lambda: connection.connected and connection.version == ofp.OFP13)
            sink.send(_target(), FRAME)  # the 1.5 packet-out is rebuilt as 1.3 on the way
        finally:
            sink.close()

    asyncio.run(run())
    assert lab.learned(MAC)
    assert any("OpenFlow 1.3, was 1.5" in line for line in _lines(caplog, "back after"))


def test_a_bridge_going_away_leaves_the_others_alone(lab):
    _veths(lab.ns, ("guest2", "guest2-peer"))
    lab.ovs.add_bridge("brt2")
    lab.ovs.add_port("brt2", "guest2", ofport=7, tag=200)
    other = _target("guest2", 7, bridge="brt2", mac="52:54:00:00:30:01")
    other_frame = _frame(other.mac)

    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            await sink.prepare(_target(), [FRAME])
            await sink.prepare(other, [other_frame])
            gone = _opened(sink, "brt2")
            await asyncio.to_thread(lab.ovs.vsctl, "del-br", "brt2")
            assert await _until(lambda: not gone.connected)
            down = "^device 'brt2:guest2': OpenFlow connection to bridge brt2 is down"
            with pytest.raises(DeviceError, match=down):
                sink.send(other, other_frame)
            sink.send(_target(), FRAME)
            assert _opened(sink, "brt").connected and gone.reconnecting
            # A sink that never knew brt2 is told plainly that the bridge is not there.
            fresh = OpenFlowSink(lab.endpoint_for)
            with pytest.raises(DeviceError) as error:
                await fresh.prepare(other, [other_frame])
            fresh.close()
            assert str(error.value) == (
                f"device 'brt2:guest2': cannot reach bridge brt2's OpenFlow socket unix:{lab.rundir}/brt2.mgmt: "
                "No such file or directory (is ovs-vswitchd running and does the bridge exist?)")
        finally:
            sink.close()
        assert not gone.reconnecting  # close() ends the background reconnection too

    asyncio.run(run())
    assert lab.learned(MAC)


def test_openflow_errors_are_logged_once_and_reported(lab, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    # 0xff00 is a valid OF1.1+ port number that OVS (16-bit ports inside) can never have: its
    # packet-out is refused with an OFPT_ERROR, which is what this test needs.
    ghost = _target("ghost", 0xFF00)

    async def run() -> None:
        sink = OpenFlowSink(lab.endpoint_for)
        try:
            await sink.prepare(ghost, [FRAME])
            connection = _opened(sink, "brt")
            for _ in range(3):
                sink.send(ghost, FRAME)
                assert await _until(lambda: bool(connection.rejected))
                with pytest.raises(DeviceError, match="rejected an earlier packet-out for in_port 65280: "):
                    sink.send(ghost, FRAME)
            await sink.prepare(_target(), [FRAME])
            sink.send(_target(), FRAME)  # the connection itself is fine
        finally:
            sink.close()

    asyncio.run(run())
    logged = _lines(caplog, "OpenFlow error from bridge brt")
    assert len(logged) == 1
    assert f"in_port 65280 (port ghost), source MAC {MAC}" in logged[0]
    assert "OFPBMC_BAD_VALUE" in logged[0]  # OF1.5 carries in_port in a match
    assert lab.learned(MAC)


def test_real_ovs_echo_requests_are_answered(lab):
    """ovs-vswitchd probes an idle connection (5 s at the least) and drops it if unanswered."""
    rundir = lab.rundir
    lab.ovs.vsctl("set-controller", "brt", f"punix:{rundir}/brt.ctl",
                  "--", "set", "controller", "brt", "inactivity_probe=5000")
    lab.ovs.appctl("vlog/set", "rconn:file:dbg")

    async def run() -> None:
        assert await _until(lambda: (rundir / "brt.ctl").exists())
        connection = OpenFlowConnection("brt", f"unix:{rundir}/brt.ctl")
        try:
            await connection.connect(3)
            assert await _until(lambda: connection.echoes_answered >= 1, timeout=60, step=0.1)
            await asyncio.sleep(0.2)
            assert connection.connected
        finally:
            connection.close()

    asyncio.run(run())
    log = (lab.ovs.logdir / "ovs-vswitchd.log").read_text().splitlines()
    probe = next(i for i, line in enumerate(log) if "sending inactivity probe" in line)
    connection_name = log[probe].split("|")[-1].split(":")[0]
    # The reply arrived: rconn went back from IDLE to ACTIVE on that very connection.
    assert any(f"{connection_name}: entering ACTIVE" in line for line in log[probe + 1:])


# -- without Open vSwitch ------------------------------------------------------------------


def test_default_endpoint(monkeypatch):
    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    assert default_endpoint("ovsbr0") == "unix:/run/openvswitch/ovsbr0.mgmt"
    monkeypatch.setenv("OVS_RUNDIR", "/tmp/ovs")
    assert default_endpoint("br-int") == "unix:/tmp/ovs/br-int.mgmt"
    assert default_endpoint("br-int", "/var/run/x") == "unix:/var/run/x/br-int.mgmt"


def test_bad_endpoints_are_refused():
    for endpoint in ("ovsbr0", "unix:", "tcp:host", "tcp:host:0", "ssl:1.2.3.4:6653"):
        with pytest.raises(ValueError, match="unix:PATH or tcp:HOST:PORT"):
            OpenFlowConnection("br", endpoint)
    OpenFlowConnection("br", "tcp:[::1]:6653")


def test_missing_bridge_says_what_to_check(tmp_path):
    async def run() -> None:
        sink = OpenFlowSink(lambda bridge: default_endpoint(bridge, str(tmp_path)))
        try:
            with pytest.raises(DeviceError) as error:
                await sink.prepare(_target(bridge="nobr"), [FRAME])
            assert str(error.value) == (
                f"device 'nobr:guestport': cannot reach bridge nobr's OpenFlow socket "
                f"unix:{tmp_path}/nobr.mgmt: No such file or directory "
                "(is ovs-vswitchd running and does the bridge exist?)"
            )
            with pytest.raises(DeviceError, match="cannot reach bridge nobr's OpenFlow socket"):
                await sink.port_number("nobr", "guestport")
        finally:
            sink.close()

    asyncio.run(run())


def test_stale_socket_file_says_connection_refused(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "old.mgmt"))  # bound, never listening: what a crashed daemon leaves
    try:
        async def run() -> None:
            connection = OpenFlowConnection("old", f"unix:{tmp_path}/old.mgmt")
            with pytest.raises(ConnectionError, match=r"Connection refused \(is ovs-vswitchd running\?"):
                await connection.connect(1)

        asyncio.run(run())
    finally:
        stale.close()


def test_targets_that_are_not_ovs_ports_are_refused():
    async def run() -> None:
        sink = OpenFlowSink()
        plain = Target(mac=MAC, device="eth0")
        with pytest.raises(DeviceError, match="^device 'eth0': is not an Open vSwitch port"):
            await sink.prepare(plain, [FRAME])
        with pytest.raises(DeviceError, match="is not an Open vSwitch port"):
            sink.send(plain, FRAME)
        with pytest.raises(DeviceError, match="not prepared"):
            sink.send(_target(), FRAME)
        sink.close()

    asyncio.run(run())


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
"""What a FakeSwitch does with connection number n after its HELLO."""


class FakeSwitch:
    """A scripted OpenFlow peer on a unix socket: sends `hello`, then runs `script` per connection."""

    def __init__(self, path: Path, hello: bytes = ofp.hello([ofp.OFP13]),
                 script: Script | None = None,
                 send_hello: bool = True) -> None:
        self.path, self.hello, self.script, self.send_hello = path, hello, script, send_hello
        self.refusing = False  # close each new connection at once, before any HELLO
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists():
            self.path.unlink()
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.path.exists():
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            writer.close()
            return
        if self.send_hello:
            writer.write(self.hello)
        try:
            if self.script is not None:
                await self.script(reader, writer, self.accepted)
            else:
                await reader.read()  # until the client goes
        except (asyncio.CancelledError, ConnectionError, EOFError):
            pass  # asyncio.run() ending the test cancels a handler still reading: not a failure
        finally:
            writer.close()


async def _next_message(reader: asyncio.StreamReader, framer: ofp.Framer, backlog: list[bytes],
                        type_: int) -> bytes:
    """The next message of `type_` from the client (bounded by the caller's timeout)."""
    while True:
        while backlog:
            message = backlog.pop(0)
            if ofp.header(message).type == type_:
                return message
        data = await reader.read(4096)
        if not data:
            raise EOFError
        backlog.extend(framer.feed(data))


def test_echo_requests_are_answered_with_the_same_xid_and_payload(tmp_path):
    request = ofp.echo_request(ofp.OFP13, 0x55, b"are you there?")
    replies: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        framer, backlog = ofp.Framer(), list[bytes]()
        await _next_message(reader, framer, backlog, ofp.OFPT_HELLO)
        writer.write(request)
        replies.append(await _next_message(reader, framer, backlog, ofp.OFPT_ECHO_REPLY))
        await reader.read()

    async def run() -> None:
        switch = FakeSwitch(tmp_path / "fake.mgmt", script=script)
        await switch.start()
        connection = OpenFlowConnection("fake", f"unix:{switch.path}")
        try:
            await connection.connect(1)
            assert connection.version == ofp.OFP13
            assert await _until(lambda: bool(replies), timeout=60)
        finally:
            connection.close()
            switch.stop()
        assert connection.echoes_answered == 1

    asyncio.run(run())
    assert replies == [ofp.echo_reply(request)]
    assert replies[0] == bytes.fromhex("0403001600000055") + b"are you there?"


def test_lost_connection_logs_once_backs_off_and_comes_back(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            await reader.read()  # the first connection is closed right after HELLO; later ones stay

    async def run() -> None:
        switch = FakeSwitch(tmp_path / "fake.mgmt", script=script)
        await switch.start()
        connection = OpenFlowConnection("fake", f"unix:{switch.path}")
        try:
            await connection.connect(1)
            loop = asyncio.get_running_loop()
            before_loss = loop.time()
            switch.refusing = True  # before the loop runs again: no attempt can get through
            assert await _until(lambda: connection.reconnecting, timeout=60)
            down = "^OpenFlow connection to bridge fake is down; reconnecting$"
            with pytest.raises(ConnectionError, match=down):
                connection.send(ofp.echo_request(4))
            # No busy loop: the 4th failed attempt comes no sooner than the back-off's sum (0.05 s,
            # then 0.1, 0.2, 0.4 apart); a lower bound, which a slow machine can only exceed.
            assert await _until(lambda: len(_lines(caplog, "reconnection attempt")) >= 4, timeout=60)
            backoff = sum(min(BACKOFF_FIRST * 2 ** i, BACKOFF_MAX) for i in range(4))
            assert loop.time() - before_loss >= backoff
            attempts = len(_lines(caplog, "reconnection attempt"))
            switch.refusing = False
            await connection.wait_connected(60)
            assert connection.connected and switch.accepted >= attempts + 2
        finally:
            connection.close()
            switch.stop()

    asyncio.run(run())
    lost = _lines(caplog, "OpenFlow connection to bridge fake lost (")
    assert len(lost) == 1 and lost[0].endswith("); reconnecting")
    assert len(_lines(caplog, "OpenFlow connection to bridge fake back after")) == 1


def test_no_hello_times_out_with_a_clear_message(tmp_path):
    async def run() -> None:
        switch = FakeSwitch(tmp_path / "mute.mgmt", send_hello=False)
        await switch.start()
        try:
            with pytest.raises(ConnectionError) as error:
                await OpenFlowConnection("mute", f"unix:{switch.path}").connect(0.2)
            assert str(error.value) == (f"bridge mute's OpenFlow socket unix:{switch.path}: "
                                        "no OpenFlow HELLO within 0.2 s (is ovs-vswitchd overloaded or stuck?)")
        finally:
            switch.stop()

    asyncio.run(run())


def test_peer_with_only_unknown_versions_gets_hello_failed(tmp_path):
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        framer, backlog = ofp.Framer(), list[bytes]()
        await _next_message(reader, framer, backlog, ofp.OFPT_HELLO)
        received.append(await _next_message(reader, framer, backlog, ofp.OFPT_ERROR))

    async def run() -> None:
        future_only = ofp.hello([7])  # an OpenFlow 1.6-only peer
        switch = FakeSwitch(tmp_path / "new.mgmt", hello=future_only, script=script)
        await switch.start()
        try:
            with pytest.raises(ConnectionError, match="^bridge new allows only OpenFlow 1.6 and we offered "
                                                      "1.0, 1.1, 1.2, 1.3, 1.4, 1.5: no common version"):
                await OpenFlowConnection("new", f"unix:{switch.path}").connect(1)
            assert await _until(lambda: bool(received), timeout=60)
        finally:
            switch.stop()

    asyncio.run(run())
    type_, code, text = ofp.parse_error(received[0])
    assert (type_, code) == (ofp.OFPET_HELLO_FAILED, 0) and b"no common versions" in text


def test_prebuilt_messages_are_shared_and_rebuilt_for_a_new_version():
    """Same bridge, port and frame: one packet-out, rebuilt only when the version changes."""
    sink = OpenFlowSink()
    connection = OpenFlowConnection("brt", "unix:/nonexistent")
    transport = _FakeTransport()

    async def run() -> None:
        # As if prepare() had connected and negotiated 1.3.
        connection.version = ofp.OFP13
        connection._transport = transport  # type: ignore[assignment]
        sink._connections["brt"] = connection
        await sink.prepare(_target(), [FRAME, _frame("52:54:00:00:00:02")])
        await sink.prepare(_target(), [FRAME])
        assert len(sink._prebuilt) == 2
        sink.send(_target(), FRAME)
        connection.version = ofp.OFP15  # as after reconnecting to a bridge that now allows 1.5 only
        sink.send(_target(), FRAME)
        sink.close()

    asyncio.run(run())
    first, second = transport.written
    assert ofp.header(first).version == ofp.OFP13
    assert second == ofp.packet_out(ofp.OFP15, 5, FRAME, ofp.header(first).xid)


def test_a_stalled_bridge_is_refused_rather_than_buffered_without_end():
    connection = OpenFlowConnection("slow", "unix:/nonexistent")
    transport = _FakeTransport()
    connection._transport = transport  # type: ignore[assignment]
    message = ofp.packet_out(ofp.OFP13, 5, FRAME)
    transport.buffered = 5 << 20  # ovs-vswitchd stopped reading: 5 MiB queued
    congested = "^OpenFlow connection to bridge slow is congested: 5242880 bytes"
    with pytest.raises(ConnectionError, match=congested):
        for _ in range(10_000):
            connection.send(message)
    written = len(transport.written)
    assert 0 < written < (64 << 10) // len(message) + 1  # measured every 64 KiB, not on every write
    with pytest.raises(ConnectionError, match="congested"):
        connection.send(message)  # and again on each send while it lasts
    transport.buffered = 0
    connection.send(message)
    assert len(transport.written) == written + 1


class _FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_the_network_sink_asks_its_own_bridge_connection_for_port_numbers(lab):
    """What the resolvers ask when OVSDB cannot tell (Sink.port_number): the network sink the
    factory opens answers on the OpenFlow connection it then sends on; offline sinks never ask."""
    import io

    from rarp_announce.transport.factory import open_sink

    async def run() -> None:
        sink = open_sink(openflow_endpoint=lab.endpoint_for)
        try:
            assert await sink.port_number("brt", "guestport") == 5
            assert await sink.port_number("brt", "nosuchport") is None
            opened = sink.openflow.connection("brt")  # type: ignore[attr-defined]
            assert opened is not None
            target = _target(ofport=None)
            await sink.prepare(target, [FRAME])
            assert sink.openflow.connection("brt") is opened  # type: ignore[attr-defined]
            sink.send(target, FRAME)
        finally:
            sink.close()
        dry = open_sink(dry_run=True, openflow_endpoint=lab.endpoint_for, stream=io.StringIO())
        assert await dry.port_number("brt", "guestport") is None

    asyncio.run(run())
    assert lab.learned(MAC)
