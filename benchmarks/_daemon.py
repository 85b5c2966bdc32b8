"""Steps the daemon benchmarks share: the real Daemon in-process on libvirt's test driver, and
synthetic arrivals through its own lifecycle callback, called with libvirt's constants, so a
figure covers the code path a real migration takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

URI = "test:///default"


@contextlib.asynccontextmanager
async def in_process_daemon(config: Any, tmp: Path, observers: Iterable[Any] = ()) -> AsyncIterator[tuple[Any, Any]]:
    """A started daemon, plus a second connection (the benchmark's own "virsh") that keeps the
    in-process test driver's domains alive; `observers` see every arrival from the start."""
    import libvirt

    from rarp_announce.triggers.daemon.service import Daemon

    daemon = Daemon(config, uri=URI, control_socket=str(tmp / "c.sock"), state_dir=str(tmp / "st"))
    daemon.table.observers.extend(observers)
    await daemon.start()
    holder = libvirt.open(URI)
    try:
        yield daemon, holder
    finally:
        await daemon.stop()
        holder.close()


def running(holder: Any, xml: str) -> Any:
    """A test-driver domain defined from `xml` and started."""
    dom = holder.defineXML(xml)
    dom.create()
    return dom


def incoming(daemon: Any, dom: Any) -> None:
    """STARTED/MIGRATED: the daemon prepares the arrival."""
    import libvirt

    daemon.on_lifecycle(daemon.watcher.conn, dom, libvirt.VIR_DOMAIN_EVENT_STARTED,
                        libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)


def resumed(daemon: Any, dom: Any) -> float:
    """RESUMED/MIGRATED: the daemon announces; returns the wall-clock time just before the call."""
    import libvirt

    stamp = time.time()
    daemon.on_lifecycle(daemon.watcher.conn, dom, libvirt.VIR_DOMAIN_EVENT_RESUMED,
                        libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
    return stamp


async def prepared(daemon: Any, dom: Any, *, finished: bool = False, timeout: float = 5.0) -> None:
    """Until the daemon has prepared `dom`'s arrival (bounded); with `finished`, also until no
    preparation is under way (a later one, e.g. on an OVSDB change, would still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = daemon.table.entries.get(dom.UUIDString())
        if entry is not None and entry.prepared and (not finished or entry.preparing.done()):
            return
        await asyncio.sleep(0.002)


def remove(dom: Any) -> None:
    dom.destroy()
    dom.undefine()
