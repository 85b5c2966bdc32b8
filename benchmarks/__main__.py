"""Run every benchmarks/bench_*.py (or those whose topic matches an argument), print one table, write JSON.

    python -m benchmarks              # all of them, then the key figures again under load
    python -m benchmarks transport    # only bench_transport (and its key figures under load)
    python -m benchmarks --no-load    # without the loaded pass

Each module runs in a process of its own; one that fails, crashes or hangs is reported in the
table and the others still run. Then the modules with the figures an operator cares about
(LOADED: first frame after the event, hook return time, start to READY, SIGTERM to exit, FDB
write cost, frames/s) run again with BUSY CPU-bound processes beside them, as on a shared host
or a CI runner; a second table puts the KEY figures side by side, idle and loaded, with their
ratio. The lab benchmarks (real migrations, minutes each) are not run again. Results go to
benchmarks/results/bench-<UTC timestamp>.json and benchmarks/results/latest.json.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TIMEOUT = 900.0  # seconds per benchmark module
_CHILD = "--child"  # internal: run one benchmark and write its rows as JSON to a file
_NO_LOAD = "--no-load"
BUSY = 2  # CPU-bound processes beside the loaded pass: this machine's (and CI's) 2 cores, taken
# The modules run again under load, and the figures compared (topic, row name).
LOADED = ("cli", "daemon", "hook", "transport")
KEY = [
    ("daemon", "daemon first frame, 1 domain x2 vNICs, median"),
    ("daemon", "daemon first frame, 1000 domains x2 in 1 s, median"),
    ("daemon", "daemon frame lateness, 1000 domains, p99"),
    ("daemon", "daemon start to READY=1"),
    ("daemon", "daemon SIGTERM to exit"),
    ("daemon", "daemon SIGTERM to exit, 10k arrivals in flight"),
    ("daemon", "daemon ping during a 3.8 MB hand-off, max"),
    ("hook", "hook migrate begin, daemon up (hand-off) (median)"),
    ("hook", "hook migrate begin, no daemon (waiter spawned) (median)"),
    ("hook", "hook migrate begin, real `rarp-announce daemon` (test driver) (median)"),
    ("transport", "FDB write: BridgeFdb.claim moving the entry"),
    ("transport", "ours: RawSocketSink.send"),
    ("cli", "rarp-announce --help"),
    ("cli", "send --pcap: frame stamp off schedule, worst"),
]


def discover(patterns: list[str]) -> list[str]:
    topics = sorted(path.stem[len("bench_"):] for path in HERE.glob("bench_*.py"))
    if not patterns:
        return topics
    # A pattern that names a topic exactly means that topic only: `cli` is not also `clientloss`
    # (a lab benchmark of minutes with real migrations).
    return [topic for topic in topics
            if any(pattern == topic or (pattern not in topics and pattern in topic) for pattern in patterns)]


def run_module(topic: str) -> tuple[list[dict], str | None, float]:
    """Run one benchmark in a process of its own; its rows, or why it failed, and its wall time.

    A process each: benchmarks set process-wide state (libvirt's event loop implementation, scapy's
    conf, signal handlers) that would change the next one's figures or break it, and a crash in one
    must not take the table down.
    """
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        # The child's own prints go to stderr: stdout is for the table.
        try:
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks", _CHILD, topic, out.name],
                cwd=HERE.parent, stdout=sys.stderr, stderr=sys.stderr, timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:  # run() has killed the child it started
            return [], f"no answer within {TIMEOUT:.0f} s", time.perf_counter() - started
        answer = json.loads(out.read() or "{}")
    seconds = time.perf_counter() - started
    if child.returncode != 0 and not answer.get("error"):
        return [], f"exited with code {child.returncode}", seconds
    return answer.get("rows", []), answer.get("error"), seconds


def _child(topic: str, path: str) -> int:
    try:
        module = importlib.import_module(f"benchmarks.bench_{topic}")
        rows = [dict(row) for row in module.run()]
        for row in rows:
            missing = {"name", "value", "unit", "note"} - row.keys()
            if missing:
                raise ValueError(f"row {row.get('name', '?')!r} lacks {sorted(missing)}")
        answer: dict = {"rows": rows, "error": None}
    except Exception as exc:  # reported in the table; the other benchmarks still run
        traceback.print_exc()
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        answer = {"rows": [], "error": detail}
    with open(path, "w") as out:
        json.dump(answer, out, default=str)
    return 0


class _Busy:
    """`count` CPU-bound processes (a bare busy loop each) for the duration of a with-block;
    ended by their own pids only."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "_Busy":
        for _ in range(self.count):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # running before the first figure
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()  # this process's own children, by pid
            proc.wait(10)


