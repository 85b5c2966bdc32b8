"""The arrival ledger: identities that survive restarts, change per arrival, and a file that heals."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rarp_announce.triggers.daemon.ledger import Ledger, arrival_identity, boot_id, qemu_start_time

UUID = "0a0b0c0d-0000-4000-8000-000000000001"


def test_recorded_arrivals_survive_a_restart(tmp_path) -> None:
    ledger = Ledger(tmp_path)
    identity = arrival_identity(UUID, 7, "web", pid_dir=str(tmp_path))
    assert identity not in ledger
    assert ledger.record(identity, domain="web", trigger="resumed-migrated")
    assert not ledger.record(identity, domain="web", trigger="catch-up")
    ledger.close()
    again = Ledger(tmp_path)
    assert identity in again and len(again) == 1
    assert os.stat(again.path).st_mode & 0o777 == 0o600


def test_identity_changes_with_each_qemu_process_even_for_a_reused_id(tmp_path) -> None:
    """Two processes standing in for two QEMUs of the same domain, with the same libvirt id."""
    identities = []
    for _ in range(2):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
        try:
            (tmp_path / "web.pid").write_text(f"{child.pid}\n")
            identities.append(arrival_identity(UUID, 7, "web", pid_dir=str(tmp_path)))
            assert qemu_start_time("web", str(tmp_path)).startswith(f"{child.pid}@")
        finally:
            child.kill()
            child.wait()
        time.sleep(0.02)  # start times are in clock ticks (10 ms)
    assert identities[0] != identities[1]
    assert all(identity.startswith(f"{boot_id()}/{UUID}/7/") for identity in identities)


def test_identity_without_a_pid_file_falls_back_to_boot_uuid_and_id(tmp_path) -> None:
    assert arrival_identity(UUID, 3, "none", pid_dir=str(tmp_path)) == f"{boot_id()}/{UUID}/3"
    assert arrival_identity(UUID, 4, "none", pid_dir=str(tmp_path)) != arrival_identity(UUID, 3, "none", pid_dir=str(tmp_path))


def test_load_drops_torn_lines_and_other_boots_and_compacts(tmp_path) -> None:
    current = f"{boot_id()}/{UUID}/1"
    path = tmp_path / "announced.jsonl"
    path.write_text(
        '{"id": "%s", "at": %f}\n' % (current, time.time())
        + '{"id": "another-boot/%s/1", "at": %f}\n' % (UUID, time.time())
        + '{"id": "%s/x/2", "at": 1}\n' % boot_id()  # decades old
        + '{"id": "half a li'
    )
    ledger = Ledger(tmp_path)
    assert current in ledger and len(ledger) == 1
    assert path.read_text().count("\n") == 1
