"""A `rarp-announce daemon` subprocess for the fault tests: started in the lab's host netns,
ready when it says READY=1 on a fake systemd notify socket, stderr kept in a file (a pipe of
64 KiB would block a daemon that logs a lot), stopped by its pid only."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import CLI, ROOT

# Quick schedules, no OVSDB (none runs here: the daemon must not wait for it), short retries.
CONFIG = (
    "[schedule]\ninitial = 5\nmax = 20\nrounds = 3\nstep = 5\n"
    '[ovs]\ndb = ""\n'
    "[daemon]\nretry_timeout = 2\nretry_interval = 0.05\n"
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class DaemonProcess:
    def __init__(self, tmp: Path, netns: str | None, *extra: str, name: str = "d", config: str | None = CONFIG,
                 state_dir: str | None = None, control_socket: str | None = None, nofile: int | None = None,
                 log_format: str = "text", uri: str = "test:///default") -> None:
        self.tmp = tmp
        self.control_socket = control_socket or str(tmp / f"{name}.sock")
        self.state_dir = state_dir or str(tmp / f"{name}-state")
        self.config_path = tmp / f"{name}.toml"
        if config is not None:
            self.config_path.write_text(config)
        self.err_path = tmp / f"{name}.stderr"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = tmp / f"{name}.notify"
        self.notify.bind(str(notify_path))
        argv = [*CLI, "daemon", "--connect", uri, "--config", str(self.config_path),
                "--control-socket", self.control_socket, "--state-dir", self.state_dir,
                "--log-format", log_format, *extra]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]  # execs: the pid is the daemon's own
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=path)

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, preexec_fn=limits, cwd=ROOT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> None:  # generous: start-up on a loaded machine
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"daemon not ready within {timeout} s: {self.stderr()[-2000:]}"
            self.notify.settimeout(min(remaining, 0.5))
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.stderr()[-2000:]}"
                continue
            if message.startswith("READY=1"):
                return

    def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        from rarp_announce.control import request

        return request(self.control_socket, message, timeout=timeout)

    def status(self) -> dict[str, Any]:
        answer = self.request({"op": "status"})
        assert answer.get("ok") is True, answer
        return answer["status"]

    def stderr(self) -> str:
        return self.err_path.read_bytes().decode(errors="replace")

    def lines(self) -> list[str]:
        return self.stderr().splitlines()

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def fd_count(self) -> int:
        return fd_count(self.pid)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM; the exit code. Bounded generously (AssertionError past `timeout`) so that a
        daemon that does not stop fails the test instead of hanging it; how fast it stops is a
        figure in benchmarks/bench_daemon.py, not an assertion."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running {timeout} s after SIGTERM") from None

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its pid, only the process this test started
            self.proc.wait(10)
        self.notify.close()


def trunk_domain_xml(name: str, uuid: str, nics: int = 59, bridge: str = "br0") -> str:
    """A valid domain whose every vNIC trunks VLANs 1-4094 (the reported 3.8 MB document)."""
    tags = "".join(f"<tag id='{vlan}'/>" for vlan in range(1, 4095))
    interfaces = "".join(
        f"<interface type='bridge'><mac address='52:54:00:7e:{i // 256:02x}:{i % 256:02x}'/>"
        f"<source bridge='{bridge}'/><vlan trunk='yes'>{tags}</vlan><model type='virtio'/></interface>"
        for i in range(nics)
    )
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='KiB'>65536</memory>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{interfaces}</devices></domain>")
