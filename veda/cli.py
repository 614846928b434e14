"""The ``veda`` command: ``veda info``, ``veda demo``, ``veda tune``, ``veda cache info|clear``."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import psutil

import veda
import veda.scheduler
from veda._kernel.cache import cache_clear, cache_info
from veda.cuda import gpu_driver_present
from veda.targets import cpu as _cpu
from veda.targets import get as _get_target


def _info(args: argparse.Namespace) -> int:
    cache = cache_info()
    layer = _cpu.threading_layer()
    try:
        _get_target("cuda")
        cuda = ("available" if veda.cuda.is_available()
                else f"explicit launches only: {veda.cuda.unavailable_reason()}")
    except veda.VedaError as exc:
        cuda = str(exc)
    rows = [
        ("veda", veda.__version__),
        ("python", platform.python_version()),
        ("numba / llvmlite / numpy", f"{numba.__version__} / {numba.version_info.full}"
         f" / {np.__version__}"),
        ("cpus (logical / physical)", f"{psutil.cpu_count()} / {psutil.cpu_count(logical=False)}"),
        ("cpus this process may use", str(len(os.sched_getaffinity(0)))
         if hasattr(os, "sched_getaffinity") else "?"),
        ("numba worker threads", str(veda.max_threads())),
        ("threading layer", layer + ("" if not _cpu.serialises_parallel_regions()
                                     else " (not thread-safe: veda serialises parallel launches)")),
        ("gpu driver", "present" if gpu_driver_present() else "none found"),
        ("cuda target", cuda),
        ("kernel cache", f"{cache.path} ({cache.modules} modules, {cache.bytes / 1e6:.1f} MB)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    if args.action == "clear":
        info = cache_clear()
        print(f"removed {info.modules} generated modules ({info.bytes / 1e6:.1f} MB) "
              f"from {info.path}")
    else:
        print(cache_info())
    return 0


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<24}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:7.1f} us"
    if t < 1:
        return f"{t * 1e3:7.2f} ms"
    return f"{t:7.2f} s "


DEMO_KERNELS = ("saxpy", "dot", "mandelbrot", "jacobi2d", "histogram", "spmv_csr")


def _demo(args: argparse.Namespace) -> int:
    from veda_kernels import GALLERY

    rng = np.random.default_rng(0)
    names = [n for n in DEMO_KERNELS if n in GALLERY]
    repeats = 3 if args.quick else 7
    print(f"veda {veda.__version__} demo: {veda.max_threads()} threads, "
          f"threading layer {_cpu.threading_layer()}; median of {repeats} runs after a warm-up")
    header = (f"{'kernel':<12} {'size':>9} {'numpy':>10} {'cpu':>10} {'parallel':>10}  "
              "best     vs numpy")
    lines = [header, "-" * len(header)]
    failures = 0
    steps = len(names)
    for step, name in enumerate(names, 1):
        _progress(step - 1, steps, name)
        case = GALLERY[name]
        size = case.small * 10 if args.quick else int(case.large // 10)
        domain, kargs = case.make(size, rng)
        case.reset(kargs)
        expected = case.reference(kargs)
        def reference(c: Any = case, a: Any = kargs) -> Any:
            return c.reference(a)

        t_numpy = _median_time(reference, repeats)
        times = {}
        for target in ("cpu", "parallel"):
            def run(c=case, d=domain, a=kargs, t=target):
                c.reset(a)
                return veda.launch(c.kernel, d, *a, target=t)

            times[target] = _median_time(run, repeats)
            got = case.result(kargs, run())
            ok = np.array_equal(got, expected) if case.exact else np.allclose(got, expected)
            if not ok:
                failures += 1
                print(f"  {name} on {target}: result differs from NumPy", file=sys.stderr)
        best = min(times, key=times.__getitem__)
        n_elems = int(np.prod(domain))
        lines.append(
            f"{name:<12} {n_elems:>9} {_fmt_time(t_numpy):>10} {_fmt_time(times['cpu']):>10} "
            f"{_fmt_time(times['parallel']):>10}  {best:<8} {t_numpy / times[best]:6.1f}x"
        )
    _progress(steps, steps, "done")
    print("\n".join(lines))
    if failures:
        print(f"{failures} result(s) differed from NumPy", file=sys.stderr)
        return 1
    return 0


def _tune_one(kernel: Any, domain: Any, args: tuple[Any, ...], reset: Any) -> Any:
    """Launch until the dispatcher has decided for this domain; returns its explanation row."""
    size = int(np.prod(domain))
    for _ in range(200):
        if reset is not None:
            reset(args)
        kernel[domain](*args)
        rows = [r for r in veda.explain(kernel).rows
                if r["size_class"] == f"<= 2^{max(0, (size - 1).bit_length())}" and r["decision"]]
        if rows:
            return rows[0]
    return None


def _tune(args: argparse.Namespace) -> int:
    jobs: list[tuple[str, Any, Any, tuple[Any, ...], Any]] = []
    rng = np.random.default_rng(0)
    if args.gallery:
        from veda_kernels import GALLERY

        for case in GALLERY.values():
            for size in (case.small, int(case.large)):
                domain, kargs = case.make(size, rng)
                jobs.append((case.name, case.kernel, domain, kargs, case.reset))
    elif args.target:
        import importlib

        module_name, _, func_name = args.target.partition(":")
        if not func_name:
            print("veda tune: give MODULE:FUNCTION, where FUNCTION(size) returns "
                  "(kernel, domain, args)", file=sys.stderr)
            return 2
        make = getattr(importlib.import_module(module_name), func_name)
        for size in args.sizes or [10**3, 10**5, 10**7]:
            kernel, domain, kargs = make(int(float(size)))
            jobs.append((kernel.name, kernel, domain, tuple(kargs), None))
    else:
        print("veda tune: give MODULE:FUNCTION or --gallery", file=sys.stderr)
        return 2
    for step, (name, kernel, domain, kargs, reset) in enumerate(jobs, 1):
        _progress(step - 1, len(jobs), f"{name} {int(np.prod(domain))}")
        row = _tune_one(kernel, domain, kargs, reset)
        label = "undecided" if row is None else veda.scheduler.Explanation._label(row["decision"])
        print(f"{name:<12} {int(np.prod(domain)):>10}  {label}")
    _progress(len(jobs), len(jobs), "done")
    print(f"decisions saved in {veda.get_config().cache_dir}/tuning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veda", description=__doc__)
    parser.add_argument("--version", action="version", version=f"veda {veda.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="cores, Numba and threading layer, GPU, cache")
    p.set_defaults(func=_info)
    p = sub.add_parser("demo", help="run gallery kernels on each CPU target against NumPy")
    p.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    p.set_defaults(func=_demo)
    p = sub.add_parser("tune", help="let the dispatcher decide ahead of time, and remember it")
    p.add_argument("target", nargs="?", help="MODULE:FUNCTION; FUNCTION(size) returns "
                   "(kernel, domain, args)")
    p.add_argument("--sizes", nargs="+", help="problem sizes (default 1e3 1e5 1e7)")
    p.add_argument("--gallery", action="store_true", help="tune every gallery kernel")
    p.set_defaults(func=_tune)
    p = sub.add_parser("cache", help="the disk cache of compiled kernels")
    p.add_argument("action", choices=["info", "clear"], nargs="?", default="info")
    p.set_defaults(func=_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
