"""Deterministic reductions against ordinary ones.

Target (issue 6): a deterministic parallel sum of 2e7 float64 reaches >= 0.9x the throughput of
the non-deterministic parallel sum (both on all threads, the same schedule).  NumPy's sum is
shown for scale.

    python bench/bench_deterministic.py [--quick]
"""

from __future__ import annotations

import math

import numpy as np

import veda

from _util import check_each, compare, parser, report


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


def main(n: int = 20_000_000, repeats: int = 21, quick: bool = False) -> dict:
    x = np.random.default_rng(0).random(n)

    def plain():
        return veda.launch(total, n, x, target="parallel", schedule="static")

    def det():
        with veda.deterministic():
            return veda.launch(total, n, x, target="parallel", schedule="static")

    fns = {"parallel": plain, "deterministic_parallel": det, "numpy": lambda: np.sum(x)}
    t = compare(fns, repeats=repeats)
    exact = math.fsum(x)
    check_each(fns, lambda got: np.testing.assert_allclose(got, exact, rtol=1e-12))
    # Deterministic mode: the same bits on any target, thread count and schedule.
    with veda.deterministic():
        bits = veda.launch(total, n, x, target="cpu")
        check_each(
            {
                "deterministic_parallel": det,
                "deterministic_1_thread": lambda: veda.launch(total, n, x, threads=1),
                "deterministic_dynamic": lambda: veda.launch(total, n, x, schedule="dynamic"),
            },
            lambda got: np.testing.assert_array_equal(got, bits),
        )
    ratio = t["parallel"] / t["deterministic_parallel"]
    for k, v in t.items():
        print(f"  {k:<24} {v * 1e3:7.2f} ms  {8 * n / v / 1e9:6.1f} GB/s")
    print(f"deterministic / ordinary parallel sum throughput: {ratio:.3f} (target >= 0.9)")
    out = {"n": n, "seconds": t, "throughput_ratio": ratio}
    report("deterministic", out, quick=quick)
    return out


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(n=200_000, repeats=3, quick=True)
    else:
        main()
