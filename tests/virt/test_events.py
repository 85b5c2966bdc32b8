"""The libvirt connection going away and coming back: the close callback, capped backoff,
callbacks registered again, and a catch-up that announces what was missed exactly once."""

from __future__ import annotations

import asyncio

import libvirt

from rarp_announce.errors import AnnounceError
from tests.hostlab import ROUNDS, domain_xml, lifecycle, running, settle, tally

STARTED_MIGRATED = (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
RESUMED_MIGRATED = (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
MAC_DONE, MAC_DURING, MAC_AFTER = "52:54:00:e0:00:01", "52:54:00:e0:00:02", "52:54:00:e0:00:03"


class Libvirtd:
    """The real test-driver open, refused while `down` (a libvirtd that is stopped)."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.opens = 0

    def __call__(self, uri: str):
        if self.down:
            raise AnnounceError(f"cannot connect to libvirt at {uri}: Failed to connect socket (simulated stop)")
        self.opens += 1
        return libvirt.open(uri)


async def _until(predicate, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_reconnect_reregisters_and_catches_up_without_announcing_twice(lab) -> None:
    libvirtd = Libvirtd()
    daemon = lab.daemon(open_connection=libvirtd)
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                done = holder.defineXML(domain_xml("done", [(MAC_DONE, "br0", None, None)]))
                done.create()
                lifecycle(daemon, done, *STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                lifecycle(daemon, done, *RESUMED_MIGRATED)
                during = holder.defineXML(domain_xml("during", [(MAC_DURING, "br0", 10, None)]))
                during.create()
                lifecycle(daemon, during, *STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                during.suspend()  # a real event through the registered callback: parked
                await settle(daemon, 0.1)
                assert daemon.status()["parked"] == ["during"]

                # libvirtd goes away: libvirt calls our close callback; reconnects fail for a while.
                libvirtd.down = True
                daemon.watcher.connection_closed(daemon.watcher.conn, libvirt.VIR_CONNECT_CLOSE_REASON_EOF)
                await _until(lambda: daemon.watcher.state == "disconnected")
                during.resume()  # the resume happens while nobody listens
                await asyncio.sleep(0.6)
                await settle(daemon)
                quiet = on_br0.frames(count=ROUNDS + 1, timeout=0.2)  # only the first arrival's
                libvirtd.down = False
                await _until(lambda: daemon.watcher.state == "connected")
                await settle(daemon, 0.2)

                # The new connection has our callbacks: a paused arrival resumed by real events.
                after = holder.defineXML(domain_xml("after", [(MAC_AFTER, "br0", 20, None)]))
                after.create()
                lifecycle(daemon, after, *STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                after.suspend()
                after.resume()
                await settle(daemon, 0.2)

                # A second loss and return finds nothing left to announce.
                daemon.watcher.connection_closed(daemon.watcher.conn, libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE)
                await _until(lambda: daemon.watcher.reconnects == 2 and daemon.watcher.state == "connected")
                await settle(daemon, 0.2)
                return quiet, daemon.status(), daemon.metrics.registry.get_sample_value(
                    "rarp_announce_libvirt_reconnects_total")

        quiet, status, reconnects = lab.run(scenario)
        later = tally(on_br0.frames(count=2 * ROUNDS + 1, timeout=0.5))
    assert tally(quiet) == {(MAC_DONE, None): ROUNDS}, "nothing may leave while disconnected"
    assert later == {(MAC_DURING, 10): ROUNDS, (MAC_AFTER, 20): ROUNDS}
    triggers = {a["mac"]: a["trigger"] for a in status["last_announcements"]}
    assert triggers == {MAC_DONE: "resumed-migrated", MAC_DURING: "catch-up",
                        MAC_AFTER: "resumed-after-paused-migration"}
    assert status["connection"]["reconnects"] == 2 and reconnects == 2
    assert libvirtd.opens == 3


def test_daemon_starts_while_libvirtd_is_down_and_connects_when_it_comes(lab) -> None:
    libvirtd = Libvirtd(down=True)
    daemon = lab.daemon(open_connection=libvirtd)

    async def scenario():
        async with running(daemon):
            first = daemon.status()["connection"]
            libvirtd.down = False
            await _until(lambda: daemon.watcher.state == "connected")
            return first, daemon.status()["connection"], daemon.metrics.registry.get_sample_value(
                "rarp_announce_libvirt_connected")

    first, later, gauge = lab.run(scenario)
    assert first["state"] == "disconnected" and "simulated stop" in first["last_error"]
    assert later["state"] == "connected" and later["last_error"] is None and later["reconnects"] == 0
    assert gauge == 1
