"""How the lab reads the tiny guest's console (packaging/lab-guest/tally.c's lines) into the
client's sequences it never received, per vNIC."""

from __future__ import annotations

from pathlib import Path

import pytest

from rarp_announce.lab.tinyguest import SerialTally

MAC = "52:54:00:aa:bb:01"
OTHER = "52:54:00:aa:bb:02"


def _console(tmp_path: Path, text: str) -> SerialTally:
    path = tmp_path / "console.log"
    path.write_text(text)
    return SerialTally(path)


def test_gaps_late_frames_and_the_tail_are_missing(tmp_path: Path) -> None:
    tally = _console(tmp_path, "\n".join([
        "[    2.1] virtio_net virtio0: some kernel line",
        f"tally ready {MAC} {OTHER}",
        f"tally first {MAC} 10",
        f"tally first {OTHER} 10",
        f"tally gap {MAC} 20 29",  # 20..29 lost, 30 arrived
        f"tally late {MAC} 25",  # ... then 25 after all
        f"tally sum {MAC} 40 49",
        f"tally sum {OTHER} 40 49",
        f"tally gap {MAC} 60 69",
        f"tally sum {MAC} 50 80",
    ]) + "\n")
    assert tally.wait_ready([MAC, OTHER], timeout=1.0) > 0
    assert tally.last(MAC) == 80
    assert tally.missing(MAC, 0, 100) == set(range(0, 10)) | (set(range(20, 30)) - {25}) | set(range(60, 70)) | set(range(81, 100))
    assert tally.received(MAC, 10, 81) == 71 - 9 - 10
    assert tally.missing(OTHER, 10, 50) == set()
    assert tally.missing("52:54:00:aa:bb:03", 5, 8) == {5, 6, 7}
    assert tally.wait_past(MAC, 80, 0.0) and not tally.wait_past(MAC, 81, 0.0)


def test_socket_drops_come_from_the_guests_next_report(tmp_path: Path) -> None:
    import threading

    tally = _console(tmp_path, f"tally ready {MAC}\ntally drops 3\n")
    later = threading.Timer(0.2, lambda: tally.path.write_text(tally.path.read_text() + "tally drops 7\n"))
    later.start()
    try:
        assert tally.socket_drops(timeout=10.0) == 7  # not the 3 already on the console
    finally:
        later.cancel()
    with pytest.raises(RuntimeError, match="no drops count"):
        tally.socket_drops(timeout=0.1)


def test_a_guest_that_failed_is_reported(tmp_path: Path) -> None:
    tally = _console(tmp_path, "tally error no eth interface\n")
    with pytest.raises(RuntimeError, match="no eth interface"):
        tally.wait_ready([MAC], timeout=1.0)
