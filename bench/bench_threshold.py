"""Where "parallel" starts to beat "cpu" for a saxpy: the basis of PARALLEL_MIN_SIZE.

python bench/bench_threshold.py [--quick]
"""

from __future__ import annotations

import numpy as np

import veda
from veda.scheduler import PARALLEL_MIN_SIZE
from veda_kernels.blas1 import saxpy

from _util import check_each, compare, parser, report

SIZES = (1000, 4000, 16000, 32000, 64000, 256000, 1000000)


def main(sizes: tuple[int, ...] = SIZES, quick: bool = False) -> dict:
    rows = {}
    print(
        f"saxpy, 'cpu' vs 'parallel' ({veda.max_threads()} threads, static); current "
        f"threshold {PARALLEL_MIN_SIZE}"
    )
    rng = np.random.default_rng(0)
    for n in sizes:
        x = rng.random(n)
        y = rng.random(n)
        out = np.empty(n)
        fns = {
            "cpu": lambda: veda.launch(saxpy, n, 2.0, x, y, out, target="cpu"),
            "parallel": lambda: veda.launch(saxpy, n, 2.0, x, y, out, target="parallel"),
        }
        t = compare(fns, repeats=5 if quick else 201 if n < 100000 else 41)
        expected = 2.0 * x + y
        check_each(
            fns,
            lambda _: np.testing.assert_allclose(out, expected, rtol=1e-12),
            setup=lambda: out.fill(np.nan),
        )
        rows[n] = t
        print(
            f"  n = {n:>8}: cpu {t['cpu'] * 1e6:8.1f} us, parallel {t['parallel'] * 1e6:8.1f} "
            f"us, parallel/cpu {t['parallel'] / t['cpu']:.2f}"
        )
    report("threshold", {"seconds": rows, "threshold": PARALLEL_MIN_SIZE}, quick=quick)
    return rows


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(sizes=(1000, 64000), quick=True)
    else:
        main()
