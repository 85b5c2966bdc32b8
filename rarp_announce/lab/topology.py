"""The lab's network: a VLAN-aware 'physical switch' and two hypervisor hosts, each a netns.

    switch netns: OVS bridge `sw` (userspace datapath), trunk ports a-br, a-ovs, b-br, b-ovs
    host netns h: Linux bridge br0  <- uplink0 ==veth== h-br  (switch)
                  OVS bridge ovsbr0 <- uplink1 ==veth== h-ovs (switch), its own private OVS
                  mig ==veth== the other host's mig: 10.77.0.1/24 and 10.77.0.2/24 carry the
                  migration stream off the switch, so it neither floods it nor adds noise.

QEMU's own RARPs are dropped on every host (nft on br0 for frames from vnet* taps, an
OpenFlow rule on ovsbr0 for frames from VM ports), as on a port that is not wired yet: only
our announcements can then move a MAC on the switch. Everything lives in the lab's netns and
workdir; `close()` removes it all.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import NetNS, netns

from rarp_announce.lab.netns import inside, unique
from rarp_announce.lab.ovs import PrivateOVS

HOSTS = ("a", "b")
_SERIAL = itertools.count(1)
MIGRATION_ADDRESS = {"a": "10.77.0.1", "b": "10.77.0.2"}
SWITCH_BRIDGE = "sw"
# Stable OpenFlow numbers on the switch, so fdb/show and flows read the same every run.
SWITCH_OFPORT = {"a-br": 1, "a-ovs": 2, "b-br": 3, "b-ovs": 4}
HOST_UPLINK_OFPORT = 1

_NFT_DROP_QEMU_RARP = """\
table bridge rarp_lab {
    chain forward {
        type filter hook forward priority 0; policy accept;
        # QEMU's own announcements, as if the port were not wired yet: only ours may pass.
        iifname "vnet*" ether type 0x8035 counter drop
    }
}
"""


@dataclass
class LabHost:
    name: str  # "a" or "b"
    netns: str
    workdir: Path
    ovs: PrivateOVS

    @property
    def switch_ports(self) -> dict[str, str]:
        """Which switch port each of this host's bridges reaches the switch through."""
        return {"br0": f"{self.name}-br", "ovsbr0": f"{self.name}-ovs"}

    @property
    def migration_address(self) -> str:
        return MIGRATION_ADDRESS[self.name]

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kwargs)


