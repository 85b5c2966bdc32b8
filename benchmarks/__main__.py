"""Run every benchmarks/bench_*.py (or those whose topic matches an argument), print one table, write JSON.

    python -m benchmarks              # all of them
    python -m benchmarks transport    # only bench_transport

Each module runs in a process of its own; one that fails, crashes or hangs is reported in the
table and the others still run. Results go to
benchmarks/results/bench-<UTC timestamp>.json and benchmarks/results/latest.json.
"""

from __future__ import annotations

import importlib
import json
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


def discover(patterns: list[str]) -> list[str]:
    topics = sorted(path.stem[len("bench_"):] for path in HERE.glob("bench_*.py"))
    if not patterns:
        return topics
    return [topic for topic in topics if any(pattern in topic for pattern in patterns)]


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
    topics = discover(argv)
    if not topics:
        print(f"no benchmark matches {' '.join(argv)!r}; there are: {', '.join(discover([]))}", file=sys.stderr)
        return 2
    results = []
    for topic in topics:
        print(f"running bench_{topic} ...", file=sys.stderr, flush=True)
        rows, error, seconds = run_module(topic)
        results.append({"topic": topic, "rows": rows, "error": error, "seconds": round(seconds, 3)})
    print(table(results))
    stamp = datetime.now(timezone.utc)
    document = {
        "timestamp": stamp.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "benchmarks": results,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    text = json.dumps(document, indent=2) + "\n"
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print(f"\nwritten: {path.relative_to(HERE.parent)} and {(RESULTS / 'latest.json').relative_to(HERE.parent)}")
    return 1 if any(result["error"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
