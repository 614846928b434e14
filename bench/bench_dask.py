"""veda.dask on a distributed LocalCluster: per-block overhead and two workers against one process.

Targets (issue 17):

* per-block overhead: ``veda.dask.map_blocks`` of an axpy kernel against
  ``dask.array.map_blocks`` of the same loop as an ``@njit`` function, on the same chunks of
  persisted arrays, on a cluster of 2 one-thread worker processes: at most 1.1x.  Both allocate
  their output block; the blocks are small (10,000 elements), so the time is mostly Dask's per
  task cost, and what veda adds per block (argument checks, the dispatcher, the output
  allocation) shows in the ratio;
* what veda adds per block on a worker, timed there: the block function of
  ``veda.dask.map_blocks`` (settings, launch, output allocation) against a call of the
  ``@njit`` function, on one 10,000-element block, 2,000 calls each;
* two workers against one process, reported as measured: a compute-heavy kernel over 5e4
  elements in 8 blocks on the cluster, against one adaptive launch over the whole array in
  this process (which uses both cores itself, once its dispatcher has decided), and
  ``veda.dask.reduce`` against one reduction launch.

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


def _per_block(n: int, calls: int) -> dict[str, float]:
    """On a worker: seconds per call of veda.dask's block function and of the @njit function
    on one block (medians of 10 batches, after a warm-up batch of each)."""
    from veda.dask import _map_block, _settings

    x, y = np.random.default_rng(1).random(n), np.random.default_rng(2).random(n)
    settings = _settings()

    def veda_block():
        _map_block(
            x, y, kernel=axpy, scalars={0: 2.0}, count=3, out_dtype=x.dtype, settings=settings
        )

    def njit_block():
        axpy_njit(2.0, x, y)

    batch = max(1, calls // 10)
    fns = {"veda": veda_block, "njit": njit_block}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(11):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            if round_:  # the first round warms up
                times[name].append((time.perf_counter() - start) / batch)
    return {name: statistics.median(t) for name, t in times.items()}


def _ran(kernel) -> str:
    """The configuration that ran most of this process's launches of ``kernel``."""
    configs = veda.metrics().kernel(kernel).configs
    return veda.scheduler.Explanation.label(max(configs, key=lambda c: c.launches).decision)


def settle(kernel, n: int, args: tuple, most: int = 200) -> None:
    """Launch until the dispatcher has decided for this size (or ``most`` launches)."""
    for _ in range(most):
        kernel[n](*args)
        if veda.explain(kernel).decision_for(n) is not None:
            return


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
    n_heavy = 8_000 if quick else 50_000
    repeats = 2 if quick else 15
    # This process's dispatcher decides before the cluster starts: the load monitor counts the
    # workers' cores as busy while they compute, and would leave it one thread.
    h_np = np.random.default_rng(3).random(n_heavy)
    whole = np.empty(n_heavy)
    settle(heavy, n_heavy, (h_np, whole))
    settle(heavy_sum, n_heavy, (h_np,))
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
        # Made on the workers (a NumPy array would travel inside the graph).
        rng = da.random.default_rng(0)
        x = rng.random(n_axpy, chunks=chunk).persist()
        y = rng.random(n_axpy, chunks=chunk).persist()
        wait([x, y])
        x_np, y_np = x.compute(), y.compute()
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
        per: dict[str, list[float]] = {"veda": [], "njit": []}
        ratios = []
        for r in range(repeats):  # paired rounds, alternating which goes first
            pair = (("veda", run_veda), ("njit", run_njit))
            got = {name: _timed(fn, 1)[0] for name, fn in (pair if r % 2 else pair[::-1])}
            for name, t in got.items():
                per[name].append(t)
            ratios.append(got["veda"] / got["njit"])
        med = {k: statistics.median(v) for k, v in per.items()}
        quart = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        in_worker = client.run(_per_block, chunk, 200 if quick else 2000)
        added = statistics.median(v["veda"] - v["njit"] for v in in_worker.values())
        overhead = {
            "blocks": blocks,
            "elements_per_block": chunk,
            "veda_seconds": med["veda"],
            "njit_seconds": med["njit"],
            "veda_per_block_us": med["veda"] / blocks * 1e6,
            "njit_per_block_us": med["njit"] / blocks * 1e6,
            "ratio_median_of_rounds": statistics.median(ratios),
            "ratio_quartiles": [quart[0], quart[2]],
            "in_worker_block_us": {
                a: {k: t * 1e6 for k, t in v.items()} for a, v in in_worker.items()
            },
            "veda_adds_per_block_us": added * 1e6,
        }
        print(
            f"per block ({blocks} blocks of {chunk}): veda.dask.map_blocks "
            f"{overhead['veda_per_block_us']:.0f} us, dask map_blocks of @njit "
            f"{overhead['njit_per_block_us']:.0f} us -> median of {repeats} paired rounds "
            f"{overhead['ratio_median_of_rounds']:.2f}x (quartiles {quart[0]:.2f}-{quart[2]:.2f}; "
            f"target <= 1.1)"
        )
        print(
            f"in the worker, one block: veda's block function adds "
            f"{overhead['veda_adds_per_block_us']:.1f} us to the @njit call"
        )

        h = da.from_array(h_np, chunks=n_heavy // 8).persist()
        wait(h)

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

        for _ in range(3 if not quick else 1):  # compile on the workers ("cpu", one thread)
            two_workers()
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
            f"({_ran(heavy)}), "
            f"2 workers x 1 thread {scale['two_workers'] * 1e3:.1f} ms "
            f"-> {scale['one_process'] / scale['two_workers']:.2f}x"
        )
        print(
            f"heavy reduction: one process {scale['one_process_sum'] * 1e3:.1f} ms "
            f"({_ran(heavy_sum)}), "
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
