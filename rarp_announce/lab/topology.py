"""The lab's network: a 'physical switch' (a Linux bridge) and two hypervisor hosts, each a netns.

    switch netns: Linux bridge `sw`, ports a-br, a-ovs, b-br, b-ovs and `cl` to the client
    client netns: `client`, a machine behind the switch that sends traffic to the guest
    router netns: `router`, a Linux router behind the switch that learns the guest's IPv4 and
                  IPv6 addresses from our gratuitous ARPs and neighbour advertisements
    host netns h: Linux bridge br0  <- uplink0 ==veth== h-br  (switch)
                  OVS bridge ovsbr0 <- uplink1 ==veth== h-ovs (switch), its own private OVS
                  mig ==veth== the other host's mig: 10.77.0.1/24 and 10.77.0.2/24 carry the
                  migration stream off the switch, so it neither floods it nor adds noise.

With `drop_qemu_rarp`, QEMU's own RARPs are dropped at every host's br0 ingress (an nft rule
for frames from vnet* taps, before the bridge learns), as on a port that is not wired yet: only
our announcements can then move a MAC on the switch or teach br0 where the guest is. On ovsbr0 nothing is dropped by a rule: a rule would drop our frames
too, since they enter from the guest's own port; there the lab's wiring agent silences QEMU
the way real deployments lose its frames (the dead VLAN 4095, rewired late). Everything lives
in the lab's netns and workdir; `close()` removes it all.

The physical switch is a Linux bridge, which learns and forwards in the kernel per frame, as a
hardware switch does. It is not VLAN-aware (this kernel has no VLAN filtering): it learns by
MAC and carries 802.1Q tags through untouched; each VLAN is checked on the frames themselves
(observe.py). A userspace OVS switch was tried first: after a MAC moved, it kept forwarding to
the old port for 150-500 ms (its cached datapath flows wait for revalidation), which would
hide the few milliseconds this lab measures.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import NetNS, netns

from rarp_announce.lab.netns import bridge_fdb, learning_frame, send_raw, unique
from rarp_announce.lab.ovs import PrivateOVS
from rarp_announce.lab.router import Router

HOSTS = ("a", "b")
_SERIAL = itertools.count(1)
MIGRATION_ADDRESS = {"a": "10.77.0.1", "b": "10.77.0.2"}
SWITCH_BRIDGE = "sw"
SWITCH_PORTS = ("a-br", "a-ovs", "b-br", "b-ovs", "cl", "rt")
CLIENT_DEVICE = "client"
ROUTER_DEVICE = "router"
ROUTER_ADDRESSES = ("10.99.0.1/24", "fd00:99::1/64")
HOST_UPLINK_OFPORT = 1

_NFT_DROP_QEMU_RARP = """\
table bridge rarp_lab {
    chain ingress {
        # prerouting at -300 runs before br0 learns the source MAC (br_handle_frame runs the
        # NF_BR_PRE_ROUTING hook, then br_handle_frame_finish learns): QEMU's own announcements
        # are lost as on a port not wired yet, and br0 learns nothing from them. A rule on hook
        # forward would run after br0 had learned the guest's MAC on its tap from them.
        type filter hook prerouting priority -300; policy accept;
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
    bridges_uplinked: tuple[str, ...] = ("br0", "ovsbr0")  # the EVPN fabric (evpn.py) detaches br0

    @property
    def switch_ports(self) -> dict[str, str]:
        """Which switch port each of this host's bridges reaches the switch through."""
        ports = {"br0": f"{self.name}-br", "ovsbr0": f"{self.name}-ovs"}
        return {bridge: port for bridge, port in ports.items() if bridge in self.bridges_uplinked}

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
    drop_qemu_rarp: bool = True
    switch_ns: str = field(init=False)
    client_ns: str = field(init=False)
    router_ns: str = field(init=False)
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
    def adopt(cls, workdir: Path, switch_ns: str, host_ns: dict[str, str], client_ns: str, router_ns: str,
              drop_qemu_rarp: bool = True) -> "LabTopology":
        """The topology an earlier process built (`lab up`), to migrate in it or tear it down."""
        topo = cls.__new__(cls)
        topo.workdir = Path(workdir)
        topo.drop_qemu_rarp = drop_qemu_rarp
        topo.switch_ns = switch_ns
        topo.client_ns = client_ns
        topo.router_ns = router_ns
        topo.hosts = {}
        topo._made_ns = [switch_ns, client_ns, router_ns, *host_ns.values()]
        topo._ovs = []
        topo.router = Router(router_ns, ROUTER_DEVICE, ROUTER_ADDRESSES)
        for host, ns in host_ns.items():
            ovs = PrivateOVS(topo.workdir / host / "ovs", netns=ns).adopt()
            topo.hosts[host] = LabHost(host, ns, topo.workdir / host, ovs)
            topo._ovs.append(ovs)
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
        self.client_ns = self._netns("cl")
        self.router_ns = self._netns("rt")
        for host in HOSTS:
            ns = self._netns(host)
            ovs = PrivateOVS(self.workdir / host / "ovs", netns=ns)
            self.hosts[host] = LabHost(host, ns, self.workdir / host, ovs)
        with NetNS(self.switch_ns) as sw:
            sw.link("set", ifname="lo", state="up")
            sw.link("add", ifname=SWITCH_BRIDGE, kind="bridge", br_stp_state=0, br_forward_delay=0)
            switch = sw.link_lookup(ifname=SWITCH_BRIDGE)[0]
            for host in HOSTS:
                ns = self.hosts[host].netns
                for port, uplink in ((f"{host}-br", "uplink0"), (f"{host}-ovs", "uplink1")):
                    sw.link("add", ifname=port, kind="veth", peer={"ifname": uplink, "net_ns_fd": ns})
                    sw.link("set", ifname=port, master=switch, state="up")
            sw.link("add", ifname="cl", kind="veth", peer={"ifname": CLIENT_DEVICE, "net_ns_fd": self.client_ns})
            sw.link("set", ifname="cl", master=switch, state="up")
            sw.link("add", ifname="rt", kind="veth", peer={"ifname": ROUTER_DEVICE, "net_ns_fd": self.router_ns})
            sw.link("set", ifname="rt", master=switch, state="up")
            sw.link("set", ifname=SWITCH_BRIDGE, state="up")
        with NetNS(self.client_ns) as client:
            client.link("set", ifname="lo", state="up")
            client.link("set", ifname=CLIENT_DEVICE, state="up")
        self.router = Router(self.router_ns, ROUTER_DEVICE, ROUTER_ADDRESSES).setup()
        a, b = self.hosts["a"], self.hosts["b"]
        with NetNS(a.netns) as ha:
            ha.link("add", ifname="mig", kind="veth", peer={"ifname": "mig", "net_ns_fd": b.netns})
        for lab_host in self.hosts.values():
            self._build_host(lab_host)

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
        if self.drop_qemu_rarp:
            done = host.run(["nft", "-f", "-"], input=_NFT_DROP_QEMU_RARP)
            if done.returncode != 0:
                raise RuntimeError(f"nft in {host.netns}: {done.stderr.strip()}")
        self._ovs.append(host.ovs.start())
        # Cached datapath flows of traffic for the guest's previous stay here (migrations come
        # seconds apart in the lab) would only follow its MAC's move after OVS revalidates them
        # (100-300 ms measured here); OVS's default idle life of 10 s is cut to 0.5 s.
        host.ovs.vsctl("set", "Open_vSwitch", ".", "other_config:max-idle=500")
        host.ovs.add_bridge("ovsbr0")
        host.ovs.add_port("ovsbr0", "uplink1", ofport=HOST_UPLINK_OFPORT)
        with NetNS(host.netns) as h:
            h.link("set", ifname="ovsbr0", state="up")

    # -- what tests and the demo look at ------------------------------------------------

    def fdb(self) -> list[tuple[str, str]]:
        """The switch's learned MACs as (port, MAC)."""
        return [(port, mac) for port, mac in bridge_fdb(self.switch_ns, SWITCH_BRIDGE) if port in SWITCH_PORTS]

    def where(self, mac: str, vlan: int | None = None) -> str | None:
        """Switch port on which `mac` is learned, or None. `vlan` changes nothing: the switch is not
        VLAN-aware, so tags are checked on the frames instead."""
        return next((port for port, learned in self.fdb() if learned == mac.lower()), None)

    def teach(self, host: str, mac: str, vlan: int | None) -> None:
        """Make the switch learn `mac` behind `host` (a plain non-RARP frame up its uplink).

        Before each migration the MAC is put on the source's port this way, so a move to the
        destination's port can only come from an announcement.
        """
        send_raw(self.hosts[host].netns, "uplink1" if vlan else "uplink0", learning_frame(mac, vlan))

    def set_qemu_rarp_drop(self, host: str, drop: bool) -> None:
        """Add or remove the rule dropping QEMU's own RARPs at `host`'s br0 ingress (the EVPN
        benchmark compares QEMU's frames with ours in one lab)."""
        done = self.hosts[host].run(["nft", "-f", "-"], input=_NFT_DROP_QEMU_RARP) if drop else \
            self.hosts[host].run(["nft", "delete", "table", "bridge", "rarp_lab"])
        if done.returncode != 0:
            raise RuntimeError(f"nft in {self.hosts[host].netns}: {done.stderr.strip()}")

    def nft_drops(self, host: str) -> int:
        """How many QEMU RARPs the nft rule on `host`'s br0 has dropped so far."""
        if not self.drop_qemu_rarp:
            return 0
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
