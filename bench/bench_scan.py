"""veda.scan against np.cumsum on 2e7 float64.

Target (issue 6): the deterministic scan reaches >= 0.5x the throughput of ``np.cumsum`` times
the threads available (>= 1.0x on the 2-core machine).

    python bench/bench_scan.py
"""

from __future__ import annotations

import numpy as np

import veda

from _util import compare, report


def main(n: int = 20_000_000) -> dict:
    x = np.random.default_rng(0).random(n)
    out = np.empty_like(x)
    t = compare({"veda_scan": lambda: veda.scan(x, out),
                 "np_cumsum": lambda: np.cumsum(x, out=out)}, repeats=15)
    ratio = t["np_cumsum"] / t["veda_scan"]
    target = 0.5 * veda.max_threads()
    for k, v in t.items():
        print(f"  {k:<10} {v * 1e3:7.2f} ms")
    print(f"veda.scan / np.cumsum throughput: {ratio:.2f} (target >= {target:.1f} = 0.5 x "
          f"{veda.max_threads()} threads)")
    out_ = {"n": n, "seconds": t, "throughput_ratio": ratio, "target": target}
    report("scan", out_)
    return out_


if __name__ == "__main__":
    main()
