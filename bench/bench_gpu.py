"""The CUDA target on a GPU: triad bandwidth, a reduction, and the dispatcher's CPU/GPU choice.

Targets (issue 5):

* triad ``a = b + s * c`` on device-resident float64 arrays: >= 0.9x a CuPy ``ElementwiseKernel``
  doing the same, and >= 80% of the bandwidth of a device-to-device copy;
* a sum reduction over a device array: >= 0.8x ``cupy.sum`` (both synchronised);
* the automatic choice for a saxpy on host (NumPy) arrays, across sizes: never more than 10%
  slower than the best of the explicit targets at that size (the oracle).

    python bench/bench_gpu.py --out DIR            # on a GPU (bench/gpu_check.sh runs it)
    python bench/bench_gpu.py --dry-run --out DIR  # anywhere: the simulator, tiny sizes, no CuPy
    python bench/bench_gpu.py --quick              # the same dry run, JSON to bench/results/quick

The dry run checks the script's logic and veda's results against NumPy's; its figures mean
nothing.  Without ``--out`` it writes gpu.json to bench/results/quick/ (or $VEDA_BENCH_RESULTS),
a run on a GPU to the current folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dry-run",
        "--quick",
        action="store_true",
        help="run on the CUDA simulator with tiny sizes (checks the logic and the results only)",
    )
    p.add_argument(
        "--out",
        help="folder for gpu.json (default: the current folder; for a dry "
        "run bench/results/quick/, or $VEDA_BENCH_RESULTS)",
    )
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (default 20, dry 3)")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else argparse.Namespace(dry_run=True, out=None, repeats=0)
if ARGS.dry_run:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before Numba starts

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

import veda  # noqa: E402
from veda_kernels.blas1 import saxpy, triad  # noqa: E402

from _util import results_dir  # noqa: E402

try:
    import cupy
except Exception:  # missing, or no GPU under it
    cupy = None


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` (which must synchronise the device itself)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sync() -> None:
    cuda.synchronize()
    if cupy is not None:
        cupy.cuda.Device().synchronize()


def device_info() -> dict[str, Any]:
    if veda.cuda.simulator_enabled():
        return {"name": "CUDA simulator (dry run)"}
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {
        "name": name,
        "multiprocessors": dev.MULTIPROCESSOR_COUNT,
        "compute_capability": list(dev.compute_capability),
    }


def bench_triad(n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    b, c = rng.random(n), rng.random(n)
    a_d, b_d, c_d = veda.to_device(np.empty(n)), veda.to_device(b), veda.to_device(c)
    out: dict[str, Any] = {"n": n}
    veda_s = timed(lambda: veda.launch(triad, n, a_d, b_d, 3.0, c_d, target="cuda"), repeats)
    np.testing.assert_allclose(veda.to_host(a_d), b + 3.0 * c)
    out["veda_seconds"] = veda_s
    out["veda_gbps"] = 3 * 8 * n / veda_s / 1e9
    copy_dst = cuda.device_array(n)

    def device_copy() -> None:
        copy_dst.copy_to_device(b_d)
        cuda.synchronize()

    copy_s = timed(device_copy, repeats)
    out["copy_gbps"] = 2 * 8 * n / copy_s / 1e9
    out["ratio_vs_copy"] = out["veda_gbps"] / out["copy_gbps"]
    if cupy is not None:
        kern = cupy.ElementwiseKernel(
            "float64 b, float64 s, float64 c", "float64 a", "a = b + s * c", "veda_triad_ref"
        )
        ca, cb, cc = cupy.empty(n), cupy.asarray(b), cupy.asarray(c)

        def cupy_triad() -> None:
            kern(cb, 3.0, cc, ca)
            sync()

        cupy_s = timed(cupy_triad, repeats)
        out["cupy_gbps"] = 3 * 8 * n / cupy_s / 1e9
        out["ratio_vs_cupy"] = out["veda_gbps"] / out["cupy_gbps"]
    return out


def bench_reduction(n: int, repeats: int) -> dict[str, Any]:
    x = np.random.default_rng(1).random(n)
    x_d = veda.to_device(x)
    out: dict[str, Any] = {"n": n}
    got = veda.launch(total, n, x_d, target="cuda")
    np.testing.assert_allclose(got, x.sum(), rtol=1e-9)
    out["veda_seconds"] = timed(lambda: veda.launch(total, n, x_d, target="cuda"), repeats)
    out["veda_gbps"] = 8 * n / out["veda_seconds"] / 1e9
    if cupy is not None:
        cx = cupy.asarray(x)

        def cupy_sum() -> None:
            cupy.sum(cx)
            sync()

        out["cupy_seconds"] = timed(cupy_sum, repeats)
        out["ratio_vs_cupy"] = out["cupy_seconds"] / out["veda_seconds"]
    return out


def bench_choice(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Per size: the adaptive launch's time once decided, against each explicit target."""
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        x, y, res = rng.random(n), rng.random(n), np.empty(n)
        # Fully explicit settings: nothing left for the dispatcher to explore.
        explicit: dict[str, dict[str, Any]] = {
            "cpu": {"target": "cpu"},
            "parallel": {"target": "parallel", "threads": veda.max_threads(), "schedule": "static"},
        }
        if veda.cuda.explicit_reason() is None:
            explicit["cuda"] = {"target": "cuda"}
        runs: dict[str, Callable[[], Any]] = {
            name: (lambda s=s: veda.launch(saxpy, n, 2.0, x, y, res, **s))
            for name, s in explicit.items()
        }
        times = {name: timed(run, repeats) for name, run in runs.items()}
        runs["auto"] = lambda: saxpy[n](2.0, x, y, res)
        for _ in range(80):  # let the dispatcher explore and settle
            runs["auto"]()
        auto = timed(runs["auto"], repeats)
        for name, run in runs.items():
            res.fill(np.nan)
            run()
            np.testing.assert_allclose(
                res, 2.0 * x + y, rtol=1e-12, err_msg=f"saxpy n={n} via {name}"
            )
        decisions = [
            r["decision"]
            for r in veda.explain(saxpy).rows
            if r["size_class"] == f"<= 2^{max(n - 1, 1).bit_length()}" and not r["pinned"]
        ]
        best = min(times, key=times.__getitem__)
        rows.append(
            {
                "n": n,
                "seconds": times,
                "auto_seconds": auto,
                "auto_decision": decisions[0] if decisions else None,
                "oracle": best,
                "auto_over_best": auto / times[best],
            }
        )
    return rows


