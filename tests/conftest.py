"""Shared fixtures. In CI (CI=true) a missing prerequisite fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as _hypothesis_settings

# Hypothesis fails an example that runs over 200 ms (its `deadline`): a wall-clock assertion that a
# loaded machine breaks (tests/test_mac.py did, with two CPU-bound processes beside the suite).
# What the examples return is what the tests check; how fast is for benchmarks/.
_hypothesis_settings.register_profile("loaded-machine", deadline=None)
_hypothesis_settings.load_profile("loaded-machine")

if TYPE_CHECKING:
    from rarp_announce.lab.router import Router

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rarp_announce"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROUTER_DEVICE = "r0"  # the router's end of the `router` fixture's veth
HOST_DEVICE = "h0"  # the host's end, where frames for the router are written


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


@pytest.fixture
def router(root_netns: None) -> Iterator[tuple[Router, str]]:
    """A Linux router netns (192.0.2.1/24 and 2001:db8:1::1/64 on ROUTER_DEVICE) and a host netns
    joined by a veth, HOST_DEVICE up; yields the router and the host's netns, both removed after."""
    from rarp_announce.lab.netns import unique
    from rarp_announce.lab.router import Router, supported

    require(supported(), "needs net.ipv6.conf.*.accept_untracked_na (Linux 5.18 or later)")
    ns_router, ns_host = unique("sr"), unique("sh")
    made = []
    try:
        for name in (ns_router, ns_host):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
            made.append(name)
        subprocess.run(["ip", "-n", ns_router, "link", "add", ROUTER_DEVICE, "type", "veth", "peer", "name", HOST_DEVICE,
                        "netns", ns_host], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns_host, "link", "set", HOST_DEVICE, "up"], check=True, timeout=10)
        yield Router(ns_router, ROUTER_DEVICE, ("192.0.2.1/24", "2001:db8:1::1/64")).setup(), ns_host
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
