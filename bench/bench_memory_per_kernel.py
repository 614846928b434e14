"""Memory per kernel: the resident memory (RSS) each distinct kernel adds to a process, against
a plain ``@numba.njit`` loop and a ``prange`` loop doing the same work, and what redefining the
same kernel costs (a notebook cell run again).

Each variant runs in its own fresh process (psutil's RSS), so that one cannot affect another.
A child writes a module of N distinct functions (each with its own constant:
``out[i] = <k>.5 * x[i] + 1.0``) to a temporary folder, imports it as a user's module would,
compiles one more such function first (Numba's and veda's one-time start-up costs are not the
kernels'), then launches each function as said below and reads the RSS after each one:

* ``njit``: ``@numba.njit`` with a serial ``for i in range(n)`` loop, called once;
* ``prange``: ``@numba.njit(parallel=True)`` with ``numba.prange``, called once;
* ``veda_adaptive``: ``@veda.kernel``, launched once as ``k[n](x, out)`` (the dispatcher's
  first launch, which runs the serial loop);
* ``veda_cpu``: launched once as ``k[n](x, out)`` and once as
  ``veda.launch(k, n, x, out, target="cpu")``;
* ``veda_parallel``: launched once as ``k[n](x, out)`` and once as
  ``veda.launch(k, n, x, out, target="parallel")``.

Per variant: the slope of RSS over the N functions (least squares, MB per function) and the
median of the per-function increments; the RSS left after deleting the functions (the module,
every reference) and ``gc.collect()``; Python objects per function (``gc.get_objects()``).
Numba never hands the machine code of a compiled function back to the operating system, so
deleting gives back little RSS: the figure says how much.

The redefinition case runs the same cell text (one kernel) 101 times, compiled each time under a
new file name as IPython does, and launches each definition once adaptively, once with
``target="cpu"`` and once with ``target="parallel"``: veda compiles the first definition, and
every later one reuses what is compiled (no compile, checked).  ``njit_redefine`` does the same
with ``@numba.njit`` (one call per definition), which compiles every time.

    python bench/bench_memory_per_kernel.py [--kernels N] [--n ELEMENTS] [--quick]
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

from veda_kernels.suite import machine

from _util import parser, report

CHILD = textwrap.dedent(
    """
    import gc, json, linecache, os, sys, tempfile, time
    import numpy as np, psutil
    import numba, veda

    variant, N, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    proc = psutil.Process()

    def rss():
        gc.collect()
        return proc.memory_info().rss

    def source(k):
        if variant.startswith("veda"):
            return (f"@veda.kernel\\ndef k{k}(i, x, out):\\n"
                    f"    out[i] = {k}.5 * x[i] + 1.0\\n")
        par = variant.startswith("prange")
        deco = "@numba.njit(parallel=True)" if par else "@numba.njit"
        loop = "numba.prange" if par else "range"
        return (f"{deco}\\ndef k{k}(x, out):\\n    for i in {loop}(x.shape[0]):\\n"
                f"        out[i] = {k}.5 * x[i] + 1.0\\n")

    def run(f):
        if variant.startswith("veda"):
            f[n](x, out)
            if variant in ("veda_cpu", "veda_redefine"):
                veda.launch(f, n, x, out, target="cpu")
            if variant in ("veda_parallel", "veda_redefine"):
                veda.launch(f, n, x, out, target="parallel")
        else:
            f(x, out)

    def compiled(f):
        return f.compile_stats.compiled if variant.startswith("veda") else len(f.signatures)

    x = np.linspace(0.0, 1.0, n)
    out = np.empty(n)
    numba.njit(lambda: 1)()
    result = {"variant": variant, "kernels": N, "n": n}
    if variant.endswith("_redefine"):
        cell = "import numba, veda\\n" + source(0)
        ns = {"__name__": "__main__"}
        marks = []
        compiles = 0
        for r in range(N + 1):
            if r == 1:
                marks.append(rss())  # after the first definition compiled
                objects1 = len(gc.get_objects())
            filename = f"<cell-{r}>"  # IPython names every run of a cell anew
            linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
            ns = {"__name__": "__main__"}
            exec(compile(cell, filename, "exec"), ns)
            out[:] = np.nan
            run(ns["k0"])
            assert np.allclose(out, 0.5 * x + 1.0), "wrong result"
            if r >= 1:
                compiles += compiled(ns["k0"])
            if r % 10 == 0:
                marks.append(rss())
        result["rss_per_redefinition_mb"] = (rss() - marks[0]) / N / 1e6
        result["compiles_after_the_first"] = compiles
        result["gc_objects_per_redefinition"] = (len(gc.get_objects()) - objects1) / N
        print(json.dumps(result))
        raise SystemExit(0)
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "user_kernels.py"), "w") as fh:
        fh.write("import numba, veda\\n\\n" + "\\n\\n".join(source(k) for k in range(N + 1)))
    sys.path.insert(0, folder)
    import user_kernels as mod

    run(mod.k0)  # one-time start-up costs of Numba and veda
    base = rss()
    objects0 = len(gc.get_objects())
    marks = [base]
    start = time.perf_counter()
    for k in range(1, N + 1):
        f = getattr(mod, f"k{k}")
        out[:] = np.nan
        run(f)
        assert np.allclose(out, (k + 0.5) * x + 1.0), f"k{k}: wrong result"
        marks.append(rss())
    result["seconds_per_kernel"] = (time.perf_counter() - start) / N
    result["gc_objects_per_kernel"] = (len(gc.get_objects()) - objects0) / N
    result["marks"] = marks
    del f, mod
    del sys.modules["user_kernels"]
    result["rss_after_delete"] = rss()
    print(json.dumps(result))
    """
)


def _child(variant: str, kernels: int, n: int, cache_dir: str) -> dict:
    env = dict(os.environ, VEDA_CACHE_DIR=cache_dir, PYTHONHASHSEED="0")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(kernels), str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{variant}: the child process failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys over 0, 1, 2, ..."""
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / den if den else 0.0


