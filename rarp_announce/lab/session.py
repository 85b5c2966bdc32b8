"""One lab run: topology, a libvirtd per host, the guest, our announcer, migrations, clean-up.

Announcer modes (who sends the frames on the destination):
  daemon  `rarp-announce daemon` runs in each host's netns, watching its libvirtd;
  hook    only the libvirt hook is installed in each host (standalone waiter);
  both    the daemon and the hook (mode auto): the hook hands each arrival to the daemon,
          which must still announce it once;
  cli     the lab itself runs `rarp-announce domain` in the destination at the RESUMED event
          (a stand-in used before the daemon and hook existed, and as a baseline);
  none    nobody announces: proves QEMU's own frames never reach the switch.

Every process the lab starts is remembered by pid and stopped by pid; everything it builds
lives in its netns and its workdir, both removed by `close()` (also on errors and signals).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rarp_announce.lab.netns import wait_until
from rarp_announce.lab.guest import Guest, Nic, make_guest
from rarp_announce.lab.libvirtd import Libvirtd
from rarp_announce.lab.observe import Events, Sniffer, check_frame
from rarp_announce.lab.procs import Proc
from rarp_announce.lab.topology import HOSTS, LabTopology, make_workdir

MODES = ("daemon", "hook", "both", "cli", "none")
NOMINAL_MS = (0.0, 50.0, 200.0, 450.0, 800.0)
_EVENT_RESUMED = 4
_RESUMED_MIGRATED = (1, 3)  # RESUMED_MIGRATED, RESUMED_POSTCOPY
_CLI = [sys.executable, "-m", "rarp_announce"]
STATE_FILE = Path("/tmp/rarp-announce-lab.json")  # where `lab up` leaves what `lab migrate|down` need

Narrate = Callable[[str], None]


@dataclass
class Migration:
    """What one migration showed on the wire and on the switch."""

    number: int
    source: str
    destination: str
    started: float
    duration: float = 0.0
    resumed: float | None = None
    qemu_first: float | None = None
    qemu_frames: int = 0  # QEMU's own RARPs seen on the destination's taps (then dropped)
    sent_first: float | None = None  # our first frame as it left on the destination's bridge
    frames: list = field(default_factory=list)  # Seen at the switch, from the destination
    stray: list = field(default_factory=list)  # Seen at the switch from the source: must stay empty
    moved: dict[str, str | None] = field(default_factory=dict)  # mac -> switch port afterwards
    expected: dict[str, str] = field(default_factory=dict)  # mac -> destination switch port
    bad_frames: list[str] = field(default_factory=list)
    fdb_before: list = field(default_factory=list)
    fdb_after: list = field(default_factory=list)

    @property
    def first(self) -> float | None:
        return min((s.time for s in self.frames), default=None)

    @property
    def lag_resumed_ms(self) -> float | None:
        return None if self.first is None or self.resumed is None else (self.first - self.resumed) * 1000

    @property
    def lag_qemu_ms(self) -> float | None:
        return None if self.first is None or self.qemu_first is None else (self.first - self.qemu_first) * 1000

    @property
    def lag_qemu_host_ms(self) -> float | None:
        """Our first frame leaving the destination's bridge vs QEMU's entering from its tap:
        both seen in the destination's netns, free of the hop to the switch."""
        if self.sent_first is None or self.qemu_first is None:
            return None
        return (self.sent_first - self.qemu_first) * 1000

    def per_mac(self) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for seen in sorted(self.frames, key=lambda s: s.time):
            times.setdefault(seen.mac, []).append(seen.time)
        return times

    def offsets_ms(self) -> list[float]:
        """Each frame's deviation from QEMU's nominal schedule, from its MAC's first frame."""
        deviations = []
        for times in self.per_mac().values():
            for index, stamp in enumerate(times[: len(NOMINAL_MS)]):
                deviations.append((stamp - times[0]) * 1000 - NOMINAL_MS[index])
        return deviations

    @property
    def ok(self) -> bool:
        return (
            all(self.moved.get(mac) == port for mac, port in self.expected.items())
            and not self.bad_frames
            and not self.stray
            and bool(self.frames)
        )


