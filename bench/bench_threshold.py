"""Where "parallel" starts to beat "cpu" for a saxpy: the basis of PARALLEL_MIN_SIZE.

    python bench/bench_threshold.py
"""

from __future__ import annotations

import numpy as np

import veda
from veda.scheduler import PARALLEL_MIN_SIZE
from veda_kernels.blas1 import saxpy

from _util import compare, report


def main() -> dict:
    rows = {}
    print(f"saxpy, 'cpu' vs 'parallel' ({veda.max_threads()} threads, static); current "
          f"threshold {PARALLEL_MIN_SIZE}")
    for n in [1000, 4000, 16000, 32000, 64000, 256000, 1000000]:
        x = np.ones(n)
        y = np.ones(n)
        out = np.empty(n)
        t = compare({
            "cpu": lambda: veda.launch(saxpy, n, 2.0, x, y, out, target="cpu"),
            "parallel": lambda: veda.launch(saxpy, n, 2.0, x, y, out, target="parallel"),
        }, repeats=201 if n < 100000 else 41)
        rows[n] = t
        print(f"  n = {n:>8}: cpu {t['cpu'] * 1e6:8.1f} us, parallel {t['parallel'] * 1e6:8.1f} "
              f"us, parallel/cpu {t['parallel'] / t['cpu']:.2f}")
    report("threshold", {"seconds": rows, "threshold": PARALLEL_MIN_SIZE})
    return rows


if __name__ == "__main__":
    main()
