"""The EVPN lab benchmark: how fast the fabric follows a live-migrated guest, ours vs QEMU's vs nothing.

One EVPN lab (rarp_announce/lab/evpn.py: hosts a and b are VTEPs with FRR, the client behind
VTEP c), real live migrations of the guest's br0 vNIC, in phases:

  ours     the rarp-announce daemon on each host, QEMU's RARPs dropped at br0's ingress: the
           daemon writes the bridge FDB entry on the guest's tap at RESUMED;
  QEMU's   no announcer, QEMU's own RARPs let through: the bridge learns from the first one;
  nothing  no announcer, QEMU's RARPs dropped (fabric flooding BUM traffic, FRR's default);
  nothing, flooding off   the same with `flooding disable` on every VTEP.

Per migration, from the destination's RESUMED event (as a libvirt client in the lab saw it):
the destination's br0 holds the MAC on the guest's tap; VTEP c receives the destination's
type-2 route (bgpd's debug log, microseconds); VTEP c's kernel FDB points at the destination
(rtnetlink notification). Also ours and QEMU's from their own trigger (our FDB write, QEMU's
first RARP entering from the tap), and the client's probes (1 ms apart) lost in the 1.5 s after
RESUMED. Median and max over RARP_BENCH_EVPN_MIGRATIONS migrations per phase (default 4; the
flooding-off phase half as many).

Needs root, the lab's packages and FRR; without them it reports why instead of numbers.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

Row = dict


def _missing() -> str | None:
    from benchmarks.bench_lab import _missing as lab_missing
    from rarp_announce.lab.frr import frr_missing

    return lab_missing() or frr_missing()


def _phase(lab, name: str, migrations: int, rows: list[Row]) -> None:
    from rarp_announce.lab.evpn import PROBE_WINDOW

    moves = []
    for _ in range(migrations):
        record = lab.migrate()
        for move in record.evpn:
            moves.append((record, move))
    moved = sum(move.moved for _, move in moves)
    mobility = sum(move.mobility for _, move in moves)
    flagged = sum(any(move.duplicate.values()) for _, move in moves)
    note = (f"{moved}/{len(moves)} moved to the destination VTEP ({mobility} as MAC-mobility moves); "
            f"FRR flagged a duplicate after {flagged}")

    def add(what: str, values: list[float | None], unit: str, detail: str) -> None:
        samples = [v for v in values if v is not None]
        label = f"evpn {name}: {what}"
        if not samples:
            rows.append({"name": label, "value": float("nan"), "unit": unit, "note": f"never; {note}"})
            return
        rows.append({"name": f"{label} median", "value": round(statistics.median(samples), 3), "unit": unit,
                     "note": f"{detail}; n={len(samples)}/{len(values)}"})
        rows.append({"name": f"{label} max", "value": round(max(samples), 3), "unit": unit,
                     "note": f"{detail}; {note}", "samples": [round(v, 3) for v in samples]})

    def since(pick: Callable) -> list[float | None]:
        return [move.after_resume_ms(pick(record, move)) for record, move in moves]

    add("dest br0 has the MAC on the tap", since(lambda r, m: m.local_at), "ms", "after RESUMED")
    add("VTEP c got the dest's type-2 route", since(lambda r, m: m.bgp_at), "ms", "after RESUMED; bgpd's log")
    add("VTEP c kernel FDB -> dest VTEP", since(lambda r, m: m.fdb_moved_at), "ms", "after RESUMED; rtnetlink")
    if name == "ours":
        add("VTEP c kernel FDB moved after our FDB write",
            [None if m.fdb_moved_at is None or m.local_at is None else (m.fdb_moved_at - m.local_at) * 1000
             for _, m in moves], "ms", "REFERENCE section 12, bare netns: 71 ms")
    if name == "QEMU's":
        add("VTEP c kernel FDB moved after QEMU's first RARP",
            [None if m.fdb_moved_at is None or r.qemu_first is None else (m.fdb_moved_at - r.qemu_first) * 1000
             for r, m in moves], "ms", "REFERENCE section 12, bare netns: 112 ms")
    add("client probes lost", [float(m.probes_lost) for _, m in moves], "probes",
        f"of ~{PROBE_WINDOW * 1000:.0f} sent 1 ms apart in the {PROBE_WINDOW:.1f} s after RESUMED")


def run(migrations: int | None = None) -> list[Row]:
    why = _missing()
    if why:
        return [{"name": "evpn", "value": float("nan"), "unit": "", "note": f"skipped: {why}"}]
    from rarp_announce.lab.session import Lab
    from rarp_announce.lab.topology import HOSTS

    migrations = migrations or int(os.environ.get("RARP_BENCH_EVPN_MIGRATIONS", "4"))
    rows: list[Row] = []
    with Lab("daemon", fabric="evpn") as lab:
        assert lab.topology is not None and lab.evpn is not None
        _phase(lab, "ours", migrations, rows)
        for host in HOSTS:
            lab.stop_daemon(host)
            lab.topology.set_qemu_rarp_drop(host, False)
        lab.qemu_rarp = "keep"
        _phase(lab, "QEMU's", migrations, rows)
        for host in HOSTS:
            lab.topology.set_qemu_rarp_drop(host, True)
        lab.qemu_rarp = "drop"
        _phase(lab, "nothing", migrations, rows)
        lab.evpn.set_flooding(False)
        _phase(lab, "nothing, flooding off", max(2, migrations // 2), rows)
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<70} {row['value']:>10} {row['unit']:<6} {row['note']}")
