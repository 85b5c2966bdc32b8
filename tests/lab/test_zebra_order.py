"""How the lab reads, from a destination zebra's own `debug zebra vxlan` log, whether it still
held the source's route for a MAC when it learned the MAC on the guest's tap (lab/evpn.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rarp_announce.lab.evpn import zebra_lines, zebra_order

MAC = "52:54:00:b0:50:63"


def _upd(tap: str, index: int, flags: str) -> str:
    # The line zebra logs for a MAC learned on a local port (FRR 8.4+, microsecond timestamps).
    return (f"2026/12/05 16:29:46.938253 ZEBRA: [TVHPV-4R7K8] UPD MAC {MAC} intf {tap}({index}) VID 0 -> VNI 100 "
            f"curFlags {flags}")


def test_a_remote_mac_learned_locally_is_a_mobility_move() -> None:
    lines = [f"2026/12/05 16:29:46.9 ZEBRA: [XAYAY-GEJ4Q] Recv MACIP ADD VNI 100 MAC {MAC} flags 0x0 seq 3 VTEP 10.78.0.2",
             _upd("vnet2", 12, "REM "), _upd("vnet2", 12, "LOC ")]
    assert zebra_order(lines, MAC, "vnet2") is True
    assert zebra_order([_upd("vnet2", 12, "REM DUP ")], MAC.upper(), "vnet2") is True


def test_a_mac_whose_remote_route_was_already_withdrawn_is_fresh() -> None:
    withdrawn = f"2026/12/05 16:29:46.9 ZEBRA: [JWJY6-CBZ1H] Recv MACIP DEL VNI 100 MAC {MAC} Remote VTEP 10.78.0.2 from bgp"
    assert zebra_order([withdrawn, _upd("vnet2", 12, "AUTO ")], MAC, "vnet2") is False
    assert zebra_order([withdrawn, _upd("vnet2", 12, "")], MAC, "vnet2") is False


def test_only_the_guests_tap_counts_and_nothing_seen_is_unknown() -> None:
    assert zebra_order([_upd("vnet0", 10, "REM ")], MAC, "vnet2") is None
    assert zebra_order([_upd("vnet2", 12, "REM ")], "52:54:00:00:00:01", "vnet2") is None
    assert zebra_order([], MAC, "vnet2") is None


def test_zebra_lines_are_the_macs_since_the_migration_began(tmp_path: Path) -> None:
    log = tmp_path / "zebra.log"
    log.write_text("\n".join([
        _upd("vnet1", 11, "LOC ").replace("16:29:46.938253", "16:29:40.000001"),  # before: the source's learn
        "2026/12/05 16:29:46.900000 ZEBRA: [XAYAY-GEJ4Q] Recv MACIP ADD VNI 100 MAC 52:54:00:00:00:01 seq 0",
        _upd("vnet2", 12, "REM "),
        "a continuation line naming " + MAC,
    ]) + "\n")
    since = datetime.strptime("2026/12/05 16:29:45", "%Y/%m/%d %H:%M:%S").timestamp()
    assert zebra_lines(log, MAC.upper(), since) == [_upd("vnet2", 12, "REM ")]
    assert zebra_lines(tmp_path / "missing.log", MAC, since) == []
