"""Shared helpers for veda's benchmarks: medians after a warm-up, machine facts, JSON output.

Benchmarks compare within one process run, as ratios against a baseline measured in the same
run, with the compared functions interleaved repeat by repeat so that drift on a shared machine
hits both sides alike.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from veda_kernels.suite import machine

RESULTS = Path(__file__).parent / "results"


def compare(fns: dict[str, Callable[[], Any]], repeats: int = 15, warmup: int = 2,
            setup: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median seconds of each function, interleaved repeat by repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            if setup:
                setup()
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if setup:
                setup()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of one function (no warm-up: the caller's job)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of a fast function, timed over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def report(name: str, results: dict[str, Any]) -> None:
    results = {"benchmark": name, "machine": machine(), **results}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {os.path.relpath(path)}", file=sys.stderr)
