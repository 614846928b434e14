"""What telemetry costs a launch, and what profiling costs a parallel loop.

Targets (issue 3), medians in one process:
- telemetry on vs off adds <= 5% to a 10 us kernel and <= 0.5 us to a 1 us kernel;
- ``profile=True`` costs <= 5% on the triangular loop (n = 20000, 2 threads, dynamic).

    python bench/bench_telemetry.py
"""

from __future__ import annotations

import statistics

import numpy as np

import veda
from veda_kernels import loops
from veda_kernels.blas1 import saxpy

from _util import compare, per_call, report


def _launch_cost(n: int, calls: int, rounds: int) -> dict[str, float]:
    """Seconds per launch with telemetry on and off (process default), rounds interleaved."""
    x = np.ones(n)
    y = np.ones(n)
    out = np.empty(n)

    def launch():
        veda.launch(saxpy, n, 2.0, x, y, out, target="cpu")

    samples: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds + 1):
        for state in ("on", "off"):
            veda.set_config(telemetry=state == "on")
            samples[state].append(per_call(launch, calls))
    veda.set_config(telemetry=True)
    return {k: statistics.median(v[1:]) for k, v in samples.items()}  # first round: warm-up


def main() -> dict:
    small = _launch_cost(100, 20_000, 9)
    medium_n = 34_000  # about 10 us per launch on the 2-core machine
    medium = _launch_cost(medium_n, 2_000, 9)
    added_small = small["on"] - small["off"]
    ratio_medium = medium["on"] / medium["off"]
    print(f"1 us kernel (saxpy n=100, 'cpu'): off {small['off'] * 1e6:.3f} us, on "
          f"{small['on'] * 1e6:.3f} us, added {added_small * 1e6:.3f} us (target <= 0.5 us)")
    print(f"10 us kernel (saxpy n={medium_n}, 'cpu'): off {medium['off'] * 1e6:.2f} us, on "
          f"{medium['on'] * 1e6:.2f} us, on/off {ratio_medium:.3f} (target <= 1.05)")

    x = np.random.default_rng(0).random(20_000)
    res = np.empty_like(x)

    def plain():
        veda.launch(loops.triangular, x.size, x, res, target="parallel", schedule="dynamic")

    def profiled():
        with veda.config(profile=True):
            veda.launch(loops.triangular, x.size, x, res, target="parallel", schedule="dynamic")

    t = compare({"plain": plain, "profiled": profiled}, repeats=15)
    ratio_profile = t["profiled"] / t["plain"]
    print(f"triangular loop, dynamic: plain {t['plain'] * 1e3:.2f} ms, profile=True "
          f"{t['profiled'] * 1e3:.2f} ms, ratio {ratio_profile:.3f} (target <= 1.05)")
    out = {
        "small_seconds": small, "medium_seconds": medium, "added_small": added_small,
        "ratio_medium": ratio_medium, "profile_seconds": t, "ratio_profile": ratio_profile,
    }
    report("telemetry", out)
    return out


if __name__ == "__main__":
    main()
