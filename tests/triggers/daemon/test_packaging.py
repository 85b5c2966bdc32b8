"""The systemd unit: notify type, restart policy, one capability, filesystem hardening; and systemd
itself accepts it (systemd-analyze verify, with ExecStart pointed at this checkout's venv)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, require

UNIT = ROOT / "packaging" / "systemd" / "rarp-announce.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def test_unit_says_what_the_daemon_needs() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith("rarp-announce daemon")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["CapabilityBoundingSet"] == "CAP_NET_RAW" == service["AmbientCapabilities"]
    assert service["ProtectSystem"] == "strict"
    assert set(service["ReadWritePaths"].split()) == {"/run/rarp-announce", "/var/lib/rarp-announce"}
    assert "AF_PACKET" in service["RestrictAddressFamilies"]
    assert "PrivateNetwork" not in service
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 1


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze")
    executable = Path(sys.executable).with_name("rarp-announce")
    require(executable.exists(), "needs the package installed in the venv")
    unit = tmp_path / "rarp-announce.service"
    unit.write_text(UNIT.read_text().replace("/opt/rarp-announce/bin/rarp-announce", str(executable)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "rarp-announce.service" in line]
    assert result.returncode == 0 and problems == [], result.stderr
