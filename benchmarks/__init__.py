"""Benchmarks: each `bench_<topic>.py` module exposes `run() -> list[dict]`; `python -m benchmarks` runs them.

Each dict is {"name": str, "value": float, "unit": str, "note": str}, plus optional keys (a target,
whether it was met, raw counts). Speed targets live here, never in timed unit tests.
"""
