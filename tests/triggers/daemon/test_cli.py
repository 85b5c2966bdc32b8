"""`rarp-announce daemon` and `status` as real processes: systemd readiness, SIGHUP, SIGTERM, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import CLI, ROOT

CONFIG = "[schedule]\nrounds = 3\n[daemon]\nretry_timeout = 5\n"


class Running:
    """A daemon subprocess inside the lab's host netns, started under a fake systemd notify socket."""

    def __init__(self, lab, *extra: str) -> None:
        self.lab = lab
        self.sock_path = str(lab.tmp / "ctl.sock")
        self.config = lab.tmp / "config.toml"
        if not self.config.exists():
            self.config.write_text(CONFIG)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(lab.tmp / "notify.sock"))
        self.notify.settimeout(120)  # generous: start-up on a loaded machine; fails, never hangs
        env = dict(os.environ, NOTIFY_SOCKET=str(lab.tmp / "notify.sock"), PYTHONPATH=str(ROOT))
        self.proc = lab.topo.popen(
            "a",
            [*CLI, "daemon", "--connect", "test:///default", "--config", str(self.config),
             "--control-socket", self.sock_path, "--state-dir", str(lab.tmp / "state"), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def ready(self) -> str:
        return self.notify.recv(4096).decode()

    def status(self) -> dict:
        result = self.lab.topo.exec("a", [*CLI, "status", "--json", "--control-socket", self.sock_path])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.notify.close()


@pytest.fixture
def daemon_process(lab):
    started: list[Running] = []

    def start(*extra: str) -> Running:
        started.append(Running(lab, *extra))
        return started[-1]

    yield start
    for process in started:
        process.close()


def test_ready_status_sighup_and_sigterm(lab, daemon_process) -> None:
    daemon = daemon_process("--log-format", "json")
    assert daemon.ready().startswith("READY=1")
    assert daemon.status()["schedule"]["rounds"] == 3
    text = lab.topo.exec("a", [*CLI, "status", "--control-socket", daemon.sock_path])
    assert text.returncode == 0 and "test:///default: connected" in text.stdout

    daemon.config.write_text(CONFIG.replace("rounds = 3", "rounds = 7"))
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while daemon.status()["counters"].get("reloads") != 1:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.05)
    assert daemon.status()["schedule"]["rounds"] == 7

    daemon.config.write_text("[schedule]\nrounds = 'many'\n")  # broken: the running config stays
    daemon.proc.send_signal(signal.SIGHUP)
    while daemon.status()["counters"].get("reload_failures") != 1:
        assert time.monotonic() < deadline, "broken config not reported"
        time.sleep(0.05)
    assert daemon.status()["schedule"]["rounds"] == 7

    daemon.proc.send_signal(signal.SIGTERM)
    out, err = daemon.proc.communicate(timeout=5)
    assert daemon.proc.returncode == 0, err
    assert not os.path.exists(daemon.sock_path), "the control socket is removed on exit"
    assert daemon.notify.recv(4096) == b"STOPPING=1"
    lines = [json.loads(line) for line in err.splitlines()]
    messages = [line["msg"] for line in lines]
    assert "daemon ready" in messages and "config reloaded" in messages and "stopping" in messages
    failed = next(line for line in lines if line["msg"].startswith("config reload failed"))
    assert "[schedule] rounds" in failed["error"]


def test_metrics_endpoint_serves_prometheus_text(lab, daemon_process) -> None:
    from rarp_announce.lab.netns import inside

    daemon = daemon_process("--metrics", "127.0.0.1:9477")
    assert daemon.ready().startswith("READY=1")
    with inside(lab.ns):  # the socket must be made in the daemon's netns
        body = urllib.request.urlopen("http://127.0.0.1:9477/metrics", timeout=5).read().decode()
    assert "rarp_announce_libvirt_connected 1.0" in body
    assert "rarp_announce_first_frame_latency_seconds_bucket" in body
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics", "nowhere"], "invalid metrics address 'nowhere'"),
        (["--log-format", "xml"], "invalid log format 'xml'"),
        (["--config", "/nonexistent/config.toml"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message) -> None:
    result = subprocess.run(
        [*CLI, "daemon", "--control-socket", str(tmp_path / "s"), "--state-dir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_status_without_a_daemon_says_so(tmp_path) -> None:
    result = subprocess.run([*CLI, "status", "--control-socket", str(tmp_path / "none.sock")],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 1
    assert "is `rarp-announce daemon` running?" in result.stderr and "Traceback" not in result.stderr


def test_an_unusable_state_dir_costs_the_ledger_not_the_daemon(tmp_path) -> None:
    """The ledger is an aid to exactly-once, never a reason not to announce: the daemon starts,
    says once what it cannot do, and serves."""
    daemon = subprocess.Popen(
        [*CLI, "daemon", "--connect", "test:///default", "--state-dir", "/proc/nope/dir",
         "--control-socket", str(tmp_path / "c.sock")],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = daemon.stderr.readline()
            lines.append(line)
            if "daemon ready" in line or not line:
                break
        assert any("daemon ready" in line for line in lines), lines
        assert [line for line in lines if "/proc/nope/dir" in line and "warning" in line], lines
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=10)
    assert daemon.returncode == 0


@pytest.mark.parametrize(
    "option, message",
    [("--control-socket", "cannot create the control socket's folder /proc/nope")],
)
def test_unusable_paths_are_one_line_and_exit_1(tmp_path, option, message) -> None:
    paths = {"--state-dir": str(tmp_path / "state"), "--control-socket": str(tmp_path / "c.sock")}
    paths[option] = "/proc/nope/dir"
    result = subprocess.run(
        [*CLI, "daemon", "--connect", "test:///default", *(x for pair in paths.items() for x in pair)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
