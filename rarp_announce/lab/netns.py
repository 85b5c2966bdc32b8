"""Test topologies in network namespaces the test makes itself, and captures inside them.

Every name carries this process's pid, so parallel or crashed runs never collide, and
`Topology.close()` removes everything (deleting a netns deletes its veths and bridges).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import NetNS, config as _pyroute2_config, netns

# pyroute2 makes and enters namespaces through a forked child that must answer within
# `default_communicate_timeout` (2 s in pyroute2 0.9, pyroute2/process.py); on a loaded machine a
# fork takes longer, the child is killed half-way and a test fails on its set-up, not on what it
# checks. Bounded generously instead: a stuck child still fails, it does not hang.
_pyroute2_config.default_communicate_timeout = 60

ETH_P_ALL = 0x0003
_BOUND = 60.0  # s for a `bridge` or `ip` command: 10 s timed out on a loaded machine
SOL_PACKET = 263
PACKET_AUXDATA = 8
SO_TIMESTAMPNS = 35
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
_AUXDATA = struct.Struct("IIIHHHH")  # status, len, snaplen, mac, net, vlan_tci, vlan_tpid


def unique(prefix: str) -> str:
    return f"rat{os.getpid() % 100000}{prefix}"


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block in netns `ns` (this thread only); sockets made here stay in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        yield
    finally:
        libc.setns(own, 0x40000000)
        os.close(own)
        os.close(target)


@dataclass
class Topology:
    """A 'physical switch' netns with a Linux bridge, and host netns each with a veth uplink.

    Host `h` has device `uplink` (its end) and bridge `br0` enslaving it, like a hypervisor
    whose bridge floods to its uplink; the switch port for host `h` is `port_<h>`.
    """

    hosts: Sequence[str] = ("a", "b")
    switch: str = field(init=False)
    ns: dict[str, str] = field(init=False, default_factory=dict)
    _made: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.switch = unique("sw")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        # Each name is recorded before it is made: a create that fails half-way (the namespace
        # file made, the child gone) is still removed by close(), or the next Topology of this
        # process, whose names are the same, would fail with "File exists".
        self._made.append(self.switch)
        netns.create(self.switch)
        with NetNS(self.switch) as sw:
            sw.link("add", ifname="switch", kind="bridge", br_stp_state=0, br_ageing_time=30000)
            switch_index = sw.link_lookup(ifname="switch")[0]
            for host in self.hosts:
                name = unique(host)
                self._made.append(name)
                netns.create(name)
                self.ns[host] = name
                sw.link("add", ifname=f"port_{host}", kind="veth", peer={"ifname": "uplink", "net_ns_fd": name})
                sw.link("set", ifname=f"port_{host}", master=switch_index, state="up")
                with NetNS(name) as h:
                    h.link("add", ifname="br0", kind="bridge", br_stp_state=0)
                    br = h.link_lookup(ifname="br0")[0]
                    h.link("set", ifname="uplink", master=br, state="up")
                    h.link("set", ifname="br0", state="up")
                    h.link("set", ifname="lo", state="up")
            sw.link("set", ifname="switch", state="up")

    def exec(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run argv inside host's netns (`host` may also be 'switch')."""
        ns = self.switch if host == "switch" else self.ns[host]
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)

    def popen(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        ns = self.switch if host == "switch" else self.ns[host]
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)

    def fdb_port(self, mac: str) -> str | None:
        """The switch port on which the switch bridge has learned `mac`, or None."""
        with NetNS(self.switch) as sw:
            names = {link["index"]: link.get("ifname") for link in sw.get_links()}
            for entry in sw.fdb("dump"):
                if entry.get("lladdr", "").lower() == mac.lower() and entry.get("master"):
                    return names.get(entry["ifindex"])
        return None

    def learn(self, host: str, mac: str) -> None:
        """Make the switch learn `mac` behind `host`: one plain frame from host's uplink."""
        send_raw(self.ns[host], "uplink", learning_frame(mac))

    def capture(self, host: str, device: str) -> "Capture":
        ns = self.switch if host == "switch" else self.ns[host]
        return Capture(ns, device)

    def close(self) -> None:
        for name in reversed(self._made):
            try:
                netns.remove(name)
            except OSError:
                pass
        self._made.clear()

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXPERIMENTAL_ETHERTYPE = 0x88B5  # IEEE 802 local experimental: no stack on any host answers or learns from it


