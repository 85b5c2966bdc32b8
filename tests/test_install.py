"""The production install of README.md ("Install as a service"), into a temporary root: a wheel
built from this tree, a venv in ROOT/opt/rarp-announce with libvirt-python pinned to the system
libvirt, the hook installed from the wheel, the daemon started from that venv, the systemd unit.
Nothing of the checkout is on the path: the wheel must carry everything (the hook included)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require

CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
             "HOME": os.environ.get("HOME", "/root")}


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 600)
    kwargs.setdefault("env", CLEAN_ENV)
    kwargs.setdefault("cwd", "/")
    return subprocess.run(argv, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """ROOT/opt/rarp-announce: a venv with the wheel of this tree and its dependencies."""
    require(shutil.which("pkg-config") is not None, "needs pkg-config (make setup installs it)")
    root = tmp_path_factory.mktemp("root")
    dist = root / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)])
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = dist.glob("rarp_announce-*.whl")
    venv = root / "opt" / "rarp-announce"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    libvirt = _run(["pkg-config", "--modversion", "libvirt"]).stdout.strip()
    pip = _run([str(venv / "bin" / "pip"), "install", "-q", f"libvirt-python=={libvirt}", str(wheel)])
    assert pip.returncode == 0, pip.stderr[-2000:]
    shutil.rmtree(dist)
    return root


def test_the_wheel_carries_the_hook_and_works_outside_the_checkout(installed: Path) -> None:
    venv = installed / "opt" / "rarp-announce"
    where = _run([str(venv / "bin" / "python"), "-c", "import rarp_announce, sys; print(rarp_announce.__file__)"])
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where
    assert _run([str(venv / "bin" / "rarp-announce"), "--help"]).returncode == 0
    hooks = installed / "etc" / "libvirt" / "hooks"
    done = _run([str(venv / "bin" / "rarp-announce"), "hook", "install", "--hooks-dir", str(hooks), "--mode", "standalone",
                 "--log-file", str(installed / "hook.log"), "--waiter-dir", str(installed / "waiters")])
    assert done.returncode == 0, done.stderr
    script = hooks / "qemu.d" / "rarp-announce"
    first = script.read_text().splitlines()[0]
    assert first.startswith("#!/") and first.endswith(" -IS")
    assert f"PYTHON = '{venv}/bin/python" in script.read_text()  # the waiter runs in the venv, by its path
    status = _run([str(venv / "bin" / "rarp-announce"), "hook", "status", "--hooks-dir", str(hooks), "--json"])
    assert json.loads(status.stdout)["up_to_date"] is True, status.stdout
    # libvirt runs it with almost no environment: every other operation returns at once, silently
    ran = _run([str(script), "guest1", "prepare", "begin", "-"], input="<domain/>", env={"PATH": "/usr/bin:/bin"})
    assert (ran.returncode, ran.stdout) == (0, "")
    # the waiter's own entry, as the hook starts it, is in the installed package
    waiter = _run([str(venv / "bin" / "python"), "-I", "-m", "rarp_announce.triggers.waiter", "--help"])
    assert waiter.returncode == 0 and "--uuid" in waiter.stdout
    removed = _run([str(venv / "bin" / "rarp-announce"), "hook", "uninstall", "--hooks-dir", str(hooks)])
    assert removed.returncode == 0 and not script.exists()


def test_the_installed_daemon_runs_and_answers_status(installed: Path) -> None:
    venv = installed / "opt" / "rarp-announce"
    run_dir, state = installed / "run", installed / "state"
    config = installed / "config.toml"
    config.write_text('[ovs]\ndb = ""\n')
    daemon = subprocess.Popen(
        [str(venv / "bin" / "rarp-announce"), "daemon", "--connect", "test:///default", "--config", str(config),
         "--control-socket", str(run_dir / "control.sock"), "--state-dir", str(state)],
        stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (run_dir / "control.sock").exists():
            assert daemon.poll() is None, daemon.stderr.read()
            time.sleep(0.05)
        status = _run([str(venv / "bin" / "rarp-announce"), "status", "--json", "--control-socket",
                       str(run_dir / "control.sock")])
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["connection"]["state"] == "connected"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, err


def test_systemd_accepts_the_unit_pointing_at_the_install(installed: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze")
    unit = installed / "etc" / "systemd" / "system" / "rarp-announce.service"
    unit.parent.mkdir(parents=True)
    text = (ROOT / "packaging" / "systemd" / "rarp-announce.service").read_text()
    unit.write_text(text.replace("/opt/rarp-announce", str(installed / "opt" / "rarp-announce")))
    verified = _run(["systemd-analyze", "verify", str(unit)])
    assert verified.returncode == 0, verified.stderr


def test_every_subpackage_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages (rarp_announce._hook lives outside the package folder):
    a new subpackage missing from the list would be missing from every install."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "rarp_announce").rglob("__init__.py")}
    assert found | {"rarp_announce._hook"} == listed
