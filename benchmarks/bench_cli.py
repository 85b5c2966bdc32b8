"""Start-up cost an operator feels: `rarp-announce --help` against a bare `python -c pass`."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 11


def _medians_ms(commands: dict[str, list[str]]) -> dict[str, float]:
    # Round-robin, so a burst of load on this noisy 2-core machine hits every command alike.
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():
        subprocess.run(argv, capture_output=True, check=True, timeout=60)  # warm the page cache
    for _ in range(RUNS):
        for name, argv in commands.items():
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True, timeout=60)
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def run() -> list[dict]:
    script = Path(sys.executable).with_name("rarp-announce")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "rarp_announce"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "rarp-announce --help": [*cli, "--help"],
        "rarp-announce send --help": [*cli, "send", "--help"],
        "send --dry-run --rounds 1": [*cli, "send", "52:54:00:12:34:56", "--iface", "lo", "--dry-run", "--rounds", "1"],
    }
    path_python = shutil.which("python3")
    if path_python:
        commands["python3 -c pass (PATH)"] = [path_python, "-c", "pass"]
    medians = _medians_ms(commands)
    note = f"median of {RUNS}"
    rows = [
        {"name": "python -c pass", "value": medians["python -c pass"], "unit": "ms",
         "note": f"{note}; the floor: this venv's interpreter ({sys.executable})"},
        {"name": "rarp-announce --help", "value": medians["rarp-announce --help"], "unit": "ms", "note": note},
        {"name": "rarp-announce send --help", "value": medians["rarp-announce send --help"], "unit": "ms", "note": note},
        {"name": "send --dry-run --rounds 1", "value": medians["send --dry-run --rounds 1"], "unit": "ms",
         "note": f"{note}; a whole command, nothing sent"},
        {"name": "--help minus python -c pass", "value": medians["rarp-announce --help"] - medians["python -c pass"],
         "unit": "ms", "note": "typer and our CLI modules; no scapy, no libvirt"},
    ]
    if path_python:
        rows.append({"name": "python3 -c pass (PATH)", "value": medians["python3 -c pass (PATH)"], "unit": "ms",
                     "note": f"{note}; {path_python} (may be a shim)"})
    return rows
