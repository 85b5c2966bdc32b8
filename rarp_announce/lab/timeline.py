"""A picture of one migration: an SVG timeline of the client's frames and of every announcement.

Per vNIC, four lanes over time (ms from the RESUMED event on the destination): the client's
frames sent, delivered to the guest's tap on the source host, on the destination host, and lost
(reaching neither guest: not the destination's tap, nor the source's while the guest still ran
there); above them the destination's events: QEMU's own RARPs (entering the bridge from the
tap, where the lab drops them), ours (leaving the destination), the bridge's FDB entry pointed
at the guest's tap; lines mark the pause on the source, RESUMED, and the OVS port's late wiring. The left column shows the
whole migration, runs of frames as bars; the right one zooms on the resume, frame by frame.

matplotlib is an optional extra (`pip install 'rarp-announce[plot]'`), imported only inside
`write_timeline`: the daemon, the hook and `--help` never load it.

`write_timeline(record, path)` takes a `Migration` the lab recorded (lab.migrate() returns it;
its `trace` holds the frames); benchmarks call it the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rarp_announce.errors import AnnounceError

if TYPE_CHECKING:
    from rarp_announce.lab.frametrace import ClientTrace, MigrationTrace
    from rarp_announce.lab.migration import Migration

ZOOM_MS = (-40.0, 60.0)  # the right column: around the resume, where each frame shows
_RUN_GAP_S = 0.0025  # frames ~1 ms apart: a longer gap ends a bar
_LANES = ("sent", "at source tap", "at destination tap", "lost")
_COLOURS = {"sent": "#9e9e9e", "at source tap": "#1f77b4", "at destination tap": "#2ca02c", "lost": "#d62728",
            "qemu": "#ff7f0e", "ours": "#6a3d9a", "fdb": "#000000", "wired": "#8c564b", "resumed": "#000000",
            "paused": "#7f7f7f"}
_NAMES = {"br0": "Linux bridge br0", "ovsbr0": "OVS bridge ovsbr0"}


class PlotUnavailable(AnnounceError):
    """matplotlib is not installed: the timelines are an optional extra."""


def write_timeline(record: Migration, path: str | Path) -> Path:
    """Draw `record` (its `trace`) as an SVG at `path` (a .png path writes a PNG); returns the path."""
    trace = record.trace
    if trace is None or trace.resumed is None:
        raise AnnounceError(f"migration {record.number} has no frame trace or RESUMED event to draw")
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable("the timelines need matplotlib: pip install 'rarp-announce[plot]'") from None
    target = Path(path)
    clients = list(trace.clients.values())
    rows = 1 + len(clients)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "rarp-announce", "font.size": 8}):
        figure = Figure(figsize=(12, 1.3 + 1.35 * rows), layout="constrained")
        grid = figure.add_gridspec(rows, 2, width_ratios=(3, 1.3), height_ratios=(1.1, *([1.0] * len(clients))))
        window = _window(trace)
        for column, (low, high) in enumerate((window, ZOOM_MS)):
            top = figure.add_subplot(grid[0, column])
            _events(top, trace, legend=column == 0)
            for row, client in enumerate(clients, start=1):
                axes = figure.add_subplot(grid[row, column], sharex=top)
                _lanes(axes, trace, client, low, high, bars=column == 0, labels=column == 0)
                if row == len(clients):
                    axes.set_xlabel("ms from RESUMED on the destination" + (" (zoom)" if column else ""))
            top.set_xlim(low, high)
            if column == 0:
                handles, names = top.get_legend_handles_labels()
                figure.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize=7, frameon=False)
        figure.suptitle(_title(record, trace), fontsize=9)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, metadata={"Date": None} if target.suffix == ".svg" else None)
    return target


def _title(record: Migration, trace: MigrationTrace) -> str:
    parts = [f"migration {record.number}: host {record.source} -> host {record.destination}"]
    for client in trace.clients.values():
        lost, first = len(client.lost()), client.first_at_destination(trace.resumed or 0.0)
        reached = f"{(first - (trace.resumed or 0.0)) * 1000:.1f} ms after RESUMED" if first is not None else "never"
        parts.append(f"{client.mac} on {_NAMES.get(client.bridge, client.bridge)}: {lost} client frames lost, "
                     f"the first reached the guest's new tap {reached}")
    return "\n".join(parts)


def _ms(trace: MigrationTrace, moment: float) -> float:
    return (moment - (trace.resumed or 0.0)) * 1000


def _window(trace: MigrationTrace) -> tuple[float, float]:
    """From a little before the pause to a little after the last thing that happened."""
    last = max([trace.resumed or 0.0, trace.wired or 0.0, *(t for t, _ in trace.ours)])
    low = max(_ms(trace, trace.start), -600.0)
    high = min(_ms(trace, trace.end), _ms(trace, last) + 600.0)
    return low, max(high, 900.0)


def _events(axes: Any, trace: MigrationTrace, *, legend: bool) -> None:
    rows = {"QEMU's RARPs": 2, "our frames": 1, "bridge FDB": 0}
    axes.scatter([_ms(trace, t) for t, _ in trace.qemu], [rows["QEMU's RARPs"]] * len(trace.qemu), marker="x",
                 s=22, color=_COLOURS["qemu"], label="QEMU's RARP entering the bridge from the guest's tap")
    axes.scatter([_ms(trace, t) for t, _ in trace.ours], [rows["our frames"]] * len(trace.ours), marker="|",
                 s=120, color=_COLOURS["ours"], label="our frame leaving the destination")
    fdb = list(trace.fdb.values())
    axes.scatter([_ms(trace, t) for t in fdb], [rows["bridge FDB"]] * len(fdb), marker="D", s=22,
                 color=_COLOURS["fdb"], label="bridge FDB entry on the guest's tap")
    axes.set_yticks(list(rows.values()), list(rows.keys()))
    axes.set_ylim(-0.7, 2.7)
    _marks(axes, trace, legend=legend)
    axes.tick_params(labelbottom=False)
    axes.grid(axis="x", alpha=0.3)


def _marks(axes: Any, trace: MigrationTrace, *, legend: bool = False) -> None:
    if trace.paused is not None:
        axes.axvline(_ms(trace, trace.paused), color=_COLOURS["paused"], linewidth=1.0, linestyle=":",
                     label="paused on the source" if legend else None)
    axes.axvline(0.0, color=_COLOURS["resumed"], linewidth=1.0, label="RESUMED on the destination" if legend else None)
    if trace.wired is not None:
        axes.axvline(_ms(trace, trace.wired), color=_COLOURS["wired"], linewidth=1.0, linestyle="--",
                     label="OVS port wired" if legend else None)


def _lanes(axes: Any, trace: MigrationTrace, client: ClientTrace, low: float, high: float, *, bars: bool,
           labels: bool) -> None:
    lanes = {
        "sent": [at for seq, at in client.sent if seq not in client.refused],
        "at source tap": sorted(client.at_source.values()),
        "at destination tap": sorted(client.at_destination.values()),
        "lost": [at for _, at in client.lost()],
    }
    for index, lane in enumerate(_LANES):
        y = len(_LANES) - 1 - index
        points = [_ms(trace, t) for t in lanes[lane]]
        points = [p for p in points if low - 1 <= p <= high + 1]
        if bars:
            runs = _runs(points)
            axes.broken_barh([(start, max(end - start, 0.8)) for start, end in runs], (y - 0.35, 0.7),
                             color=_COLOURS[lane], linewidth=0)
        else:  # one tick per frame, drawn as one path per lane (a small SVG)
            xs = [x for point in points for x in (point, point, math.nan)]
            ys = [v for _ in points for v in (y - 0.35, y + 0.35, math.nan)]
            axes.plot(xs, ys, color=_COLOURS[lane], linewidth=0.8)
    axes.set_yticks(range(len(_LANES)), [f"{lane} ({len(lanes[lane])})" for lane in reversed(_LANES)]
                    if labels else [""] * len(_LANES))
    axes.set_ylim(-0.6, len(_LANES) - 0.4)
    if labels:
        axes.set_ylabel(f"{client.mac}\n{_NAMES.get(client.bridge, client.bridge)}", fontsize=7)
    _marks(axes, trace)
    axes.grid(axis="x", alpha=0.3)


def _runs(points_ms: list[float]) -> list[tuple[float, float]]:
    """Consecutive frames (about 1 ms apart) merged into (start, end) runs, in ms."""
    runs: list[tuple[float, float]] = []
    for point in sorted(points_ms):
        if runs and point - runs[-1][1] <= _RUN_GAP_S * 1000:
            runs[-1] = (runs[-1][0], point)
        else:
            runs.append((point, point))
    return runs
