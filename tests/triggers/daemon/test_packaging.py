"""The systemd unit: notify type, restart policy, two capabilities, filesystem and process hardening
and its `systemd-analyze security` score; and systemd itself accepts it (systemd-analyze verify,
with ExecStart pointed at this checkout's venv)."""

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
    # Root: its capabilities are the bounding set's; ambient ones would only serve a non-root User=.
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert "AmbientCapabilities" not in service and "User" not in service
    assert service["ProtectSystem"] == "strict"
    assert set(service["ReadWritePaths"].split()) == {"/run/rarp-announce", "/var/lib/rarp-announce"}
    assert "AF_PACKET" in service["RestrictAddressFamilies"]
    assert "PrivateNetwork" not in service
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 1


def _settings(name: str) -> list[str]:
    """Every value given to `name` in [Service], in order (configparser keeps only the last)."""
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith(f"{name}=")]


def test_unit_hardening_beyond_the_filesystem() -> None:
    service = _unit()["Service"]
    assert service["ProtectProc"] == "invisible"  # the ledger still sees QEMU's /proc/PID/stat: group root
    assert "ProcSubset" not in service  # /proc/sys/kernel/random/boot_id is part of the ledger's identity
    assert service["PrivateMounts"] == "yes"
    assert "Group" not in service and "SupplementaryGroups" not in service
    assert _settings("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_PACKET", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert {service[key] for key in ("NoNewPrivileges", "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality",
                                     "MemoryDenyWriteExecute", "PrivateDevices", "ProtectKernelTunables")} == {"yes"}


def _security(tmp_path: Path) -> str:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze")
    unit = tmp_path / "rarp-announce.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert "Overall exposure level" in result.stdout, result.stderr
    return result.stdout


def test_systemd_analyze_security_scores_the_unit_2_1_or_better(tmp_path: Path) -> None:
    """2.6 before issue 17; CAP_NET_ADMIN (the bridge FDB write) costs some of what the rest won back."""
    report = _security(tmp_path)
    score = float(report.split("Overall exposure level for rarp-announce.service:")[1].split()[0])
    assert score <= 2.1, report
    passed = {line.split()[1] for line in report.splitlines() if line.startswith("\u2713")}
    assert {"ProtectProc=", "PrivateMounts=", "SystemCallFilter=~@privileged", "SystemCallFilter=~@resources",
            "CapabilityBoundingSet=~CAP_SYS_ADMIN", "CapabilityBoundingSet=~CAP_(CHOWN|FSETID|SETFCAP)"} <= passed, report
    assert not any(line.startswith("\u2717 AmbientCapabilities=") for line in report.splitlines())


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze")
    executable = Path(sys.executable).with_name("rarp-announce")
    require(executable.exists(), "needs the package installed in the venv")
    unit = tmp_path / "rarp-announce.service"
    unit.write_text(UNIT.read_text().replace("/opt/rarp-announce/bin/rarp-announce", str(executable)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "rarp-announce.service" in line]
    assert result.returncode == 0 and problems == [], result.stderr
