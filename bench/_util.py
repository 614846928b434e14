"""Shared helpers for veda's benchmarks: medians after a warm-up, machine facts, JSON output.

Benchmarks compare within one process run, as ratios against a baseline measured in the same
run, with the compared functions interleaved repeat by repeat so that drift on a shared machine
hits both sides alike.

Every script takes ``--quick`` (:func:`parser`): tiny sizes and few repeats, a few seconds in
all, its results checked against NumPy (:func:`check_each`), a non-zero exit status when one is
wrong.  Its figures mean nothing; :func:`report` writes them to ``bench/results/quick/``
(git-ignored), never over a full run's results.  ``VEDA_BENCH_RESULTS`` names another folder for
the JSON of every run, quick or not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from veda_kernels.suite import machine

RESULTS = Path(__file__).parent / "results"
#: Where quick runs write their JSON (git-ignored).
QUICK_RESULTS = RESULTS / "quick"


def results_dir(quick: bool = False) -> Path:
    """The folder for a run's JSON: ``$VEDA_BENCH_RESULTS`` if set, else ``bench/results/``,
    or ``bench/results/quick/`` for a quick run."""
    env = os.environ.get("VEDA_BENCH_RESULTS")
    if env:
        return Path(env)
    return QUICK_RESULTS if quick else RESULTS


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for a benchmark script (its docstring as help) with ``--quick``."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few repeats: checks the results in a few seconds; the "
        "figures mean nothing (JSON to bench/results/quick/)",
    )
    return p


def check_each(
    fns: dict[str, Callable[[], Any]],
    check: Callable[[Any], None],
    setup: Callable[[], Any] | None = None,
) -> None:
    """Call each function once more, after ``setup`` (which should poison the outputs), and
    pass what it returns to ``check``, which raises AssertionError when the result is wrong.

    Raises AssertionError naming every function whose result was wrong.
    """
    failures = []
    for name, fn in fns.items():
        if setup:
            setup()
        try:
            check(fn())
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc).strip()}")
    if failures:
        raise AssertionError("wrong results:\n" + "\n".join(failures))


def settled() -> None:
    """Wait for the compiles veda's launches sent to its background thread: a kernel's first
    launches on "cpu" run a first tier while the serial loop compiles there, and a warm figure
    timed meanwhile would time the compile's share of the machine (and of the GIL) too."""
    from veda._kernel import background

    background.wait(600)


def compare(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 15,
    warmup: int = 2,
    setup: Callable[[], Any] | None = None,
    calls: int = 1,
    rotate: bool = False,
) -> dict[str, float]:
    """Median seconds per call of each function, interleaved repeat by repeat.

    ``calls``: calls per timed sample (the sample's time over ``calls``; ``setup`` runs once
    per sample), for functions too fast to time one call at a time.  ``rotate``: start each
    repeat one function further along, so that none always follows the same one (a parallel
    region leaves its threads spinning for a while, which slows whatever runs next where two
    vCPUs share a core)."""
    for fn in fns.values():
        for _ in range(warmup):
            if setup:
                setup()
            fn()
    settled()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(repeats):
        turn = order[r % len(order) :] + order[: r % len(order)] if rotate else order
        for name, fn in turn:
            if setup:
                setup()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


def calls_per_sample(fns: Iterable[Callable[[], Any]], sample: float) -> int:
    """Calls per timed sample of :func:`compare` for samples of about ``sample`` seconds: the
    fastest function's best time over a few calls sets it (1 to 10000)."""
    fastest = math.inf
    settled()
    for fn in fns:
        for _ in range(5):
            start = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - start)
    return max(1, min(10_000, round(sample / max(fastest, 1e-8))))


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of one function (no warm-up: the caller's job)."""
    settled()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of a fast function, timed over ``calls`` calls."""
    settled()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def report(name: str, results: dict[str, Any], quick: bool = False) -> None:
    """Write ``results`` with the machine's description to ``<results_dir(quick)>/name.json``."""
    results = {
        "benchmark": name,
        **({"quick": True} if quick else {}),
        "machine": machine(),
        **results,
    }
    folder = results_dir(quick)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {os.path.relpath(path)}", file=sys.stderr)
