"""veda.dask on a distributed LocalCluster: per-block overhead and two workers against one process.

Targets (issue 17):

* per-block overhead: ``veda.dask.map_blocks`` of an axpy kernel against
  ``dask.array.map_blocks`` of the same loop as an ``@njit`` function, on the same chunks of
  persisted arrays, on a cluster of 2 one-thread worker processes: at most 1.1x.  Both allocate
  their output block; the blocks are small (10,000 elements), so the time is mostly Dask's per
  task cost, and what veda adds per block (argument checks, the dispatcher, the output
  allocation) shows in the ratio;
* two workers against one process, reported as measured: a compute-heavy kernel over 2e5
  elements in 8 blocks on the cluster, against one adaptive launch over the whole array in this
  process (which uses both cores itself), and ``veda.dask.reduce`` against one reduction
  launch.

Rounds are interleaved; medians of the repeats after a warm-up (which compiles the kernels on
every worker).

    python bench/bench_dask.py [--quick]
"""

from __future__ import annotations

import math
import os
import statistics
import time

import dask.array as da
import numba
import numpy as np
from distributed import Client, LocalCluster, wait

import veda
import veda.dask as vd

from _util import parser, report


@veda.kernel
def axpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


@numba.njit(cache=True)
def axpy_njit(a, x, y):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = a * x[i] + y[i]
    return out


@veda.kernel
def heavy(i, x, out):
    s = 0.0
    v = x[i]
    for k in range(200):
        s += math.sin(v + k * 0.01) * math.cos(v - k * 0.01)
    out[i] = s


@veda.kernel(reduce="sum")
def heavy_sum(i, x):
    s = 0.0
    v = x[i]
    for k in range(200):
        s += math.sin(v + k * 0.01) * math.cos(v - k * 0.01)
    return s


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parser(__doc__).parse_args()
    quick = args.quick
    n_axpy, chunk = (40_000, 10_000) if quick else (2_000_000, 10_000)
    n_heavy = 8_000 if quick else 200_000
    repeats = 2 if quick else 9
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
            env={k: v for k, v in os.environ.items() if k.startswith("VEDA_")},
        ) as cluster,
        Client(cluster) as client,
    ):
        rng = np.random.default_rng(0)
        x_np, y_np = rng.random(n_axpy), rng.random(n_axpy)
        x = da.from_array(x_np, chunks=chunk).persist()
        y = da.from_array(y_np, chunks=chunk).persist()
        wait([x, y])
        blocks = x.npartitions

        def run_veda():
            out = vd.map_blocks(axpy, 2.0, x, y).persist()
            wait(out)
            return out

        def run_njit():
            out = da.map_blocks(axpy_njit, 2.0, x, y, dtype=x.dtype).persist()
            wait(out)
            return out

        for fn in (run_veda, run_njit):  # warm-up: compiles on every worker, checks
            np.testing.assert_array_equal(fn().compute(), 2.0 * x_np + y_np)
        per = {"veda": [], "njit": []}
        for _ in range(repeats):
            per["veda"] += _timed(run_veda, 1)
            per["njit"] += _timed(run_njit, 1)
        med = {k: statistics.median(v) for k, v in per.items()}
        overhead = {
            "blocks": blocks,
            "elements_per_block": chunk,
            "veda_seconds": med["veda"],
            "njit_seconds": med["njit"],
            "veda_per_block_us": med["veda"] / blocks * 1e6,
            "njit_per_block_us": med["njit"] / blocks * 1e6,
            "ratio": med["veda"] / med["njit"],
        }
        print(
            f"per block ({blocks} blocks of {chunk}): veda.dask.map_blocks "
            f"{overhead['veda_per_block_us']:.0f} us, dask map_blocks of @njit "
            f"{overhead['njit_per_block_us']:.0f} us -> {overhead['ratio']:.2f}x (target <= 1.1)"
        )

        h_np = rng.random(n_heavy)
        h = da.from_array(h_np, chunks=n_heavy // 8).persist()
        wait(h)
        whole = np.empty(n_heavy)

        def one_process():
            heavy[n_heavy](h_np, whole)

        def two_workers():
            out = vd.map_blocks(heavy, h).persist()
            wait(out)
            return out

        def one_process_sum():
            return heavy_sum[n_heavy](h_np)

        def two_workers_sum():
            return client.compute(vd.reduce(heavy_sum, h)).result()

        for _ in range(3 if not quick else 1):  # settle the dispatcher in both places
            one_process()
            two_workers()
            one_process_sum()
            two_workers_sum()
        got = two_workers().compute()
        one_process()
        np.testing.assert_allclose(got, whole, rtol=1e-12)
        np.testing.assert_allclose(two_workers_sum(), one_process_sum(), rtol=1e-9)
        times = {"one_process": [], "two_workers": [], "one_process_sum": [], "two_workers_sum": []}
        for _ in range(repeats):
            times["one_process"] += _timed(one_process, 1)
            times["two_workers"] += _timed(two_workers, 1)
            times["one_process_sum"] += _timed(one_process_sum, 1)
            times["two_workers_sum"] += _timed(two_workers_sum, 1)
        scale = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"heavy kernel, {n_heavy} elements: one process {scale['one_process'] * 1e3:.1f} ms "
            f"({veda.scheduler.Explanation.label(veda.explain(heavy).decision_for(n_heavy))}), "
            f"2 workers x 1 thread {scale['two_workers'] * 1e3:.1f} ms "
            f"-> {scale['one_process'] / scale['two_workers']:.2f}x"
        )
        print(
            f"heavy reduction: one process {scale['one_process_sum'] * 1e3:.1f} ms, "
            f"veda.dask.reduce on 2 workers {scale['two_workers_sum'] * 1e3:.1f} ms "
            f"-> {scale['one_process_sum'] / scale['two_workers_sum']:.2f}x"
        )
        m = vd.metrics(client)
        print(
            f"launches per worker: { {a: s.kernel(axpy).launches for a, s in m.workers.items()} }"
        )
    report(
        "bench_dask",
        {"overhead": overhead, "scale_out_seconds": scale, "repeats": repeats},
        quick=quick,
    )


if __name__ == "__main__":
    main()
