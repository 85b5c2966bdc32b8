"""A closed lab leaves its logs where the test suite asked (its workdir is gone): the evidence of
a failed lab test."""

from __future__ import annotations

from pathlib import Path

import pytest

from rarp_announce.lab.session import KEEP_LOGS_ENV, Lab


def _lab_with_logs(tmp_path: Path) -> Lab:
    lab = Lab("daemon")
    lab.workdir = tmp_path / "rarp-lab-1-x"
    (lab.workdir / "a" / "libvirt" / "log").mkdir(parents=True)
    (lab.workdir / "a" / "libvirt" / "log" / "libvirtd.log").write_text("libvirtd said\n")
    (lab.workdir / "a" / "daemon.log").write_text("daemon said\n")
    (lab.workdir / "a" / "disk.img").write_bytes(b"\0" * 16)
    return lab


def test_close_copies_the_workdirs_logs_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEEP_LOGS_ENV, str(tmp_path / "kept"))
    lab = _lab_with_logs(tmp_path)
    lab.close()
    kept = tmp_path / "kept" / "rarp-lab-1-x"
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file()) == [
        "a/daemon.log", "a/libvirt/log/libvirtd.log"]
    assert (kept / "a" / "daemon.log").read_text() == "daemon said\n"
    assert not (tmp_path / "rarp-lab-1-x").exists()


def test_close_keeps_nothing_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEEP_LOGS_ENV, raising=False)
    lab = _lab_with_logs(tmp_path)
    lab.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
