"""Start-up cost an operator feels: `rarp-announce --help` against a bare `python -c pass`; and how
close `send --pcap` stamps its frames to QEMU's 0/50/200/450/800 ms (the tests prove the order
and the schedule; this says how punctual the timers are on this machine)."""

from __future__ import annotations

import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 11
PCAP_RUNS = 5
NOMINAL_S = (0.0, 0.05, 0.2, 0.45, 0.8)


def _pcap_stamps(path: Path) -> list[float]:
    """Each record's time stamp from a classic little-endian pcap file (24-byte header)."""
    data = path.read_bytes()
    stamps, offset = [], 24
    while offset + 16 <= len(data):
        seconds, micros, included, _ = struct.unpack_from("<IIII", data, offset)
        stamps.append(seconds + micros / 1e6)
        offset += 16 + included
    return stamps


def _pcap_lateness_ms(cli: list[str]) -> list[float]:
    """Per run of `send --pcap` (QEMU's schedule): the largest distance of a frame's stamp from
    its nominal offset, measured from the first frame."""
    worst = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        path = Path(folder) / "send.pcap"
        for _ in range(PCAP_RUNS):
            subprocess.run([*cli, "send", "52:54:00:12:34:56", "--iface", "lo", "--pcap", str(path)],
                           capture_output=True, check=True, timeout=60)
            stamps = _pcap_stamps(path)
            if len(stamps) != len(NOMINAL_S):
                raise RuntimeError(f"send --pcap wrote {len(stamps)} frames, not {len(NOMINAL_S)}")
            worst.append(max(abs((s - stamps[0]) - n) for s, n in zip(stamps, NOMINAL_S)) * 1000)
    return worst


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
    lateness = _pcap_lateness_ms(cli)
    rows.append({"name": "send --pcap: frame stamp off schedule, worst", "value": statistics.median(lateness),
                 "unit": "ms", "note": f"median over {PCAP_RUNS} runs of each run's worst frame (0/50/200/450/800 ms); "
                 f"max {max(lateness):.2f} ms"})
    return rows