@dataclass
class LabTopology:
    """Builds the switch and hosts in `workdir` (created if needed); a context manager."""

    workdir: Path
    switch_ns: str = field(init=False)
    switch: PrivateOVS = field(init=False)
    hosts: dict[str, LabHost] = field(init=False, default_factory=dict)
    _made_ns: list[str] = field(init=False, default_factory=list)
    _ovs: list[PrivateOVS] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self._serial = next(_SERIAL)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @classmethod
    def adopt(cls, workdir: Path, switch_ns: str, host_ns: dict[str, str]) -> "LabTopology":
        """The topology an earlier process built (`lab up`), to migrate in it or tear it down."""
        topo = cls.__new__(cls)
        topo.workdir = Path(workdir)
        topo.switch_ns = switch_ns
        topo.hosts = {}
        topo._made_ns = [switch_ns, *host_ns.values()]
        topo._ovs = []
        for host, ns in host_ns.items():
            ovs = PrivateOVS(topo.workdir / host / "ovs", netns=ns).adopt()
            topo.hosts[host] = LabHost(host, ns, topo.workdir / host, ovs)
            topo._ovs.append(ovs)
        topo.switch = PrivateOVS(topo.workdir / "switch" / "ovs", netns=switch_ns).adopt()
        topo._ovs.append(topo.switch)
        return topo

    def _netns(self, suffix: str) -> str:
        # A counter keeps two labs of one process (a test module's and a test's) apart.
        name = unique(f"lab{self._serial}{suffix}")
        netns.create(name)
        self._made_ns.append(name)
        return name

    def _build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.switch_ns = self._netns("sw")
        for host in HOSTS:
            ns = self._netns(host)
            ovs = PrivateOVS(self.workdir / host / "ovs", netns=ns)
            self.hosts[host] = LabHost(host, ns, self.workdir / host, ovs)
        with NetNS(self.switch_ns) as sw:
            sw.link("set", ifname="lo", state="up")
            for host in HOSTS:
                ns = self.hosts[host].netns
                for port, uplink in ((f"{host}-br", "uplink0"), (f"{host}-ovs", "uplink1")):
                    sw.link("add", ifname=port, kind="veth", peer={"ifname": uplink, "net_ns_fd": ns})
                    sw.link("set", ifname=port, state="up")
        a, b = self.hosts["a"], self.hosts["b"]
        with NetNS(a.netns) as ha:
            ha.link("add", ifname="mig", kind="veth", peer={"ifname": "mig", "net_ns_fd": b.netns})
        for host in self.hosts.values():
            self._build_host(host)
        self.switch = PrivateOVS(self.workdir / "switch" / "ovs", netns=self.switch_ns)
        self._ovs.append(self.switch.start())
        self.switch.add_bridge(SWITCH_BRIDGE)
        for port, number in SWITCH_OFPORT.items():
            # Trunks carrying every VLAN: untagged br0 traffic is VLAN 0, the OVS vNIC VLAN 100.
            self.switch.add_port(SWITCH_BRIDGE, port, ofport=number)

    def _build_host(self, host: LabHost) -> None:
        with NetNS(host.netns) as h:
            h.link("set", ifname="lo", state="up")
            h.link("add", ifname="br0", kind="bridge", br_stp_state=0, br_forward_delay=0)
            br = h.link_lookup(ifname="br0")[0]
            h.link("set", ifname="uplink0", master=br, state="up")
            h.link("set", ifname="uplink1", state="up")
            h.link("set", ifname="br0", state="up")
            mig = h.link_lookup(ifname="mig")[0]
            h.addr("add", index=mig, address=host.migration_address, prefixlen=24)
            h.link("set", index=mig, state="up")
        done = host.run(["nft", "-f", "-"], input=_NFT_DROP_QEMU_RARP)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {host.netns}: {done.stderr.strip()}")
        self._ovs.append(host.ovs.start())
        host.ovs.add_bridge("ovsbr0")
        host.ovs.add_port("ovsbr0", "uplink1", ofport=HOST_UPLINK_OFPORT)
        # Frames from the uplink and from the bridge's own port (where our announcer writes
        # tagged frames) pass; a RARP from any other port (a VM's tap: QEMU's) is dropped.
        for flow in (
            f"priority=200,in_port={HOST_UPLINK_OFPORT},actions=NORMAL",
            "priority=200,in_port=LOCAL,actions=NORMAL",
            "priority=100,dl_type=0x8035,actions=drop",
        ):
            host.ovs.ofctl("add-flow", "ovsbr0", flow)
        with NetNS(host.netns) as h:
            h.link("set", ifname="ovsbr0", state="up")

    # -- what tests and the demo look at ------------------------------------------------

    def fdb(self) -> list[tuple[str, int, str]]:
        return self.switch.fdb(SWITCH_BRIDGE)

    def where(self, mac: str, vlan: int) -> str | None:
        """Switch port on which `mac` is learned in `vlan` (0: untagged), or None."""
        return self.switch.fdb_port(SWITCH_BRIDGE, mac, vlan)

    def teach(self, host: str, mac: str, vlan: int | None) -> None:
        """Make the switch learn `mac` behind `host` (a plain non-RARP frame up its uplink).

        Before each migration the MAC is put on the source's port this way, so a move to the
        destination's port can only come from an announcement.
        """
        uplink = "uplink1" if vlan else "uplink0"
        tag = b"\x81\x00" + vlan.to_bytes(2, "big") if vlan else b""
        frame = b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + tag + b"\x88\xb5" + bytes(46)
        with inside(self.hosts[host].netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((uplink, 0))
            sock.send(frame)
        finally:
            sock.close()

    def nft_drops(self, host: str) -> int:
        """How many QEMU RARPs the nft rule on `host`'s br0 has dropped so far."""
        done = self.hosts[host].run(["nft", "list", "table", "bridge", "rarp_lab"])
        for word_index, word in enumerate(done.stdout.split()):
            if word == "packets":
                return int(done.stdout.split()[word_index + 1])
        return 0

    def close(self) -> None:
        for ovs in reversed(self._ovs):
            try:
                ovs.stop()
            except Exception:
                pass
        self._ovs.clear()
        for name in reversed(self._made_ns):
            try:
                netns.remove(name)
            except OSError:
                pass
        self._made_ns.clear()

    def __enter__(self) -> "LabTopology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_workdir() -> Path:
    """A private, unique folder for one lab run, under /tmp (each libvirtd covers /run and
    /var with its own tmpfs, so the workdir must live elsewhere to stay visible to it)."""
    path = Path(tempfile.mkdtemp(prefix=f"rarp-lab-{os.getpid()}-", dir="/tmp"))
    path.chmod(0o755)
    return path
