"""`rarp-announce --version`: the package's version, from the same place as its metadata."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from rarp_announce import __version__

CLI = [sys.executable, "-m", "rarp_announce"]


def test_version_prints_the_package_version_and_exits_0() -> None:
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"rarp-announce {__version__}\n" and result.stderr == ""
    # The one version: the installed distribution's metadata (pyproject.toml) says the same.
    assert importlib.metadata.version("rarp-announce") == __version__


def test_version_wins_over_a_command_and_help_lists_it() -> None:
    result = subprocess.run([*CLI, "--version", "status", "--control-socket", "/nonexistent.sock"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == f"rarp-announce {__version__}\n"
    helped = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert "--version" in helped.stdout and "doctor" in helped.stdout
