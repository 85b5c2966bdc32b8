"""Shared fixtures. In CI (CI=true) a missing prerequisite fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rarp_announce"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip on a developer machine without the prerequisite; fail in CI, where it must exist."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI prerequisite missing: {why}")
    pytest.skip(why)


@pytest.fixture
def root_netns() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces and raw sockets")
    require(shutil.which("ip") is not None, "needs iproute2's ip")


@pytest.fixture
def topology(root_netns):
    from rarp_announce.lab.netns import Topology

    with Topology() as topo:
        yield topo


@pytest.fixture
def veth(root_netns):
    """A netns of this test's own holding the veth pair tx <-> rx, both up; yields its name."""
    from pyroute2 import NetNS, netns

    from rarp_announce.lab.netns import unique

    name = unique("vp")
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("add", ifname="tx", kind="veth", peer={"ifname": "rx"})
            ns.link("set", ifname="tx", state="up")
            ns.link("set", ifname="rx", state="up")
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def libvirt_module():
    try:
        import libvirt
    except ImportError:
        require(False, "needs libvirt-python")
    return libvirt


@pytest.fixture
def lab(root_netns, libvirt_module, tmp_path):
    """A one-host lab for the daemon and the waiter (tests/hostlab.py)."""
    from tests.hostlab import HostLab

    environment = HostLab(tmp_path)
    try:
        yield environment
    finally:
        environment.close()