class Lab:
    """The two-host lab. `up()`, then `migrate()` as often as wanted, then `close()`."""

    def __init__(self, mode: str = "daemon", *, kvm: bool | None = None, narrate: Narrate | None = None,
                 phase: Narrate | None = None, keep_workdir: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.narrate = narrate or (lambda text: None)
        self.phase = phase or (lambda name: None)  # "network", "libvirtd", "announcer", "guest"
        self.keep_workdir = keep_workdir
        self.guest: Guest = make_guest(kvm=kvm)
        self.workdir: Path | None = None
        self.topology: LabTopology | None = None
        self.libvirtd: dict[str, Libvirtd] = {}
        self.conns: dict[str, object] = {}
        self.events: Events | None = None
        self.switch_sniffer: Sniffer | None = None
        self.host_sniffers: dict[str, Sniffer] = {}
        self.daemons: dict[str, Proc] = {}
        self.helpers: list[Proc] = []
        self.location: str | None = None
        self.migrations: list[Migration] = []
        self.made: dict[str, list] = {"netns": [], "pids": [], "paths": []}
        self._numbered = 0  # migrations done by earlier processes (`lab migrate` after `lab up`)

    # -- building -----------------------------------------------------------------------

    def up(self) -> "Lab":
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def _up(self) -> None:
        self.phase("network")
        self.workdir = make_workdir()
        self.narrate(f"workdir {self.workdir}")
        self.topology = LabTopology(self.workdir)
        self.narrate(
            "network: switch netns with a VLAN-aware OVS switch; hosts a and b, each with a Linux "
            "bridge br0 and an OVS bridge ovsbr0 trunked to the switch; QEMU's own RARPs dropped on both"
        )
        for host in HOSTS:
            net = self.topology.hosts[host]
            self.libvirtd[host] = Libvirtd(f"lab-host-{host}", net.netns, net.workdir / "libvirt", ovs_rundir=net.ovs.rundir)
        if self.mode in ("hook", "both"):
            for host in HOSTS:
                self._install_hook(host, "standalone" if self.mode == "hook" else "auto")
        self.phase("libvirtd")
        for daemon in self.libvirtd.values():
            daemon.spawn()
        for host, daemon in self.libvirtd.items():
            daemon.wait_ready()
            self.narrate(f"host {host}: libvirtd {daemon.pid} up, {daemon.uri}")
        self.events = Events()
        for host in HOSTS:
            self._connect(host)
        self.switch_sniffer = Sniffer(self.topology.switch_ns)
        for host in HOSTS:
            self.host_sniffers[host] = Sniffer(self.topology.hosts[host].netns, prefix="vnet", sent_on=("br0", "ovsbr0"))
        self.phase("announcer")
        if self.mode in ("daemon", "both"):
            for host in HOSTS:
                self.start_daemon(host)
        self.phase("guest")
        self.conns["a"].createXML(self.guest.xml(), 0)
        self.location = "a"
        from rarp_announce.lab.guest import kvm_usable

        kind = "KVM" if self.guest.kvm else ("TCG" if kvm_usable() else "TCG (no usable /dev/kvm)")
        self.narrate(f"guest {self.guest.name} ({kind}, 64 MiB, no disk) runs on host a")
        for nic in self.guest.nics:
            self.narrate(f"  vNIC {nic.mac} on {nic.label}")

    def _connect(self, host: str) -> None:
        import libvirt

        conn = libvirt.open(self.libvirtd[host].uri)
        conn.setKeepAlive(2, 3)
        self.events.watch(host, conn)
        self.conns[host] = conn

    def _install_hook(self, host: str, mode: str) -> None:
        hooks_dir = self.libvirtd[host].hooks_dir
        sock, _state = self.daemon_paths(host)
        argv = [*_CLI, "hook", "install", "--hooks-dir", str(hooks_dir), "--mode", mode,
                "--connect", self.libvirtd[host].uri, "--control-socket", str(sock),
                "--log-file", str(self.topology.hosts[host].workdir / "hook.log"), "--python", sys.executable]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"hook install for host {host} failed: {(done.stderr or done.stdout).strip()}")
        self.narrate(f"host {host}: hook installed in {hooks_dir}")

    def daemon_paths(self, host: str) -> tuple[Path, Path]:
        base = self.topology.hosts[host].workdir / "rarp-announce"
        return base / "control.sock", base / "state"

    def start_daemon(self, host: str) -> Proc:
        sock, state = self.daemon_paths(host)
        state.mkdir(parents=True, exist_ok=True)
        log = self.topology.hosts[host].workdir / "daemon.log"
        argv = ["ip", "netns", "exec", self.topology.hosts[host].netns, *_CLI, "daemon",
                "--connect", self.libvirtd[host].uri, "--control-socket", str(sock), "--state-dir", str(state)]
        process = Proc.start(argv, log)
        self.daemons[host] = process
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not sock.exists():
            if not process.alive:
                raise RuntimeError(f"rarp-announce daemon on host {host} exited with {process.returncode}; see {log}")
            time.sleep(0.05)
        self.narrate(f"host {host}: rarp-announce daemon {process.pid} watching its libvirtd")
        return process

    def stop_daemon(self, host: str) -> None:
        process = self.daemons.pop(host, None)
        if process is not None:
            process.stop()

    def daemon_status(self, host: str, timeout: float = 5.0) -> dict | None:
        """The daemon's `status` over its control socket, or None if it does not answer."""
        from rarp_announce.control import request
        from rarp_announce.errors import AnnounceError

        sock_path, _state = self.daemon_paths(host)
        try:
            answer = request(str(sock_path), {"op": "status"}, timeout=timeout)
        except AnnounceError:
            return None
        return answer.get("status") if answer.get("ok") else None

    def restart_libvirtd(self, host: str) -> None:
        """Kill `host`'s libvirtd (its guest keeps running) and start it again."""
        self.libvirtd[host].kill()
        self.narrate(f"host {host}: libvirtd killed")
        self.libvirtd[host].start()
        self._connect(host)
        self.narrate(f"host {host}: libvirtd {self.libvirtd[host].pid} back")

    # -- migrating ----------------------------------------------------------------------

    def migrate(self, *, settle: float = 1.6, timeout: float = 60.0) -> Migration:
        """Live-migrate the guest to the other host and check what the switch saw."""
        import libvirt

        src = self.location
        dst = "b" if src == "a" else "a"
        topo = self.topology
        dst_ports = topo.hosts[dst].switch_ports
        record = Migration(self._numbered + len(self.migrations) + 1, src, dst, time.time())
        for nic in self.guest.nics:
            record.expected[nic.mac] = dst_ports[nic.bridge]
            # The switch holds every MAC on the source's port first, so a move is a real move.
            topo.teach(src, nic.mac, nic.vlan)
        wait_until(lambda: all(topo.where(n.mac, n.switch_vlan) == topo.hosts[src].switch_ports[n.bridge]
                          for n in self.guest.nics), 5.0)
        record.fdb_before = self._guest_fdb()
        self.narrate(f"migration {record.number}: host {src} -> host {dst} (live, precopy)")
        record.started = time.time()
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        dom = self.conns[src].lookupByName(self.guest.name)
        uri = f"tcp://{topo.hosts[dst].migration_address}"
        failure: list[BaseException] = []

        def run() -> None:
            try:
                dom.migrate(self.conns[dst], flags, None, uri, 0)
            except BaseException as error:  # reported by the caller
                failure.append(error)

        mover = threading.Thread(target=run, name="migrate", daemon=True)
        mover.start()
        record.resumed = self.events.wait(dst, _EVENT_RESUMED, _RESUMED_MIGRATED, record.started, timeout)
        if self.mode == "cli" and record.resumed is not None:
            self._announce_by_cli(dst)
        mover.join(timeout)
        record.duration = time.time() - record.started
        if failure or mover.is_alive():
            raise RuntimeError(f"migration {record.number} {src}->{dst} failed: {failure[0] if failure else 'timed out'}")
        self.location = dst
        # Our schedule lasts 0.8 s from the resume; wait for the switch to settle, bounded.
        wait_until(lambda: all(topo.where(m, v) == p for m, v, p in self._expected(record)), max(settle, 5.0))
        time.sleep(max(0.0, (record.resumed or time.time()) + settle - time.time()))
        record.moved = {n.mac: topo.where(n.mac, n.switch_vlan) for n in self.guest.nics}
        record.fdb_after = self._guest_fdb()
        self._collect(record)
        self.migrations.append(record)
        return record

    def _expected(self, record: Migration):
        return [(n.mac, n.switch_vlan, record.expected[n.mac]) for n in self.guest.nics]

    def _collect(self, record: Migration) -> None:
        ports = self.topology.hosts[record.destination].switch_ports.values()
        source_ports = self.topology.hosts[record.source].switch_ports.values()
        vlans = {n.mac: n.vlan for n in self.guest.nics}
        for seen in self.switch_sniffer.since(record.started):
            if seen.mac not in vlans:
                continue
            if seen.device in ports:
                record.frames.append(seen)
                why = check_frame(seen.frame, seen.mac, vlans[seen.mac])
                if why:
                    record.bad_frames.append(f"{seen.device}: {why}")
            elif seen.device in source_ports:
                record.stray.append(seen)
        qemu = self.host_sniffers[record.destination].since(record.started)
        theirs = [s for s in qemu if s.mac in vlans and not s.sent]
        record.qemu_first = min((s.time for s in theirs), default=None)
        record.qemu_frames = len(theirs)
        record.sent_first = min((s.time for s in qemu if s.mac in vlans and s.sent), default=None)

    def _guest_fdb(self) -> list[tuple[str, int, str]]:
        macs = set(self.guest.macs)
        return [entry for entry in self.topology.fdb() if entry[2] in macs]

    def _announce_by_cli(self, host: str) -> None:
        net = self.topology.hosts[host]
        argv = ["ip", "netns", "exec", net.netns, *_CLI, "domain", self.guest.name, "--connect", self.libvirtd[host].uri]
        self.helpers.append(Proc.start(argv, net.workdir / "announce-cli.log"))

    # -- across processes: `lab up`, then `lab migrate`, then `lab down` ----------------

    def save(self, path: Path = STATE_FILE) -> None:
        topo = self.topology
        state = {
            "mode": self.mode,
            "workdir": str(self.workdir),
            "switch_ns": topo.switch_ns,
            "hosts": {h: net.netns for h, net in topo.hosts.items()},
            "libvirtd": {h: d.pid for h, d in self.libvirtd.items()},
            "daemons": {h: p.pid for h, p in self.daemons.items()},
            "guest": {"name": self.guest.name, "uuid": self.guest.uuid, "kvm": self.guest.kvm,
                      "nics": [[n.mac, n.bridge, n.vlan, n.ovs] for n in self.guest.nics]},
            "location": self.location,
            "migrations": len(self.migrations),
        }
        path.write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: Path = STATE_FILE, *, narrate: Narrate | None = None) -> "Lab":
        """The lab an earlier `lab up` left running, ready to migrate or close."""
        state = json.loads(path.read_text())
        lab = cls(state["mode"], narrate=narrate)
        g = state["guest"]
        lab.guest = Guest(g["name"], tuple(Nic(*nic) for nic in g["nics"]), g["kvm"], g["uuid"])
        lab.workdir = Path(state["workdir"])
        lab.topology = LabTopology.adopt(lab.workdir, state["switch_ns"], state["hosts"])
        for host, ns in state["hosts"].items():
            daemon = Libvirtd(f"lab-host-{host}", ns, lab.workdir / host / "libvirt",
                              ovs_rundir=lab.topology.hosts[host].ovs.rundir)
            daemon.adopted = state["libvirtd"].get(host)
            lab.libvirtd[host] = daemon
        lab.daemons = {h: Proc(pid) for h, pid in state["daemons"].items()}
        lab.location = state["location"]
        lab._numbered = state["migrations"]
        return lab

    def observe(self) -> None:
        """Connect to both libvirtds and start the sniffers (after `load`)."""
        if self.events is None:
            self.events = Events()
        for host in HOSTS:
            if host not in self.conns:
                self._connect(host)
        if self.switch_sniffer is None:
            self.switch_sniffer = Sniffer(self.topology.switch_ns)
            for host in HOSTS:
                self.host_sniffers[host] = Sniffer(self.topology.hosts[host].netns, prefix="vnet", sent_on=("br0", "ovsbr0"))

    # -- tearing down -------------------------------------------------------------------

    def footprint(self) -> dict[str, list]:
        """Everything this lab made that must be gone after `close()`: netns, pids, workdir."""
        pids: list[int] = []
        for daemon in self.libvirtd.values():
            pids += [daemon.pid] if daemon.pid else []
            pids += daemon.qemu_pids()
        pids += [p.pid for p in [*self.daemons.values(), *self.helpers]]
        namespaces: list[str] = []
        if self.topology is not None:
            namespaces = list(self.topology._made_ns)
            for net in self.topology.hosts.values():
                pids += net.ovs.pids()
            pids += self.topology.switch.pids()
        return {"netns": namespaces, "pids": pids, "paths": [str(self.workdir)] if self.workdir else []}

    def close(self) -> None:
        """Stop and remove everything this lab made; safe to call twice and after failures."""
        if self.topology is not None:
            self.made = self.footprint()
        if self.workdir is not None and (self.conns or self.libvirtd) and not self.conns:
            self._reconnect_quietly()
        for process in [*self.daemons.values(), *self.helpers]:
            process.stop()
        self.daemons.clear()
        self.helpers.clear()
        for sniffer in [self.switch_sniffer, *self.host_sniffers.values()]:
            if sniffer is not None:
                sniffer.close()
        self.switch_sniffer = None
        self.host_sniffers.clear()
        for host, conn in list(self.conns.items()):
            try:
                for dom in conn.listAllDomains():
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefine()
            except Exception:
                pass
            try:
                conn.close()
            except Exception:
                pass
        self.conns.clear()
        self._sweep_netns()
        for daemon in self.libvirtd.values():
            leftovers = daemon.qemu_pids()
            daemon.stop()
            for pid in leftovers:  # QEMUs of a guest libvirt could not destroy
                _kill_pid(pid)
        self.libvirtd.clear()
        if self.topology is not None:
            self.topology.close()
            self.topology = None
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _reconnect_quietly(self) -> None:
        """After `load`, reach the libvirtds that still run so their guest can be destroyed."""
        import libvirt

        for host, daemon in self.libvirtd.items():
            if daemon.running:
                try:
                    self.conns[host] = libvirt.open(daemon.uri)
                except libvirt.libvirtError:
                    pass

    def _sweep_netns(self) -> None:
        """Stop hook waiters and helpers still running in the hosts' netns.

        Every process in these namespaces was started by this lab (its libvirtd, QEMUs, OVS,
        daemons, waiters); libvirtd, QEMU and OVS are stopped their own way, the rest here.
        """
        if self.topology is None:
            return
        keep = {d.pid for d in self.libvirtd.values() if d.pid}
        for daemon in self.libvirtd.values():
            keep.update(daemon.qemu_pids())
        for host in self.topology.hosts.values():
            keep.update(host.ovs.pids())
            done = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True, timeout=10)
            for word in done.stdout.split():
                if word.isdigit() and int(word) not in keep:
                    _kill_pid(int(word))

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers(made: dict[str, list]) -> list[str]:
    """What of a closed lab's footprint still exists (must be nothing)."""
    from rarp_announce.pids import alive

    found = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"netns {name}" for name in made["netns"] if name in listed]
    found += [f"process {pid}" for pid in made["pids"] if alive(pid)]
    found += [f"path {path}" for path in made["paths"] if os.path.exists(path)]
    with open("/proc/self/mountinfo") as mounts:
        text = mounts.read()
    found += [f"mount under {path}" for path in made["paths"] if path in text]
    return found


