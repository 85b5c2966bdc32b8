"""The lab watches libvirt events with libvirt's default event loop; libvirt takes one event
implementation per process, so lab tests cannot share a process with the daemon's tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require


def lab_prerequisites(*tools: str) -> None:
    """Root, libvirtd and QEMU (and `tools`), the libvirt-qemu user, libvirt-python: the lab's needs."""
    require(os.geteuid() == 0, "the lab needs root")
    for tool in ("libvirtd", "virsh", "qemu-system-x86_64", "unshare", *tools):
        require(shutil.which(tool) is not None, f"the lab needs {tool}")
    require(subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode == 0,
            "libvirtd needs the user libvirt-qemu (make setup creates it)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        require(False, "the lab needs libvirt-python")


@pytest.fixture(autouse=True)
def _own_libvirt_event_loop(request) -> None:
    if request.node.get_closest_marker("lab") is None:
        return
    # libvirt would ignore the observer's default implementation (a logged warning only) once
    # libvirtaio's is registered: an in-process daemon or waiter test ran first in this process.
    libvirtaio = sys.modules.get("libvirtaio")
    require(
        libvirtaio is None or libvirtaio.getCurrentImpl() is None,
        "lab tests need a pytest process of their own (libvirt takes one event loop per process): "
        "run `pytest -m lab` apart, as `make test` does",
    )


@pytest.fixture(scope="session", autouse=True)
def _keep_lab_logs_of_a_failed_run(request):
    """Every lab copies its logs here when it closes; they are kept only if a test failed, since
    a lab removes its workdir on close and a failure's evidence is in libvirtd's, QEMU's, FRR's
    and our daemon's logs. The path is printed at the end of the run. It is not under pytest's
    basetemp, which later pytest runs delete (only the last three are kept)."""
    from rarp_announce.lab.session import KEEP_LOGS_ENV

    kept = Path(tempfile.mkdtemp(prefix="rarp-lab-logs-"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEEP_LOGS_ENV, str(kept))
        yield
    if request.session.testsfailed == 0 or not any(kept.iterdir()):
        shutil.rmtree(kept, ignore_errors=True)
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"lab logs of this failed run kept in {kept}")
