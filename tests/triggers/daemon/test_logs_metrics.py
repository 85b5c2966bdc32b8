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
