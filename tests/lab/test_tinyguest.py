"""The lab's tiny guest: a real Linux that counts, by sequence number, the client's frames it
received itself. One migration with the daemon, QEMU's own RARPs lost: every client frame the
destination wrote to the guest's tap after the resume must show up in the guest's own tally,
on both vNICs, so what the lab calls "reachable" is what the guest got.
"""

from __future__ import annotations

import pytest

from tests.conftest import require
from tests.lab.test_lab import _close_and_check, _open_lab

pytestmark = pytest.mark.lab


def test_tiny_guest_counts_client_frames_after_migration() -> None:
    from rarp_announce.lab.tinyguest import guest_dir

    folder = guest_dir()
    require((folder / "vmlinuz").is_file() and (folder / "initramfs.cpio.gz").is_file(),
            f"the tiny guest is not built in {folder}: run `make setup`")
    lab = _open_lab("daemon", guest="tiny")
    try:
        tally, traffic = lab.tally, lab.traffic
        assert tally is not None and traffic is not None
        record = lab.migrate()
        assert record.resumed is not None
        for nic in lab.guest.nics:
            # What the destination handed the guest's tap after the resume, by sequence number.
            handed = sorted({a.sequence for a in lab.delivered[record.destination].items()
                             if a.mac == nic.mac and a.time >= record.resumed and a.sequence >= 0})
            assert len(handed) > 100, f"{nic.label}: {len(handed)} client frames reached the guest's tap after the resume"
            first, last = handed[0], handed[-1]
            assert tally.wait_past(nic.mac, last, 30.0), f"{nic.label}: the guest's tally never reached sequence {last}"
            missing = tally.missing(nic.mac, first, last + 1)
            assert not missing & set(handed), f"{nic.label}: frames on the tap the guest never got: {sorted(missing & set(handed))[:10]}"
            # Its own count grew by at least every frame handed to it since the resume.
            assert tally.received(nic.mac, first, last + 1) >= len(handed)
            # ... and before the migration it was counting on the source already.
            before = traffic.sequence_at(record.started)
            assert tally.received(nic.mac, before - 200, before) > 0
    finally:
        _close_and_check(lab)
