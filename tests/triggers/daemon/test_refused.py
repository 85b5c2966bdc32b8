"""Refused addresses in the daemon: each logged once per arrival, with its reason, and counted in
`rarp_announce_addresses_refused_total{source,reason}`; the arrival table, the resolver and the
host's poisoned neighbour table are the real ones (the netns of tests/resolve/test_trust.py)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess

from rarp_announce.announce.arrivals import ArrivalSettings, ArrivalTable
from rarp_announce.announce.engine import Announcer
from rarp_announce.lab.netns import inside, send_raw, wait_until
from rarp_announce.resolve import host as host_module
from rarp_announce.resolve.host import HostResolver
from rarp_announce.transport.dryrun import DryRunSink
from rarp_announce.triggers.daemon.logs import LogObserver, setup_logging
from rarp_announce.triggers.daemon.metrics import Metrics
from tests.resolve.test_trust import GUEST_UUID, MACS, _config, guest_xml, poisoned  # noqa: F401 - the fixture


def _poison(ns: str, mac: str, claimed: str) -> None:
    from scapy.layers.l2 import ARP, Ether

    frame = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / ARP(op=1, hwsrc=mac, psrc=claimed, pdst="192.168.0.2")
    send_raw(ns, "gst", bytes(frame))


def _refused_lines(out: io.StringIO) -> list[tuple[str, str, str, str]]:
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return [(r["mac"], r["ip"], r["source"], r["reason"]) for r in records if r["msg"] == "address refused"]


def test_each_refusal_is_logged_and_counted_once_per_arrival(poisoned):  # noqa: F811 - the fixture
    out = io.StringIO()
    metrics = Metrics()
    config = _config('["metadata", "arp"]')

    async def run() -> None:
        resolver = HostResolver(lambda: config)
        table = ArrivalTable(Announcer(DryRunSink(io.StringIO())), resolver, ArrivalSettings.from_config(config),
                             observers=[LogObserver(setup_logging("json", out)), metrics.observer()])
        try:
            await table.expect(GUEST_UUID, "guest", xml=guest_xml(), source="hook")
            assert _refused_lines(out) == [(MACS[0], "192.168.0.1", "arp", "next_hop"),
                                           (MACS[2], "192.168.0.3", "arp", "not_allowed")]
            # The guest claims one more address before the resume; the host's tables are read
            # again once the shared reading is older than its life.
            _poison(poisoned, MACS[1], "192.168.0.20")
            assert wait_until(lambda: MACS[1] in subprocess.run(
                ["ip", "-n", poisoned, "neigh", "show", "192.168.0.20"], capture_output=True, text=True).stdout, timeout=10)
            await asyncio.sleep(host_module._TABLES_FOR + 0.5)
            table.arrive(GUEST_UUID, "guest", trigger="resumed-migrated")
            await table.settled(GUEST_UUID)
            assert _refused_lines(out)[2:] == [(MACS[1], "192.168.0.20", "arp", "not_allowed")]
            # A new arrival of the domain is said again, each refusal once.
            await table.expect(GUEST_UUID, "guest", xml=guest_xml(), source="hook")
            assert sorted(_refused_lines(out)[3:]) == sorted([(MACS[0], "192.168.0.1", "arp", "next_hop"),
                                                              (MACS[1], "192.168.0.20", "arp", "not_allowed"),
                                                              (MACS[2], "192.168.0.3", "arp", "not_allowed")])
        finally:
            table.close()

    with inside(poisoned):
        asyncio.run(run())
    count = metrics.registry.get_sample_value
    assert count("rarp_announce_addresses_refused_total", {"source": "arp", "reason": "next_hop"}) == 2
    assert count("rarp_announce_addresses_refused_total", {"source": "arp", "reason": "not_allowed"}) == 4
    detail = [json.loads(line) for line in out.getvalue().splitlines() if '"address refused"' in line][0]
    assert (detail["level"], detail["domain"], detail["detail"]) == (
        "warning", "guest", "the next hop of this host's route default via 192.168.0.1 dev br0")
