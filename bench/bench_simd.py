"""Vectorised reductions: veda's ``reduce="sum"`` against the loop it replaced and against NumPy,
on one thread and on all of them, with what ``veda.explain`` reads from the optimised LLVM IR.

A sum of squares (the body ``x[i] * x[i]``), in cache (1e4, 1e5) and from memory (1e6, 2e7):

* ``veda cpu`` / ``veda parallel``: the kernel as a user writes it, on ``"cpu"`` and on
  ``"parallel"`` (all threads, static schedule);
* ``veda fastmath``: the same kernel with ``fastmath={"reassoc"}`` on ``"cpu"``;
* ``four accumulators``: ``@numba.njit``, the loop veda's ``"cpu"`` reduction ran before its
  sums were vectorised (four scalar partial sums, in index order);
* ``njit reassoc``: ``@numba.njit(fastmath={"reassoc"})`` over a plain loop;
* ``numpy``: ``np.dot(x, x)`` (OpenBLAS, its own threads).

Medians of interleaved repeats (order rotated), batches of calls for the small sizes, NumPy in
a block of its own (OpenBLAS's threads spin after a call); results checked against
``math.fsum``.

    python bench/bench_simd.py [--quick]
"""

from __future__ import annotations

import math
import time
from typing import Any

import numba
import numpy as np

import veda

from _util import calls_per_sample, check_each, compare, parser, report


@veda.kernel(reduce="sum")
def sum_squares(i, x):
    return x[i] * x[i]


@veda.kernel(reduce="sum", fastmath={"reassoc"})
def sum_squares_reassoc(i, x):
    return x[i] * x[i]


@numba.njit
def four_accumulators(x):
    a0 = a1 = a2 = a3 = 0.0
    n = x.size
    i = 0
    while i + 4 <= n:
        a0 += x[i] * x[i]
        a1 += x[i + 1] * x[i + 1]
        a2 += x[i + 2] * x[i + 2]
        a3 += x[i + 3] * x[i + 3]
        i += 4
    while i < n:
        a0 += x[i] * x[i]
        i += 1
    return (a0 + a1) + (a2 + a3)


@numba.njit(fastmath={"reassoc"})
def njit_reassoc(x):
    a = 0.0
    for i in range(x.size):
        a += x[i] * x[i]
    return a


def main(quick: bool = False) -> dict[str, Any]:
    sizes = (1_000, 10_000) if quick else (10_000, 100_000, 1_000_000, 20_000_000)
    repeats = 1 if quick else 15
    threads = veda.max_threads()
    rng = np.random.default_rng(0)
    rows = []
    print(f"sum of squares, median of {repeats} interleaved repeats (per call), {threads} threads")
    for n in sizes:
        x = rng.random(n)
        fns = {
            "veda cpu": lambda x=x, n=n: veda.launch(sum_squares, n, x, target="cpu"),
            "veda parallel": lambda x=x, n=n: veda.launch(
                sum_squares, n, x, target="parallel", threads=threads, schedule="static"
            ),
            "veda fastmath": lambda x=x, n=n: veda.launch(sum_squares_reassoc, n, x, target="cpu"),
            "four accumulators": lambda x=x: four_accumulators(x),
            "njit reassoc": lambda x=x: njit_reassoc(x),
        }
        numpy = {"numpy": lambda x=x: np.dot(x, x)}
        expected = math.fsum(x * x)
        check_each(
            fns | numpy, lambda got, e=expected: np.testing.assert_allclose(got, e, rtol=1e-12)
        )
        calls = 1 if quick else calls_per_sample(fns.values(), 2e-4)
        time.sleep(0 if quick else 0.5)  # OpenBLAS's threads spin a while after a call
        times = compare(fns, repeats=repeats, warmup=2, calls=calls, rotate=True)
        # NumPy in a block of its own: its BLAS threads and Numba's fight over the two cores
        times |= compare(numpy, repeats=repeats, warmup=2, calls=calls)
        gain = times["four accumulators"] / times["veda cpu"]
        rows.append({"n": n, "seconds": times, "one_thread_gain": gain})
        cells = "  ".join(f"{k} {v * 1e6:9.1f} us" for k, v in times.items())
        print(f"  n={n:.0e}  {cells}  | four accumulators / veda cpu {gain:4.2f}x")
    code = {
        c["configuration"]: c
        for k in (sum_squares, sum_squares_reassoc)
        for c in veda.explain(k).code
        if c["configuration"] in ("cpu", "parallel")
    }
    for name, c in code.items():
        state = f"{c['lanes']} x {c['element']}" if c["vectorized"] else str(c["vectorized"])
        print(f"  {name}: vectorised {state}")
    report("simd", {"repeats": repeats, "threads": threads, "sizes": rows}, quick=quick)
    return {"sizes": rows}


if __name__ == "__main__":
    main(parser(__doc__).parse_args().quick)
