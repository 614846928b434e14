"""The adaptive dispatcher against an exhaustive oracle, across workloads and sizes.

Targets (issue 4), medians in one process on the 2-core machine:
- after warm-up, the adaptive launch is within 10% of the best fixed configuration (found by
  exhaustive search over the grid below) for every workload and size;
- the geometric mean over the sweep of (adaptive time / time of the best *single* fixed
  configuration, the one grid point that is best over the whole sweep) is <= 0.9;
- the exploration cost (extra time of the first launches of a size class) is reported.

The grid is measured interleaved (every configuration in turn, the order rotated from repeat to
repeat); the oracle and the adaptive launch are then timed launch by launch in turn, both
through ``veda.launch``.

    python bench/bench_dispatch.py [--reduced | --quick]

``--reduced`` leaves out the largest sizes; ``--quick`` runs a few tiny workloads in seconds,
checking every configuration's result against NumPy (its figures mean nothing).
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time

import numpy as np

import veda
from veda.scheduler import default_chunk
from veda_kernels import blas1, loops, sparse

from _util import check_each, compare, median_seconds, parser, report


@veda.kernel
def heavy_rows(i, x, out):
    """Few heavy indices: each index walks a whole row (issue 12's work-aware dispatch)."""
    acc = 0.0
    for j in range(x.shape[1]):
        acc += math.sqrt(x[i, j]) * x[i, j]
    out[i] = acc


def workloads(sweep: str):
    """``(name, kernel, domain, args, out, expected)`` per workload: the launch writes ``out``,
    which must then equal ``expected()`` (NumPy's result).  ``sweep`` is "full", "reduced"
    (without the largest sizes) or "quick" (a 1-d and a 2-d kernel at tiny sizes)."""
    rng = np.random.default_rng(0)
    tiny = sweep == "quick"
    sizes = {
        "full": [10**2, 10**3, 10**4, 10**5, 10**6, 10**7],
        "reduced": [10**2, 10**3, 10**4, 10**5, 10**6],
        "quick": [10**3, 10**5],
    }[sweep]
    for n in sizes:
        x, y, out = rng.random(n), rng.random(n), np.empty(n)
        yield (
            f"saxpy {n:.0e}",
            blas1.saxpy,
            n,
            (2.0, x, y, out),
            out,
            lambda x=x, y=y: 2.0 * x + y,
        )
    if not tiny:  # (each kernel costs a quick run seconds of compiling)
        n = 2 * 10**6 if sweep == "reduced" else 2 * 10**7
        a, b, c = np.empty(n), rng.random(n), rng.random(n)
        yield f"triad {n:.0e}", blas1.triad, n, (a, b, 3.0, c), a, lambda: b + 3.0 * c
        x = rng.random(20_000)
        out = np.empty_like(x)
        yield (
            "triangular 2e4",
            loops.triangular,
            20_000,
            (x, out),
            out,
            lambda: loops.triangular_reference(x),
        )
    h, w = (40, 60) if tiny else (400, 600) if sweep == "reduced" else (800, 1200)
    img = np.empty((h, w), np.int64)
    margs = (-2.0, -0.25, 3.0 / w, 1.5 / h, img)
    yield (
        f"mandelbrot {w}x{h}",
        loops.mandelbrot,
        (h, w),
        margs,
        img,
        lambda margs=margs: loops.mandelbrot_reference(*margs[:4], np.empty_like(img)),
    )
    if not tiny:  # a domain of a few hundred indices, each of thousands of operations
        for rows_, cols in ((256, 10_000), (1000, 1000)):
            m, res_ = rng.random((rows_, cols)), np.empty(rows_)
            yield (
                f"heavy rows {rows_}x{cols}",
                heavy_rows,
                rows_,
                (m, res_),
                res_,
                lambda m=m: (np.sqrt(m) * m).sum(axis=1),
            )
    if not tiny:
        rows = 100_000 if sweep == "reduced" else 1_000_000
        indptr, indices, data = sparse.power_law_csr(rows, seed=1)
        v, res = rng.random(rows), np.empty(rows)
        yield (
            f"spmv power-law {rows:.0e} rows",
            sparse.spmv_csr,
            rows,
            (indptr, indices, data, v, res),
            res,
            lambda: sparse.spmv_reference(indptr, indices, data, v),
        )


def check(name: str, fns: dict, out: np.ndarray, expected: np.ndarray) -> None:
    """Every configuration's launch, poisoned output first, against NumPy's result."""
    if out.dtype.kind == "f":
        poison, same = np.nan, lambda _: np.testing.assert_allclose(out, expected, rtol=1e-10)
    else:
        poison, same = (
            np.iinfo(out.dtype).min,
            lambda _: np.testing.assert_array_equal(out, expected),
        )
    try:
        check_each(fns, same, setup=lambda: out.fill(poison))
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from None


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


def main(sweep: str = "full") -> dict:
    quick = sweep == "quick"
    # a fresh tuning cache, so that the dispatcher explores here rather than remembering
    veda.set_config(cache_dir=tempfile.mkdtemp(prefix="veda-bench-"))
    rows = {}
    configs_all: list[tuple] = []
    for name, kernel, domain, args, result, expected in workloads(sweep):
        size = int(np.prod(domain))
        run = {
            c: (
                lambda c=c: veda.launch(
                    kernel,
                    domain,
                    *args,
                    target=c[0],
                    **({} if c[0] == "cpu" else {"threads": c[1], "schedule": c[2], "chunk": c[3]}),
                )
            )
            for c in grid(size)
        }
        for fn in run.values():  # compile and warm up every configuration
            fn()
            fn()
        probe = median_seconds(run[("cpu", 1, "static", 1)], 3)
        reps = 3 if quick else repeats_for(probe)
        # every configuration measured interleaved with the others (the order rotated from
        # repeat to repeat), so that a slow spell of the machine hits them all alike
        fixed = compare(run, repeats=reps, warmup=0, rotate=True)
        # adaptive: the first launches explore; their cost beyond steady state is reported
        explore_times = []
        for _ in range(200):
            t0 = time.perf_counter()
            kernel[domain](*args)
            explore_times.append(time.perf_counter() - t0)
            exp_rows = [
                r
                for r in veda.explain(kernel).rows
                if r["decision"] is not None
                and r["size_class"] == f"<= 2^{max(0, (size - 1).bit_length())}"
            ]
            if exp_rows:
                break
        decision = exp_rows[0]["decision"] if exp_rows else None
        oracle_cfg = min(fixed, key=fixed.__getitem__)
        # adaptive against the oracle, interleaved launch by launch so drift hits both alike
        pair: dict[str, list[float]] = {"adaptive": [], "oracle": []}
        # both through veda.launch (the oracle's overrides, the adaptive launch's none), so that
        # the ratio compares decisions, not launch paths (k[n] skips veda.launch's argument
        # handling: about 1 us)
        for _ in range(reps):
            for label, fn in (
                ("adaptive", lambda: veda.launch(kernel, domain, *args)),
                ("oracle", run[oracle_cfg]),
            ):
                t0 = time.perf_counter()
                fn()
                pair[label].append(time.perf_counter() - t0)
        check(
            name,
            {"/".join(map(str, c)): fn for c, fn in run.items()}
            | {"adaptive": lambda: kernel[domain](*args)},
            result,
            expected(),
        )
        adaptive = statistics.median(pair["adaptive"])
        fixed[oracle_cfg] = statistics.median(pair["oracle"])
        rows[name] = {
            "size": size,
            "fixed": {"/".join(map(str, c)): t for c, t in fixed.items()},
            "oracle": "/".join(map(str, oracle_cfg)),
            "oracle_seconds": fixed[oracle_cfg],
            "adaptive_seconds": adaptive,
            "decision": decision,
            "ratio_to_oracle": adaptive / fixed[oracle_cfg],
            "exploration_launches": len(explore_times),
            "exploration_extra_seconds": max(
                0.0, sum(explore_times) - len(explore_times) * adaptive
            ),
        }
        configs_all = list(fixed) if not configs_all else configs_all
        print(
            f"{name:<28} oracle {veda.scheduler.Explanation.label(oracle_cfg):<32} "
            f"{fixed[oracle_cfg] * 1e6:10.1f} us | adaptive "
            f"{veda.scheduler.Explanation.label(decision):<32} {adaptive * 1e6:10.1f} us | "
            f"ratio {adaptive / fixed[oracle_cfg]:.3f} | explored in {len(explore_times)} "
            f"launches (+{rows[name]['exploration_extra_seconds'] * 1e3:.1f} ms)",
            flush=True,
        )

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
    print(
        f"worst adaptive / oracle: {rows[worst]['ratio_to_oracle']:.3f} ({worst}; target <= 1.10)"
    )
    out = {
        "workloads": rows,
        "best_single": single,
        "geomean_vs_single": geomean,
        "worst_ratio_to_oracle": rows[worst]["ratio_to_oracle"],
    }
    report("dispatch" + ("" if sweep == "full" else f"_{sweep}"), out, quick=quick)
    return out


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument(
        "--reduced",
        action="store_true",
        help="the sweep without its largest sizes (a few minutes; JSON to "
        "bench/results/dispatch_reduced.json)",
    )
    a = p.parse_args()
    sys.exit(0 if main("quick" if a.quick else "reduced" if a.reduced else "full") else 1)
