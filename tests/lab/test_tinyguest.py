"""The lab's tiny guest: a real Linux that counts, by sequence number, the client's frames it
received itself. One migration with the daemon, QEMU's own RARPs lost: every client frame the
destination wrote to the guest's tap after the resume must show up in the guest's own tally,
on both vNICs, but those a queue on the way dropped and counted (the tap's, the guest's socket's:
a slow TCG guest on a loaded machine), so what the lab calls "reachable" is what the guest got.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import require
from tests.lab.test_lab import _close_and_check, _open_lab

pytestmark = pytest.mark.lab


def _tap_dropped(netns: str, tap: str | None) -> int:
    """What `tap`'s queue dropped since libvirt created it (the kernel's counter)."""
    assert tap is not None
    done = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", tap],
                          capture_output=True, text=True, timeout=60, check=True)
    return int(json.loads(done.stdout)[0]["stats64"]["tx"]["dropped"])


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
            # The tap's own queue drops what QEMU does not read in time, and counts each one
            # (drivers/net/tun.c, tun_net_xmit: tx_dropped): a TCG guest on a loaded machine drains
            # its virtio ring slowly. Every frame the tap did not drop must be in the guest's tally.
            # Past the tap, the guest's own socket drops what its slow reader leaves (packet(7),
            # tp_drops; the tally reports it for both vNICs together).
            tap_dropped = _tap_dropped(lab.topology.hosts[record.destination].netns, record.nics[nic.mac].tap)
            socket_dropped = tally.socket_drops(timeout=30.0)
            dropped = tap_dropped + socket_dropped
            lost = sorted(missing & set(handed))
            assert len(lost) <= dropped, (f"{nic.label}: {len(lost)} frames on the tap the guest never got, "
                                          f"{tap_dropped} dropped by the tap, {socket_dropped} by the guest's socket: "
                                          f"{lost[:10]}")
            # Its own count grew by at least every frame handed to it since the resume.
            assert tally.received(nic.mac, first, last + 1) >= len(handed) - dropped
            # ... and before the migration it was counting on the source already.
            before = traffic.sequence_at(record.started)
            assert tally.received(nic.mac, before - 200, before) > 0
    finally:
        _close_and_check(lab)