def learning_frame(mac: str, vlan: int | None = None, to: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    """A minimum-size frame from `mac` to `to` (802.1Q-tagged when `vlan`) that a switch learns
    `mac` from and nothing else acts on: not an announcement, so it cannot pass for one."""
    tag = b"\x81\x00" + vlan.to_bytes(2, "big") if vlan else b""
    return bytes.fromhex(to.replace(":", "") + mac.replace(":", "")) + tag + EXPERIMENTAL_ETHERTYPE.to_bytes(2, "big") + bytes(46)


def send_raw(ns: str, device: str, frame: bytes) -> None:
    """Write one frame on `device` of netns `ns` (a test's own frame, not an announcement)."""
    with inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((device, 0))
        sock.send(frame)


def bridge_fdb(ns: str, bridge: str) -> list[tuple[str, str]]:
    """(port, MAC) of every MAC Linux bridge `bridge` in netns `ns` has learned, in the kernel's order."""
    done = subprocess.run(["ip", "netns", "exec", ns, "bridge", "-j", "fdb", "show", "br", bridge],
                          capture_output=True, text=True, timeout=_BOUND)
    learned = []
    for entry in json.loads(done.stdout or "[]"):
        # Permanent entries are the ports' own addresses, not something the bridge learned.
        if entry.get("master") == bridge and "permanent" not in entry.get("state", "") and entry.get("mac"):
            learned.append((entry.get("ifname", ""), entry["mac"].lower()))
    return learned


def bridge_fdb_states(ns: str, bridge: str) -> dict[str, tuple[str, str]]:
    """MAC -> (port, state) of every entry of Linux bridge `bridge` in netns `ns`, the ports' own
    permanent ones included; state is "dynamic" for a learned (or user-added dynamic) entry, else
    what the kernel says ("static", "permanent")."""
    done = subprocess.run(["ip", "netns", "exec", ns, "bridge", "-j", "fdb", "show", "br", bridge],
                          capture_output=True, text=True, timeout=_BOUND)
    found: dict[str, tuple[str, str]] = {}
    for entry in json.loads(done.stdout or "[]"):
        if entry.get("master") == bridge and entry.get("mac") and "vlan" not in entry:
            found[entry["mac"].lower()] = (entry.get("ifname", ""), entry.get("state") or "dynamic")
    return found


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` s pass; the last check is after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def capture_socket(ns: str, device: str | None = None, *, rcvbuf: int | None = None) -> socket.socket:
    """A packet socket in netns `ns` (on `device`, or all devices) that keeps VLAN tags and kernel stamps."""
    with inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if device is not None:
        sock.bind((device, ETH_P_ALL))
    sock.settimeout(0.05)
    return sock


def receive_frame(sock: socket.socket) -> tuple[float, bytes, tuple]:
    """(kernel timestamp, frame with its 802.1Q tag put back, packet address) of the next frame."""
    data, ancillary, _flags, address = sock.recvmsg(65535, 1024)
    stamp = time.time()
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", payload[:16])
            stamp = sec + nsec / 1e9
        elif level == SOL_PACKET and kind == PACKET_AUXDATA:
            # The kernel strips the tag before packet sockets see the frame; auxdata keeps it.
            status, _l, _s, _m, _n, tci, tpid = _AUXDATA.unpack(payload[: _AUXDATA.size])
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return stamp, data, address


def ethertype_of(frame: bytes) -> int:
    """The ethertype after any 802.1Q tag."""
    return int.from_bytes(frame[16:18] if frame[12:14] == b"\x81\x00" else frame[12:14], "big")


@dataclass(frozen=True)
class Captured:
    time: float  # kernel receive timestamp, wall clock
    frame: bytes  # with the 802.1Q tag put back where the kernel stripped it


class Capture:
    """A packet socket in a netns, with PACKET_AUXDATA so stripped VLAN tags are restored."""

    def __init__(self, ns: str, device: str) -> None:
        self.sock = capture_socket(ns, device)

    def frames(self, ethertype: int = 0x8035, *, count: int | None = None, timeout: float = 3.0) -> list[Captured]:
        """Frames of `ethertype` (tagged or not) until `count` arrive or `timeout` passes."""
        found: list[Captured] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (count is None or len(found) < count):
            try:
                stamp, data, address = receive_frame(self.sock)
            except socket.timeout:
                continue
            if address[2] != socket.PACKET_OUTGOING and ethertype_of(data) == ethertype:
                found.append(Captured(stamp, data))
        return found

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
