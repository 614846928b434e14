"""Launch overhead: veda's launch path against calling the compiled loop directly.

Targets: ``veda.launch(k, 100, ..., target="cpu")`` costs at most 2 us more than the compiled
function it calls (issue 2); an adaptive ``k[100](...)`` takes at most 2 us all in, aiming at
1.5 us (issue 4).  NumPy's whole ``a * x + y`` at n = 100 is shown for scale.

    python bench/bench_launch.py [--quick]
"""

from __future__ import annotations

import statistics

import numpy as np

import veda
from veda_kernels.blas1 import saxpy

from _util import check_each, parser, per_call, report


def main(n: int = 100, calls: int = 20_000, rounds: int = 15, quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random(n)
    y = rng.random(n)
    out = np.empty(n)
    veda.launch(saxpy, n, 2.0, x, y, out, target="cpu")
    compiled = saxpy.program(1, 4, (False, veda.get_config().cache))._veda_cpu
    fns = {
        "compiled_direct": lambda: compiled(n, 2.0, x, y, out),
        "veda_launch_cpu": lambda: veda.launch(saxpy, n, 2.0, x, y, out, target="cpu"),
        "veda_index_launch": lambda: saxpy[n](2.0, x, y, out),
        "numpy_a_x_plus_y": lambda: 2.0 * x + y,
    }
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved rounds, median per function
        for k, fn in fns.items():
            samples[k].append(per_call(fn, calls))
    t = {k: statistics.median(v) for k, v in samples.items()}
    expected = 2.0 * x + y
    check_each(
        fns,
        lambda got: np.testing.assert_allclose(out if got is None else got, expected, rtol=1e-12),
        setup=lambda: out.fill(np.nan),
    )
    # Paired: the overhead of each round against the direct call of the same round, then the
    # median, so that the machine's drift between rounds cancels.
    overhead = statistics.median(
        a - b for a, b in zip(samples["veda_launch_cpu"], samples["compiled_direct"])
    )
    index_all_in = t["veda_index_launch"]
    print(f"launch of a {n}-element saxpy, median of {rounds} rounds of {calls} calls")
    for k, v in t.items():
        print(f"  {k:<20} {v * 1e6:7.3f} us")
    print(
        f"veda.launch(target='cpu') overhead over the compiled call: {overhead * 1e6:.3f} us "
        "(target <= 2 us)"
    )
    print(
        f"adaptive saxpy[{n}](...) all in: {index_all_in * 1e6:.3f} us (target <= 2 us, aim 1.5 us)"
    )
    res = {
        "n": n,
        "seconds": t,
        "overhead_seconds": overhead,
        "target_seconds": 2e-6,
        "index_launch_seconds": index_all_in,
    }
    report("launch", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(calls=1000, rounds=3, quick=True)
    else:
        main()
