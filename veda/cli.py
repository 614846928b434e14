"""The ``veda`` command: ``veda info``, ``veda demo``, ``veda bench``, ``veda tune``,
``veda cache info|clear``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import psutil

import veda
import veda.scheduler
from veda import _progress
from veda._hardware import cpu as _cpu
from veda._kernel.cache import cache_clear, cache_info
from veda.cuda import gpu_driver_present
from veda.targets import get as _get_target


def _info(args: argparse.Namespace) -> int:
    cache = cache_info()
    layer = _cpu.threading_layer()
    try:
        _get_target("cuda")
        cuda = (
            "available"
            if veda.cuda.is_available()
            else f"explicit launches only: {veda.cuda.unavailable_reason()}"
        )
    except veda.VedaError as exc:
        cuda = str(exc)
    rows = [
        ("veda", veda.__version__),
        ("python", platform.python_version()),
        (
            "numba / llvmlite / numpy",
            f"{numba.__version__} / {numba.version_info.full} / {np.__version__}",
        ),
        ("cpus (logical / physical)", f"{psutil.cpu_count()} / {psutil.cpu_count(logical=False)}"),
        ("cpus this process may use", str(_cpu.affinity() or f"? ({_cpu.affinity_reason()})")),
        ("numba worker threads", str(veda.max_threads())),
        (
            "threading layer",
            layer
            + (
                ""
                if not _cpu.serialises_parallel_regions()
                else " (not thread-safe: veda serialises parallel launches)"
            ),
        ),
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
        print(
            f"removed {info.modules} generated modules ({info.bytes / 1e6:.1f} MB) from {info.path}"
        )
    else:
        print(cache_info())
    return 0


DEMO_PEERS = ("numpy", "numba")


def _demo(args: argparse.Namespace) -> int:
    from veda_kernels import GALLERY, suite

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = "small" if args.quick else "medium"
    repeats, budget = (3, 0.05) if args.quick else (5, 0.5)
    print(
        f"veda {veda.__version__} demo: {len(GALLERY)} gallery kernels through the adaptive "
        f"dispatcher; {veda.max_threads()} threads, threading layer {_cpu.threading_layer()}; "
        f"medians after a warm-up"
    )
    veda.telemetry.reset()
    report = suite.run(
        GALLERY, sizes=(size,), peers=DEMO_PEERS, repeats=repeats, budget=budget, progress=None
    )
    rows = report["rows"]
    # The timings above run untraced (a trace listener costs microseconds per launch); the
    # trace records a short pass over every kernel afterwards, one span per kernel.
    rng = np.random.default_rng(1)
    with veda.telemetry.trace(out / "trace.json"), veda.telemetry.span("veda demo"):
        for name, case in GALLERY.items():
            domain, kargs = case.make(suite.size_of(case, size), rng)
            with veda.telemetry.span(name):
                for _ in range(3):
                    case.reset(kargs)
                    case.kernel[domain](*kargs)
    header = (
        f"{'kernel':<14} {'size':>9}  {'veda chose':<30} {'time':>10} "
        f"{'vs numpy':>9} {'vs numba':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        t = r["seconds"]
        lines.append(
            f"{r['kernel']:<14} {r['elements']:>9}  {r['decision']:<30} "
            f"{suite.format_seconds(t['veda']):>10} {t['numpy'] / t['veda']:8.1f}x "
            f"{t['numba'] / t['veda']:8.1f}x" + ("" if r["checked"] else "  DIFFERS")
        )
    print("\n".join(lines))
    snapshot = veda.metrics()
    (out / "telemetry.json").write_text(snapshot.to_json(indent=2))
    (out / "metrics.prom").write_text(snapshot.to_prometheus())
    (out / "results.json").write_text(json.dumps(report, indent=2))
    written = ["results.json", "telemetry.json", "metrics.prom", "trace.json"]
    try:
        suite.plot(report, out / "speedup.png", size=None)
        written.append("speedup.png")
    except veda.TelemetryError as exc:  # matplotlib missing
        print(f"no chart: {exc}", file=sys.stderr)
    print(f"wrote {', '.join(written)} to {out}/ (open trace.json in https://ui.perfetto.dev)")
    failures = [r["kernel"] for r in rows if not r["checked"]]
    if failures:
        print(f"results differed from NumPy: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    from veda_kernels import suite

    if args.compare:
        try:
            a, b = (suite.load(p) for p in args.compare)
        except veda.VedaError as exc:
            print(f"veda bench: {exc}", file=sys.stderr)
            return 2
        print(suite.compare(a, b))
        return 0
    sizes = tuple(args.sizes) if args.sizes else (("small",) if args.quick else suite.SIZES)
    repeats, budget = (3, 0.05) if args.quick else (args.repeats, args.budget)
    try:
        report = suite.run(
            args.kernels,
            sizes=sizes,
            peers=tuple(args.peers),
            repeats=repeats,
            budget=budget,
            progress=None,
        )
    except (veda.VedaError, ValueError) as exc:
        print(f"veda bench: {exc}", file=sys.stderr)
        return 2
    print(suite.table(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    written = [str(out)]
    try:
        chart = out.with_suffix(".png")
        suite.plot(report, chart, size=sizes[-1])
        written.append(str(chart))
    except veda.TelemetryError as exc:
        print(f"no chart: {exc}", file=sys.stderr)
    print(
        f"wrote {' and '.join(written)}; compare two runs with veda bench --compare A.json B.json"
    )
    return 1 if any(not r["checked"] for r in report["rows"]) else 0


def _tune(args: argparse.Namespace) -> int:
    from veda_kernels import suite

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
            print(
                "veda tune: give MODULE:FUNCTION, where FUNCTION(size) returns "
                "(kernel, domain, args)",
                file=sys.stderr,
            )
            return 2
        make = getattr(importlib.import_module(module_name), func_name)
        for size in args.sizes or [10**3, 10**5, 10**7]:
            kernel, domain, kargs = make(int(float(size)))
            jobs.append((kernel.name, kernel, domain, tuple(kargs), None))
    else:
        print("veda tune: give MODULE:FUNCTION or --gallery", file=sys.stderr)
        return 2
    enabled = _progress.wanted(veda.get_config().progress, terminal=True)
    with _progress.bar(len(jobs), "veda tune", enabled=enabled, unit="case") as bar:
        for name, kernel, domain, kargs, reset in jobs:
            bar.set_postfix_str(f"{name} {int(np.prod(domain))}")
            decision = suite.settle(kernel, domain, kargs, reset)
            label = "undecided" if decision is None else veda.scheduler.Explanation.label(decision)
            bar.write(f"{name:<12} {int(np.prod(domain)):>10}  {label}", file=sys.stdout)
            bar.update(1)
    print(f"decisions saved in {veda.get_config().cache_dir}/tuning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veda",
        description="veda: adaptive parallel kernels. Commands: info, demo, bench, tune, cache.",
    )
    parser.add_argument("--version", action="version", version=f"veda {veda.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="cores, Numba and threading layer, GPU, cache")
    p.set_defaults(func=_info)
    p = sub.add_parser(
        "demo",
        help="the gallery through the adaptive dispatcher, against NumPy "
        "and Numba, with telemetry, a trace and a chart written to --out",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    p.add_argument(
        "--out", default="veda-demo", help="folder for the outputs (default ./veda-demo)"
    )
    p.set_defaults(func=_demo)
    p = sub.add_parser(
        "bench",
        help="veda against NumPy, Numba and numexpr on every gallery "
        "kernel; JSON and a chart; --compare A.json B.json",
    )
    p.add_argument("--kernels", nargs="+", metavar="NAME", help="gallery kernels (default all)")
    p.add_argument(
        "--sizes",
        nargs="+",
        metavar="SIZE",
        help="'small', 'large' or element counts (default small large)",
    )
    p.add_argument(
        "--peers",
        nargs="+",
        default=["numpy", "numba", "numba_prange", "numexpr"],
        help="which peers to run (default all)",
    )
    p.add_argument("--repeats", type=int, default=7, help="most timed rounds per case")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds of timing per implementation and case, after 3 rounds",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    p.add_argument(
        "--out",
        default="veda-bench.json",
        help="report path (the chart is saved beside it as .png)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print B's time over A's per case instead of running",
    )
    p.set_defaults(func=_bench)
    p = sub.add_parser("tune", help="let the dispatcher decide ahead of time, and remember it")
    p.add_argument(
        "target", nargs="?", help="MODULE:FUNCTION; FUNCTION(size) returns (kernel, domain, args)"
    )
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
