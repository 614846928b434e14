"""Compile times: the first launch of a new kernel (empty cache) against Numba's own cold
compiles of the same loop (``@njit`` and ``prange``), the first launch in a fresh process whose
disk cache already holds it, and ``import veda`` against ``import numba``.  Each case runs in its
own process.

Numba spends about 0.3 s initialising its CPU target the first time a process compiles or loads
any function; that cost is not veda's, so each child first starts Numba with a trivial function
("numba start-up") and then times veda's launches.

    python bench/bench_compile.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

from _util import parser, report

CHILD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import veda
    from veda_kernels.blas1 import saxpy
    t1 = time.perf_counter()
    import numba
    numba.njit(lambda: 1)()
    t1b = time.perf_counter()

    def peer(parallel):
        @numba.njit(parallel=parallel)
        def saxpy_peer(a, x, y, out):
            for i in numba.prange(x.size):
                out[i] = a * x[i] + y[i]
        return saxpy_peer

    case = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.random(1000); y = rng.random(1000); out = np.full(1000, np.nan)
    t2 = time.perf_counter()
    if case in ("njit", "prange"):
        peer(case == "prange")(2.0, x, y, out)
    elif case == "adaptive":
        for _ in range(50):
            saxpy[1000](2.0, x, y, out)
    else:
        veda.launch(saxpy, 1000, 2.0, x, y, out, target=case)
    t3 = time.perf_counter()
    np.testing.assert_allclose(out, 2.0 * x + y, rtol=1e-12)
    stats = saxpy.compile_stats.as_dict()
    print(json.dumps({"import": t1 - t0, "numba_startup": t1b - t1, "first": t3 - t2,
                      "compiled": stats["compiled"], "cache_hits": stats["cache_hits"]}))
    """
)

#: Each case in fresh processes: Numba's own cold compiles of the same saxpy (a serial loop and
#: a prange loop) and veda's first launches; "adaptive" is the first 50 launches together.
CASES = ("njit", "prange", "cpu", "parallel", "adaptive")


def _child(cache_dir: str, case: str) -> dict:
    env = dict(os.environ, VEDA_CACHE_DIR=cache_dir, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, case], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"the child process ({case}) failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


EXPLORE_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import veda
    import numba
    from veda_kernels.blas1 import saxpy
    numba.njit(lambda: 1)()
    background, n, launches = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    x = rng.random(n); y = rng.random(n); out = np.full(n, np.nan)
    times = []
    with veda.config(background_compile=background, progress=False):
        start = time.perf_counter()
        for _ in range(launches):
            t = time.perf_counter()
            saxpy[n](2.0, x, y, out)
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    np.testing.assert_allclose(out, 2.0 * x + y, rtol=1e-12)
    (row,) = veda.explain(saxpy).rows  # (before the wait: was it still exploring?)
    from veda._kernel import background
    background.wait()  # a compile still running at the end: counted once it is done
    stats = saxpy.compile_stats.as_dict()
    print(json.dumps({"first": times[0], "longest_after_first": max(times[1:]), "total": total,
                      "compiled": stats["compiled"], "background": stats["background"],
                      "decided": row["decision"] is not None}))
    """
)


def explore_times(rounds: int, n: int, launches: int) -> dict:
    """The first ``launches`` adaptive launches of a new saxpy of ``n`` elements, whose
    exploration needs the parallel loop, with its compile in the background and without, in
    fresh processes with empty caches: the first launch (which compiles the serial loop, or
    with background compiles its first tier), the longest of the others, and the total."""
    got: dict[str, list[dict]] = {"background": [], "in_launch": []}
    for _ in range(rounds):
        for mode in got:  # interleaved
            with tempfile.TemporaryDirectory() as d:
                env = dict(os.environ, VEDA_CACHE_DIR=d, NUMBA_CACHE_DIR=d)
                flag = "1" if mode == "background" else "0"
                out = subprocess.run(
                    [sys.executable, "-c", EXPLORE_CHILD, flag, str(n), str(launches)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"the child process ({mode}) failed:\n{out.stderr}")
                got[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    res = {}
    for mode, runs in got.items():
        res[mode] = {
            k: statistics.median(r[k] for r in runs)
            for k in ("first", "longest_after_first", "total")
        }
        res[mode]["background_compiles"] = runs[-1]["background"]
        res[mode]["decided"] = all(r["decided"] for r in runs)
        # the parallel loop was compiled in every process: the exploration needed it (and with
        # background compiles, the serial loop's first tier first: targets.cpu.CPUTarget)
        want = 3 if mode == "background" else 2
        assert all(r["compiled"] == want for r in runs), (mode, runs)
    assert res["background"]["background_compiles"] == 2, res
    assert res["in_launch"]["background_compiles"] == 0, res
    return res


IMPORT_CHILD = (
    "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
)


def _import_seconds(module: str) -> float:
    # With the bytecode caches an installed package has (PYTHONDONTWRITEBYTECODE would make
    # every import compile from source).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_CHILD.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def import_times(rounds: int) -> dict[str, float]:
    """``import numba`` and ``import veda`` (which imports numba), each in fresh processes,
    alternating; medians.  Issue 12's target: veda at most 0.05 s more than numba."""
    times: dict[str, list[float]] = {"numba": [], "veda": []}
    _import_seconds("veda")  # the first process after a change writes the bytecode caches
    for _ in range(rounds):
        for module in times:
            times[module].append(_import_seconds(module))
    res = {f"import_{k}": statistics.median(v) for k, v in times.items()}
    res["import_veda_over_numba"] = res["import_veda"] - res["import_numba"]
    return res


