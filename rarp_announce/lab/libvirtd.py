"""A real libvirtd per lab host: its own netns, mount and UTS namespaces, private directories.

libvirtd uses compiled-in paths (/run/libvirt, /var/lib/libvirt, ...), so
each instance gets a private mount namespace in which fresh tmpfs cover /run and /var and the
host's private folders (under the lab's workdir) are bind-mounted where libvirt looks. Nothing
is created or mounted outside that namespace; it vanishes with its last process (libvirtd and
its QEMUs). /run/openvswitch inside is the host's private OVS run folder, so the `ovs-vsctl`
that libvirt calls for `<virtualport type='openvswitch'/>` reaches that host's own OVS.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

from rarp_announce.errors import AnnounceError
from rarp_announce.pids import alive

_PRIVATE = ("run", "lib", "log", "cache", "etc")

_QEMU_CONF = """\
# Lab settings (qemu.conf in the libvirt sources): no users, cgroups, namespaces, labels or virtlogd.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


class LibvirtdError(AnnounceError):
    pass


class Libvirtd:
    """One libvirtd for host `name`, in netns `netns`; files under `workdir`."""

    def __init__(self, name: str, netns: str, workdir: Path, *, ovs_rundir: Path | None = None) -> None:
        self.name = name
        self.netns = netns
        self.workdir = Path(workdir)
        self.ovs_rundir = ovs_rundir
        self.host_uuid = _existing_uuid(self.workdir / "etc" / "libvirtd.conf") or str(uuidlib.uuid4())
        self.process: subprocess.Popen | None = None
        self.adopted: int | None = None  # pid of a libvirtd started by an earlier `lab up`
        self.dirs = {key: self.workdir / key for key in _PRIVATE}
        self.hooks_dir = self.dirs["etc"] / "hooks"
        self.socket = self.dirs["run"] / "libvirt-sock"
        self.log = self.workdir / "libvirtd.out"
        self._prepare()

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def _prepare(self) -> None:
        for folder in self.dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        self.hooks_dir.mkdir(exist_ok=True)
        (self.dirs["etc"] / "libvirtd.conf").write_text(
            "# The socket stays at libvirt's default /run/libvirt inside this host's mount namespace\n"
            "# (so a hook or waiter there finds it), which is the workdir's run/ outside.\n"
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            'unix_sock_rw_perms = "0700"\n'
            f'host_uuid = "{self.host_uuid}"\n'
            f'log_outputs = "3:file:{self.dirs["log"]}/libvirtd.log"\n'
            "# libvirt's bound on each ovs-vsctl call (5 s by default; a libvirtd.conf setting, libvirt\n"
            "# src/remote/remote_daemon_config.c): under load ovs-vswitchd took longer, a migration failed\n"
            "# with \"Unable to add port ... to OVS bridge\" and a source's del-port left a stale port.\n"
            "ovs_timeout = 120\n"
        )
        (self.dirs["etc"] / "qemu.conf").write_text(_QEMU_CONF)
        (self.workdir / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n")

    def _script(self) -> str:
        q = shlex.quote
        d = {key: q(str(path)) for key, path in self.dirs.items()}
        lines = [
            "set -e",
            # Fresh /run and /var for this namespace only: the mount points libvirt needs
            # (/run/libvirt, /var/lib/libvirt, ...) may not exist on the machine itself.
            "mount -t tmpfs -o mode=0755 lab-run /run",
            "mount -t tmpfs -o mode=0755 lab-var /var",
            "mkdir -p /run/libvirt /run/lock /run/openvswitch /var/lib/libvirt /var/log/libvirt "
            "/var/cache/libvirt /var/tmp",
            "chmod 1777 /var/tmp",
            "ln -s /run /var/run",
            "ln -s /run/lock /var/lock",
            f"mount --bind {d['run']} /run/libvirt",
            f"mount --bind {d['lib']} /var/lib/libvirt",
            f"mount --bind {d['log']} /var/log/libvirt",
            f"mount --bind {d['cache']} /var/cache/libvirt",
            f"mount --bind {d['etc']} /etc/libvirt",
            f"mount --bind {q(str(self.workdir / 'hosts'))} /etc/hosts",
        ]
        if self.ovs_rundir:
            lines.append(f"mount --bind {q(str(self.ovs_rundir))} /run/openvswitch")
        lines += [f"hostname {q(self.name)}", "exec libvirtd -f /etc/libvirt/libvirtd.conf"]
        return "\n".join(lines)

    def start(self, *, timeout: float = 300.0) -> None:
        """Start libvirtd and wait until it answers (the first connection probes QEMU: ~7 s on an
        idle machine, over 60 s on a loaded one; `timeout` is a bound, not a figure)."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start libvirtd without waiting: hosts start side by side, then `wait_ready`."""
        if self.running:
            return
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        with open(self.log, "ab") as out:
            # `ip netns exec` and `unshare` exec in place, so the Popen pid is libvirtd's own.
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                 "sh", "-c", self._script()],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, timeout: float = 300.0) -> None:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LibvirtdError(f"libvirtd for {self.name} exited with {self.process.returncode}; see {self.log}")
            if self.socket.exists() and self._answers(max(1.0, deadline - time.monotonic())):
                return
            time.sleep(0.1)
        raise LibvirtdError(f"libvirtd for {self.name} did not answer within {timeout:.0f} s; see {self.log}")

    def _answers(self, timeout: float) -> bool:
        """Whether libvirtd answers now; a call still waiting for its drivers after `timeout` s
        (the QEMU probe of a first start, on a loaded machine) is a "not yet"."""
        try:
            done = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    @property
    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.adopted is not None and alive(self.adopted)

    @property
    def pid(self) -> int | None:
        if not self.running:
            return None
        return self.process.pid if self.process is not None else self.adopted

    def kill(self) -> None:
        """SIGKILL libvirtd (its QEMUs keep running, as after a daemon crash)."""
        self._signal(signal.SIGKILL, 10.0)

    def stop(self) -> None:
        """SIGTERM libvirtd, then SIGKILL if it lingers; its guests keep running."""
        if not self._signal(signal.SIGTERM, 10.0):
            self._signal(signal.SIGKILL, 5.0)

    def _signal(self, sig: int, timeout: float) -> bool:
        pid = self.pid
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.running and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.running:
                return False
        self.process = None
        self.adopted = None
        return True

    def qemu_pids(self) -> list[int]:
        """Pids of this host's QEMUs, from libvirt's pidfiles in the private run folder."""
        pids = []
        for pidfile in (self.dirs["run"] / "qemu").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if pidfile.name != "driver.pid" and _is_qemu(pid) and alive(pid):
                pids.append(pid)
        return pids


def _is_qemu(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"qemu-system" in cmdline.read().split(b"\0", 1)[0]
    except OSError:
        return False



def _existing_uuid(conf: Path) -> str | None:
    """The host_uuid of a host made earlier (`lab up` then `lab migrate`): it must not change."""
    try:
        for line in conf.read_text().splitlines():
            if line.startswith("host_uuid"):
                return line.split('"')[1]
    except (OSError, IndexError):
        pass
    return None
