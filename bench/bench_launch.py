"""Launch overhead: veda's launch path against calling the compiled loop directly.

Targets: an adaptive ``k[100](...)`` costs at most 1 us more than a direct call of the same
loop written with ``@numba.njit`` (issue 12), in a tight loop and in a program that launches
four different kernels in turn (each launch then finds the previous kernel's state in the
caches); ``veda.launch(k, 100, ..., target="cpu")`` at most 2 us more than the compiled loop it
calls (issue 2).  NumPy's whole ``a * x + y`` at n = 100 is shown for scale.  Reported: what an
explicit ``target="parallel"`` launch (which borrows its threads from veda's budget) costs over
the compiled parallel launcher it calls, and that launcher over a ``prange`` loop.

    python bench/bench_launch.py [--quick]
"""

from __future__ import annotations

import statistics

import numba
import numpy as np

import veda
from veda._kernel.codegen import MODE_CODES
from veda_kernels.blas1 import dot, saxpy, triad

from _util import check_each, parser, per_call, report


@veda.kernel
def scale(i, a, x, out):
    out[i] = a * x[i]


@numba.njit(nogil=True)
def saxpy_njit(a, x, y, out):
    for i in range(len(out)):
        out[i] = a * x[i] + y[i]


@numba.njit(nogil=True)
def triad_njit(a, b, s, c):
    for i in range(len(a)):
        a[i] = b[i] + s * c[i]


@numba.njit(nogil=True)
def dot_njit(x, y):
    acc = 0.0
    for i in range(len(x)):
        acc += x[i] * y[i]
    return acc


@numba.njit(nogil=True, parallel=True)
def saxpy_prange(a, x, y, out):
    for i in numba.prange(len(out)):
        out[i] = a * x[i] + y[i]


@numba.njit(nogil=True)
def scale_njit(a, x, out):
    for i in range(len(out)):
        out[i] = a * x[i]


def _paired(samples: dict[str, list[float]], a: str, b: str, per: int = 1) -> float:
    """Median over rounds of (a - b) / per: paired, so the machine's drift cancels."""
    return statistics.median((p - q) / per for p, q in zip(samples[a], samples[b]))


def main(n: int = 100, calls: int = 20_000, rounds: int = 15, quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random(n)
    y = rng.random(n)
    out = np.empty(n)
    out2 = np.empty(n)
    out3 = np.empty(n)
    veda.launch(saxpy, n, 2.0, x, y, out, target="cpu")
    module = saxpy.program(1, 4, (False, veda.get_config().cache))
    compiled = module._veda_cpu
    # The parallel launcher as veda's "parallel" target calls it for a static schedule on
    # every thread (domain, threads, schedule code, chunk, no guided table, the arguments).
    threads = veda.max_threads()
    static = (n, threads, MODE_CODES["static"], 1, np.zeros(1, np.int64))
    veda.launch(saxpy, n, 2.0, x, y, out, target="parallel", schedule="static")

    def program_veda() -> float:
        saxpy[n](2.0, x, y, out)
        triad[n](out2, x, 0.5, y)
        scale[n](3.0, out, out3)
        return dot[n](out3, out2)

    def program_njit() -> float:
        saxpy_njit(2.0, x, y, out)
        triad_njit(out2, x, 0.5, y)
        scale_njit(3.0, out, out3)
        return dot_njit(out3, out2)

    fns = {
        "compiled_direct": lambda: compiled(n, 2.0, x, y, out),
        "njit_direct": lambda: saxpy_njit(2.0, x, y, out),
        "veda_launch_cpu": lambda: veda.launch(saxpy, n, 2.0, x, y, out, target="cpu"),
        "veda_index_launch": lambda: saxpy[n](2.0, x, y, out),
        "numpy_a_x_plus_y": lambda: 2.0 * x + y,
        "prange_direct": lambda: saxpy_prange(2.0, x, y, out),
        "compiled_parallel": lambda: module._veda_parallel(*static, 2.0, x, y, out),
        "veda_launch_parallel": lambda: veda.launch(
            saxpy, n, 2.0, x, y, out, target="parallel", schedule="static"
        ),
        "program_njit": program_njit,
        "program_veda": program_veda,
    }
    for fn in fns.values():  # compile, and let the dispatcher decide for every kernel
        for _ in range(200):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved rounds, median per function
        for k, fn in fns.items():
            samples[k].append(per_call(fn, calls // 4 if k.startswith("program") else calls))
    t = {k: statistics.median(v) for k, v in samples.items()}
    expected = 2.0 * x + y
    checked = {k: v for k, v in fns.items() if not k.startswith("program")}
    launcher = checked["compiled_parallel"]  # returns (None, -1, -1): what failed, if anything
    checked["compiled_parallel"] = lambda: launcher()[0]
    check_each(
        checked,
        lambda got: np.testing.assert_allclose(out if got is None else got, expected, rtol=1e-12),
        setup=lambda: out.fill(np.nan),
    )
    check_each(
        {"program_njit": program_njit, "program_veda": program_veda},
        lambda got: np.testing.assert_allclose(
            got, np.dot(3.0 * (2.0 * x + y), x + 0.5 * y), rtol=1e-12
        ),
        setup=lambda: [a.fill(np.nan) for a in (out, out2, out3)],
    )
    overhead = _paired(samples, "veda_launch_cpu", "compiled_direct")
    index_over_njit = _paired(samples, "veda_index_launch", "njit_direct")
    program_over_njit = _paired(samples, "program_veda", "program_njit", per=4)
    parallel_overhead = _paired(samples, "veda_launch_parallel", "compiled_parallel")
    launcher_over_prange = _paired(samples, "compiled_parallel", "prange_direct")
    print(f"launch of a {n}-element saxpy, median of {rounds} rounds of {calls} calls")
    for k, v in t.items():
        print(f"  {k:<20} {v * 1e6:7.3f} us" + ("  (4 launches)" if k.startswith("prog") else ""))
    print(
        f"veda.launch(target='cpu') over the compiled loop: {overhead * 1e6:+.3f} us "
        "(target <= +2 us)"
    )
    print(
        f"adaptive saxpy[{n}](...) over the @njit call, tight loop: {index_over_njit * 1e6:+.3f} us"
        f"; in a program of four kernels: {program_over_njit * 1e6:+.3f} us per launch "
        "(target <= +1 us)"
    )
    print(
        f"veda.launch(target='parallel', schedule='static') over its compiled launcher "
        f"({threads} threads): {parallel_overhead * 1e6:+.3f} us; that launcher over a prange "
        f"loop: {launcher_over_prange * 1e6:+.3f} us (reported)"
    )
    res = {
        "n": n,
        "seconds": t,
        "overhead_seconds": overhead,
        "index_over_njit_seconds": index_over_njit,
        "program_over_njit_seconds": program_over_njit,
        "parallel_overhead_seconds": parallel_overhead,
        "parallel_launcher_over_prange_seconds": launcher_over_prange,
        "target_seconds": 1e-6,
        "index_launch_seconds": t["veda_index_launch"],
    }
    report("launch", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(calls=1000, rounds=3, quick=True)
    else:
        main()
