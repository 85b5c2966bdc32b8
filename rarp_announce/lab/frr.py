"""FRR's zebra and bgpd for one lab VTEP, inside its network namespace, with paths of its own.

Debian's frr package ships one instance per machine: its daemons keep their pid files and vty
sockets in /var/run/frr and scratch files in /var/tmp. Here each VTEP runs its own pair, so
each daemon is started by `ip netns exec` (which gives it a private mount namespace,
ip-netns(8)) with the VTEP's own directories bind-mounted over those two paths, and is told its
config, pid file, vty directory and zserv socket on the command line (zebra(8), bgpd(8):
`--vty_socket`, `-z`, `-i`, `-f`). `-P 0` opens no vty TCP port; `-u root -g frrvty` because
FRR refuses a group its user is not in, and root is not in `frrvty`.

`ip netns exec` and the shell exec the daemon itself, so the pid the lab started is the
daemon's: it is stopped by that pid (SIGTERM; FRR exits within about a second), never by name.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rarp_announce.lab.procs import Proc

FRR_DIR = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bgpd")


def frr_missing() -> str | None:
    """Why FRR cannot run here (None when it can): `make setup` installs Debian's frr."""
    for daemon in DAEMONS:
        if not (FRR_DIR / daemon).exists():
            return f"the EVPN lab needs FRR's {FRR_DIR / daemon} (make setup installs Debian's frr)"
    if shutil.which("vtysh") is None:
        return "the EVPN lab needs FRR's vtysh (make setup installs Debian's frr)"
    return None


class Frr:
    """zebra + bgpd of one VTEP: `write_config(...)`, `start()`, `vtysh(...)`, `stop()`."""

    def __init__(self, name: str, netns: str, directory: Path) -> None:
        self.name = name
        self.netns = netns
        self.dir = Path(directory)
        self.run_dir = self.dir / "run"
        self.procs: dict[str, Proc] = {}

    @classmethod
    def adopt(cls, name: str, netns: str, directory: Path, pids: dict[str, int]) -> Frr:
        """The daemons an earlier process (`lab up`) started, to query or stop them."""
        frr = cls(name, netns, directory)
        frr.procs = {daemon: Proc(pid) for daemon, pid in pids.items()}
        return frr

    @property
    def pids(self) -> dict[str, int]:
        return {daemon: proc.pid for daemon, proc in self.procs.items()}

    def write_config(self, router_id: str, peers: list[str], asn: int) -> None:
        """iBGP to every other VTEP, EVPN for every local VNI (`advertise-all-vni`).

        `frr defaults datacenter` (bgpd.conf's first line) sends updates without the
        traditional profile's advertisement interval. Inbound update debugging is on, with
        microsecond timestamps: the log says when each type-2 route, and its MAC-mobility
        sequence, arrived (evpn.py reads it instead of polling vtysh). So is zebra's EVPN
        debugging: in what order zebra handled a MAC learned on a local port and a remote
        VTEP's routes for it, which decides the MAC-mobility sequence (evpn.py, `zebra_order`).
        """
        for path in (self.dir, self.run_dir, self.dir / "tmp"):
            path.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.run_dir, group="frrvty")
        self.run_dir.chmod(0o775)
        common = f"hostname {self.name}\nlog stdout\nlog timestamp precision 6\n"
        (self.dir / "zebra.conf").write_text(common + "debug zebra vxlan\n")
        neighbours = "".join(f" neighbor {peer} peer-group fabric\n" for peer in peers)
        (self.dir / "bgpd.conf").write_text(
            "frr defaults datacenter\n" + common + "debug bgp updates in\n"
            f"router bgp {asn}\n"
            f" bgp router-id {router_id}\n"
            " no bgp default ipv4-unicast\n"
            " neighbor fabric peer-group\n"
            " neighbor fabric remote-as internal\n"
            " neighbor fabric timers connect 1\n"
            f"{neighbours}"
            " address-family l2vpn evpn\n"
            "  neighbor fabric activate\n"
            "  advertise-all-vni\n"
            " exit-address-family\n"
        )

    def start(self) -> Frr:
        for daemon in DAEMONS:
            binds = (f"mount --bind {shlex.quote(str(self.run_dir))} /var/run/frr && "
                     f"mount --bind {shlex.quote(str(self.dir / 'tmp'))} /var/tmp && ")
            command = [str(FRR_DIR / daemon), "-u", "root", "-g", "frrvty", "-P", "0",
                       "--vty_socket", str(self.run_dir), "-z", str(self.run_dir / "zserv.api"),
                       "-f", str(self.dir / f"{daemon}.conf"), "-i", str(self.run_dir / f"{daemon}.pid")]
            argv = ["ip", "netns", "exec", self.netns, "sh", "-c", binds + "exec " + shlex.join(command)]
            self.procs[daemon] = Proc.start(argv, self.dir / f"{daemon}.log")
        return self

    def log_path(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.log"

    def ready(self) -> bool:
        """Both daemons answer on their vty sockets."""
        return all((self.run_dir / f"{daemon}.vty").exists() for daemon in DAEMONS) and all(
            proc.alive for proc in self.procs.values())

    def vtysh(self, *commands: str, timeout: float = 15.0) -> str:
        argv = ["vtysh", "--vty_socket", str(self.run_dir)]
        for command in commands:
            argv += ["-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"vtysh on {self.name} ({' / '.join(commands)}): {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def json(self, command: str) -> Any:
        text = self.vtysh(command).strip()
        return json.loads(text) if text else {}

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.procs.clear()
