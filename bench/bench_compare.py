"""Compare a benchmark between a base commit and the working tree, side by side in one run.

Each side is the whole package at that state (``veda`` and the gallery), run in its own
processes with its own kernel cache; the two sides alternate round by round, so drift of a
shared machine hits both alike, and the report gives per metric the median over the rounds of
each side and their ratio (working tree / base; below 1 the working tree is faster).

    python bench/bench_compare.py --base 99d135d bench_launch.py \\
        --metric index_launch_seconds --metric overhead_seconds --rounds 6
    python bench/bench_compare.py --quick      # HEAD against itself, one quick round

The base's own copy of the script runs on the base side (``--head-script``: the working tree's
copy on both sides, for a metric the base's copy does not report).  Metrics are dotted paths into
the JSON the script writes (``seconds.veda_index_launch``); without ``--metric`` every number at the
top level of the JSON is compared.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import parser, report

ROOT = Path(__file__).resolve().parent.parent


def _export(ref: str, into: Path) -> Path:
    """The tree of commit ``ref`` in a folder (``git archive``: no worktree left behind)."""
    into.mkdir(parents=True)
    archive = into / "tree.tar"
    with archive.open("wb") as fh:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref], stdout=fh, check=True
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return into


def _packages(tree: Path, into: Path) -> Path:
    """A folder where ``veda`` and ``veda_kernels`` are this tree's (the gallery installs under
    another name than its folder), to put first on the import path."""
    into.mkdir(parents=True)
    (into / "veda").symlink_to(tree / "veda")
    (into / "veda_kernels").symlink_to(tree / "kernels")
    return into


def _leaf(doc: Any, path: str) -> float | None:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return float(doc) if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def _run(tree: Path, packages: Path, script: Path, args: list[str], work: Path) -> dict[str, Any]:
    results = work / "results"
    results.mkdir(parents=True)
    env = dict(
        os.environ,
        PYTHONPATH=str(packages),
        VEDA_BENCH_RESULTS=str(results),
        VEDA_CACHE_DIR=str(work.parent.parent / f"cache-{tree.name}"),
    )
    started = time.time()
    out = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=str(tree),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise SystemExit(f"{script} failed on {tree}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    # A base from before VEDA_BENCH_RESULTS writes into its own bench/results.
    found = list(results.glob("*.json")) or [
        p for p in (tree / "bench" / "results").glob("*.json") if p.stat().st_mtime >= started
    ]
    if not found:
        raise SystemExit(f"{script} on {tree} wrote no JSON results")
    return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())


def compare(
    base: str,
    script: str,
    args: list[str],
    metrics: list[str],
    rounds: int,
    head_script: bool = False,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="veda-compare-") as tmp:
        work = Path(tmp)
        trees = {"base": _export(base, work / "base"), "head": ROOT}
        packages = {
            side: _packages(tree, work / f"packages-{side}") for side, tree in trees.items()
        }
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
        for r in range(rounds):
            order = ("base", "head") if r % 2 == 0 else ("head", "base")
            for side in order:
                path = (ROOT if head_script else trees[side]) / "bench" / script
                runs[side].append(
                    _run(trees[side], packages[side], path, args, work / "runs" / f"{side}-{r}")
                )
                print(f"round {r + 1}/{rounds}: {side} done", file=sys.stderr)
    names = metrics or [
        k
        for k, v in runs["head"][0].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    rows = {}
    for name in names:
        values = {
            side: [v for v in (_leaf(doc, name) for doc in docs) if v is not None]
            for side, docs in runs.items()
        }
        if not values["base"] or not values["head"]:
            print(f"  {name}: missing on one side", file=sys.stderr)
            continue
        b, h = statistics.median(values["base"]), statistics.median(values["head"])
        rows[name] = {
            "base": b,
            "head": h,
            "ratio": h / b if b else float("nan"),
            "base_rounds": values["base"],
            "head_rounds": values["head"],
        }
    print(
        f"{script} {' '.join(args)}: working tree against {base}, median of {rounds} "
        "round(s) per side"
    )
    for name, row in rows.items():
        print(
            f"  {name:<32} base {row['base']:.4g}  head {row['head']:.4g}  "
            f"head/base {row['ratio']:.3f}"
        )
    return {
        "base": base,
        "script": script,
        "args": args,
        "rounds": rounds,
        "head_script": head_script,
        "metrics": rows,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "script",
        nargs="?",
        default="bench_launch.py",
        help="a script in bench/ (default: bench_launch.py)",
    )
    p.add_argument("--base", default="HEAD", help="the commit to compare against (default HEAD)")
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        help="a dotted path into the script's JSON (repeatable)",
    )
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--args", default="", help="arguments for the script, in one string")
    p.add_argument(
        "--head-script",
        action="store_true",
        help="run the working tree's copy of the script on both sides (a metric the base's "
        "copy does not report yet)",
    )
    opts = p.parse_args()
    args = opts.args.split()
    if opts.quick:  # the machinery end to end: HEAD against itself, one quick round
        res = compare("HEAD", "bench_launch.py", ["--quick"], ["index_launch_seconds"], 1)
        row = res["metrics"]["index_launch_seconds"]
        assert row["base"] > 0 and row["head"] > 0, row
    else:
        res = compare(opts.base, opts.script, args, opts.metric, opts.rounds, opts.head_script)
    report(f"compare_{Path(res['script']).stem}", res, quick=opts.quick)


if __name__ == "__main__":
    main()
