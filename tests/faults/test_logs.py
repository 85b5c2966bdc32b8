"""Row 8: a log line keeps the reason of an exception (text and JSON), and nothing a domain's
owner chose (its name) can forge a line of the text log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time

import libvirt
import pytest

from rarp_announce.triggers.daemon.logs import LOGGER, log_event, setup_logging
from tests.faults._daemon import CONFIG
from tests.hostlab import domain_xml, lifecycle, running, settle

FORGED = "2026-01-01T00:00:00.000Z info announce domain=forged mac=52:54:00:00:00:66"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warning|error|debug|critical) ")


@contextlib.contextmanager
def daemon_logging(log_format: str):
    """The daemon's own logging setup into a buffer; the package's loggers restored afterwards."""
    package = logging.getLogger("rarp_announce")
    saved = (list(package.handlers), package.level, package.propagate)
    stream = io.StringIO()
    try:
        setup_logging(log_format, stream)
        yield stream
    finally:
        for handler in list(package.handlers):
            package.removeHandler(handler)
        for handler in saved[0]:
            package.addHandler(handler)
        package.setLevel(saved[1])
        package.propagate = saved[2]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_exception_keeps_its_reason_in_one_line(log_format) -> None:
    with daemon_logging(log_format) as stream:
        log = logging.getLogger(LOGGER)
        try:
            raise ValueError("disk\nexploded\tbadly")
        except ValueError:
            log.exception("control request %r failed", "handoff")
        log.error("task failed", exc_info=OSError(28, "No space left on device"))
        log_event(log, logging.WARNING, "with fields", domain="a b", error="its own")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert records[0]["error"] == "ValueError: disk exploded badly"
        assert records[1]["error"] == "OSError: [Errno 28] No space left on device"
        assert records[2]["error"] == "its own" and records[2]["domain"] == "a b"
    else:
        assert all(LINE.match(line) for line in lines), lines
        assert lines[0].endswith('error="ValueError: disk exploded badly"'), lines[0]
        assert 'error="OSError: [Errno 28] No space left on device"' in lines[1]
        assert "Traceback" not in stream.getvalue()


def test_a_handed_off_name_cannot_forge_a_line_of_the_daemon_log(lab, daemon_proc) -> None:
    """The raw stderr of a daemon: a hand-off whose domain name holds CR, LF, tab and a whole
    forged line, logged when it expires."""
    daemon = daemon_proc(config=CONFIG + "handoff_expiry = 0.2\n")
    daemon.wait_ready()
    uuid = "f0f0f0f0-0000-4000-8000-000000000008"
    name = f"evil\tname\r\n{FORGED}\n\u2028{FORGED}"
    xml = domain_xml("evil&#9;name", [("52:54:00:f0:00:01", "br0", None, None)], uuid=uuid)
    assert daemon.request({"op": "handoff", "domain": name, "uuid": uuid, "xml": xml}) == {"ok": True}
    deadline = time.monotonic() + 30  # bounded generously: the expiry is 0.2 s
    while "hand-off expired" not in daemon.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.terminate() == 0
    raw = daemon.err_path.read_bytes()
    assert b"\r" not in raw and "\u2028".encode() not in raw
    lines = raw.decode().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    expired = [line for line in lines if "hand-off expired" in line]
    assert len(expired) == 1 and "forged" in expired[0] and r"evil\tname\r\n" in expired[0], expired
    assert not any(line.startswith(FORGED[:20]) for line in lines)


def test_a_test_driver_domain_named_with_tab_and_cr_is_logged_on_one_line(lab) -> None:
    """libvirt refuses a newline in a name but takes a tab and a carriage return."""
    name = "tab\there\rcr"
    daemon = lab.daemon()
    with daemon_logging("text") as stream:

        async def scenario():
            async with running(daemon) as holder:
                dom = holder.defineXML(domain_xml(name.replace("\t", "&#9;").replace("\r", "&#13;"),
                                                  [("52:54:00:f0:00:02", "br0", None, None)]))
                assert dom.name() == name
                dom.create()
                lifecycle(daemon, dom, libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
                await asyncio.sleep(0.05)
                lifecycle(daemon, dom, libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon)

        lab.run(scenario)
    text = stream.getvalue()
    assert "\r" not in text and "\t" not in text
    announced = [line for line in text.splitlines() if " info announce " in line]
    assert len(announced) == 1 and r'domain="tab\there\rcr"' in announced[0], announced
    assert all(LINE.match(line) for line in text.splitlines())
