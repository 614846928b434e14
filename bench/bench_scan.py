"""veda.scan against np.cumsum on 2e7 float64.

Target (issue 6): the deterministic scan reaches >= 0.5x the throughput of ``np.cumsum`` times
the threads available (>= 1.0x on the 2-core machine).

    python bench/bench_scan.py [--quick]
"""

from __future__ import annotations

import numpy as np

import veda

from _util import check_each, compare, parser, report


def main(n: int = 20_000_000, repeats: int = 15, quick: bool = False) -> dict:
    x = np.random.default_rng(0).random(n)
    out = np.empty_like(x)
    fns = {"veda_scan": lambda: veda.scan(x, out), "np_cumsum": lambda: np.cumsum(x, out=out)}
    t = compare(fns, repeats=repeats)
    # Both write ``out``; veda.scan's blocks do not depend on the thread count: same bits on one.
    expected = np.cumsum(x)
    with veda.config(threads=1):
        one_thread = veda.scan(x)
    check_each(
        fns,
        lambda _: np.testing.assert_allclose(out, expected, rtol=1e-10),
        setup=lambda: out.fill(np.nan),
    )
    check_each(
        {"veda_scan": fns["veda_scan"]},
        lambda _: np.testing.assert_array_equal(out, one_thread),
        setup=lambda: out.fill(np.nan),
    )
    ratio = t["np_cumsum"] / t["veda_scan"]
    target = 0.5 * veda.max_threads()
    for k, v in t.items():
        print(f"  {k:<10} {v * 1e3:7.2f} ms")
    print(
        f"veda.scan / np.cumsum throughput: {ratio:.2f} (target >= {target:.1f} = 0.5 x "
        f"{veda.max_threads()} threads)"
    )
    out_ = {"n": n, "seconds": t, "throughput_ratio": ratio, "target": target}
    report("scan", out_, quick=quick)
    return out_


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        # above PARALLEL_SCAN_MIN (2^18), so that the parallel path runs
        main(n=600_000, repeats=3, quick=True)
    else:
        main()
