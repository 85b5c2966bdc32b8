"""The lab's EVPN-VXLAN fabric (`Lab(fabric="evpn")`): both hosts are VTEPs, a third carries the client.

    underlay netns: Linux bridge `ul`, the fabric's IP network 10.78.0.0/24 (VXLAN only)
    host a, host b: br0 gets a VXLAN port (VNI 100, local 10.78.0.1 / .2, nolearning, bridge-port
                    learning off); br0's uplink0 to the switch is detached, so the guest's br0
                    vNIC is reachable only across the fabric; ovsbr0 stays on the switch as before
    VTEP c:         br0 with the VXLAN port (local 10.78.0.3) and port `cl` to the EVPN client
    EVPN client:    `client`, sending the br0 vNIC a frame every millisecond (traffic.py)

Each VTEP runs FRR's zebra + bgpd (frr.py): iBGP full mesh, `address-family l2vpn evpn` /
`advertise-all-vni`. zebra advertises a MAC as a type-2 route only while the local bridge's
FDB holds it on a local port, and the remote VTEPs install it on their VXLAN device (`dst
<VTEP>`); nothing is learned from the data plane across VXLAN (RFC 7432 section 9, RFC 8365).
After a live migration the fabric sends the guest's traffic to it again (rather than to the
source, or flooded once the source withdrew) only once the destination's bridge holds its MAC
on the guest's tap: QEMU's RARP entering through the tap does that, and
so does the entry rarp-announce writes there at RESUMED. The lab drops QEMU's RARPs at br0's
ingress (topology.py), so a move of VTEP c's FDB and of its type-2 route to the destination is
the announcer's doing: a MAC-mobility move (a higher sequence, RFC 7432 section 15) when the
destination advertised before the source withdrew, a fresh route when it came after.

What is watched on VTEP c, without polling: its kernel FDB through an rtnetlink socket
(`VtepFdbWatch`, also on the hosts for the local entry), and bgpd's inbound-update debug log, which
stamps each type-2 route and its MM sequence to the microsecond. Everything built here lives in
the lab's netns (its own: underlay, VTEP c, client) and workdir; `close()` stops the FRR
daemons by pid and removes the namespaces.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import netns

from rarp_announce.lab.frr import Frr, frr_missing
from rarp_announce.lab.netns import inside, wait_until
from rarp_announce.lab.traffic import ClientTraffic

if TYPE_CHECKING:
    from rarp_announce.lab.topology import LabTopology
    from rarp_announce.lab.traffic import Delivered

VNI = 100
VXLAN_DEVICE = f"vxlan{VNI}"
ASN = 65077
VTEPS = ("a", "b", "c")
VTEP_ADDRESS = {"a": "10.78.0.1", "b": "10.78.0.2", "c": "10.78.0.3"}
# Each VTEP's br0 is the VNI's SVI: an address in the guest's subnet (the lab guest declares
# 10.99.0.10 and fd00:99::10 on its br0 vNIC) makes zebra advertise MAC+IP routes from br0's
# neighbour table. In EVPN mode br0 is off the switch, so the router's 10.99.0.1 is not here.
SVI_ADDRESSES = {"a": ("10.99.0.201/24", "fd00:99::201/64"), "b": ("10.99.0.202/24", "fd00:99::202/64"),
                 "c": ("10.99.0.203/24", "fd00:99::203/64")}
UNDERLAY_BRIDGE = "ul"
UNDERLAY_DEVICE = "underlay"
CLIENT_PORT = "cl"
EVPN_CLIENT_DEVICE = "client"
PROBE_WINDOW = 1.5  # seconds after RESUMED in which the client's probes are counted
# Seconds, after the lab's settle, for VTEP c to follow: a bound, not a figure (bgpd and zebra on
# a loaded machine took longer than 3 s); a run without an announcer waits it out.
MOVE_WAIT = 60.0

AF_BRIDGE = 7
NETLINK_ROUTE = 0
RTMGRP_NEIGH = 0x4
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29

Narrate = Callable[[str], None]

EVPN_INTRO = """\
This run's hypervisors are EVPN-VXLAN VTEPs: the guest's Linux bridge has a VXLAN port instead
of an uplink to the switch, and FRR on each host advertises the MACs that bridge holds on its
local ports as BGP EVPN type-2 routes. The client sits behind a third VTEP, which sends the
guest's traffic wherever the newest route for its MAC points. Nothing is learned from frames
across VXLAN, so a RARP sent by the host moves nothing: after the migration the destination's
bridge must hold the guest's MAC on the guest's tap, and QEMU's own RARPs that would teach it
are dropped here. rarp-announce writes that entry at the resume; FRR does the rest.
"""


# -- what is watched --------------------------------------------------------------------


@dataclass(frozen=True)
class VtepFdbEvent:
    time: float  # when the notification was read (wall clock)
    new: bool  # RTM_NEWNEIGH (added or changed), else deleted
    mac: str
    ifindex: int
    dst: str | None  # a VXLAN device's entry: the remote VTEP
    master: bool  # the bridge's own entry (NDA_MASTER, net/bridge/br_fdb.c fdb_fill_info), not the VXLAN device's


class VtepFdbWatch:
    """Every bridge FDB notification (family AF_BRIDGE) in netns `ns`, from creation to close(),
    with what a VTEP needs and fdbwatch.FdbWatch (the timelines') leaves out: deletions, the
    remote VTEP of a VXLAN device's entry (NDA_DST) and whether it is the bridge's own entry."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._events: list[VtepFdbEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        with inside(ns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_NEIGH))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name=f"fdb-{ns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except (socket.timeout, InterruptedError):
                continue
            except OSError:  # ENOBUFS after a burst: the next notifications still come
                if self._stop.is_set():
                    return
                continue
            now = time.time()
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
                    message = ndmsg(data[offset:offset + length])
                    message.decode()
                    mac = message.get_attr("NDA_LLADDR")
                    if message["family"] == AF_BRIDGE and mac:
                        event = VtepFdbEvent(now, kind == RTM_NEWNEIGH, str(mac).lower(), int(message["ifindex"]),
                                         message.get_attr("NDA_DST"), message.get_attr("NDA_MASTER") is not None)
                        with self._lock:
                            self._events.append(event)
                offset += (length + 3) & ~3

    def events(self, mac: str, since: float) -> list[VtepFdbEvent]:
        with self._lock:
            return [e for e in self._events if e.mac == mac and e.time >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@dataclass(frozen=True)
class BgpUpdate:
    time: float  # bgpd's log stamp (wall clock, microseconds)
    peer: str  # the VTEP that sent it
    mac: str
    ip: str | None  # a MAC+IP route's address; None for a MAC-only route
    seq: int  # MAC-mobility sequence (RFC 7432 section 7.7); 0 when the route carries none


_STAMP = r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
_ATTR = re.compile(_STAMP + r" BGP: \[[^\]]*\] (\S+?)\(\S*\) rcvd UPDATE w/ attr: (.*)$")
_ROUTE = re.compile(_STAMP + r" BGP: \[[^\]]*\] (\S+?)\(\S*\) rcvd RD \S+ "
                    r"\[2\]:\[\d+\]:\[48\]:\[([0-9a-f:]{17})\](?::\[\d+\]:\[([^\]]+)\])?")
_MM = re.compile(r"\bMM:(\d+)")
_STAMPED = re.compile(_STAMP + " ")


def _stamp(text: str) -> float:
    whole, _, fraction = text.partition(".")
    return datetime.strptime(whole, "%Y/%m/%d %H:%M:%S").timestamp() + (float("0." + fraction) if fraction else 0.0)


_ZEBRA_LOCAL = re.compile(r"UPD MAC (\S+) intf (\S+?)\(\d+\) VID \S+ -> VNI \d+ curFlags ?(.*)$")


def zebra_order(lines: list[str], mac: str, tap: str) -> bool | None:
    """From a destination zebra's `debug zebra vxlan` lines: whether it still held a remote
    VTEP's route for `mac` when it learned the MAC on the guest's tap (its "UPD MAC ... intf TAP
    ... curFlags" line names REM). Only then does FRR raise the MAC-mobility sequence (RFC 7432
    section 15); a zebra that handled the source's withdrawal first advertises a fresh route,
    whenever the announcer wrote the entry. None when no such line is there."""
    for line in lines:
        found = _ZEBRA_LOCAL.search(line)
        if found and found.group(1).lower() == mac.lower() and found.group(2) == tap:
            return "REM" in found.group(3).split()
    return None


def zebra_lines(log: Path, mac: str, since: float, most: int = 60) -> list[str]:
    """zebra's log lines naming `mac`, stamped at or after `since` (at most `most`, the first)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        stamp = _STAMPED.match(line)
        if stamp and mac.lower() in line.lower() and _stamp(stamp.group(1)) >= since:
            found.append(line)
            if len(found) == most:
                break
    return found


def bgp_updates(log: Path) -> list[BgpUpdate]:
    """The type-2 routes bgpd logged receiving (`debug bgp updates in`), in order.

    bgpd logs an update's attributes (with the MM extended community) in one line, then one
    line per route in it (bgpd/bgp_updgrp_packet.c, bgp_update_receive): each route takes
    the sequence of its peer's last attribute line.
    """
    found: list[BgpUpdate] = []
    last_seq: dict[str, int] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        attr = _ATTR.match(line)
        if attr:
            mm = _MM.search(attr.group(3))
            last_seq[attr.group(2)] = int(mm.group(1)) if mm else 0
            continue
        route = _ROUTE.match(line)
        if route:
            peer = route.group(2)
            found.append(BgpUpdate(_stamp(route.group(1)), peer, route.group(3), route.group(4), last_seq.get(peer, 0)))
    return found


@dataclass(frozen=True)
class MacView:
    """One VTEP's zebra about one MAC (`show evpn mac vni N mac M json`)."""

    kind: str  # "local" or "remote"
    remote_vtep: str | None
    local_seq: int
    remote_seq: int
    detections: int
    duplicate: bool


# -- one migration, seen from the fabric ------------------------------------------------


@dataclass
class EvpnMove:
    """VTEP c (the client's) and the fabric after one migration of the br0 vNIC's MAC."""

    mac: str
    source_vtep: str
    destination_vtep: str
    seq_before: int  # the MAC-mobility sequence VTEP c held before the migration
    resumed: float | None = None
    remote_vtep: str | None = None  # VTEP c's zebra afterwards
    remote_seq: int | None = None
    kernel_dst: str | None = None  # VTEP c's kernel FDB afterwards: where it sends the MAC's frames
    routes: list[tuple[str, int]] = field(default_factory=list)  # VTEP c's type-2 routes for the MAC: (next hop, seq)
    local_at: float | None = None  # destination's br0 first held the MAC on the guest's tap
    fdb_moved_at: float | None = None  # VTEP c's kernel FDB first pointed at the destination
    bgp_at: float | None = None  # VTEP c first received the destination's route for the MAC
    bgp_seq: int | None = None  # ... and the MAC-mobility sequence it carried
    duplicate: dict[str, bool] = field(default_factory=dict)  # VTEP -> FRR flagged the MAC a duplicate
    detections: dict[str, int] = field(default_factory=dict)  # VTEP -> moves FRR's duplicate detection counted
    ip_cache: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # VTEP c's ARP/ND cache: IP -> (MAC, VTEP)
    probes_sent: int = 0  # the client's probes in PROBE_WINDOW s after RESUMED
    probes_lost: int = 0  # ... that never reached the guest's tap on the destination
    # The destination's zebra, by its own log (one observer, its own order): did it still hold
    # the source's route for the MAC when it learned the MAC on the guest's tap? None: not seen.
    remote_when_local: bool | None = None
    zebra_trace: dict[str, list[str]] = field(default_factory=dict, repr=False)  # VTEP -> zebra's lines for the MAC

    @property
    def moved(self) -> bool:
        """VTEP c's kernel FDB, zebra and BGP table all send the MAC to the destination, from a
        route the destination advertised during this migration (the source's is withdrawn)."""
        return (self.kernel_dst == self.destination_vtep and self.remote_vtep == self.destination_vtep
                and bool(self.routes) and all(hop == self.destination_vtep for hop, _ in self.routes)
                and self.bgp_at is not None)

    @property
    def ip_moved(self) -> bool:
        """VTEP c's ARP/ND cache (ARP suppression) sends each of the guest's declared addresses to
        its MAC behind the destination: the MAC+IP routes came from the neighbour entries written
        on the destination's SVI at the arrival (the host learns nothing from its own GARP)."""
        return all(entry == (self.mac, self.destination_vtep) for entry in self.ip_cache.values())

    @property
    def mobility(self) -> bool:
        """The move was a MAC-mobility move (RFC 7432 section 15: a higher sequence than the
        source's route): the destination advertised while the source still did. A destination
        that advertises only after the source withdrew (its tap is gone 10-25 ms after the resume
        in the lab) sends a fresh route, and its sequence need not grow."""
        return self.remote_seq is not None and self.remote_seq > self.seq_before

    def trace(self) -> str:
        """zebra's own lines for the MAC during the migration, per VTEP: for a failure message."""
        return "".join(f"\n  zebra {vtep}: {line}" for vtep, lines in self.zebra_trace.items() for line in lines)

    def after_resume_ms(self, moment: float | None) -> float | None:
        return None if moment is None or self.resumed is None else (moment - self.resumed) * 1000


# -- the fabric -------------------------------------------------------------------------


class EvpnFabric:
    """Built on a `LabTopology` by `build()`, or taken over from `state()` by `adopt()`."""

    def __init__(self, topology: LabTopology, workdir: Path) -> None:
        self.topology = topology
        self.workdir = Path(workdir)
        base = topology.switch_ns[:-2]  # the lab's netns names end in a two-letter role ("sw")
        self.underlay_ns = f"{base}ul"
        self.vtep_ns = {"a": topology.hosts["a"].netns, "b": topology.hosts["b"].netns, "c": f"{base}v3"}
        self.client_ns = f"{base}ec"
        self.made_ns: list[str] = []
        self.frr: dict[str, Frr] = {}
        self.macs: list[str] = []
        self.addresses: dict[str, tuple[str, ...]] = {}
        self.traffic: ClientTraffic | None = None
        self.watches: dict[str, VtepFdbWatch] = {}
        self._seq_before: dict[str, int] = {}

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(cls, topology: LabTopology, narrate: Narrate) -> EvpnFabric:
        fabric = cls(topology, topology.workdir / "evpn")
        try:
            fabric._build(narrate)
        except BaseException:
            fabric.close()
            raise
        return fabric

    def _build(self, narrate: Narrate) -> None:
        why = frr_missing()
        if why:
            raise RuntimeError(why)
        for name in (self.underlay_ns, self.vtep_ns["c"], self.client_ns):
            netns.create(name)
            self.made_ns.append(name)
        _ip(self.underlay_ns, "link", "set", "lo", "up")
        _ip(self.underlay_ns, "link", "add", UNDERLAY_BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip(self.underlay_ns, "link", "set", UNDERLAY_BRIDGE, "up")
        for vtep in VTEPS:
            ns = self.vtep_ns[vtep]
            _ip(self.underlay_ns, "link", "add", f"ul-{vtep}", "type", "veth", "peer", "name", UNDERLAY_DEVICE, "netns", ns)
            _ip(self.underlay_ns, "link", "set", f"ul-{vtep}", "master", UNDERLAY_BRIDGE, "up")
            _ip(ns, "link", "set", "lo", "up")
            _ip(ns, "addr", "add", f"{VTEP_ADDRESS[vtep]}/24", "dev", UNDERLAY_DEVICE)
            _ip(ns, "link", "set", UNDERLAY_DEVICE, "up")
        for host in ("a", "b"):
            # The guest's br0 reaches the rest of the world through the fabric only.
            _ip(self.vtep_ns[host], "link", "set", "uplink0", "nomaster", "down")
            self.topology.hosts[host].bridges_uplinked = ("ovsbr0",)
        c = self.vtep_ns["c"]
        _ip(c, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip(c, "link", "add", CLIENT_PORT, "type", "veth", "peer", "name", EVPN_CLIENT_DEVICE, "netns", self.client_ns)
        _ip(c, "link", "set", CLIENT_PORT, "master", "br0", "up")
        _ip(c, "link", "set", "br0", "up")
        _ip(self.client_ns, "link", "set", "lo", "up")
        _ip(self.client_ns, "link", "set", EVPN_CLIENT_DEVICE, "up")
        for vtep in VTEPS:
            ns = self.vtep_ns[vtep]
            _ip(ns, "link", "add", VXLAN_DEVICE, "type", "vxlan", "id", str(VNI), "local", VTEP_ADDRESS[vtep],
                "dstport", "4789", "nolearning")
            _ip(ns, "link", "set", VXLAN_DEVICE, "master", "br0", "up")
            _run(["bridge", "-n", ns, "link", "set", "dev", VXLAN_DEVICE, "learning", "off"])
        for vtep in VTEPS:
            for address in SVI_ADDRESSES[vtep]:
                _ip(self.vtep_ns[vtep], "addr", "add", address, "dev", "br0", "nodad")
        for vtep in VTEPS:
            frr = Frr(f"vtep-{vtep}", self.vtep_ns[vtep], self.workdir / vtep)
            frr.write_config(VTEP_ADDRESS[vtep], [VTEP_ADDRESS[v] for v in VTEPS if v != vtep], ASN)
            self.frr[vtep] = frr  # registered first: close() stops whatever of it started
            frr.start()
        if not wait_until(lambda: all(f.ready() for f in self.frr.values()), 120):
            raise RuntimeError(f"FRR did not start on every VTEP; see {self.workdir}/*/zebra.log and bgpd.log")
        if not wait_until(self._fabric_up, 180, 0.5):
            raise RuntimeError(f"the EVPN fabric did not come up (iBGP sessions, VNI {VNI}); see {self.workdir}/*/bgpd.log")
        narrate(f"EVPN fabric: VTEPs a, b (the hosts' br0) and c (the client's) on underlay 10.78.0.0/24, "
                f"VNI {VNI} on {VXLAN_DEVICE} (nolearning), FRR zebra + bgpd each, iBGP l2vpn evpn advertise-all-vni; "
                "br0's uplink to the switch detached")

    def _fabric_up(self) -> bool:
        """Every VTEP knows VNI 100 and both other VTEPs (their type-3 routes)."""
        for frr in self.frr.values():
            try:
                vni = frr.json(f"show evpn vni {VNI} json")
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                return False
            # FRR 8.4 lists the remote VTEPs under "numRemoteVteps" (sic)
            remote = vni.get("numRemoteVteps", vni.get("remoteVteps")) if isinstance(vni, dict) else None
            if not isinstance(remote, list) or len(remote) != len(VTEPS) - 1:
                return False
        return True

    @classmethod
    def adopt(cls, topology: LabTopology, state: dict[str, Any]) -> EvpnFabric:
        """The fabric an earlier `lab up` built, to migrate in it or tear it down."""
        fabric = cls(topology, Path(state["workdir"]))
        fabric.made_ns = list(state["netns"])
        fabric.frr = {vtep: Frr.adopt(f"vtep-{vtep}", fabric.vtep_ns[vtep], fabric.workdir / vtep, pids)
                      for vtep, pids in state["frr"].items()}
        for host in ("a", "b"):
            topology.hosts[host].bridges_uplinked = ("ovsbr0",)
        return fabric

    def state(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "netns": self.made_ns,
                "frr": {vtep: frr.pids for vtep, frr in self.frr.items()}}

    # -- watching ---------------------------------------------------------------------------

    def observe(self, macs: list[str], addresses: dict[str, tuple[str, ...]] | None = None) -> None:
        """The EVPN client sends each of `macs` (the br0 vNICs) a frame every millisecond;
        every VTEP's FDB notifications are kept. `addresses`: each MAC's declared IPs, whose
        MAC+IP routes are followed too."""
        self.macs = list(macs)
        self.addresses = dict(addresses or {})
        if self.traffic is None:
            self.traffic = ClientTraffic(self.client_ns, EVPN_CLIENT_DEVICE, [(mac, None) for mac in self.macs])
        for vtep in VTEPS:
            if vtep not in self.watches:
                self.watches[vtep] = VtepFdbWatch(self.vtep_ns[vtep])

    def mac_view(self, vtep: str, mac: str) -> MacView | None:
        try:
            found = self.frr[vtep].json(f"show evpn mac vni {VNI} mac {mac} json")
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return None  # no such MAC (vtysh says so in words, not JSON)
        entry = found.get(mac) if isinstance(found, dict) else None
        if not isinstance(entry, dict):
            return None
        return MacView(str(entry.get("type")), entry.get("remoteVtep"), int(entry.get("localSequence", 0)),
                       int(entry.get("remoteSequence", 0)), int(entry.get("detectionCount", 0)),
                       bool(entry.get("isDuplicate")))

    def kernel_dst(self, mac: str, vtep: str = "c") -> str | None:
        """Where `vtep`'s kernel sends frames for `mac` (its VXLAN device's FDB), or None."""
        done = _run(["bridge", "-n", self.vtep_ns[vtep], "-j", "fdb", "show", "dev", VXLAN_DEVICE])
        for entry in json.loads(done.stdout or "[]"):
            if entry.get("mac", "").lower() == mac and entry.get("dst"):
                return str(entry["dst"])
        return None

    def routes(self, mac: str, vtep: str = "c") -> list[tuple[str, int]]:
        """`vtep`'s type-2 MAC-only routes for `mac`, as (next hop, MAC-mobility sequence)."""
        table = self.frr[vtep].json("show bgp l2vpn evpn route type macip json")
        found = []
        for rd in table.values() if isinstance(table, dict) else []:
            if not isinstance(rd, dict):
                continue
            for prefix, route in rd.items():
                if not (isinstance(route, dict) and prefix.endswith(f"[{mac}]")):
                    continue
                for paths in route.get("paths", []):
                    for path in paths if isinstance(paths, list) else [paths]:
                        hops = path.get("nexthops") or [{}]
                        mm = _MM.search((path.get("extendedCommunity") or {}).get("string", ""))
                        found.append((str(hops[0].get("ip")), int(mm.group(1)) if mm else 0))
        return found

    def arp_cache(self, ip: str, vtep: str = "c") -> tuple[str | None, str | None]:
        """(MAC, remote VTEP) of `vtep`'s EVPN ARP/ND cache entry for `ip` (`show evpn arp-cache
        vni N ip A`: what ARP suppression answers and where it sends), or (None, None)."""
        try:
            found = self.frr[vtep].json(f"show evpn arp-cache vni {VNI} ip {ip} json")
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return None, None
        entry = found.get(ip, found) if isinstance(found, dict) else None
        if not isinstance(entry, dict):
            return None, None
        mac = entry.get("mac")
        return (str(mac).lower() if mac else None), entry.get("remoteVtep")

    def set_flooding(self, enabled: bool) -> None:
        """Head-end replication of BUM traffic on every VTEP (FRR's default), or none at all
        (`flooding disable`, as in fabrics that rely on ARP suppression): without it, a MAC no
        VTEP advertises is unreachable instead of flooded to every VTEP."""
        command = "flooding head-end-replication" if enabled else "flooding disable"
        for frr in self.frr.values():
            frr.vtysh("configure terminal", f"router bgp {ASN}", "address-family l2vpn evpn", command)

    def flooding(self, vtep: str = "c") -> bool:
        """Whether `vtep`'s kernel floods the VNI's BUM traffic to other VTEPs (all-zero FDB entries)."""
        done = _run(["bridge", "-n", self.vtep_ns[vtep], "-j", "fdb", "show", "dev", VXLAN_DEVICE])
        return any(entry.get("mac") == "00:00:00:00:00:00" and entry.get("dst") for entry in json.loads(done.stdout or "[]"))

    # -- around one migration ---------------------------------------------------------------

    def before_migration(self, source: str, taps: dict[str, str]) -> None:
        """Put each br0 vNIC's MAC on the source's guest tap, as a guest that has spoken is
        (the lab's guest is silent), and wait until VTEP c sends it there."""
        vtep = VTEP_ADDRESS[source]
        for mac in self.macs:
            _run(["bridge", "-n", self.vtep_ns[source], "fdb", "replace", mac, "dev", taps[mac], "master", "dynamic"])
            for ip in self.addresses.get(mac, ()):  # a guest that has spoken is in its host's ARP/ND table
                _run(["ip", "-n", self.vtep_ns[source], "neigh", "replace", ip, "lladdr", mac, "dev", "br0",
                      "nud", "reachable"])
        for mac in self.macs:
            if not wait_until(lambda: (view := self.mac_view("c", mac)) is not None and view.remote_vtep == vtep
                              and self.kernel_dst(mac) == vtep, 15, 0.1):
                raise RuntimeError(f"EVPN: VTEP c never learned {mac} behind host {source} ({vtep})")
            view = self.mac_view("c", mac)
            self._seq_before[mac] = view.remote_seq if view is not None else 0
            for ip in self.addresses.get(mac, ()):
                if not wait_until(lambda: self.arp_cache(ip) == (mac, vtep), 60, 0.1):
                    raise RuntimeError(f"EVPN: VTEP c never learned {ip} -> {mac} behind host {source} ({vtep})")

    def after_migration(self, destination: str, source: str, started: float, resumed: float | None, taps: dict[str, str],
                        delivered: Delivered) -> list[EvpnMove]:
        """What VTEP c and the fabric did for each br0 vNIC (waits at most MOVE_WAIT s for them)."""
        vtep = VTEP_ADDRESS[destination]
        wait_until(lambda: all(self.kernel_dst(mac) == vtep and getattr(self.mac_view("c", mac), "remote_vtep", None) == vtep
                               and all(self.arp_cache(ip)[1] == vtep for ip in self.addresses.get(mac, ()))
                               for mac in self.macs), MOVE_WAIT, 0.1)
        moves = []
        tap_index = _ifindexes(self.vtep_ns[destination])
        for mac in self.macs:
            move = EvpnMove(mac, VTEP_ADDRESS[source], vtep, self._seq_before.get(mac, 0), resumed)
            view = self.mac_view("c", mac)
            if view is not None:
                move.remote_vtep, move.remote_seq = view.remote_vtep, view.remote_seq
            move.kernel_dst = self.kernel_dst(mac)
            move.ip_cache = {ip: self.arp_cache(ip) for ip in self.addresses.get(mac, ())}
            move.routes = self.routes(mac)
            move.zebra_trace = {name: zebra_lines(self.frr[name].log_path("zebra"), mac, started) for name in VTEPS}
            move.remote_when_local = zebra_order(move.zebra_trace[destination], mac, taps.get(mac, ""))
            tap = tap_index.get(taps.get(mac, ""))
            move.local_at = next((e.time for e in self.watches[destination].events(mac, started)
                                  if e.new and e.master and e.ifindex == tap), None)
            move.fdb_moved_at = next((e.time for e in self.watches["c"].events(mac, started)
                                      if e.new and not e.master and e.dst == vtep), None)
            update = next((u for u in bgp_updates(self.frr["c"].log_path("bgpd"))
                           if u.time >= started and u.mac == mac and u.ip is None and u.peer == vtep), None)
            if update is not None:
                move.bgp_at, move.bgp_seq = update.time, update.seq
            for name in VTEPS:
                seen = self.mac_view(name, mac)
                move.duplicate[name] = bool(seen and seen.duplicate)
                move.detections[name] = seen.detections if seen is not None else 0
            if resumed is not None:
                move.probes_sent, move.probes_lost = self._probes(mac, resumed, delivered)
            moves.append(move)
        return moves

    def _probes(self, mac: str, resumed: float, delivered: Delivered) -> tuple[int, int]:
        """(sent, lost): the EVPN client's probes in PROBE_WINDOW s after RESUMED, and those of
        them that never reached the guest's tap on the destination."""
        assert self.traffic is not None
        first, last = self.traffic.sequence_at(resumed), self.traffic.sequence_at(resumed + PROBE_WINDOW)
        refused = {seq for target, seq in self.traffic.failed if target == mac}
        arrived = {a.sequence for a in delivered.items() if a.mac == mac and first <= a.sequence < last}
        sent = [seq for seq in range(first, last) if seq not in refused]
        return len(sent), sum(seq not in arrived for seq in sent)

    # -- tearing down -----------------------------------------------------------------------

    def footprint(self) -> dict[str, list[Any]]:
        return {"netns": list(self.made_ns), "pids": [pid for frr in self.frr.values() for pid in frr.pids.values()]}

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.close()
            self.traffic = None
        for watch in self.watches.values():
            watch.close()
        self.watches.clear()
        for frr in self.frr.values():
            frr.stop()
        self.frr.clear()
        for name in reversed(self.made_ns):
            try:
                netns.remove(name)
            except OSError:
                pass
        self.made_ns.clear()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}")
    return done


def _ip(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


def _ifindexes(ns: str) -> dict[str, int]:
    done = _run(["ip", "-n", ns, "-j", "link", "show"])
    return {link["ifname"]: int(link["ifindex"]) for link in json.loads(done.stdout or "[]")}


def evpn_story(moves: list[EvpnMove], write: Callable[[str], None]) -> None:
    """What the fabric did for the br0 vNIC, in words (the demo's lines for fabric "evpn")."""
    def ms(moment: float | None, move: EvpnMove) -> str:
        value = move.after_resume_ms(moment)
        return "never" if value is None else f"{value:.0f} ms after RESUMED"

    for move in moves:
        write(f"    EVPN, {move.mac}: the destination's br0 held it on the guest's tap {ms(move.local_at, move)}; "
              f"VTEP c got the destination's type-2 route {ms(move.bgp_at, move)}, "
              f"and its kernel FDB pointed at {move.destination_vtep} {ms(move.fdb_moved_at, move)}")
        routes = ", ".join(f"{hop} MM:{seq}" for hop, seq in move.routes) or "none (the MAC is flooded)"
        flagged = [vtep for vtep, duplicate in move.duplicate.items() if duplicate]
        write(f"      VTEP c now: kernel FDB -> {move.kernel_dst or 'nothing'}, zebra -> {move.remote_vtep or 'nothing'} "
              f"(sequence {move.seq_before} before, {move.remote_seq if move.remote_seq is not None else '-'} after), "
              f"routes {routes}; {'MOVED' if move.moved else 'NOT MOVED'}"
              + (" (a MAC-mobility move)" if move.mobility else ""))
        for ip, (mac, vtep) in move.ip_cache.items():
            write(f"      VTEP c's ARP/ND cache (MAC+IP route): {ip} -> {mac or 'nothing'} behind {vtep or 'nothing'}"
                  + ("" if (mac, vtep) == (move.mac, move.destination_vtep) else " (NOT the destination)"))
        write(f"      client probes in the {PROBE_WINDOW:.1f} s after RESUMED: {move.probes_lost} of {move.probes_sent} "
              "lost (1 ms apart)" + (f"; FRR flags the MAC a duplicate on VTEP {', '.join(flagged)}" if flagged else ""))
