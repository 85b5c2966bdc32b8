"""A private Open vSwitch (ovsdb-server + ovs-vswitchd, userspace datapath) for tests and the lab.

The kernel here has no openvswitch module, so every bridge must use `datapath_type=netdev`
(the userspace datapath, OVS Documentation/intro/install/userspace.rst). All state (database, sockets, pidfiles, logs) lives in `workdir`, so
several instances run side by side and never touch a system OVS. `netns` runs the daemons in
that network namespace: the userspace datapath opens its ports (and creates the bridge's
internal tap) in the namespace ovs-vswitchd lives in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from rarp_announce.errors import AnnounceError
from rarp_announce.pids import alive, wait_gone

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
_TIMEOUT = 180.0  # s; a bound so the lab fails instead of hanging (20 s was short on a loaded machine)


class OVSError(AnnounceError):
    """An ovs-* command failed; the message carries its stderr's first line."""


class PrivateOVS:
    """One OVS instance whose state lives in `workdir`; a context manager (start/stop)."""

    def __init__(self, workdir: Path | str, netns: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.netns = netns
        self.rundir = self.workdir / "run"
        self.dbdir = self.workdir / "db"
        self.logdir = self.workdir / "log"
        self.etcdir = self.workdir / "etc"
        self._pids: dict[str, int] = {}
        self._bridges: set[str] = set()

    # -- environment and commands -------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment that points every ovs-* tool at this instance's private folders."""
        env = dict(os.environ)
        env.update(
            OVS_RUNDIR=str(self.rundir),
            OVS_DBDIR=str(self.dbdir),
            OVS_LOGDIR=str(self.logdir),
            OVS_SYSCONFDIR=str(self.etcdir),
            OVS_PKGDATADIR="/usr/share/openvswitch",
        )
        return env

    def _argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _run(self, argv: list[str], *, timeout: float = _TIMEOUT) -> str:
        try:
            done = subprocess.run(self._argv(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise OVSError(f"{argv[0]} timed out after {timeout:.0f} s: {' '.join(argv[1:])}") from error
        if done.returncode != 0:
            first = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[0]
            raise OVSError(f"{' '.join(argv[:3])}...: {first}")
        return done.stdout

    def vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", f"--db=unix:{self.rundir}/db.sock", "--timeout=120", *args])

    def appctl(self, *args: str) -> str:
        """ovs-appctl to ovs-vswitchd (or pass `-t TARGET` first to reach another daemon)."""
        if args[:1] != ("-t",):
            args = ("-t", str(self.rundir / "ovs-vswitchd.ctl"), *args)
        return self._run(["ovs-appctl", *args])

    def ofctl(self, *args: str) -> str:
        return self._run(["ovs-ofctl", *args])

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> "PrivateOVS":
        for folder in (self.rundir, self.dbdir, self.logdir, self.etcdir):
            folder.mkdir(parents=True, exist_ok=True)
        db = self.dbdir / "conf.db"
        if not db.exists():
            self._run(["ovsdb-tool", "create", str(db), str(SCHEMA)])
        try:
            self._run([
                "ovsdb-server", str(db),
                f"--remote=punix:{self.rundir}/db.sock",
                f"--pidfile={self.rundir}/ovsdb-server.pid",
                f"--unixctl={self.rundir}/ovsdb-server.ctl",
                f"--log-file={self.logdir}/ovsdb-server.log",
                "--detach", "--no-chdir",
            ])
            self._pids["ovsdb-server"] = self._read_pid("ovsdb-server")
            self.vsctl("--no-wait", "init")
            self._run([
                "ovs-vswitchd", f"unix:{self.rundir}/db.sock",
                f"--pidfile={self.rundir}/ovs-vswitchd.pid",
                f"--unixctl={self.rundir}/ovs-vswitchd.ctl",
                f"--log-file={self.logdir}/ovs-vswitchd.log",
                "--detach", "--no-chdir",
            ])
            self._pids["ovs-vswitchd"] = self._read_pid("ovs-vswitchd")
        except BaseException:
            self.stop()
            raise
        return self

    def _read_pid(self, name: str) -> int:
        path = self.rundir / f"{name}.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.02)
        raise OVSError(f"{name} wrote no pidfile in {path}")

    def stop(self) -> None:
        """Delete our bridges (their internal taps persist otherwise), stop both daemons."""
        if "ovs-vswitchd" in self._pids:
            for bridge in list(self._bridges):
                try:
                    self.vsctl("--if-exists", "del-br", bridge)
                except OVSError:
                    pass
            self._bridges.clear()
            self._exit("ovs-vswitchd", "exit", "--cleanup")
        if "ovsdb-server" in self._pids:
            self._exit("ovsdb-server", "exit")

    def _exit(self, name: str, *command: str) -> None:
        pid = self._pids.pop(name)
        try:
            self._run(["ovs-appctl", "-t", str(self.rundir / f"{name}.ctl"), *command], timeout=60)
        except OVSError:
            pass
        if not wait_gone(pid, 5.0):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if wait_gone(pid, 3.0):
                    break

    def adopt(self) -> "PrivateOVS":
        """Take over an instance an earlier process started in the same workdir."""
        for name in ("ovsdb-server", "ovs-vswitchd"):
            try:
                pid = int((self.rundir / f"{name}.pid").read_text().strip())
            except (OSError, ValueError):
                continue
            if alive(pid):
                self._pids[name] = pid
        if "ovs-vswitchd" in self._pids:
            self._bridges.update(self.vsctl("list-br").split())
        return self

    def pids(self) -> list[int]:
        return list(self._pids.values())

    def __enter__(self) -> "PrivateOVS":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers the lab and tests share ------------------------------------------------

    def add_bridge(self, bridge: str, *, mac: str | None = None) -> None:
        """A userspace-datapath bridge (the only kind that works without the kernel module)."""
        args = ["--may-exist", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev"]
        if mac:
            args += [f"other-config:hwaddr={mac}"]
        self.vsctl(*args)
        self._bridges.add(bridge)

    def add_port(self, bridge: str, port: str, *, ofport: int | None = None, tag: int | None = None,
                 trunks: list[int] | None = None) -> None:
        args = ["--may-exist", "add-port", bridge, port]
        port_settings = [f"tag={tag}"] if tag is not None else []
        if trunks:
            port_settings.append("trunks=" + ",".join(str(v) for v in trunks))
        if port_settings:
            args += ["--", "set", "port", port, *port_settings]
        if ofport is not None:
            args += ["--", "set", "interface", port, f"ofport_request={ofport}"]
        self.vsctl(*args)

    def fdb(self, bridge: str) -> list[tuple[str, int, str]]:
        """The bridge's learned MACs as (port name, VLAN, MAC), from `ovs-appctl fdb/show`."""
        names = self._port_names(bridge)
        entries: list[tuple[str, int, str]] = []
        for line in self.appctl("fdb/show", bridge).splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4:
                continue
            port, vlan, mac = fields[0], fields[1], fields[2]
            entries.append((names.get(port, port), int(vlan), mac.lower()))
        return entries

    def fdb_port(self, bridge: str, mac: str, vlan: int | None = None) -> str | None:
        """The port name `mac` is learned on (in `vlan` if given), or None."""
        for port, learned_vlan, learned in self.fdb(bridge):
            if learned == mac.lower() and (vlan is None or learned_vlan == vlan):
                return port
        return None

    def flush_fdb(self, bridge: str) -> None:
        self.appctl("fdb/flush", bridge)

    def _port_names(self, bridge: str) -> dict[str, str]:
        """OpenFlow port number (and LOCAL) -> port name, to make fdb/show readable."""
        names = {"LOCAL": bridge}
        for line in self.ofctl("show", bridge).splitlines():
            line = line.strip()
            # e.g. " 1(port_a): addr:..." or " LOCAL(sw): addr:..."
            if "(" in line and "): addr" in line:
                number, rest = line.split("(", 1)
                names[number.strip()] = rest.split(")", 1)[0]
        return names
