"""STREAM triad on 2e7 float64: veda "parallel" against a hand-written Numba prange loop.

Target (issue 2): veda reaches >= 0.95x the bandwidth of the prange loop, on all threads.

    python bench/bench_triad.py [--quick]
"""

from __future__ import annotations

import numpy as np

import veda
from veda_kernels.blas1 import triad
from veda_kernels.peers import peers_for

from _util import check_each, compare, parser, report

# The baseline is the gallery's hand-written Numba peer compiled with parallel=True.
triad_prange = peers_for("triad", ("numba_prange",))["numba_prange"]


def main(n: int = 20_000_000, repeats: int = 21, quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    a = np.empty(n)
    b = rng.random(n)
    c = rng.random(n)
    threads = veda.max_threads()
    fns = {
        "numba_prange": lambda: triad_prange(n, (a, b, 3.0, c)),
        "veda_parallel_static": lambda: veda.launch(
            triad, n, a, b, 3.0, c, target="parallel", threads=threads, schedule="static"
        ),
        "veda_parallel_dynamic": lambda: veda.launch(
            triad, n, a, b, 3.0, c, target="parallel", schedule="dynamic"
        ),
        "veda_cpu": lambda: veda.launch(triad, n, a, b, 3.0, c, target="cpu"),
        "numpy": lambda: np.add(b, 3.0 * c, out=a),
    }
    t = compare(fns, repeats=repeats)
    expected = b + 3.0 * c
    check_each(
        fns,
        lambda _: np.testing.assert_allclose(a, expected, rtol=1e-12),
        setup=lambda: a.fill(np.nan),
    )
    bytes_moved = 3 * 8 * n  # two reads and one write per element (write-allocate not counted)
    gbps = {k: bytes_moved / v / 1e9 for k, v in t.items()}
    ratio = gbps["veda_parallel_static"] / gbps["numba_prange"]
    print(f"STREAM triad, n = {n:.0e} float64, {threads} threads, median of {repeats}")
    for k in fns:
        print(f"  {k:<24} {t[k] * 1e3:8.2f} ms  {gbps[k]:6.1f} GB/s")
    print(f"veda parallel (static) / numba prange bandwidth: {ratio:.3f}  (target >= 0.95)")
    out = {"n": n, "seconds": t, "gbps": gbps, "ratio_vs_prange": ratio, "target": 0.95}
    report("triad", out, quick=quick)
    return out


if __name__ == "__main__":
    args = parser(__doc__).parse_args()
    if args.quick:
        main(n=100_000, repeats=3, quick=True)
    else:
        main()