def summary(migrations: list[Migration]) -> dict[str, float | None]:
    """Median and max of the lags and schedule offsets over `migrations`."""
    def stats(values: list[float]) -> tuple[float | None, float | None]:
        return (statistics.median(values), max(values)) if values else (None, None)

    resumed = [m.lag_resumed_ms for m in migrations if m.lag_resumed_ms is not None]
    qemu = [m.lag_qemu_ms for m in migrations if m.lag_qemu_ms is not None]
    qemu_host = [m.lag_qemu_host_ms for m in migrations if m.lag_qemu_host_ms is not None]
    offsets = [abs(o) for m in migrations for o in m.offsets_ms()]
    out: dict[str, float | None] = {}
    for name, values in (("lag_resumed_ms", resumed), ("lag_qemu_ms", qemu), ("lag_qemu_host_ms", qemu_host),
                         ("offset_ms", offsets)):
        out[f"{name}_median"], out[f"{name}_max"] = stats(values)
    return out



def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def interrupt_as_exception() -> None:
    """SIGTERM/SIGHUP raise KeyboardInterrupt, so `finally:` clean-ups run on them too.

    Only in this process: pyroute2 forks helpers (netns set-up) that inherit the handler and
    are ended with SIGTERM; there the signal must simply end the child, not unwind our stack.
    """
    owner = os.getpid()

    def handler(signum, _frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
