"""The adaptive dispatcher against an exhaustive oracle, across workloads and sizes.

Targets (issue 4), medians in one process on the 2-core machine:
- after warm-up, the adaptive launch is within 10% of the best fixed configuration (found by
  exhaustive search over the grid below) for every workload and size;
- the geometric mean over the sweep of (adaptive time / time of the best *single* fixed
  configuration, the one grid point that is best over the whole sweep) is <= 0.9;
- the exploration cost (extra time of the first launches of a size class) is reported.

    python bench/bench_dispatch.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time

import numpy as np

import veda
from veda.scheduler import default_chunk
from veda_kernels import blas1, loops, sparse

from _util import median_seconds, report


def workloads(quick: bool):
    rng = np.random.default_rng(0)
    sizes = [10**2, 10**3, 10**4, 10**5, 10**6] + ([] if quick else [10**7])
    for n in sizes:
        x, y, out = rng.random(n), rng.random(n), np.empty(n)
        yield f"saxpy {n:.0e}", blas1.saxpy, n, (2.0, x, y, out)
    n = 2 * 10**6 if quick else 2 * 10**7
    yield f"triad {n:.0e}", blas1.triad, n, (np.empty(n), rng.random(n), 3.0, rng.random(n))
    x = rng.random(20_000)
    yield "triangular 2e4", loops.triangular, 20_000, (x, np.empty_like(x))
    h, w = (400, 600) if quick else (800, 1200)
    yield (f"mandelbrot {w}x{h}", loops.mandelbrot, (h, w),
           (-2.0, -0.25, 3.0 / w, 1.5 / h, np.empty((h, w), np.int64)))
    rows = 100_000 if quick else 1_000_000
    indptr, indices, data = sparse.power_law_csr(rows, seed=1)
    yield (f"spmv power-law {rows:.0e} rows", sparse.spmv_csr, rows,
           (indptr, indices, data, rng.random(rows), np.empty(rows)))


def grid(size: int) -> list[tuple]:
    threads = veda.max_threads()
    out = [("cpu", 1, "static", 1)]
    if threads < 2:
        return out
    for schedule in ("static", "interleaved", "dynamic", "guided"):
        if schedule == "static":
            out.append(("parallel", threads, "static", 1))
            continue
        base = default_chunk(schedule, max(size, 1), threads)
        for chunk in sorted({base, max(1, base // 8), base * 4}):
            out.append(("parallel", threads, schedule, chunk))
    return out


def repeats_for(t: float) -> int:
    return int(min(201, max(5, 0.3 / max(t, 1e-7))))


def main(quick: bool = False) -> dict:
    # a fresh tuning cache, so that the dispatcher explores here rather than remembering
    veda.set_config(cache_dir=tempfile.mkdtemp(prefix="veda-bench-"))
    rows = {}
    configs_all: list[tuple] = []
    for name, kernel, domain, args in workloads(quick):
        size = int(np.prod(domain))
        run = {c: (lambda c=c: veda.launch(kernel, domain, *args, target=c[0],
                                           **({} if c[0] == "cpu" else
                                              {"threads": c[1], "schedule": c[2],
                                               "chunk": c[3]})))
               for c in grid(size)}
        for fn in run.values():  # compile and warm up every configuration
            fn()
            fn()
        probe = median_seconds(run[("cpu", 1, "static", 1)], 3)
        reps = repeats_for(probe)
        fixed = {c: median_seconds(fn, reps) for c, fn in run.items()}
        # adaptive: the first launches explore; their cost beyond steady state is reported
        explore_times = []
        for _ in range(200):
            t0 = time.perf_counter()
            kernel[domain](*args)
            explore_times.append(time.perf_counter() - t0)
            exp_rows = [r for r in veda.explain(kernel).rows if r["decision"] is not None
                        and r["size_class"] == f"<= 2^{max(0, (size - 1).bit_length())}"]
            if exp_rows:
                break
        decision = exp_rows[0]["decision"] if exp_rows else None
        oracle_cfg = min(fixed, key=fixed.__getitem__)
        # adaptive against the oracle, interleaved launch by launch so drift hits both alike
        pair: dict[str, list[float]] = {"adaptive": [], "oracle": []}
        for _ in range(reps):
            for label, fn in (("adaptive", lambda: kernel[domain](*args)),
                              ("oracle", run[oracle_cfg])):
                t0 = time.perf_counter()
                fn()
                pair[label].append(time.perf_counter() - t0)
        adaptive = statistics.median(pair["adaptive"])
        fixed[oracle_cfg] = statistics.median(pair["oracle"])
        rows[name] = {
            "size": size, "fixed": {"/".join(map(str, c)): t for c, t in fixed.items()},
            "oracle": "/".join(map(str, oracle_cfg)), "oracle_seconds": fixed[oracle_cfg],
            "adaptive_seconds": adaptive, "decision": decision,
            "ratio_to_oracle": adaptive / fixed[oracle_cfg],
            "exploration_launches": len(explore_times),
            "exploration_extra_seconds": max(0.0, sum(explore_times)
                                             - len(explore_times) * adaptive),
        }
        configs_all = list(fixed) if not configs_all else configs_all
        print(f"{name:<28} oracle {veda.scheduler.Explanation.label(oracle_cfg):<32} "
              f"{fixed[oracle_cfg] * 1e6:10.1f} us | adaptive "
              f"{veda.scheduler.Explanation.label(decision):<32} {adaptive * 1e6:10.1f} us | "
              f"ratio {adaptive / fixed[oracle_cfg]:.3f} | explored in {len(explore_times)} "
              f"launches (+{rows[name]['exploration_extra_seconds'] * 1e3:.1f} ms)",
              flush=True)

    # the best single fixed configuration, by (target, schedule, chunk rule): chunk sizes vary
    # by workload, so configurations are compared by their grid position
    def key(c: str) -> str:
        t, th, s, _ = c.split("/")
        return f"{t}/{th}/{s}"

    positions: dict[str, list[float]] = {}
    for r in rows.values():
        per_key: dict[str, list[float]] = {}
        for c, t in r["fixed"].items():
            per_key.setdefault(key(c), []).append(t)
        for k, ts in per_key.items():
            positions.setdefault(k, []).append(min(ts) if k.endswith("static") else ts[0])
    complete = {k: v for k, v in positions.items() if len(v) == len(rows)}
    geo = {k: math.exp(statistics.fmean(math.log(x) for x in v)) for k, v in complete.items()}
    single = min(geo, key=geo.__getitem__)
    ratios = [r["adaptive_seconds"] / t for r, t in zip(rows.values(), complete[single])]
    geomean = math.exp(statistics.fmean(math.log(x) for x in ratios))
    worst = max(rows, key=lambda n: rows[n]["ratio_to_oracle"])
    print(f"best single fixed configuration: {single}")
    print(f"geometric mean of adaptive / best single fixed: {geomean:.3f} (target <= 0.9)")
    print(f"worst adaptive / oracle: {rows[worst]['ratio_to_oracle']:.3f} ({worst}; "
          "target <= 1.10)")
    out = {"workloads": rows, "best_single": single, "geomean_vs_single": geomean,
           "worst_ratio_to_oracle": rows[worst]["ratio_to_oracle"]}
    report("dispatch" + ("_quick" if quick else ""), out)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    sys.exit(0 if main(p.parse_args().quick) else 1)
