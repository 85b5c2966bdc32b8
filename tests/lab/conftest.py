"""The lab watches libvirt events with libvirt's default event loop; libvirt takes one event
implementation per process, so lab tests cannot share a process with the daemon's tests."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import require


@pytest.fixture(autouse=True)
def _own_libvirt_event_loop(request) -> None:
    if request.node.get_closest_marker("lab") is None:
        return
    watch = sys.modules.get("rarp_announce.daemon.watch")
    require(
        watch is None or getattr(watch, "_forwarder", None) is None,
        "lab tests need a pytest process of their own (libvirt takes one event loop per process): "
        "run `pytest -m lab` apart, as `make test` does",
    )