def main() -> int:
    dry = ARGS.dry_run
    repeats = ARGS.repeats or (3 if dry else 20)
    if veda.cuda.explicit_reason() is not None:
        print(f"no CUDA here: {veda.cuda.explicit_reason()}", file=sys.stderr)
        return 2
    n_stream = 4096 if dry else 1 << 27  # 1 GiB per array: launch overheads stay small
    sizes = [1 << 10, 1 << 14] if dry else [1 << k for k in range(10, 27, 2)]
    result: dict[str, Any] = {
        "device": device_info(),
        "dry_run": dry,
        "repeats": repeats,
        "cupy": getattr(cupy, "__version__", None),
        "gpu_available": veda.cuda.is_available(),
    }
    result["triad"] = bench_triad(n_stream, repeats)
    result["reduction"] = bench_reduction(n_stream, repeats)
    result["choice"] = bench_choice(sizes, repeats)
    checks = {
        "triad >= 0.9x cupy": result["triad"].get("ratio_vs_cupy", float("nan")) >= 0.9,
        "triad >= 0.8x copy": result["triad"]["ratio_vs_copy"] >= 0.8,
        "reduction >= 0.8x cupy.sum": result["reduction"].get("ratio_vs_cupy", float("nan")) >= 0.8,
        "auto <= 1.1x best at every size": all(
            r["auto_over_best"] <= 1.10 for r in result["choice"]
        ),
    }
    result["checks"] = checks
    t, r = result["triad"], result["reduction"]
    print(f"device: {result['device']['name']}  (dry run: {dry})")
    print(
        f"triad n={t['n']}: veda {t['veda_gbps']:.1f} GB/s, copy {t['copy_gbps']:.1f} GB/s "
        f"(x{t['ratio_vs_copy']:.2f}), cupy {t.get('cupy_gbps', float('nan')):.1f} GB/s "
        f"(x{t.get('ratio_vs_cupy', float('nan')):.2f})"
    )
    print(
        f"sum n={r['n']}: veda {r['veda_seconds'] * 1e6:.1f} us, cupy.sum "
        f"{r.get('cupy_seconds', float('nan')) * 1e6:.1f} us "
        f"(veda speed x{r.get('ratio_vs_cupy', float('nan')):.2f})"
    )
    for row in result["choice"]:
        parts = ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in row["seconds"].items())
        print(
            f"saxpy n=2^{row['n'].bit_length() - 1}: {parts}; "
            f"auto {row['auto_seconds'] * 1e6:.1f} us = x{row['auto_over_best']:.2f} of best "
            f"({row['oracle']}), "
            f"chose {row['auto_decision']}"
        )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    out = ARGS.out or (str(results_dir(quick=True)) if dry else ".")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    return 0 if dry or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
