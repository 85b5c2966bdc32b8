"""transport/factory.py: the one place a sink is chosen, and what every sink answers its
callers (offline, shows its own frames, where the frames went) instead of its type."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from rarp_announce.errors import InputError
from rarp_announce.transport import Sink, open_sink


def _answers(sink: Sink) -> tuple[bool, bool, str]:
    return sink.offline, sink.prints_frames, sink.destination({"eth1", "br0"})


def test_the_network_is_the_default(tmp_path: Path) -> None:
    sink = open_sink()
    try:
        assert _answers(sink) == (False, False, "on br0, eth1")
    finally:
        sink.close()


def test_a_pcap_file_is_offline_and_named_in_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    sink = open_sink(pcap=str(path))
    try:
        assert _answers(sink) == (True, False, f"to {path}")
        assert asyncio.run(sink.port_number("br-int", "tap1")) is None
    finally:
        sink.close()
    assert path.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")  # the classic pcap magic, little-endian


def test_a_dry_run_is_offline_and_shows_each_frame_itself() -> None:
    out = io.StringIO()
    sink = open_sink(dry_run=True, stream=out)
    try:
        assert _answers(sink) == (True, True, "(dry run) on br0, eth1")
        assert asyncio.run(sink.port_number("br-int", "tap1")) is None
    finally:
        sink.close()
    assert out.getvalue() == ""  # nothing was announced: nothing printed


def test_a_pcap_file_and_a_dry_run_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--pcap and --dry-run exclude each other"):
        open_sink(pcap=str(tmp_path / "x.pcap"), dry_run=True)
    assert not (tmp_path / "x.pcap").exists()
