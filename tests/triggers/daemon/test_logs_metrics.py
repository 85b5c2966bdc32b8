"""One log line per announced MAC in text or JSON, and the metrics address parser."""

from __future__ import annotations

import io
import json

import pytest

from rarp_announce.model import Target
from rarp_announce.triggers.daemon.logs import log_announcement, setup_logging
from rarp_announce.triggers.daemon.metrics import parse_address
from rarp_announce.errors import InputError

TARGET = Target("52:54:00:12:34:56", "br0", 100, "bridge", "vnet0")


def test_text_line_has_every_field_and_quotes_spaces() -> None:
    out = io.StringIO()
    log_announcement(setup_logging("text", out), TARGET, domain="web 1", trigger="resumed-migrated")
    line = out.getvalue()
    assert line.count("\n") == 1
    assert line.rstrip().endswith(
        'info announce domain="web 1" mac=52:54:00:12:34:56 device=br0 vlan=100 kind=bridge '
        "interface=vnet0 trigger=resumed-migrated"
    )


def test_json_line_is_one_object() -> None:
    out = io.StringIO()
    log_announcement(setup_logging("json", out), Target("52:54:00:12:34:56", "bond0"), domain=None, trigger="catch-up")
    record = json.loads(out.getvalue())
    assert record["msg"] == "announce" and record["level"] == "info"
    assert (record["domain"], record["mac"], record["device"], record["vlan"], record["trigger"]) == (
        None, "52:54:00:12:34:56", "bond0", None, "catch-up")


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(InputError, match="expected text or json"):
        setup_logging("xml")


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9477", ("127.0.0.1", 9477)), ("[::1]:9100", ("::1", 9100)),
                                            ("0.0.0.0:1", ("0.0.0.0", 1))])
def test_metrics_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9477", ":9477", "host:", "host:0", "host:70000", "host:http"])
def test_bad_metrics_address_names_the_form(text: str) -> None:
    with pytest.raises(InputError, match="expected ADDR:PORT"):
        parse_address(text)


@pytest.mark.parametrize("host, wildcard", [("0.0.0.0", True), ("::", True), ("0:0::0", True), ("", True),
                                            ("127.0.0.1", False), ("::1", False), ("192.0.2.7", False),
                                            ("localhost", False)])
def test_wildcard_hosts(host: str, wildcard: bool) -> None:
    from rarp_announce.triggers.daemon.metrics import is_wildcard

    assert is_wildcard(host) is wildcard


_SERVE = r"""
import json, logging, socket, sys
from rarp_announce.triggers.daemon.metrics import Metrics
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logger = logging.getLogger("rarp_announce.daemon")
logger.addHandler(handler)
logger.setLevel(logging.WARNING)
seen = {}
for address in sys.argv[1:]:
    before = len(lines)
    metrics = Metrics()
    metrics.serve(address)
    try:  # it does listen: one scrape through loopback
        probe = socket.create_connection(("127.0.0.1" if "." in address else "::1", int(address.rsplit(":", 1)[1])), 5)
        probe.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answered = probe.recv(12).startswith(b"HTTP/1.")
        probe.close()
    finally:
        metrics.close()
    seen[address] = {"warnings": lines[before:], "answered": answered}
print(json.dumps(seen))
"""


def test_a_wildcard_metrics_bind_warns_once_and_a_specific_one_does_not(root_netns) -> None:
    """Served in a network namespace of the test's own (only its loopback), never on the host's interfaces."""
    import subprocess
    import sys

    from rarp_announce.lab.netns import unique

    name = unique("mw")
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        addresses = ["0.0.0.0:9477", "[::]:9478", "127.0.0.1:9479", "[::1]:9480"]
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", _SERVE, *addresses],
                              capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert all(seen[address]["answered"] for address in addresses), seen
    for address, port in (("0.0.0.0:9477", 9477), ("[::]:9478", 9478)):
        assert seen[address]["warnings"] == [
            f"metrics on {address} listen on every address of this host: they are then reachable from every network "
            "the host is on; bind to one address instead ([daemon] metrics or --metrics), such as "
            f"127.0.0.1:{port} or the management network's address"]
    assert seen["127.0.0.1:9479"]["warnings"] == [] and seen["[::1]:9480"]["warnings"] == []


def test_a_refused_bridge_fdb_write_is_one_warning_and_counted_and_a_write_is_info() -> None:
    from prometheus_client import generate_latest

    from rarp_announce.model import BridgePort, FrameEvent
    from rarp_announce.triggers.daemon.logs import log_fdb_step
    from rarp_announce.triggers.daemon.metrics import Metrics

    on_bridge = Target("52:54:00:12:34:56", "br0", None, "bridge", "vnet0", bridge_port=BridgePort("br0", "vnet0"))
    out = io.StringIO()
    logger = setup_logging("text", out)
    metrics = Metrics()
    refused = FrameEvent(0.0, on_bridge, 1, 1, "resumed-migrated", "web", "writing the bridge FDB needs CAP_NET_ADMIN",
                         "fdb")
    written = FrameEvent(0.0, on_bridge, 1, 1, "resumed-migrated", "web", None, "fdb", None,
                         "set 52:54:00:12:34:56 on vnet0 dynamic (was on uplink0)")
    for event in (refused, written):
        log_fdb_step(logger, event)
        metrics.observe_frame(event)
    warning, info = out.getvalue().splitlines()
    assert "warning bridge FDB not written; frames sent anyway domain=web mac=52:54:00:12:34:56 bridge=br0 port=vnet0" in warning
    assert 'reason="writing the bridge FDB needs CAP_NET_ADMIN"' in warning
    assert "info bridge FDB domain=web" in info and 'done="set 52:54:00:12:34:56 on vnet0 dynamic (was on uplink0)"' in info
    text = generate_latest(metrics.registry).decode()
    assert 'rarp_announce_bridge_fdb_total{outcome="refused"} 1.0' in text
    assert 'rarp_announce_bridge_fdb_total{outcome="written"} 1.0' in text
    assert 'rarp_announce_failures_total{reason="bridge_fdb"} 1.0' in text
    assert "rarp_announce_frames_sent_total{" not in text  # an FDB step is not a frame
