"""The energy policy against the adaptive (fastest) one on the gallery, and the power cap.

For each gallery kernel at its large size: the dispatcher settles under ``policy="adaptive"``,
``"energy"`` (least joules per element) and ``"edp"`` (least energy x time), each with its own
exploration; then the settled launches of the three are timed interleaved (medians of repeats)
and each result is checked against NumPy.  Energy per launch is the median time times the
watts of the chosen configuration, from the source ``veda.hardware.energy_sources()`` offers:
measured (RAPL, NVML) where readable, else the power model (``static_watts + threads x
watts_per_core``), and the table names the source of every figure.

The power cap: ``max_power_watts`` is set between the model's one-thread and two-thread power,
every kernel runs adaptively under it, and the modelled power of every configuration its
launches ran on must stay within 10% of the cap.

    python bench/bench_energy.py [--quick]
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

import veda
import veda.hardware
from veda._hardware import energy
from veda_kernels import GALLERY

from _util import parser, report

POLICIES = ("adaptive", "energy", "edp")
#: The kernels of the comparison without package power.
SUBSET = ("saxpy", "dot", "jacobi2d", "mandelbrot", "spmv_csr", "black_scholes")


def settle(case, domain, args, policy: str, max_launches: int = 400):
    """Launch under ``policy`` until the dispatcher decided for it (its own size class row:
    every policy explores on its own); the decision, or None while still exploring."""
    dims = domain if isinstance(domain, tuple) else (domain,)
    size = math.prod(dims)
    with veda.config(policy=policy):
        for _ in range(max_launches):
            case.reset(args)
            case.kernel[domain](*args)
            d = veda.explain(case.kernel).decision_for(size, ndim=len(dims), policy=policy)
            if d is not None:
                return d
    return None


def _one(case, n: int, repeats: int, rng) -> dict:
    domain, args = case.make(n, rng)
    dims = domain if isinstance(domain, tuple) else (domain,)
    size = math.prod(dims)
    launch = case.kernel[domain]
    decisions = {}
    for policy in POLICIES:
        decisions[policy] = settle(case, domain, args, policy)
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    for _ in range(repeats):  # interleaved, policy by policy
        for policy in POLICIES:
            with veda.config(policy=policy):
                case.reset(args)
                t = time.perf_counter()
                launch(*args)
                times[policy].append(time.perf_counter() - t)
    for policy in POLICIES:  # every policy's result, checked
        with veda.config(policy=policy):
            case.reset(args)
            case.check(domain, args, launch(*args))
    row = {"kernel": case.name, "elements": size, "policies": {}}
    for policy in POLICIES:
        d = decisions[policy]
        seconds = statistics.median(times[policy])
        if d is None:
            row["policies"][policy] = {"decision": "exploring", "seconds": seconds}
            continue
        watts, source = energy.watts(d)
        row["policies"][policy] = {
            "decision": veda.scheduler.Explanation.label(d),
            "seconds": seconds,
            "watts": watts,
            "joules": seconds * watts,
            "source": source,
        }
    return row


def without_static_power(names: list[str], n_of, repeats: int, rng) -> list[dict]:
    """The same comparison under a model without package power (``static_watts=0``): two
    threads then cost twice one thread's watts, so the energy policy keeps the serial loop
    unless two threads more than halve the time, and trades time for joules."""
    with veda.config(static_watts=0.0):
        return [_one(GALLERY[name], n_of(GALLERY[name]), repeats, rng) for name in names]


def _ratios(rows: list[dict]) -> tuple[list[float], list[float]]:
    joules, times = [], []
    for row in rows:
        a, e = row["policies"]["adaptive"], row["policies"]["energy"]
        if "joules" in a and "joules" in e:
            joules.append(e["joules"] / a["joules"])
            times.append(e["seconds"] / a["seconds"])
    return joules, times


def _print(rows: list[dict]) -> None:
    print(f"{'kernel':<16} {'policy':<9} {'decision':<34} {'time':>10} {'energy':>12}  source")
    for row in rows:
        for policy, r in row["policies"].items():
            j = r.get("joules")
            print(
                f"{row['kernel']:<16} {policy:<9} {r['decision']:<34} "
                f"{r['seconds'] * 1e3:8.3f} ms "
                + (f"{j * 1e3:9.3f} mJ  {r['source']}" if j is not None else "       -")
            )


def power_cap(names: list[str], n_of, rng) -> dict:
    """Every kernel adaptively under a cap between one and two threads' modelled power: the
    highest modelled power of a configuration they ran on, over the cap."""
    model = veda.hardware.power_model()
    one, two = (model.watts(veda.targets.Decision("parallel", t)) for t in (1, 2))
    cap = (one + two) / 2
    veda.telemetry.reset()
    with veda.config(max_power_watts=cap):
        for name in names:
            case = GALLERY[name]
            domain, args = case.make(n_of(case), rng)
            settle(case, domain, args, "adaptive")
            for _ in range(5):
                case.reset(args)
                case.kernel[domain](*args)
    worst = 0.0
    for k in veda.metrics().kernels:
        for c in k.configs:
            worst = max(worst, model.watts(c.decision))
    return {"cap_watts": cap, "worst_watts": worst, "worst_over_cap": worst / cap}


def main(names: list[str] | None = None, repeats: int = 15, quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    names = names or sorted(GALLERY)
    sources = veda.hardware.energy_sources()
    model = veda.hardware.power_model()
    print(
        f"{veda.max_threads()} threads; energy sources: "
        + ", ".join(
            f"{k}: {'readable' if v is None else 'no (' + v + ')'}" for k, v in sources.items()
        )
    )
    print(
        f"power model: {model.static_watts:g} W + {model.watts_per_core:g} W per thread "
        "(veda.config(static_watts=, watts_per_core=))"
    )

    def n_of(case):
        return case.small if quick else case.large

    rows = [_one(GALLERY[name], n_of(GALLERY[name]), repeats, rng) for name in names]
    _print(rows)
    cap = power_cap(names, n_of, rng)
    res = {"rows": rows, "power_cap": cap, "sources": sources}
    joules, times = _ratios(rows)
    if joules:
        res["energy_over_adaptive_median"] = statistics.median(joules)
        print(
            f"energy policy / adaptive, joules per launch: median {statistics.median(joules):.2f}x"
            f" over {len(joules)} kernels (min {min(joules):.2f}x, max {max(joules):.2f}x)"
        )
    subset = [n for n in names if n in SUBSET] or names[:3]
    print(f"\nwithout package power (static_watts=0), {len(subset)} kernels:")
    bare = without_static_power(subset, n_of, repeats, rng)
    _print(bare)
    res["without_static_power"] = bare
    joules, times = _ratios(bare)
    if joules:
        print(
            f"energy policy / adaptive: joules median {statistics.median(joules):.2f}x "
            f"(min {min(joules):.2f}x), time median {statistics.median(times):.2f}x"
        )
    print(
        f"max_power_watts={cap['cap_watts']:g}: the highest modelled power of a configuration "
        f"launched {cap['worst_watts']:g} W = {cap['worst_over_cap']:.2f}x the cap "
        "(target <= 1.10)"
    )
    assert cap["worst_over_cap"] <= 1.10, cap
    report("energy", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(["saxpy", "dot", "jacobi2d"], repeats=3, quick=True)
    else:
        main()