VARIANTS = ("njit", "prange", "veda_adaptive", "veda_cpu", "veda_parallel")
REDEFINE = ("veda_redefine", "njit_redefine")


def main(kernels: int = 60, n: int = 10_000, redefinitions: int = 100, quick: bool = False) -> dict:
    m = machine()
    print(
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['numba_threads']} Numba "
        f"threads ({m['threading_layer']}), Python {m['python']}, Numba {m['numba']}, "
        f"veda {m['veda']}"
    )
    print(f"RSS per distinct function, {kernels} functions of {n} elements, fresh process each")
    res: dict = {"kernels": kernels, "n": n, "redefinitions": redefinitions, "variants": {}}
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as d:  # an empty kernel cache: veda compiles
            r = _child(variant, kernels, n, d)
        marks = r.pop("marks")
        steps = [b - a for a, b in itertools.pairwise(marks)]
        r["slope_mb"] = _slope(marks) / 1e6
        r["median_mb"] = statistics.median(steps) / 1e6
        r["grown_mb"] = (marks[-1] - marks[0]) / 1e6
        r["freed_by_delete_mb"] = (marks[-1] - r.pop("rss_after_delete")) / 1e6
        res["variants"][variant] = r
        print(
            f"  {variant:<14} {r['slope_mb']:6.2f} MB/kernel (median step "
            f"{r['median_mb']:5.2f}), {r['seconds_per_kernel'] * 1e3:7.1f} ms/kernel, "
            f"{r['gc_objects_per_kernel']:6.0f} Python objects/kernel; deleting them gave back "
            f"{r['freed_by_delete_mb']:6.1f} of {r['grown_mb']:6.1f} MB"
        )
    v = res["variants"]
    res["veda_cpu_over_njit"] = v["veda_cpu"]["slope_mb"] / v["njit"]["slope_mb"]
    res["veda_parallel_over_prange"] = v["veda_parallel"]["slope_mb"] / v["prange"]["slope_mb"]
    print(
        f"veda (adaptive + cpu) / njit: {res['veda_cpu_over_njit']:.2f}x; "
        f"veda (adaptive + parallel) / prange: {res['veda_parallel_over_prange']:.2f}x"
    )
    print(f"the same cell defined {redefinitions + 1} times, each definition launched")
    for variant in REDEFINE:
        with tempfile.TemporaryDirectory() as d:
            r = _child(variant, redefinitions, n, d)
        res["variants"][variant] = r
        print(
            f"  {variant:<14} {r['rss_per_redefinition_mb']:6.3f} MB per redefinition, "
            f"{r['compiles_after_the_first']} compile(s) after the first definition, "
            f"{r['gc_objects_per_redefinition']:.0f} Python objects kept per redefinition"
        )
    # veda compiles the cell once: every later definition reuses the compiled code.
    assert v["veda_redefine"]["compiles_after_the_first"] == 0, v["veda_redefine"]
    assert v["njit_redefine"]["compiles_after_the_first"] == redefinitions, v["njit_redefine"]
    report("memory_per_kernel", res, quick=quick)
    return res


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--kernels", type=int, default=60, help="distinct functions per variant")
    p.add_argument("--n", type=int, default=10_000, help="elements per launch")
    opts = p.parse_args()
    if opts.quick:
        main(kernels=2, n=2000, redefinitions=3, quick=True)
    else:
        main(kernels=opts.kernels, n=opts.n)
