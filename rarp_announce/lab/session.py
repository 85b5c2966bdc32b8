"""One lab run: topology, a libvirtd per host, the guest, our announcer, migrations, clean-up.

Announcer modes (who sends the frames on the destination):
  daemon  `rarp-announce daemon` runs in each host's netns, watching its libvirtd;
  hook    only the libvirt hook is installed in each host (standalone waiter);
  both    the daemon and the hook (mode auto): the hook hands each arrival to the daemon,
          which must still announce it once;
  cli     the lab itself runs `rarp-announce domain` in the destination at the RESUMED event;
  none    nobody announces: the control run, where the guest stays unreachable.

How QEMU's own RARPs fare: `qemu_rarp="drop"` drops them on br0 (nft), `"keep"` lets them
through; `wiring="late"` parks the OVS port in the dead VLAN until `rewire_delay` s after the
resume (where QEMU's are lost, as in OpenStack), `"immediate"` plugs it wired (agent.py).

The guest: `guest="firmware"` sits in firmware (64 MiB, no OS); `guest="tiny"` boots a real
tiny Linux that tallies the client's frames it received itself (tinyguest.py, `self.tally`).

With `fabric="evpn"` the hosts' br0 reach the client over an EVPN-VXLAN fabric (FRR per host
and a third VTEP for the client, evpn.py) instead of the switch; each migration then also
records what that VTEP's FDB and BGP table did (`Migration.evpn`).

Every process the lab starts is remembered by pid and stopped by pid; everything it builds
lives in its netns and its workdir, both removed by `close()` (also on errors and signals).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from rarp_announce.lab.agent import Wiring, WiringAgent
from rarp_announce.lab.evpn import EvpnFabric
from rarp_announce.lab.guest import DirectBoot, Guest, Nic, make_guest
from rarp_announce.lab.libvirtd import Libvirtd
from rarp_announce.lab.migration import Migration, NicOutcome
from rarp_announce.lab.netns import bridge_fdb_states, wait_until
from rarp_announce.lab.observe import Events, Sniffer, check_frame
from rarp_announce.lab.procs import Proc
from rarp_announce.lab.tinyguest import SerialTally, direct_boot
from rarp_announce.lab.teardown import kill_pid
from rarp_announce.lab.topology import CLIENT_DEVICE, HOSTS, HOST_UPLINK_OFPORT, LabTopology, make_workdir
from rarp_announce.lab.traffic import ClientTraffic, Delivered
from rarp_announce.schedule import Schedule
from rarp_announce.lab.fdbwatch import FdbWatch
from rarp_announce.lab.frametrace import MigrationTrace, gather
from rarp_announce.virt.arrival_steps import EVENT_RESUMED, EVENT_SUSPENDED, RESUMED_MIGRATED, RESUMED_POSTCOPY

Mode = Literal["daemon", "hook", "both", "cli", "none"]
QemuRarp = Literal["drop", "keep"]
GuestKind = Literal["firmware", "tiny"]
Fabric = Literal["l2", "evpn"]
FABRICS = ("l2", "evpn")
MODES = ("daemon", "hook", "both", "cli", "none")
_CLI = [sys.executable, "-m", "rarp_announce"]
STATE_FILE = Path("/tmp/rarp-announce-lab.json")  # where `lab up` leaves what `lab migrate|down` need
ANNOUNCEMENTS_QUIET = 2.0  # s without a frame of the guest at the switch: the schedules are over
ANNOUNCEMENTS_BOUND = 60.0  # s; a bound on that wait, not a budget
DAEMON_READY_TIMEOUT = 180.0  # s; ~1 s on an idle machine, a few on a loaded one: a bound, not a budget
# s; the firmware guest migrates in 2-3 s on an idle machine, but with two busy loops beside the
# EVPN lab the destination's prepare phase alone took 24 s and a migration 65 s: a bound, not a budget.
MIGRATION_BOUND = 300.0
# A directory: `close()` copies the workdir's logs there first (the test suite sets it).
KEEP_LOGS_ENV = "RARP_LAB_KEEP_LOGS"

Narrate = Callable[[str], None]


class Lab:
    """The two-host lab. `up()`, then `migrate()` as often as wanted, then `close()`."""

    def __init__(self, mode: str = "daemon", *, kvm: bool | None = None, narrate: Narrate | None = None,
                 phase: Narrate | None = None, keep_workdir: bool = False, qemu_rarp: QemuRarp = "drop",
                 wiring: Wiring = "late", rewire_delay: float = 2.0, guest_announce: bool = False,
                 guest: GuestKind = "firmware", fabric: Fabric = "l2") -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if guest not in ("firmware", "tiny"):
            raise ValueError(f"guest {guest!r}: expected firmware or tiny")
        self.guest_kind = guest
        if fabric not in FABRICS:
            raise ValueError(f"fabric {fabric!r}: expected one of {', '.join(FABRICS)}")
        self.fabric = fabric  # "evpn": br0 reaches the client over an EVPN-VXLAN fabric (evpn.py)
        self.evpn: EvpnFabric | None = None
        self.tally: SerialTally | None = None  # the tiny guest's own count of the client's frames
        self.boot_seconds: float | None = None  # tiny guest: from createXML to its tally listening
        self.mode = mode
        self.qemu_rarp = qemu_rarp
        self.wiring = wiring
        self.rewire_delay = rewire_delay
        self.guest_announce = guest_announce
        self.narrate = narrate or (lambda text: None)
        self.phase = phase or (lambda name: None)  # "network", "libvirtd", "announcer", "guest"
        self.keep_workdir = keep_workdir
        # The tiny guest runs under TCG unless told otherwise (tinyguest.py says why).
        self.guest: Guest = make_guest(kvm=False if guest == "tiny" and kvm is None else kvm)
        if wiring == "immediate":  # plugged wired (agent.py)
            self.guest = replace(self.guest, ovs_plug_vlan=self.agent.vlan)
        self.workdir: Path | None = None
        self.topology: LabTopology | None = None
        self.libvirtd: dict[str, Libvirtd] = {}
        self.conns: dict[str, Any] = {}
        self.events: Events | None = None
        self.switch_sniffer: Sniffer | None = None
        self.host_sniffers: dict[str, Sniffer] = {}
        self.delivered: dict[str, Delivered] = {}
        self.fdb_watch: dict[str, FdbWatch] = {}  # each host's bridge FDB notifications, for the timelines
        self.traffic: ClientTraffic | None = None
        self.daemons: dict[str, Proc] = {}
        self.helpers: list[Proc] = []
        self.location: str | None = None
        self.migrations: list[Migration] = []
        self.made: dict[str, list[Any]] = {"netns": [], "pids": [], "paths": []}
        self._numbered = 0  # migrations done by earlier processes (`lab migrate` after `lab up`)

    @property
    def ovs_nic(self) -> Nic:
        return next(nic for nic in self.guest.nics if nic.ovs)

    @property
    def agent(self) -> WiringAgent:
        nic = self.ovs_nic
        assert nic.vlan is not None
        return WiringAgent(nic.mac, nic.vlan, self.wiring, self.rewire_delay)

    # -- building -----------------------------------------------------------------------

    def up(self) -> Lab:
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def _up(self) -> None:
        self.phase("network")
        self.workdir = make_workdir()
        if self.guest_kind == "tiny":
            self.guest = replace(self.guest, boot=direct_boot(self.workdir / "guest-console.log"))
        self.narrate(f"workdir {self.workdir}")
        self.topology = LabTopology(self.workdir, drop_qemu_rarp=self.qemu_rarp == "drop")
        self.narrate(
            "network: a switch netns (a Linux bridge, tags carried through) with a client behind it; "
            "hosts a and b, each with a Linux bridge br0 and an OVS bridge ovsbr0 trunked to the switch; "
            + ("QEMU's own RARPs dropped on br0" if self.qemu_rarp == "drop" else "QEMU's own RARPs let through")
            + f"; OVS ports wired {'late (dead VLAN 4095 first)' if self.wiring == 'late' else 'at once'}"
        )
        if self.fabric == "evpn":
            self.evpn = EvpnFabric.build(self.topology, self.narrate)
        for host in HOSTS:
            net = self.topology.hosts[host]
            self.libvirtd[host] = Libvirtd(f"lab-host-{host}", net.netns, net.workdir / "libvirt", ovs_rundir=net.ovs.rundir)
            self.write_config(host)
        if self.mode in ("hook", "both"):
            for host in HOSTS:
                self._install_hook(host, "standalone" if self.mode == "hook" else "auto")
        self.phase("libvirtd")
        for daemon in self.libvirtd.values():
            daemon.spawn()
        for host, daemon in self.libvirtd.items():
            daemon.wait_ready()
            self.narrate(f"host {host}: libvirtd {daemon.pid} up, {daemon.uri}")
        self.observe()
        self.phase("announcer")
        if self.mode in ("daemon", "both"):
            for host in HOSTS:
                self.start_daemon(host)
        self.phase("guest")
        booted = time.time()
        self.conns["a"].createXML(self.guest.xml(), 0)
        if self.guest.boot is not None:
            self.tally = SerialTally(Path(self.guest.boot.serial_log))
            self.boot_seconds = self.tally.wait_ready(self.guest.macs) - booted
            self.narrate(f"guest booted its kernel and counts the client's frames after {self.boot_seconds:.1f} s")
        self.location = "a"
        port = self.agent.wire_now(self.topology.hosts["a"].ovs)
        from rarp_announce.lab.guest import kvm_usable

        kind = "KVM" if self.guest.kvm else ("TCG" if kvm_usable() else "TCG (no usable /dev/kvm)")
        what = (f"tiny Linux, {self.guest.boot.memory_mib} MiB" if self.guest.boot else "64 MiB, no disk")
        self.narrate(f"guest {self.guest.name} ({kind}, {what}) runs on host a")
        for nic in self.guest.nics:
            wired = f" (the wiring agent put its port {port} in VLAN {nic.vlan})" if nic.ovs else ""
            self.narrate(f"  vNIC {nic.mac} on {nic.label}{wired}")

    def observe(self) -> None:
        """Connect to both libvirtds, start the sniffers and the client's traffic (also after `load`)."""
        assert self.topology is not None
        if self.events is None:
            self.events = Events()
        for host in HOSTS:
            if host not in self.conns:
                self._connect(host)
        if self.switch_sniffer is None:
            # On the ports only: the bridge device itself sees every broadcast a second time.
            hosts_ports = tuple(port for net in self.topology.hosts.values() for port in net.switch_ports.values())
            self.switch_sniffer = Sniffer(self.topology.switch_ns, devices=hosts_ports)
            for host in HOSTS:
                net = self.topology.hosts[host]
                self.host_sniffers[host] = Sniffer(net.netns, prefix="vnet", sent_on=("br0", "uplink1"))
                self.delivered[host] = Delivered(net.netns)
                self.fdb_watch[host] = FdbWatch(net.netns)
        uplinked = self.topology.hosts["a"].bridges_uplinked
        if self.traffic is None:
            targets = [(nic.mac, nic.vlan) for nic in self.guest.nics if nic.bridge in uplinked]
            self.traffic = ClientTraffic(self.topology.client_ns, CLIENT_DEVICE, targets)
        if self.evpn is not None:  # the other vNICs hear from the client behind VTEP c
            self.evpn.observe([nic.mac for nic in self.guest.nics if nic.bridge not in uplinked],
                              {nic.mac: nic.addresses for nic in self.guest.nics if nic.bridge not in uplinked})

    def _connect(self, host: str) -> None:
        import libvirt

        conn = libvirt.open(self.libvirtd[host].uri)
        # Keepalive: 5 s x 6 unanswered probes. Tighter (2 s x 3) closed the lab's connection in
        # the middle of a migration on a loaded machine (libvirtd answering late, not dead).
        conn.setKeepAlive(5, 6)
        assert self.events is not None
        self.events.watch(host, conn)
        self.conns[host] = conn

    def config_path(self, host: str) -> Path:
        assert self.topology is not None
        return self.topology.hosts[host].workdir / "rarp-announce.toml"

    def write_config(self, host: str) -> None:
        """Each host's rarp-announce reads its own private Open vSwitch (not a system one)."""
        assert self.topology is not None
        rundir = self.topology.hosts[host].ovs.rundir
        # announce-self goes through libvirt to QEMU's monitor, which a loaded host answers in
        # seconds: the lab gives it the longest bound the config takes, not the 2 s default.
        announce = 'guest_announce = true\nagent_timeout = 60\n' if self.guest_announce else 'guest_announce = false\n'
        self.config_path(host).write_text(
            f'[ovs]\ndb = "unix:{rundir}/db.sock"\nrundir = "{rundir}"\nwiring_timeout = 60\n'
            f'[addresses]\n{announce}'
        )

    def _install_hook(self, host: str, mode: str) -> None:
        assert self.topology is not None
        hooks_dir = self.libvirtd[host].hooks_dir
        sock, _state = self.daemon_paths(host)
        workdir = self.topology.hosts[host].workdir
        argv = [*_CLI, "hook", "install", "--hooks-dir", str(hooks_dir), "--mode", mode,
                "--connect", self.libvirtd[host].uri, "--control-socket", str(sock),
                "--log-file", str(workdir / "hook.log"), "--python", sys.executable,
                "--config", str(self.config_path(host)), "--waiter-dir", str(workdir / "waiters")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"hook install for host {host} failed: {(done.stderr or done.stdout).strip()}")
        self.narrate(f"host {host}: hook installed in {hooks_dir}")

    def daemon_paths(self, host: str) -> tuple[Path, Path]:
        assert self.topology is not None
        base = self.topology.hosts[host].workdir / "rarp-announce"
        return base / "control.sock", base / "state"

    def start_daemon(self, host: str) -> Proc:
        assert self.topology is not None
        sock, state = self.daemon_paths(host)
        state.mkdir(parents=True, exist_ok=True)
        log = self.topology.hosts[host].workdir / "daemon.log"
        argv = ["ip", "netns", "exec", self.topology.hosts[host].netns, *_CLI, "daemon",
                "--connect", self.libvirtd[host].uri, "--control-socket", str(sock), "--state-dir", str(state),
                "--config", str(self.config_path(host))]
        began = time.monotonic()
        process = Proc.start(argv, log)
        self.daemons[host] = process
        # Ready is what the lab needs: the daemon answers on its socket and is connected to its
        # libvirtd (an arrival before that would be caught up, not announced live). Waited for,
        # however long a loaded machine takes, bounded so that a daemon that never gets there
        # fails the lab with its log instead of hanging it.
        while not self._daemon_connected(host):
            if not process.alive:
                raise RuntimeError(f"rarp-announce daemon on host {host} exited with {process.returncode}; see {log}")
            if time.monotonic() - began > DAEMON_READY_TIMEOUT:
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise RuntimeError(f"rarp-announce daemon on host {host} not connected to its libvirtd after "
                                   f"{DAEMON_READY_TIMEOUT:.0f} s; its log ends:\n{tail}")
            time.sleep(0.05)
        self.narrate(f"host {host}: rarp-announce daemon {process.pid} watching its libvirtd and its OVS "
                     f"(ready after {time.monotonic() - began:.1f} s)")
        return process

    def _daemon_connected(self, host: str) -> bool:
        sock, _state = self.daemon_paths(host)
        if not sock.exists():
            return False
        status = self.daemon_status(host)
        connection = status.get("connection") if status else None
        return isinstance(connection, dict) and connection.get("state") == "connected"

    def stop_daemon(self, host: str) -> None:
        process = self.daemons.pop(host, None)
        if process is not None:
            process.stop()

    def daemon_status(self, host: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """The daemon's `status` over its control socket, or None if it does not answer."""
        from rarp_announce.control import request
        from rarp_announce.errors import AnnounceError

        sock_path, _state = self.daemon_paths(host)
        try:
            answer = request(str(sock_path), {"op": "status"}, timeout=timeout)
        except AnnounceError:
            return None
        status = answer.get("status") if answer.get("ok") else None
        return status if isinstance(status, dict) else None

    def restart_libvirtd(self, host: str) -> None:
        """Kill `host`'s libvirtd (its guest keeps running) and start it again."""
        self.libvirtd[host].kill()
        self.narrate(f"host {host}: libvirtd killed")
        self.libvirtd[host].start()
        self._connect(host)
        self.narrate(f"host {host}: libvirtd {self.libvirtd[host].pid} back")

    # -- migrating ----------------------------------------------------------------------

    def migrate(self, *, settle: float = 1.6, timeout: float = MIGRATION_BOUND) -> Migration:
        """Live-migrate the guest to the other host and check what the switch, the destination's
        bridges and the guest's taps saw."""
        import libvirt

        assert self.topology is not None and self.events is not None and self.location is not None
        src = self.location
        dst = "b" if src == "a" else "a"
        topo = self.topology
        dst_ports = topo.hosts[dst].switch_ports
        record = Migration(self._numbered + len(self.migrations) + 1, src, dst, time.time(), ovs_mac=self.ovs_nic.mac)
        switched = [nic for nic in self.guest.nics if nic.bridge in dst_ports]  # with fabric "evpn", not br0's
        for nic in switched:
            record.expected[nic.mac] = dst_ports[nic.bridge]
            # The switch holds every MAC on the source's port first, so a move is a real move.
            topo.teach(src, nic.mac, nic.vlan)
        if not wait_until(lambda: all(topo.where(n.mac) == topo.hosts[src].switch_ports[n.bridge] for n in switched), 30.0):
            raise RuntimeError(f"set-up: the switch did not learn the guest's MACs on host {src}'s ports")
        if self.evpn is not None:  # the same for the fabric: VTEP c sends the br0 vNIC's MAC to the source
            self.evpn.before_migration(src, self._taps(src))
        record.fdb_before = self._guest_fdb()
        topo.router.forget()  # what it knows after the migration it learned from the destination
        self.narrate(f"migration {record.number}: host {src} -> host {dst} (live, precopy)")
        record.started = time.time()
        agent_thread, record.rewiring = self.agent.follow(topo.hosts[dst].ovs, self.events, dst, record.started, timeout,
                                                          qemu_over=self._qemu_over(dst, record.started))
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
        record.resumed = self.events.wait(dst, EVENT_RESUMED, (RESUMED_MIGRATED, RESUMED_POSTCOPY), record.started, timeout)
        if self.mode == "cli" and record.resumed is not None:
            self._announce_by_cli(dst)
        mover.join(timeout)
        if record.resumed is not None:  # QEMU emitted it before libvirt's RESUMED: here already, or soon
            record.qemu_resumed = self.events.wait_qemu(dst, "RESUME", record.started, 10.0)
        record.duration = time.time() - record.started
        if failure or mover.is_alive():
            raise RuntimeError(f"migration {record.number} {src}->{dst} failed: {failure[0] if failure else 'timed out'}")
        self.location = dst
        agent_thread.join(timeout)
        # Our schedule lasts 0.8 s from the resume (or from the late wiring): let the switch
        # settle, bounded, then look.
        ready_at = max(record.resumed or time.time(), record.wired or 0.0)
        wait_until(lambda: all(topo.where(mac) == port for mac, port in record.expected.items()),
                   max(0.0, ready_at + max(settle, 5.0) - time.time()))
        time.sleep(max(0.0, ready_at + settle - time.time()))
        self._wait_announcements_over(record.started)
        record.moved = {n.mac: topo.where(n.mac) for n in self.guest.nics}
        # The router sees untagged traffic only (no VLAN interfaces here): the br0 vNIC's addresses.
        wait_until(lambda: all(topo.router.learned(ip, n.mac) for n in switched if not n.vlan for ip in n.addresses),
                   2.0)
        record.router = {ip: topo.router.neighbours().get(ip, ("", ""))[0] for n in switched if not n.vlan
                         for ip in n.addresses}
        record.fdb_after = self._guest_fdb()
        self._collect(record)
        if self.evpn is not None:
            record.evpn = self.evpn.after_migration(dst, src, record.started, record.resumed, self._taps(dst),
                                                    self.delivered[dst])
        self.migrations.append(record)
        return record

    def _wait_announcements_over(self, since: float, quiet: float = ANNOUNCEMENTS_QUIET,
                                 bound: float = ANNOUNCEMENTS_BOUND) -> None:
        """Until no frame of the guest's MACs reached the switch for `quiet` s (bounded): on a loaded
        machine a schedule that began late also ends late, and its last rounds must be counted in
        this migration, not lost after it."""
        assert self.switch_sniffer is not None
        macs = set(self.guest.macs)
        deadline = time.monotonic() + bound
        seen, changed = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = sum(1 for s in self.switch_sniffer.since(since) if s.mac in macs)
            if count != seen:
                seen, changed = count, time.monotonic()
            elif time.monotonic() - changed >= quiet:
                return
            time.sleep(0.05)

    def _when(self, record: Migration, stamp: float) -> str:
        marks = {"QEMU's RESUME": record.qemu_resumed, "RESUMED seen": record.resumed}
        if record.rewiring is not None:
            marks.update({"wiring began": record.rewiring.wired_start, "wired": record.rewiring.wired_at})
        qemu = [s.time for s in self.host_sniffers[record.destination].since(record.started) if not s.sent]
        shown = [f"{(stamp - at) * 1000:+.1f} ms vs {name}" for name, at in marks.items() if at is not None]
        return "; ".join(shown + [f"QEMU's own frames at {[round((t - stamp) * 1000, 1) for t in qemu]} ms from it"])

    def _qemu_over(self, host: str, since: float) -> Callable[[], float | None]:
        """When QEMU's last own announcement of the OVS vNIC on `host` since `since` entered from its
        tap (its schedule, twice with guest_announce: the announce-self the daemon asks for), or None
        while some are still to come."""
        mac, rounds = self.ovs_nic.mac, Schedule().rounds * (2 if self.guest_announce else 1)
        sniffer = self.host_sniffers[host]

        def over() -> float | None:
            times = [s.time for s in sniffer.since(since) if s.mac == mac and not s.sent]
            return max(times) if len(times) >= rounds else None

        return over

    def _collect(self, record: Migration) -> None:
        assert self.topology is not None and self.switch_sniffer is not None
        dst = self.topology.hosts[record.destination]
        ports = dst.switch_ports.values()
        source_ports = self.topology.hosts[record.source].switch_ports.values()
        vlans = {n.mac: n.vlan for n in self.guest.nics}
        for seen in self.switch_sniffer.since(record.started):
            if seen.mac not in vlans:
                continue
            if seen.device in ports:
                record.frames.append(seen)
                why = check_frame(seen.frame, seen.mac, vlans[seen.mac])
                if why:  # when, too: against the resume, the wiring and QEMU's own frames, to tell whose it was
                    record.bad_frames.append(f"{seen.device}: {why}, {self._when(record, seen.time)}")
            elif seen.device in source_ports:
                record.stray.append(seen)
        host_seen = self.host_sniffers[record.destination].since(record.started)
        theirs = [s for s in host_seen if s.mac in vlans and not s.sent]
        record.qemu_first = min((s.time for s in theirs), default=None)
        record.qemu_last = max((s.time for s in theirs), default=None)
        record.qemu_frames = len(theirs)
        for seen in theirs:
            record.qemu_by_mac[seen.mac] = record.qemu_by_mac.get(seen.mac, 0) + 1
        record.sent_first = min((s.time for s in host_seen if s.mac in vlans and s.sent), default=None)
        taps = self._taps(record.destination)
        on_br0 = bridge_fdb_states(dst.netns, "br0")
        on_ovs = {mac: (port, vlan) for port, vlan, mac in dst.ovs.fdb("ovsbr0")}
        for nic in self.guest.nics:
            outcome = NicOutcome(nic.mac, nic.bridge, taps.get(nic.mac))
            if nic.ovs:
                outcome.bridge_port, outcome.bridge_vlan = on_ovs.get(nic.mac, (None, None))
                trace = dst.ovs.appctl("ofproto/trace", "ovsbr0",
                                       f"in_port={HOST_UPLINK_OFPORT},dl_vlan={nic.vlan},dl_dst={nic.mac}")
                outcome.trace = ("local" if "LOCAL" in trace else "learned" if "forwarding to learned port" in trace
                                 else "flooded")
            else:
                outcome.bridge_port, outcome.bridge_state = on_br0.get(nic.mac, (None, None))
            arrived = self.delivered[record.destination].first(nic.mac, record.started)
            outcome.delivered = arrived.time if arrived is not None else None
            record.nics[nic.mac] = outcome
        record.trace = self._trace(record, host_seen, taps)

    def _trace(self, record: Migration, host_seen: list[Any], taps: dict[str, str]) -> MigrationTrace | None:
        """Every frame of this migration, for its timeline (frametrace.py, timeline.py)."""
        if self.traffic is None:
            return None
        clients = {mac for mac, _vlan in self.traffic.targets}
        end = time.time()
        watch = self.fdb_watch.get(record.destination)
        records = self.events.records if self.events is not None else []
        paused = next((stamp for stamp, host, _dom, event, _detail in records
                       if host == record.source and event == EVENT_SUSPENDED and stamp >= record.started), None)
        return gather(start=record.started, end=end, resumed=record.resumed, wired=record.wired, paused=paused,
                      nics=[(n.mac, n.bridge) for n in self.guest.nics if n.mac in clients],
                      sent=self.traffic.sent_between(record.started, end), refused=self.traffic.failed,
                      at_source=self.delivered[record.source].items(),
                      at_destination=self.delivered[record.destination].items(),
                      host_seen=host_seen, fdb_events=watch.events() if watch is not None else [], taps=taps)

    def _taps(self, host: str) -> dict[str, str]:
        """MAC -> the guest's tap on `host`, from libvirt's live XML."""
        xml = self.conns[host].lookupByName(self.guest.name).XMLDesc(0)
        taps: dict[str, str] = {}
        for interface in ET.fromstring(xml).iter("interface"):
            mac, target = interface.find("mac"), interface.find("target")
            if mac is not None and target is not None:
                taps[mac.get("address", "").lower()] = target.get("dev", "")
        return taps

    def _guest_fdb(self) -> list[tuple[str, str]]:
        assert self.topology is not None
        macs = set(self.guest.macs)
        return [entry for entry in self.topology.fdb() if entry[1] in macs]

    def _announce_by_cli(self, host: str) -> None:
        assert self.topology is not None
        net = self.topology.hosts[host]
        argv = ["ip", "netns", "exec", net.netns, *_CLI, "domain", self.guest.name, "--connect", self.libvirtd[host].uri,
                "--config", str(self.config_path(host)), "--wait", "30"]
        self.helpers.append(Proc.start(argv, net.workdir / "announce-cli.log"))

    # -- across processes: `lab up`, then `lab migrate`, then `lab down` ----------------

    def save(self, path: Path = STATE_FILE) -> None:
        assert self.topology is not None
        topo = self.topology
        state = {
            "mode": self.mode, "qemu_rarp": self.qemu_rarp, "wiring": self.wiring, "rewire_delay": self.rewire_delay,
            "workdir": str(self.workdir),
            "switch_ns": topo.switch_ns,
            "client_ns": topo.client_ns,
            "router_ns": topo.router_ns,
            "hosts": {h: net.netns for h, net in topo.hosts.items()},
            "libvirtd": {h: d.pid for h, d in self.libvirtd.items()},
            "daemons": {h: p.pid for h, p in self.daemons.items()},
            "guest_kind": self.guest_kind,
            "guest_boot": vars(self.guest.boot) if self.guest.boot else None,
            "guest": {"name": self.guest.name, "uuid": self.guest.uuid, "kvm": self.guest.kvm,
                      "nics": [[n.mac, n.bridge, n.vlan, n.ovs, list(n.addresses)] for n in self.guest.nics]},
            "location": self.location,
            "migrations": len(self.migrations),
            "fabric": self.fabric,
            "evpn": self.evpn.state() if self.evpn is not None else None,
        }
        path.write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: Path = STATE_FILE, *, narrate: Narrate | None = None) -> Lab:
        """The lab an earlier `lab up` left running, ready to migrate or close."""
        state = json.loads(path.read_text())
        lab = cls(state["mode"], narrate=narrate, qemu_rarp=state["qemu_rarp"], wiring=state["wiring"],
                  rewire_delay=state["rewire_delay"], guest=state.get("guest_kind", "firmware"),
                  fabric=state.get("fabric", "l2"))
        g = state["guest"]
        boot = DirectBoot(**state["guest_boot"]) if state.get("guest_boot") else None
        lab.guest = Guest(g["name"], tuple(Nic(m, b, v, o, tuple(a)) for m, b, v, o, a in g["nics"]), g["kvm"], g["uuid"],
                          boot)
        lab.tally = SerialTally(Path(boot.serial_log)) if boot else None
        lab.workdir = Path(state["workdir"])
        lab.topology = LabTopology.adopt(lab.workdir, state["switch_ns"], state["hosts"], state["client_ns"],
                                         state["router_ns"], drop_qemu_rarp=state["qemu_rarp"] == "drop")
        for host, ns in state["hosts"].items():
            daemon = Libvirtd(f"lab-host-{host}", ns, lab.workdir / host / "libvirt",
                              ovs_rundir=lab.topology.hosts[host].ovs.rundir)
            daemon.adopted = state["libvirtd"].get(host)
            lab.libvirtd[host] = daemon
        if state.get("evpn"):
            lab.evpn = EvpnFabric.adopt(lab.topology, state["evpn"])
        lab.daemons = {h: Proc(pid) for h, pid in state["daemons"].items()}
        lab.location = state["location"]
        lab._numbered = state["migrations"]
        return lab

    # -- tearing down -------------------------------------------------------------------

    def footprint(self) -> dict[str, list[Any]]:
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
        if self.evpn is not None:
            made = self.evpn.footprint()
            namespaces += made["netns"]
            pids += made["pids"]
        return {"netns": namespaces, "pids": pids, "paths": [str(self.workdir)] if self.workdir else []}

    def close(self) -> None:
        """Stop and remove everything this lab made; safe to call twice and after failures."""
        if self.topology is not None:
            self.made = self.footprint()
        if self.workdir is not None and self.libvirtd and not self.conns:
            self._reconnect_quietly()
        for process in [*self.daemons.values(), *self.helpers]:
            process.stop()
        self.daemons.clear()
        self.helpers.clear()
        if self.traffic is not None:
            self.traffic.close()
            self.traffic = None
        for watcher in [self.switch_sniffer, *self.host_sniffers.values(), *self.delivered.values(),
                        *self.fdb_watch.values()]:
            if watcher is not None:
                watcher.close()
        self.switch_sniffer = None
        self.host_sniffers.clear()
        self.delivered.clear()
        self.fdb_watch.clear()
        for conn in list(self.conns.values()):
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
        if self.evpn is not None:  # FRR by pid, before the sweep below would kill it
            self.evpn.close()
            self.evpn = None
        self._sweep_netns()
        for daemon in self.libvirtd.values():
            leftovers = daemon.qemu_pids()
            daemon.stop()
            for pid in leftovers:  # QEMUs of a guest libvirt could not destroy
                kill_pid(pid)
        self.libvirtd.clear()
        if self.topology is not None:
            self.topology.close()
            self.topology = None
        self._keep_logs()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _keep_logs(self) -> None:
        """Copy the workdir's logs (libvirtd, QEMU, OVS, FRR, our daemon and hook, the guest's
        console) under $RARP_LAB_KEEP_LOGS/<workdir name>/ before the workdir goes: the only
        record of what the hosts did when a test that closed its lab failed."""
        into = os.environ.get(KEEP_LOGS_ENV)
        if not into or self.workdir is None:
            return
        kept = Path(into) / self.workdir.name
        for log in self.workdir.rglob("*.log"):
            if log.is_file():
                copy = kept / log.relative_to(self.workdir)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, copy)

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
                    kill_pid(int(word))

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()
