"""The running daemon tells its version: in `status`, its start log line, its metrics' build
info, and so to `doctor`, which also reads the daemon's own capabilities."""

from __future__ import annotations

import json
import signal
import urllib.request

from rarp_announce import __version__
from tests.conftest import CLI
from tests.triggers.daemon.test_cli import CONFIG, Running


def test_version_in_status_start_line_metrics_and_doctor(lab) -> None:
    from rarp_announce.lab.netns import inside

    sock = lab.tmp / "ctl.sock"
    (lab.tmp / "config.toml").write_text(CONFIG + f'control_socket = "{sock}"\n')
    daemon = Running(lab, "--log-format", "json", "--metrics", "127.0.0.1:9478")
    try:
        assert daemon.ready().startswith("READY=1")
        assert daemon.status()["version"] == __version__
        text = lab.topo.exec("a", [*CLI, "status", "--control-socket", daemon.sock_path])
        assert text.stdout.startswith(f"rarp-announce {__version__}  daemon pid {daemon.status()['pid']}  "), text.stdout
        with inside(lab.ns):
            body = urllib.request.urlopen("http://127.0.0.1:9478/metrics", timeout=5).read().decode()
        assert f'rarp_announce_build_info{{version="{__version__}"}} 1.0' in body.splitlines()

        doctor = lab.topo.exec("a", [*CLI, "doctor", "--json", "--config", str(daemon.config), "--connect",
                                     "test:///default", "--hooks-dir", str(lab.tmp / "hooks")], timeout=60)
        checks = json.loads(doctor.stdout)["checks"]
        pid = daemon.status()["pid"]
        said = [(c["group"], c["status"], c["what"]) for c in checks]
        assert ("daemon", "ok", f"pid {pid} answers on {sock} (rarp-announce {__version__})") in said
        assert ("daemon", "ok", "its libvirt connection to test:///default is up (reconnects 0)") in said
        assert ("mode", "ok", "daemon (it watches libvirt's events itself)") in said
        # Root's daemon holds both capabilities; doctor read them from /proc/<its pid>/status.
        assert ("capabilities", "ok", f"the daemon (pid {pid}) has CAP_NET_RAW (raw frames)") in said
        assert doctor.returncode == 0, said
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        _out, err = daemon.proc.communicate(timeout=10)
        daemon.close()
    ready = next(json.loads(line) for line in err.splitlines() if '"daemon ready"' in line)
    assert ready["version"] == __version__
