"""What telemetry costs a launch, and what profiling costs a parallel loop.

Targets (issue 3), medians in one process:
- telemetry on vs off adds <= 5% to a 10 us kernel and <= 0.5 us to a 1 us kernel;
- ``profile=True`` costs <= 5% on the triangular loop (n = 20000, 2 threads, dynamic).

    python bench/bench_telemetry.py [--quick]
"""

from __future__ import annotations

import statistics

import numpy as np

import veda
from veda_kernels import loops
from veda_kernels.blas1 import saxpy

from _util import check_each, compare, parser, per_call, report


def _launch_cost(n: int, calls: int, rounds: int) -> dict[str, float]:
    """Seconds per launch with telemetry on and off (process default), rounds interleaved."""
    rng = np.random.default_rng(n)
    x = rng.random(n)
    y = rng.random(n)
    out = np.empty(n)

    def launch():
        veda.launch(saxpy, n, 2.0, x, y, out, target="cpu")

    samples: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds + 1):
        for state in ("on", "off"):
            veda.set_config(telemetry=state == "on")
            samples[state].append(per_call(launch, calls))
    veda.set_config(telemetry=True)
    expected = 2.0 * x + y
    for state in ("on", "off"):
        with veda.config(telemetry=state == "on"):
            check_each(
                {f"saxpy n={n}, telemetry {state}": launch},
                lambda _: np.testing.assert_allclose(out, expected, rtol=1e-12),
                setup=lambda: out.fill(np.nan),
            )
    return {k: statistics.median(v[1:]) for k, v in samples.items()}  # first round: warm-up


def main(quick: bool = False) -> dict:
    rounds = 2 if quick else 9
    small = _launch_cost(100, 500 if quick else 20_000, rounds)
    medium_n = 34_000  # about 10 us per launch on the 2-core machine
    medium = _launch_cost(medium_n, 50 if quick else 2_000, rounds)
    added_small = small["on"] - small["off"]
    ratio_medium = medium["on"] / medium["off"]
    print(
        f"1 us kernel (saxpy n=100, 'cpu'): off {small['off'] * 1e6:.3f} us, on "
        f"{small['on'] * 1e6:.3f} us, added {added_small * 1e6:.3f} us (target <= 0.5 us)"
    )
    print(
        f"10 us kernel (saxpy n={medium_n}, 'cpu'): off {medium['off'] * 1e6:.2f} us, on "
        f"{medium['on'] * 1e6:.2f} us, on/off {ratio_medium:.3f} (target <= 1.05)"
    )

    x = np.random.default_rng(0).random(4_000 if quick else 20_000)
    res = np.empty_like(x)

    def plain():
        veda.launch(loops.triangular, x.size, x, res, target="parallel", schedule="dynamic")

    def profiled():
        with veda.config(profile=True):
            veda.launch(loops.triangular, x.size, x, res, target="parallel", schedule="dynamic")

    fns = {"plain": plain, "profiled": profiled}
    t = compare(fns, repeats=3 if quick else 15)
    check_each(
        fns,
        lambda _: np.testing.assert_allclose(res, loops.triangular_reference(x), rtol=1e-10),
        setup=lambda: res.fill(np.nan),
    )
    ratio_profile = t["profiled"] / t["plain"]
    print(
        f"triangular loop n={x.size}, dynamic: plain {t['plain'] * 1e3:.2f} ms, profile=True "
        f"{t['profiled'] * 1e3:.2f} ms, ratio {ratio_profile:.3f} (target <= 1.05)"
    )
    out = {
        "small_seconds": small,
        "medium_seconds": medium,
        "added_small": added_small,
        "ratio_medium": ratio_medium,
        "profile_seconds": t,
        "ratio_profile": ratio_profile,
    }
    report("telemetry", out, quick=quick)
    return out


if __name__ == "__main__":
    main(quick=parser(__doc__).parse_args().quick)
