"""Compile times: the first launch of a new kernel (empty cache), and the first launch in a
fresh process whose disk cache already holds it; and ``import veda`` against ``import numba``.
Each case runs in its own process.

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
    import json, time
    t0 = time.perf_counter()
    import numpy as np
    import veda
    from veda_kernels.blas1 import saxpy
    t1 = time.perf_counter()
    import numba
    numba.njit(lambda: 1)()
    t1b = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.random(1000); y = rng.random(1000); out = np.full(1000, np.nan)
    t2 = time.perf_counter()
    veda.launch(saxpy, 1000, 2.0, x, y, out, target="cpu")
    t3 = time.perf_counter()
    np.testing.assert_allclose(out, 2.0 * x + y, rtol=1e-12)
    out[:] = np.nan
    t3b = time.perf_counter()
    veda.launch(saxpy, 1000, 2.0, x, y, out, target="parallel")
    t4 = time.perf_counter()
    np.testing.assert_allclose(out, 2.0 * x + y, rtol=1e-12)
    print(json.dumps({"import": t1 - t0, "numba_startup": t1b - t1, "first_cpu": t3 - t2,
                      "first_parallel": t4 - t3b, "stats": saxpy.compile_stats.as_dict()}))
    """
)


def _child(cache_dir: str) -> dict:
    env = dict(os.environ, VEDA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"the child process failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    cold, warm = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            cold.append(_child(d))
            warm.append(_child(d))
    res: dict = {"imports": imports}
    for label, runs in (("cold", cold), ("warm", warm)):
        res[label] = {
            k: statistics.median(r[k] for r in runs)
            for k in ("import", "numba_startup", "first_cpu", "first_parallel")
        }
        res[label]["compiled"] = runs[-1]["stats"]["compiled"]
        res[label]["cache_hits"] = runs[-1]["stats"]["cache_hits"]
    print(f"first launches of saxpy (1000 elements), median of {rounds} fresh processes")
    for label in ("cold", "warm"):
        r = res[label]
        print(
            f"  {label:<5} cache: import veda {r['import'] * 1e3:6.1f} ms, numba start-up "
            f"{r['numba_startup'] * 1e3:6.1f} ms, first 'cpu' launch "
            f"{r['first_cpu'] * 1e3:7.1f} ms, first 'parallel' launch "
            f"{r['first_parallel'] * 1e3:7.1f} ms  (compiled {r['compiled']}, "
            f"cache hits {r['cache_hits']})"
        )
    # A fresh process with the disk cache filled compiles nothing: both programs load from it.
    assert res["warm"]["compiled"] == 0 and res["warm"]["cache_hits"] >= 2, res["warm"]
    assert res["cold"]["compiled"] >= 2, res["cold"]
    report("compile", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(rounds=1, import_rounds=2, quick=True)
    else:
        main()
