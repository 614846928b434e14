"""The dispatcher under load: another process busy on one core.

Target (issue 4): with a busy process pinned to one core, the dispatcher moves to the better
thread count and beats the fixed 2-thread configuration.

The benchmark lets the dispatcher settle on an idle machine, starts a process that spins on
core 0, keeps launching until the dispatcher has re-decided (it samples the load every 0.5 s),
then times the adaptive launch against a fixed 2-thread static launch, both under the load.

    python bench/bench_load.py [--quick]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np

import veda
from veda_kernels.blas1 import saxpy

from _util import check_each, median_seconds, parser, report


def spin() -> None:  # pragma: no cover - runs in the child
    os.sched_setaffinity(0, {0})
    deadline = time.time() + 120
    x = 0
    while time.time() < deadline:
        x += 1


def decision():
    rows = [r for r in veda.explain(saxpy).rows if r["decision"]]
    return rows[0]["decision"] if rows else None


def main(
    n: int = 4_000_000,
    repeats: int = 41,
    warmup: int = 60,
    settle: float = 1.5,
    wait: float = 10,
    quick: bool = False,
) -> dict:
    if veda.max_threads() < 2 or not hasattr(os, "sched_setaffinity"):
        print("needs two cores and CPU affinity")
        return {}
    x, y, out = np.random.rand(n), np.random.rand(n), np.empty(n)
    adaptive = lambda: saxpy[n](2.0, x, y, out)
    fixed2 = lambda: veda.launch(saxpy, n, 2.0, x, y, out, threads=2, schedule="static")
    fns = {"adaptive": adaptive, "fixed_2_threads": fixed2}
    expected = 2.0 * x + y

    def check() -> None:
        check_each(
            fns,
            lambda _: np.testing.assert_allclose(out, expected, rtol=1e-12),
            setup=lambda: out.fill(np.nan),
        )

    def median(fn):
        return median_seconds(fn, repeats)

    for _ in range(warmup):
        adaptive()
    idle_choice = decision()
    idle = {"adaptive": median(adaptive), "fixed_2_threads": median(fixed2)}
    check()
    busy = mp.get_context("spawn").Process(target=spin, daemon=True)
    busy.start()
    try:
        time.sleep(settle)  # let the load monitor see it
        start = time.perf_counter()
        while time.perf_counter() - start < wait:
            adaptive()
            if decision() not in (None, idle_choice):
                break
        moved_after = time.perf_counter() - start
        loaded_choice = decision()
        for _ in range(warmup // 2):
            adaptive()
        loaded = {"adaptive": median(adaptive), "fixed_2_threads": median(fixed2)}
        check()
    finally:
        busy.terminate()
        busy.join()
    ratio = loaded["fixed_2_threads"] / loaded["adaptive"]
    print(f"saxpy n={n:.0e}")
    print(
        f"  idle:   adaptive {veda.scheduler.Explanation.label(idle_choice):<28} "
        f"{idle['adaptive'] * 1e3:.2f} ms, fixed 2 threads "
        f"{idle['fixed_2_threads'] * 1e3:.2f} ms"
    )
    print(
        f"  loaded: adaptive {veda.scheduler.Explanation.label(loaded_choice):<28} "
        f"{loaded['adaptive'] * 1e3:.2f} ms, fixed 2 threads "
        f"{loaded['fixed_2_threads'] * 1e3:.2f} ms; re-decided after {moved_after:.1f} s"
    )
    print(f"  fixed 2-thread / adaptive under load: {ratio:.2f} (target > 1)")
    res = {
        "n": n,
        "idle": idle,
        "loaded": loaded,
        "idle_choice": idle_choice,
        "loaded_choice": loaded_choice,
        "speedup_under_load": ratio,
        "seconds_to_move": moved_after,
    }
    report("load", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(n=200_000, repeats=5, warmup=20, settle=0.6, wait=2, quick=True)
    else:
        main()
