"""The gallery benchmark suite behind ``veda bench`` and ``veda demo``.

Every gallery kernel runs through veda's adaptive dispatcher and through its peers (NumPy,
hand-written Numba with ``@njit`` and with ``prange``, numexpr where the kernel is an
expression; see :mod:`veda_kernels.peers`) on the same inputs.  Times are medians of repeats
after a warm-up, the implementations interleaved repeat by repeat so that a noisy machine slows
all of them alike.  Before timing, veda is launched until its dispatcher has decided for the
size (exploration is a cost of the first launches, reported by ``veda explain``, not a steady
state), and every result is checked against the NumPy reference.  NumPy is timed in a block
of its own after the others, then the suite pauses: a BLAS thread pool left spinning after a
NumPy call would otherwise slow the next parallel region (see ``SPIN_PAUSE``).

The report is a plain dictionary (JSON-ready)::

    {"suite": "veda-bench", "version": 1, "machine": {...}, "ceiling_gbps": 31.2,
     "rows": [{"kernel": "triad", "size": "large", "elements": 20000000, "bytes": 480000000,
               "decision": "parallel 2t static", "seconds": {"veda": ..., "numpy": ...},
               "streaming": true, "checked": true}, ...]}

>>> report = run(["saxpy"], sizes=("small",), repeats=3, budget=0.05)
>>> row = report["rows"][0]
>>> row["kernel"], row["size"], sorted(row["seconds"])[:2]
('saxpy', 'small', ['numba', 'numba_prange'])
>>> speed_vs_best_peer(row) > 0
True
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import psutil

import veda
from veda import _progress
from veda_kernels._registry import GALLERY, Case
from veda_kernels.peers import PEER_KINDS, numpy_agrees, peers_for

__all__ = [
    "best_peer",
    "compare",
    "format_seconds",
    "load",
    "machine",
    "plot",
    "run",
    "settle",
    "size_of",
    "speed_vs_best_peer",
    "table",
]

SIZES = ("small", "large")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": psutil.cpu_count(),
        "numba_threads": veda.max_threads(),
        "threading_layer": veda.threading_layer(),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "veda": veda.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def settle(
    kernel: veda.Kernel,
    domain: Any,
    args: tuple[Any, ...],
    reset: Callable[[tuple[Any, ...]], None] | None = None,
    max_launches: int = 200,
) -> tuple[str, int, str, int] | None:
    """Launch ``kernel`` adaptively until the dispatcher has decided for this domain.

    Returns the decision, or None when it is still exploring after ``max_launches``.
    """
    dims = domain if isinstance(domain, tuple) else (domain,)
    size = math.prod(dims)
    for _ in range(max_launches):
        if reset is not None:
            reset(args)
        kernel[domain](*args)
        decision = veda.explain(kernel).decision_for(size, ndim=len(dims))
        if decision is not None:
            return decision
    return None


#: NumPy may call a BLAS whose thread pool keeps spinning for a while after a call (OpenBLAS:
#: about 0.1 s), slowing the next parallel region up to 3x.  NumPy is therefore timed in a
#: block of its own, after the others, followed by this pause.
SPIN_PAUSE = 0.25


def _interleaved(
    fns: dict[str, Callable[[], Any]],
    setup: Callable[[], Any],
    repeats: int,
    budget: float,
    alone: tuple[str, ...] = ("numpy",),
) -> dict[str, float]:
    """Median seconds per function over up to ``repeats`` interleaved rounds, the order
    rotated each round; the functions named in ``alone`` are timed afterwards in a block of
    their own, followed by a pause of SPIN_PAUSE seconds.

    A function stops being timed once it has 3 samples and has used ``budget`` seconds (or
    after one sample when a single call takes longer than the whole budget).
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent = dict.fromkeys(fns, 0.0)

    def done(k: str) -> bool:
        n = len(samples[k])
        return n >= repeats or (n >= 3 and spent[k] > budget) or (n >= 1 and spent[k] > budget * 3)

    def time_rounds(names: list[str]) -> None:
        rounds = 0
        while not all(done(k) for k in names):
            # Rotate the order every round, so that no implementation always follows the same
            # one (whatever the previous call leaves behind hits whichever call comes next).
            order = names[rounds % len(names) :] + names[: rounds % len(names)]
            rounds += 1
            for name in order:
                if done(name):
                    continue
                setup()
                start = time.perf_counter()
                fns[name]()
                t = time.perf_counter() - start
                samples[name].append(t)
                spent[name] += t

    time_rounds([k for k in fns if k not in alone])
    separate = [k for k in fns if k in alone]
    if separate:
        time_rounds(separate)
        time.sleep(SPIN_PAUSE)
    return {k: statistics.median(v) for k, v in samples.items()}


