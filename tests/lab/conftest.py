"""The lab watches libvirt events with libvirt's default event loop; libvirt takes one event
implementation per process, so lab tests cannot share a process with the daemon's tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
