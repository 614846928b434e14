"""Whole programs, one of each class issue 12 names, written the way a user writes them: veda's
adaptive launch (``k[domain](...)``, after enough launches for the dispatcher to decide) against
NumPy, a serial ``@numba.njit`` loop and a ``numba.prange`` loop, in one run, every result
checked against NumPy.

Classes: a saxpy sweep from 1e2 to 1e7 (launch overhead, mid sizes), dot and norm (reductions;
also with ``fastmath={"reassoc"}``, which lets LLVM reassociate the body's arithmetic too: every
sum is vectorised without it),
a histogram of 1e7 values into 256 bins (an array reduction: veda's ``reduce={"counts": "sum"}``
against a ``prange`` loop with per-thread private histograms and against ``veda.atomic_add``),
a domain of few heavy indices, a 2-D Jacobi sweep from 200^2 to 2000^2, and an elimination
that launches a 2-D update once per pivot.  The ratio is veda's median time over the best
peer's (below 1: veda is faster).  Medians of interleaved repeats after a warm-up, in an order
rotated from repeat to repeat, fast programs in batches of calls; NumPy is timed in a block of
its own (its BLAS threads spin after a call).  Dot and norm also meet the prange loop a Numba
expert writes for them ("prange simd": a share per thread, summed on SIMD lanes).

    python bench/bench_programs.py [--quick] [--only TEXT] [--blocks]

``--blocks`` times each contestant in a block of calls of its own (the steady state of a loop
that calls only it) instead of interleaving them.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

import veda
from veda_kernels.blas1 import dot, saxpy, sum_squares
from veda_kernels.stencils import jacobi2d, jacobi2d_reference

from _util import calls_per_sample, check_each, compare, parser, report
from bench_dispatch import heavy_rows  # the dispatcher benchmark's few heavy indices

# --- kernels and peers ------------------------------------------------------------------------


@veda.kernel(reduce={"counts": "sum"})
def histogram(i, values, counts):
    counts[values[i]] += 1


@veda.kernel
def histogram_atomic(i, values, counts):
    veda.atomic_add(counts, values[i], 1)


@veda.kernel(reduce="sum", fastmath={"reassoc"})
def dot_reassoc(i, x, y):
    """The gallery's dot with reassociation allowed in the body too (the sum is vectorised
    without it)."""
    return x[i] * y[i]


@veda.kernel
def eliminate(i, j, a, k):
    """One pivot's update of the trailing block (LU without pivoting)."""
    r = i + k + 1
    c = j + k + 1
    a[r, c] -= a[r, k] * a[k, c] / a[k, k]


@numba.njit
def saxpy_njit(a, x, y, out):
    for i in range(x.size):
        out[i] = a * x[i] + y[i]


@numba.njit(parallel=True)
def saxpy_prange(a, x, y, out):
    for i in numba.prange(x.size):
        out[i] = a * x[i] + y[i]


@numba.njit
def dot_njit(x, y):
    acc = 0.0
    for i in range(x.size):
        acc += x[i] * y[i]
    return acc


@numba.njit(parallel=True)
def dot_prange(x, y):
    acc = 0.0
    for i in numba.prange(x.size):
        acc += x[i] * y[i]
    return acc


_dot_simd = numba.njit(fastmath={"reassoc"})(dot_njit.py_func)  # the same loop, on SIMD lanes


@numba.njit(parallel=True)
def dot_prange_simd(x, y):
    """The expert's prange dot: one share per thread, each summed with reassociation allowed
    (so on SIMD lanes), over slices (so LLVM sees contiguous loads from index 0)."""
    t = numba.get_num_threads()
    partial = np.zeros(t)
    n = x.size
    for w in numba.prange(t):
        lo, hi = n * w // t, n * (w + 1) // t
        partial[w] = _dot_simd(x[lo:hi], y[lo:hi])
    return partial.sum()


@numba.njit
def histogram_njit(values, counts):
    for i in range(values.size):
        counts[values[i]] += 1


