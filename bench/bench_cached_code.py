"""Fresh compile against cached code: the same launch of the Monte Carlo kernel in the process
that compiled it and in the next process, which loads it from the disk cache (issue 12, item 8).

Each case runs in a new process over one temporary cache folder, in this order:

* ``fresh``: the cache is empty; the launches compile, then run;
* ``cached``: the next process; the launches load what ``fresh`` compiled;
* ``fresh_opt_max``: an empty cache again, with ``NUMBA_OPT=max`` (Numba runs its first,
  per-function optimisation at -O3 with loop vectorisation instead of its cheap default).

Each times ``veda_kernels.montecarlo.pi_hits`` (Philox points in the unit square, a sum) on
"parallel" with 1 and 2 threads (static schedule) and on "cpu", the median of several launches
after a warm-up, every count checked against the first one.

What it showed (2026-12-02, 2 cores, AVX-512), before ``veda.random`` was inlined into kernels:
the parallel launcher's code loaded from the cache ran about 9x faster per thread than the same
code just compiled, and "cpu" was slow in both.  The object code was byte for byte the same;
the difference was which copy of the chunk function it called.  A launcher's module holds its
own copy of every function it calls, optimised a second time there, which inlined the
generator and vectorised the loop; in the process that compiled them the calls went to the
chunk function compiled on its own first, optimised once, which called the generator per
point.  With the generator inlined where kernels call it, every row now runs the vectorised
loop (docs/performance.md).  The script stays to catch kernels whose speed depends on the
cache in this way.

    python bench/bench_cached_code.py [--quick]   # --quick leaves out the NUMBA_OPT=max run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

from _util import parser, report

CHILD = textwrap.dedent(
    """
    import json, statistics, sys, time
    import veda
    from veda_kernels.montecarlo import pi_hits

    n, repeats = int(sys.argv[1]), int(sys.argv[2])
    cases = {
        "parallel_1t": dict(target="parallel", threads=1, schedule="static"),
        "parallel_2t": dict(target="parallel", threads=2, schedule="static"),
        "cpu": dict(target="cpu"),
    }
    out, counts = {}, set()
    for name, how in cases.items():
        counts.add(int(veda.launch(pi_hits, n, 7, **how)))  # compiles or loads
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            counts.add(int(veda.launch(pi_hits, n, 7, **how)))
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    assert len(counts) == 1, counts  # the same points on every target and thread count
    out["count"] = counts.pop()
    print(json.dumps(out))
    """
)


def _child(cache: str, n: int, repeats: int, opt_max: bool = False) -> dict[str, float]:
    env = dict(os.environ, VEDA_CACHE_DIR=cache)
    env.pop("NUMBA_OPT", None)
    if opt_max:
        env["NUMBA_OPT"] = "max"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(n: int = 1_000_000, repeats: int = 9, quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        runs = {
            "fresh": _child(one, n, repeats),
            "cached": _child(one, n, repeats),
        }
        if not quick:  # the same code under NUMBA_OPT=max: a third cold compile, 20 s
            runs["fresh_opt_max"] = _child(two, n, repeats, opt_max=True)
    if len({r["count"] for r in runs.values()}) != 1:
        raise AssertionError(f"the processes counted different hits: {runs}")
    print(f"pi_hits over {n:,} points, median of {repeats} launches (ms):")
    print(f"  {'process':<15} {'parallel 1t':>12} {'parallel 2t':>12} {'cpu':>9}")
    for name, r in runs.items():
        print(
            f"  {name:<15} {r['parallel_1t'] * 1e3:12.2f} {r['parallel_2t'] * 1e3:12.2f} "
            f"{r['cpu'] * 1e3:9.2f}"
        )
    fresh, cached = runs["fresh"], runs["cached"]
    print(
        f"  fresh / cached: parallel 1t {fresh['parallel_1t'] / cached['parallel_1t']:.2f}x, "
        f"cpu {fresh['cpu'] / cached['cpu']:.2f}x"
    )
    report("cached_code", {"n": n, "repeats": repeats, "runs": runs}, quick=quick)
    return runs


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(n=20_000, repeats=3, quick=True)
    else:
        main()