def main(rounds: int = 3, import_rounds: int = 15, quick: bool = False) -> dict:
    imports = import_times(import_rounds)
    print(
        f"import, median of {import_rounds} fresh processes each: numba "
        f"{imports['import_numba'] * 1e3:.1f} ms, veda {imports['import_veda'] * 1e3:.1f} ms "
        f"({imports['import_veda_over_numba'] * 1e3:+.1f} ms; target +50 ms)"
    )
    runs: dict[str, dict[str, list[dict]]] = {c: {"cold": [], "warm": []} for c in CASES}
    for _ in range(rounds):
        for case in CASES:  # interleaved, so that a slow spell of the machine hits every case
            with tempfile.TemporaryDirectory() as d:
                runs[case]["cold"].append(_child(d, case))
                if case not in ("njit", "prange"):
                    runs[case]["warm"].append(_child(d, case))
    res: dict = {"imports": imports}
    for case, by in runs.items():
        for label, got in by.items():
            if got:
                res[f"{case}_{label}"] = {
                    "first": statistics.median(r["first"] for r in got),
                    "numba_startup": statistics.median(r["numba_startup"] for r in got),
                    "compiled": got[-1]["compiled"],
                    "cache_hits": got[-1]["cache_hits"],
                }
    njit, prange = res["njit_cold"]["first"], res["prange_cold"]["first"]
    res["parallel_over_prange"] = res["parallel_cold"]["first"] / prange
    res["cpu_over_njit"] = res["cpu_cold"]["first"] / njit
    res["adaptive50_over_njit"] = res["adaptive_cold"]["first"] / njit
    print(
        f"first call of a new saxpy (1000 elements), median of {rounds} fresh processes each, "
        "after Numba's own start-up"
    )
    print(f"  Numba, empty cache: @njit {njit * 1e3:7.1f} ms, prange {prange * 1e3:7.1f} ms")
    for case in ("cpu", "parallel", "adaptive"):
        cold, warm = res[f"{case}_cold"], res[f"{case}_warm"]
        what = "first 50 adaptive launches" if case == "adaptive" else f"first {case!r} launch"
        print(
            f"  veda {what:<28}: empty cache {cold['first'] * 1e3:7.1f} ms (compiled "
            f"{cold['compiled']}), warm cache {warm['first'] * 1e3:6.1f} ms (compiled "
            f"{warm['compiled']}, cache hits {warm['cache_hits']})"
        )
    print(
        f"  'parallel' / prange {res['parallel_over_prange']:.2f}x (target 3x), 'cpu' / @njit "
        f"{res['cpu_over_njit']:.2f}x, 50 adaptive launches / @njit "
        f"{res['adaptive50_over_njit']:.2f}x (target 1.5x)"
    )
    # A fresh process with the disk cache filled compiles nothing: it loads from it.
    for case in ("cpu", "parallel", "adaptive"):
        warm = res[f"{case}_warm"]
        assert warm["compiled"] == 0 and warm["cache_hits"] >= 1, (case, warm)
        assert res[f"{case}_cold"]["compiled"] >= 1, (case, res[f"{case}_cold"])
    n, launches = (1 << 20, 300) if quick else (1 << 20, 2000)
    explore = res["explore"] = explore_times(rounds, n, launches)
    print(
        f"first {launches} adaptive launches of a new saxpy of {n:,} elements, which explore "
        f"the parallel loop too, median of {rounds} fresh processes each:"
    )
    for mode, label in (("in_launch", "compiles in the launch"), ("background", "background")):
        r = explore[mode]
        print(
            f"  {label:<22}: first {r['first'] * 1e3:6.1f} ms, longest of the others "
            f"{r['longest_after_first'] * 1e3:7.1f} ms, total {r['total']:.2f} s"
            f"{'' if r['decided'] else ' (still exploring at the end)'}"
        )
    report("compile", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(rounds=1, import_rounds=2, quick=True)
    else:
        main()