def comparison(idle: list[dict], loaded: list[dict]) -> list[dict]:
    """The KEY figures found in both passes: idle, loaded and loaded / idle."""
    def index(results: list[dict]) -> dict[tuple[str, str], dict]:
        return {(result["topic"], row["name"]): row for result in results for row in result["rows"]}

    before, after = index(idle), index(loaded)
    rows = []
    for key in KEY:
        if key in before and key in after:
            a, b = before[key]["value"], after[key]["value"]
            ratio = b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
            rows.append({"topic": key[0], "name": key[1], "unit": before[key]["unit"], "idle": a, "loaded": b,
                         "ratio": ratio})
    return rows


def comparison_table(rows: list[dict]) -> str:
    header = ("benchmark", "name", "idle", "loaded", "unit", "loaded/idle")
    cells = [header] + [(r["topic"], r["name"], _value(r["idle"]), _value(r["loaded"]), r["unit"],
                         "-" if r["ratio"] is None else f"{r['ratio']:.2f}x") for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    lines = []
    for position, row in enumerate(cells):
        lines.append("  ".join((str(cell).rjust(w) if i in (2, 3, 5) else str(cell).ljust(w))
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if position == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _value(value: object) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def table(results: list[dict]) -> str:
    header = ("benchmark", "name", "value", "unit", "note")
    rows = [header]
    for result in results:
        if result["error"]:
            rows.append((result["topic"], "-", "FAILED", "", result["error"]))
        for row in result["rows"]:
            rows.append((result["topic"], row["name"], _value(row["value"]), row["unit"], row["note"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        cells = [str(row[0]).ljust(widths[0]), str(row[1]).ljust(widths[1]), str(row[2]).rjust(widths[2]),
                 str(row[3]).ljust(widths[3]), str(row[4])]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == [_CHILD]:
        return _child(argv[1], argv[2])
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip())
        return 0
    load = _NO_LOAD not in argv
    argv = [arg for arg in argv if arg != _NO_LOAD]
    topics = discover(argv)
    if not topics:
        print(f"no benchmark matches {' '.join(argv)!r}; there are: {', '.join(discover([]))}", file=sys.stderr)
        return 2
    results = []
    for topic in topics:
        print(f"running bench_{topic} ...", file=sys.stderr, flush=True)
        rows, error, seconds = run_module(topic)
        results.append({"topic": topic, "rows": rows, "error": error, "seconds": round(seconds, 3)})
    loaded: list[dict] = []
    again = [topic for topic in topics if topic in LOADED] if load else []
    if again:
        with _Busy(BUSY):
            for topic in again:
                print(f"running bench_{topic} with {BUSY} CPU-bound processes beside it ...", file=sys.stderr, flush=True)
                rows, error, seconds = run_module(topic)
                loaded.append({"topic": topic, "rows": rows, "error": error, "seconds": round(seconds, 3)})
    print(table(results))
    compared = comparison(results, loaded)
    if loaded:
        print(f"\nthe same modules with {BUSY} CPU-bound processes beside them:\n")
        print(table(loaded))
        print(f"\nkey figures, idle and with {BUSY} CPU-bound processes beside them ({os.cpu_count()} CPUs):\n")
        print(comparison_table(compared))
    stamp = datetime.now(timezone.utc)
    document = {
        "timestamp": stamp.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "benchmarks": results,
        "loaded": {"busy_processes": BUSY, "benchmarks": loaded},
        "comparison": compared,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    text = json.dumps(document, indent=2) + "\n"
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print(f"\nwritten: {path.relative_to(HERE.parent)} and {(RESULTS / 'latest.json').relative_to(HERE.parent)}")
    return 1 if any(result["error"] for result in results + loaded) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