@numba.njit(parallel=True)
def histogram_prange(values, counts):
    """Per-thread private histograms, combined at the end: the hand-written idiom."""
    t = numba.get_num_threads()
    private = np.zeros((t, counts.size), counts.dtype)
    n = values.size
    for w in numba.prange(t):
        mine = np.zeros(counts.size, counts.dtype)
        for i in range(n * w // t, n * (w + 1) // t):
            mine[values[i]] += 1
        private[w] = mine
    counts += private.sum(axis=0)


@numba.njit
def heavy_njit(x, out):
    for i in range(x.shape[0]):
        acc = 0.0
        for j in range(x.shape[1]):
            acc += math.sqrt(x[i, j]) * x[i, j]
        out[i] = acc


@numba.njit(parallel=True)
def heavy_prange(x, out):
    for i in numba.prange(x.shape[0]):
        acc = 0.0
        for j in range(x.shape[1]):
            acc += math.sqrt(x[i, j]) * x[i, j]
        out[i] = acc


@numba.njit
def jacobi_njit(u, out):
    n, m = u.shape
    for i in range(n):
        for j in range(m):
            if 0 < i < n - 1 and 0 < j < m - 1:
                out[i, j] = 0.25 * (u[i - 1, j] + u[i + 1, j] + u[i, j - 1] + u[i, j + 1])
            else:
                out[i, j] = u[i, j]


@numba.njit(parallel=True)
def jacobi_prange(u, out):
    n, m = u.shape
    for i in numba.prange(n):
        for j in range(m):
            if 0 < i < n - 1 and 0 < j < m - 1:
                out[i, j] = 0.25 * (u[i - 1, j] + u[i + 1, j] + u[i, j - 1] + u[i, j + 1])
            else:
                out[i, j] = u[i, j]


@numba.njit
def eliminate_njit(a):
    n = a.shape[0]
    for k in range(n - 1):
        for r in range(k + 1, n):
            for c in range(k + 1, n):
                a[r, c] -= a[r, k] * a[k, c] / a[k, k]


@numba.njit(parallel=True)
def eliminate_step_prange(a, k):
    n = a.shape[0]
    for r in numba.prange(k + 1, n):
        for c in range(k + 1, n):
            a[r, c] -= a[r, k] * a[k, c] / a[k, k]


def eliminate_numpy(a):
    for k in range(a.shape[0] - 1):
        a[k + 1 :, k + 1 :] -= np.outer(a[k + 1 :, k] / a[k, k], a[k, k + 1 :])


# --- programs ---------------------------------------------------------------------------------


@dataclass
class Program:
    """One program: its contestants (each returns what ``check`` checks), an optional
    ``setup`` run before every call (restores inputs a contestant changes in place)."""

    name: str
    contestants: dict[str, Callable[[], Any]]
    check: Callable[[Any], None]
    setup: Callable[[], Any] | None = None
    #: The kernel of veda's contestant and its domain, whose decision the report names.
    launched: tuple[Any, tuple[int, ...]] | None = None


def _close(expected: Callable[[], Any], rtol: float = 1e-9) -> Callable[[Any], None]:
    def check(got: Any) -> None:
        np.testing.assert_allclose(got, expected(), rtol=rtol)

    return check


def programs(quick: bool) -> Iterator[Program]:
    rng = np.random.default_rng(0)
    for n in (100, 10_000) if quick else (100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000):
        x, y, out = rng.random(n), rng.random(n), np.empty(n)
        yield Program(
            f"saxpy n={n:.0e}",
            {
                "veda": lambda x=x, y=y, out=out, n=n: (saxpy[n](2.0, x, y, out), out)[1],
                "numpy": lambda x=x, y=y, out=out: np.add(np.multiply(x, 2.0, out=out), y, out=out),
                "njit": lambda x=x, y=y, out=out: (saxpy_njit(2.0, x, y, out), out)[1],
                "prange": lambda x=x, y=y, out=out: (saxpy_prange(2.0, x, y, out), out)[1],
            },
            _close(lambda x=x, y=y: 2.0 * x + y),
            launched=(saxpy, (n,)),
        )
    for n in (100_000,) if quick else (1_000_000, 20_000_000):
        x, y = rng.random(n), rng.random(n)
        yield Program(
            f"dot n={n:.0e}",
            {
                "veda": lambda x=x, y=y, n=n: dot[n](x, y),
                "veda fastmath": lambda x=x, y=y, n=n: dot_reassoc[n](x, y),
                "numpy": lambda x=x, y=y: np.dot(x, y),
                "njit": lambda x=x, y=y: dot_njit(x, y),
                "prange": lambda x=x, y=y: dot_prange(x, y),
                "prange simd": lambda x=x, y=y: dot_prange_simd(x, y),
            },
            _close(lambda x=x, y=y: np.dot(x, y)),
            launched=(dot, (n,)),
        )
        yield Program(
            f"norm n={n:.0e}",
            {
                "veda": lambda x=x, n=n: math.sqrt(sum_squares[n](x)),
                "veda fastmath": lambda x=x, n=n: math.sqrt(dot_reassoc[n](x, x)),
                "numpy": lambda x=x: np.linalg.norm(x),
                "njit": lambda x=x: math.sqrt(dot_njit(x, x)),
                "prange": lambda x=x: math.sqrt(dot_prange(x, x)),
                "prange simd": lambda x=x: math.sqrt(dot_prange_simd(x, x)),
            },
            _close(lambda x=x: np.linalg.norm(x)),
            launched=(sum_squares, (n,)),
        )
    n = 100_000 if quick else 10_000_000
    values = rng.integers(0, 256, n)
    counts = np.zeros(256, np.int64)

    def counted(fn: Callable[[], Any]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            counts[:] = 0
            fn()
            return counts.copy()

        return run

    yield Program(
        f"histogram {n:.0e} values, 256 bins",
        {
            "veda": counted(lambda: histogram[n](values, counts)),
            "veda atomic_add": counted(lambda: histogram_atomic[n](values, counts)),
            "numpy": counted(
                lambda: np.add(counts, np.bincount(values, minlength=256), out=counts)
            ),
            "njit": counted(lambda: histogram_njit(values, counts)),
            "prange": counted(lambda: histogram_prange(values, counts)),
        },
        lambda got: np.testing.assert_array_equal(got, np.bincount(values, minlength=256)),
        launched=(histogram, (n,)),
    )
    rows, cols = (16, 1000) if quick else (256, 10_000)
    m, res = rng.random((rows, cols)), np.empty(rows)
    yield Program(
        f"heavy rows {rows}x{cols}",
        {
            "veda": lambda: (heavy_rows[rows](m, res), res)[1],
            "numpy": lambda: (np.sqrt(m) * m).sum(axis=1),
            "njit": lambda: (heavy_njit(m, res), res)[1],
            "prange": lambda: (heavy_prange(m, res), res)[1],
        },
        _close(lambda: (np.sqrt(m) * m).sum(axis=1)),
        launched=(heavy_rows, (rows,)),
    )
    for side in (50,) if quick else (200, 1000, 2000):
        u, o = rng.random((side, side)), np.empty((side, side))
        yield Program(
            f"jacobi 2-D {side}^2",
            {
                "veda": lambda u=u, o=o, s=side: (jacobi2d[s, s](u, o), o)[1],
                "numpy": lambda u=u: jacobi2d_reference(u),
                "njit": lambda u=u, o=o: (jacobi_njit(u, o), o)[1],
                "prange": lambda u=u, o=o: (jacobi_prange(u, o), o)[1],
            },
            _close(lambda u=u: jacobi2d_reference(u)),
            launched=(jacobi2d, (side, side)),
        )
    side = 40 if quick else 200
    a0 = rng.random((side, side)) + side * np.eye(side)  # diagonally dominant: no pivoting
    a = a0.copy()

    def restore() -> None:
        a[...] = a0

    def per_pivot(step: Callable[[int], Any]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            for k in range(side - 1):
                step(k)
            return a

        return run

    reference = a0.copy()
    eliminate_numpy(reference)
    yield Program(
        f"elimination {side}^2, one launch per pivot",
        {
            "veda": per_pivot(lambda k: eliminate[side - k - 1, side - k - 1](a, k)),
            "numpy": lambda: (eliminate_numpy(a), a)[1],
            "njit": lambda: (eliminate_njit(a), a)[1],
            "prange": per_pivot(lambda k: eliminate_step_prange(a, k)),
        },
        _close(lambda: reference, rtol=1e-8),
        setup=restore,
    )


def _decided(prog: Program) -> str | None:
    """What the dispatcher runs veda's launch of ``prog`` on (None: several domains, or still
    exploring)."""
    if prog.launched is None:
        return None
    kernel, dims = prog.launched
    d = veda.explain(kernel).decision_for(math.prod(dims), len(dims))
    return None if d is None else veda.scheduler.Explanation.label(d)


def main(quick: bool = False, only: str | None = None, blocks: bool = False) -> dict:
    repeats = 1 if quick else 11
    # A fresh tuning cache, so that the dispatcher decides here (in the warm-up) rather than
    # remembering a decision another run made under other conditions.
    # (kept afterwards: veda writes its tuning cache there at exit)
    veda.set_config(cache_dir=tempfile.mkdtemp(prefix="veda-bench-"))
    rows = []
    how = "repeat(s), each contestant in blocks of its own," if blocks else "interleaved repeat(s)"
    print(f"whole programs, median of {repeats} {how} after a warm-up (per call)")
    for prog in programs(quick):
        if only is not None and only not in prog.name:
            continue
        # The adaptive launch needs its exploration behind it: warm every contestant up well,
        # veda's with its candidates compiled in the launches.  With background compiles the
        # first parallel loop of a kernel compiled while the timed launches ran, and those
        # waited for the interpreter lock (saxpy 1e4 or 1e5 at 200-300 us a launch, 10x).
        for name, fn in prog.contestants.items():
            with veda.config(background_compile=False):
                for _ in range(2 if quick else (300 if name.startswith("veda") else 60)):
                    if prog.setup:
                        prog.setup()
                    fn()
        check_each(prog.contestants, prog.check, prog.setup)
        # NumPy in a block of its own, after a pause: OpenBLAS (np.dot, np.linalg.norm) leaves
        # its threads spinning after a call, which slowed the parallel regions interleaved
        # with it 3-20x on this 2-core machine (the warm-up and the check just called it).
        time.sleep(0.0 if quick else 0.5)
        others = {k: v for k, v in prog.contestants.items() if k != "numpy"}
        # Fast programs are timed in batches of calls (a sample of about 2 ms), their order
        # rotated from repeat to repeat.  With samples of 0.2 ms a 1e6 dot was timed over two
        # calls right after another contestant's region: from run to run veda took 90-207 us
        # and its ratio to NumPy (timed in a block) moved from 1.07x to 1.32x.
        calls = 1 if prog.setup else calls_per_sample(others.values(), 2e-3)
        if blocks:  # each in a block of its own: the steady state of a loop calling only it
            times = {}
            for name, fn in others.items():
                times.update(compare({name: fn}, repeats, 0, prog.setup, calls=calls))
        else:
            times = compare(others, repeats, 0, prog.setup, calls=calls, rotate=True)
        numpy_fn = {"numpy": prog.contestants["numpy"]}
        times.update(compare(numpy_fn, repeats, 0, prog.setup, calls=calls))
        time.sleep(0.0 if quick else 0.5)
        peers = {k: v for k, v in times.items() if not k.startswith("veda")}
        best = min(peers, key=peers.get)  # type: ignore[arg-type]
        ratio = times["veda"] / peers[best]
        decided = _decided(prog)
        rows.append(
            {
                "program": prog.name,
                "seconds": times,
                "best_peer": best,
                "ratio": ratio,
                "decision": decided,
            }
        )
        cells = "  ".join(f"{k} {v * 1e6:10.1f} us" for k, v in times.items())
        on = f" (veda on {decided})" if decided else ""
        print(f"  {prog.name:<42} {cells}  | veda / {best} {ratio:5.2f}x{on}")
    # (a run of some programs, or in blocks, leaves the full interleaved run's file alone)
    report(
        "programs" + ("_blocks" if blocks else "") + ("_only" if only is not None else ""),
        {"repeats": repeats, "blocks": blocks, "only": only, "programs": rows},
        quick=quick,
    )
    return {"programs": rows}


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--only", help="run the programs whose name holds this text, e.g. 'dot'")
    cli.add_argument(
        "--blocks",
        action="store_true",
        help="time each contestant in a block of its own rather than interleaved",
    )
    opts = cli.parse_args()
    main(quick=opts.quick, only=opts.only, blocks=opts.blocks)
