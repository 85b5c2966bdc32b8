"""What a client loses across a live migration: frames the guest itself received against frames sent.

The lab's client sends a numbered frame to each of the guest's two vNICs every millisecond
(lab/traffic.py), and the lab's tiny guest (lab/tinyguest.py: a real Linux under TCG) tallies
them by sequence number on its serial console: which sequences it never got, per vNIC. A frame
counts only if the guest's own stack received it (addressed to its MAC, the client's ethertype
and marker), so broadcasts flooded to it, our announcements among them, are never counted;
frames the client's socket refused (a full queue) are not counted as sent.

Four labs, one after the other, each with `RARP_BENCH_CLIENTLOSS_MIGRATIONS` (default 3)
migrations:
  QEMU's frames allowed, no tool  nothing announces but QEMU; the OVS port is wired at once
  QEMU's frames lost, no tool     QEMU's RARPs dropped at br0's ingress; the OVS port dead
                                  (VLAN 4095) until 2 s after the resume, as in OpenStack
  QEMU's frames lost, daemon      as above, rarp-announce daemon on each host
  QEMU's frames lost, hook only   as above, only the libvirt hook (standalone waiter)

Per vNIC (br0, OVS) and scenario, over the migrations: frames sent in each window (from the
migration's start to 1 s after the vNIC's port was live: the RESUMED event for br0 and for an
OVS port wired at once, the rewiring for a late one), received by the guest, lost; lost after
the port was live (the part an announcement can save: frames sent while the guest is paused,
or while its port is dead, are lost whatever anyone announces); and the time from RESUMED (or
the rewiring) to the first client frame on the guest's tap at the destination, median.
Goal: that time <= 2 ms median on br0 with QEMU's frames lost, our frames alone.

Each migration is also drawn as an SVG timeline (lab/timeline.py) under
benchmarks/results/timelines/<scenario>/.

Needs root, the lab's packages and the tiny guest `make setup` builds; else it says why.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_lab import _missing

TIMELINES = Path(__file__).parent / "results" / "timelines"  # one SVG per migration, per scenario
TARGET_MS = 2.0
AFTER_LIVE = 1.0  # the window ends this long after the port was live
SCENARIOS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("QEMU's frames allowed, no tool", {"mode": "none", "qemu_rarp": "keep", "wiring": "immediate"}),
    ("QEMU's frames lost, no tool", {"mode": "none", "qemu_rarp": "drop", "wiring": "late"}),
    ("QEMU's frames lost, daemon", {"mode": "daemon", "qemu_rarp": "drop", "wiring": "late"}),
    ("QEMU's frames lost, hook only", {"mode": "hook", "qemu_rarp": "drop", "wiring": "late"}),
)


@dataclass
class _Tally:
    """One vNIC in one scenario, summed over its migrations."""

    sent: int = 0
    received: int = 0
    lost_after_live: int = 0
    first_ms: list[float] = field(default_factory=list)  # live -> first client frame on the destination tap
    durations: list[float] = field(default_factory=list)


def _one_migration(lab: Any, tallies: dict[str, _Tally], lags: list[float], timelines: Path) -> None:
    from rarp_announce.lab.timeline import write_timeline

    record = lab.migrate()
    # A picture of each migration (lab/timeline.py): what the figures below sum up.
    write_timeline(record, timelines / f"migration-{record.number}.svg")
    if record.lag_resumed_ms is not None and lab.mode != "none":
        lags.append(record.lag_resumed_ms)
    traffic, tally = lab.traffic, lab.tally
    assert traffic is not None and tally is not None and record.resumed is not None
    for nic in lab.guest.nics:
        late_port = nic.ovs and lab.wiring == "late"
        live = record.wired if late_port else record.resumed
        if live is None:
            raise RuntimeError(f"migration {record.number}: no {'rewiring' if late_port else 'RESUMED event'}")
        start, live_seq = traffic.sequence_at(record.started), traffic.sequence_at(live)
        end = traffic.sequence_at(live + AFTER_LIVE)
        # Frames still on their way (or a stream that never comes back): bounded.
        tally.wait_past(nic.mac, end, max(0.0, live + AFTER_LIVE + 1.5 - time.time()))
        refused = {seq for mac, seq in traffic.failed if mac == nic.mac and start <= seq < end}
        missing = tally.missing(nic.mac, start, end) - refused
        out = tallies[nic.bridge]
        out.sent += end - start - len(refused)
        out.received += end - start - len(refused) - len(missing)
        out.lost_after_live += sum(1 for seq in missing if seq >= live_seq)
        delivered = record.nics[nic.mac].delivered
        if delivered is not None:
            out.first_ms.append((delivered - live) * 1000)
        out.durations.append(record.duration * 1000)


def _scenario(label: str, options: dict[str, Any], migrations: int) -> list[dict]:
    from rarp_announce.lab.session import Lab

    tallies = {"br0": _Tally(), "ovsbr0": _Tally()}
    lags: list[float] = []  # our first frame at the switch after RESUMED
    timelines = TIMELINES / _slug(label)
    timelines.mkdir(parents=True, exist_ok=True)
    with Lab(options["mode"], qemu_rarp=options["qemu_rarp"], wiring=options["wiring"], guest="tiny") as lab:
        boot = lab.boot_seconds
        for _ in range(migrations):
            _one_migration(lab, tallies, lags, timelines)
    rows = []
    for bridge, out in tallies.items():
        nic = "br0 vNIC" if bridge == "br0" else "OVS vNIC"
        live = "RESUMED" if bridge == "br0" or options["wiring"] == "immediate" else "its port was wired"
        lost = out.sent - out.received
        rows.append({"name": f"{nic}, {label}: frames lost", "value": lost, "unit": "frames",
                     "note": f"sent {out.sent}, received by the guest {out.received}, lost after {live} "
                             f"{out.lost_after_live}; {migrations} migrations",
                     "sent": out.sent, "received": out.received, "lost_after_live": out.lost_after_live})
        if out.first_ms:
            median = statistics.median(out.first_ms)
            row = {"name": f"{nic}, {label}: {live} -> first client frame at the destination", "unit": "ms",
                   "value": round(median, 3), "samples": [round(v, 3) for v in out.first_ms]}
            if bridge == "br0" and options["mode"] != "none":
                met = median <= TARGET_MS
                row.update(target=TARGET_MS, met=met)
                row["note"] = (f"median, on the guest's tap, our frames alone; target <= {TARGET_MS:.0f} ms: "
                               f"{'met' if met else 'MISSED'}; n={len(out.first_ms)}")
            else:
                row["note"] = f"median, on the guest's tap; n={len(out.first_ms)}"
        else:
            row = {"name": f"{nic}, {label}: {live} -> first client frame at the destination", "unit": "ms",
                   "value": float("nan"), "note": "no client frame reached the guest's tap at the destination"}
        rows.append(row)
    durations = tallies["br0"].durations
    rows.append({"name": f"{label}: migration duration (tiny guest)", "unit": "ms",
                 "value": round(statistics.median(durations), 1),
                 "note": f"median; max {max(durations):.0f} ms; libvirt's whole migrate call",
                 "samples": [round(v, 1) for v in durations]})
    if lags:
        rows.append({"name": f"{label}: our first frame at the switch after RESUMED", "unit": "ms",
                     "value": round(statistics.median(lags), 3), "samples": [round(v, 3) for v in lags],
                     "note": "median; the announcer's part of the figure above"})
    rows.append({"name": f"{label}: tiny guest boot", "unit": "s", "value": round(boot or float("nan"), 2),
                 "note": "from creating the domain to its tally listening on both vNICs (TCG); "
                         f"timelines in {timelines}"})
    return rows


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def _guest_missing() -> str | None:
    from rarp_announce.lab.tinyguest import guest_dir

    folder = guest_dir()
    if not (folder / "vmlinuz").is_file() or not (folder / "initramfs.cpio.gz").is_file():
        return f"needs the tiny guest in {folder} (make setup builds it)"
    return None


def run(migrations: int | None = None) -> list[dict]:
    why = _missing() or _guest_missing()
    if why:
        return [{"name": "client loss", "value": float("nan"), "unit": "", "note": f"skipped: {why}"}]
    migrations = migrations or int(os.environ.get("RARP_BENCH_CLIENTLOSS_MIGRATIONS", "3"))
    only = os.environ.get("RARP_BENCH_CLIENTLOSS_SCENARIOS")  # e.g. "0,1": a subset, for a quick look
    chosen = [SCENARIOS[int(i)] for i in only.split(",")] if only else list(SCENARIOS)
    rows: list[dict] = []
    for label, options in chosen:
        rows += _scenario(label, options, migrations)
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<90} {row['value']:>10} {row['unit']:<6} {row['note']}")
