"""Deterministic reductions against ordinary ones.

Target (issue 6): a deterministic parallel sum of 2e7 float64 reaches >= 0.9x the throughput of
the non-deterministic parallel sum (both on all threads, the same schedule).  NumPy's sum is
shown for scale.

    python bench/bench_deterministic.py
"""

from __future__ import annotations

import numpy as np

import veda

from _util import compare, report


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


def main(n: int = 20_000_000) -> dict:
    x = np.random.default_rng(0).random(n)

    def plain():
        return veda.launch(total, n, x, target="parallel", schedule="static")

    def det():
        with veda.deterministic():
            return veda.launch(total, n, x, target="parallel", schedule="static")

    t = compare({"parallel": plain, "deterministic_parallel": det, "numpy": lambda: np.sum(x)},
                repeats=21)
    ratio = t["parallel"] / t["deterministic_parallel"]
    for k, v in t.items():
        print(f"  {k:<24} {v * 1e3:7.2f} ms  {8 * n / v / 1e9:6.1f} GB/s")
    print(f"deterministic / ordinary parallel sum throughput: {ratio:.3f} (target >= 0.9)")
    out = {"n": n, "seconds": t, "throughput_ratio": ratio}
    report("deterministic", out)
    return out


if __name__ == "__main__":
    main()