def size_of(case: Case, label: str) -> int:
    """The problem size a label means for ``case``: ``"small"``, ``"medium"`` (a tenth of the
    large size, what ``veda demo`` runs), ``"large"``, or a number of elements."""
    sizes = {"small": case.small, "medium": max(case.small, case.large // 10), "large": case.large}
    return sizes[label] if label in sizes else int(label)


def _measure(
    case: Case,
    label: str,
    peers: tuple[str, ...],
    repeats: int,
    budget: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    domain, args = case.make(size_of(case, label), rng)
    case.reset(args)
    expected = case.expected(domain, args)

    def veda_launch(c: Case = case, d: Any = domain, a: tuple[Any, ...] = args) -> Any:
        return c.kernel[d](*a)

    decision = settle(case.kernel, domain, args, case.reset)
    chosen = peers_for(case.name, peers)
    fns: dict[str, Callable[[], Any]] = {"veda": veda_launch}
    fns.update({k: (lambda p=p: p(domain, args)) for k, p in chosen.items()})
    checked = True
    unchecked = []
    # Warm-up (compiles the Numba peers) and check results; NumPy last, then a pause for any
    # BLAS threads it leaves spinning (see SPIN_PAUSE).
    for name, fn in sorted(fns.items(), key=lambda item: item[0] == "numpy"):
        case.poison(args)
        value = fn()
        ok = (
            numpy_agrees(case, args, value, expected)
            if name == "numpy"
            else case.agrees(case.result(args, value), expected)
        )
        if ok is None:
            unchecked.append(name)
        elif not ok:
            checked = False
            print(
                f"veda bench: {case.name} ({label}) via {name} differs from NumPy", file=sys.stderr
            )
    time.sleep(SPIN_PAUSE if "numpy" in fns else 0.0)
    seconds = _interleaved(fns, lambda: case.reset(args), repeats, budget)
    nbytes = sum(int(a.nbytes) for a in args if isinstance(a, np.ndarray))
    return {
        "kernel": case.name,
        "size": label,
        "elements": int(math.prod(domain if isinstance(domain, tuple) else (domain,))),
        "bytes": nbytes,
        "decision": veda.scheduler.Explanation.label(decision),
        "seconds": seconds,
        "streaming": case.streaming,
        "checked": checked,
        "unchecked": unchecked,
    }


def run(
    kernels: Iterable[str] | None = None,
    sizes: Sequence[str] = SIZES,
    peers: Sequence[str] = PEER_KINDS,
    repeats: int = 7,
    budget: float = 1.0,
    progress: bool | None = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure veda and its peers on gallery kernels; returns the report (see module doc).

    ``sizes`` holds labels for :func:`size_of`; ``budget`` bounds the seconds spent timing each
    implementation per case beyond the first three rounds; ``progress`` draws a progress bar
    (None: ``veda.config(progress=...)``, where auto means in a notebook or when stderr is a
    terminal).
    """
    names = list(kernels) if kernels is not None else list(GALLERY)
    unknown = [n for n in names if n not in GALLERY]
    if unknown:
        raise veda.UnknownKernelError(
            f"no gallery kernel {', '.join(map(repr, unknown))}; the gallery has "
            f"{', '.join(sorted(GALLERY))}"
        )
    bad = [p for p in peers if p not in PEER_KINDS]
    if bad:
        raise ValueError(f"unknown peer {bad[0]!r}; expected some of {', '.join(PEER_KINDS)}")
    rng = np.random.default_rng(seed)
    jobs = [(n, s) for s in sizes for n in names]
    setting = veda.get_config().progress if progress is None else progress
    rows = []
    with _progress.bar(
        len(jobs), "gallery", enabled=_progress.wanted(setting, terminal=True), unit="case"
    ) as bar:
        for name, label in jobs:
            bar.set_postfix_str(f"{name} ({label})")
            rows.append(_measure(GALLERY[name], str(label), tuple(peers), repeats, budget, rng))
            bar.update(1)
    report = {"suite": "veda-bench", "version": 1, "machine": machine(), "rows": rows}
    report["ceiling_gbps"] = _ceiling(rows)
    return report


def _gbps(row: dict[str, Any], impl: str) -> float:
    return float(row["bytes"] / row["seconds"][impl] / 1e9)


#: A triad must move at least this many bytes to measure main memory, not a cache.
CEILING_MIN_BYTES = 100 * 2**20


def _ceiling(rows: list[dict[str, Any]]) -> float | None:
    """The machine's measured memory bandwidth: the best triad of any implementation, at the
    largest triad size measured, counting each array once (the write-allocate read of the
    output is not counted, as in STREAM).  None without a triad of CEILING_MIN_BYTES or more.
    """
    triads = [r for r in rows if r["kernel"] == "triad" and r["bytes"] >= CEILING_MIN_BYTES]
    if not triads:
        return None
    largest = max(triads, key=lambda r: r["elements"])
    return max(_gbps(largest, k) for k in largest["seconds"])


def best_peer(row: dict[str, Any]) -> str | None:
    """The fastest peer of a row (not veda), or None when it has none."""
    peers = {k: v for k, v in row["seconds"].items() if k != "veda"}
    return min(peers, key=peers.__getitem__) if peers else None


def speed_vs_best_peer(row: dict[str, Any]) -> float:
    """Best peer's time / veda's time: 1.0 is a tie, above 1 veda is faster."""
    peer = best_peer(row)
    return float("nan") if peer is None else row["seconds"][peer] / row["seconds"]["veda"]


def format_seconds(t: float) -> str:
    """``t`` seconds in us, ms or s."""
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def table(report: dict[str, Any], size: str | None = None) -> str:
    """The report as a text table: times, veda's decision, speed against the best peer and,
    for streaming kernels, the fraction of the measured bandwidth ceiling reached."""
    rows = [r for r in report["rows"] if size is None or r["size"] == size]
    impls = ["veda", *[k for k in PEER_KINDS if any(k in r["seconds"] for r in rows)]]
    ceiling = report.get("ceiling_gbps")
    head = (
        f"{'kernel':<14}{'size':>10} "
        + "".join(f"{k:>13}" for k in impls)
        + f"  {'best peer':<13}{'vs best':>8}{'GB/s':>7}{'of peak':>8}  veda chose"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(
            f"{format_seconds(r['seconds'][k]) if k in r['seconds'] else '-':>13}" for k in impls
        )
        bw = peak = ""
        if r["streaming"]:
            bw = f"{_gbps(r, 'veda'):.1f}"
            peak = f"{_gbps(r, 'veda') / ceiling:.0%}" if ceiling else ""
        flag = "" if r["checked"] else "  RESULT DIFFERS"
        lines.append(
            f"{r['kernel']:<14}{r['elements']:>10} {cells}  {best_peer(r) or '-':<13}"
            f"{speed_vs_best_peer(r):>7.2f}x{bw:>7}{peak:>8}  {r['decision']}{flag}"
        )
    if ceiling:
        lines.append(
            f"bandwidth ceiling (best triad): {ceiling:.1f} GB/s; 'vs best' is the best "
            "peer's time over veda's (above 1: veda is faster)"
        )
    return "\n".join(lines)


def load(path: str | Path) -> dict[str, Any]:
    """Read a report written by ``veda bench`` (refuses other JSON with a clear error)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise veda.VedaError(f"cannot read benchmark report {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("suite") != "veda-bench":
        raise veda.VedaError(f"{str(path)!r} is not a veda bench report")
    return data


def compare(a: dict[str, Any], b: dict[str, Any], threshold: float = 0.05) -> str:
    """Per case, B's veda time over A's (below 1: B is faster), flagging changes beyond
    ``threshold``; cases present in only one report are listed as such."""
    index_a = {(r["kernel"], r["size"]): r for r in a["rows"]}
    index_b = {(r["kernel"], r["size"]): r for r in b["rows"]}
    head = f"{'kernel':<14}{'size':>7} {'A':>11} {'B':>11} {'B / A':>7}"
    lines = [head, "-" * len(head)]
    ratios = []
    for key in list(index_a) + [k for k in index_b if k not in index_a]:
        ra, rb = index_a.get(key), index_b.get(key)
        if ra is None or rb is None:
            lines.append(f"{key[0]:<14}{key[1]:>7}  only in {'A' if rb is None else 'B'}")
            continue
        ta, tb = ra["seconds"]["veda"], rb["seconds"]["veda"]
        ratio = tb / ta
        ratios.append(ratio)
        note = "  slower" if ratio > 1 + threshold else "  faster" if ratio < 1 - threshold else ""
        lines.append(
            f"{key[0]:<14}{key[1]:>7} {format_seconds(ta):>11} "
            f"{format_seconds(tb):>11} {ratio:7.3f}{note}"
        )
    if ratios:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        lines.append(f"geometric mean B / A: {geo:.3f} over {len(ratios)} cases")
    for side, rep in (("A", a), ("B", b)):
        m = rep.get("machine", {})
        lines.append(
            f"{side}: veda {m.get('veda')} on {m.get('logical_cpus')} cpus, {m.get('date')}"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str | Path | None = None, size: str | None = "large") -> Any:
    """A bar chart of each implementation's speed-up over NumPy per kernel (log scale), for
    the rows of one size label (every row with ``size=None``).

    Needs matplotlib; saves to ``path`` when given and returns the figure.
    """
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise veda.TelemetryError(
            "plotting needs matplotlib, which the demo extra installs: pip install 'veda[demo]'"
        ) from exc
    rows = [r for r in report["rows"] if size is None or r["size"] == size] or report["rows"]
    impls = [
        "veda",
        *[k for k in PEER_KINDS if k != "numpy" and any(k in r["seconds"] for r in rows)],
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4))
    width = 0.8 / len(impls)
    for n, impl in enumerate(impls):
        xs, ys = [], []
        for x, r in enumerate(rows):
            if impl in r["seconds"] and "numpy" in r["seconds"]:
                xs.append(x + (n - (len(impls) - 1) / 2) * width)
                ys.append(r["seconds"]["numpy"] / r["seconds"][impl])
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [r["kernel"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("speed-up over NumPy")
    m = report.get("machine", {})
    sizes = "" if size is None else f", {size} sizes"
    ax.set_title(f"veda {m.get('veda', '')} gallery{sizes}, {m.get('numba_threads', '?')} threads")
    ax.legend(fontsize="small")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
