"""Every benchmark script runs in its ``--quick`` mode: tiny sizes, its results checked against
NumPy, a non-zero exit status when one is wrong.  The scripts are found by name, so a new
``bench/bench_*.py`` without ``--quick`` fails here."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))


def _results() -> dict[str, int]:
    """The full runs' results in bench/results/, with their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in (BENCH / "results").glob("*") if p.is_file()}


def _text(data: str | bytes | None) -> str:
    """Captured output: TimeoutExpired holds bytes even for a text run."""
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def test_the_scripts_are_found():
    assert "bench_triad.py" in SCRIPTS and "bench_gpu.py" in SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run(script, tmp_path):
    if script == "bench_gpu.py":
        pytest.importorskip("numba_cuda", reason="the dry run uses numba-cuda's simulator")
    # The session's kernel cache (tests/conftest.py) is inherited; the JSON goes to tmp_path.
    env = dict(os.environ, VEDA_BENCH_RESULTS=str(tmp_path), PYTHONUNBUFFERED="1")
    before = _results()
    try:
        out = subprocess.run(
            [sys.executable, str(BENCH / script), "--quick"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{script} --quick took over {exc.timeout} s\n--- stdout\n"
            f"{_text(exc.stdout)[-5000:]}\n--- stderr\n{_text(exc.stderr)[-5000:]}"
        )
    assert out.returncode == 0, (
        f"{script} --quick exited with {out.returncode}\n--- stdout\n{out.stdout[-5000:]}\n"
        f"--- stderr\n{out.stderr[-5000:]}"
    )
    assert _results() == before, "a quick run wrote into bench/results/"


@pytest.mark.slow
def test_the_programs_benchmark_runs_one_program_in_blocks(tmp_path):
    """``--only`` keeps the programs whose name holds the text, ``--blocks`` times each
    contestant on its own, and each row names what the dispatcher decided."""
    import json

    env = dict(os.environ, VEDA_BENCH_RESULTS=str(tmp_path), PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_programs.py"),
            "--quick",
            "--only",
            "saxpy",
            "--blocks",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (path,) = tmp_path.rglob("programs_blocks_only.json")
    data = json.loads(path.read_text())
    assert data["blocks"] is True and data["only"] == "saxpy"
    names = [row["program"] for row in data["programs"]]
    assert names and all(name.startswith("saxpy") for name in names), names
    for row in data["programs"]:  # None while the dispatcher still explores (2 warm-ups)
        assert row["decision"] is None or row["decision"].startswith(("cpu", "parallel")), row
    assert data["programs"][0]["decision"] == "cpu"  # 100 indices: the serial loop decides
    assert "blocks of its own" in out.stdout


@pytest.mark.slow
def test_the_compare_benchmark_runs_the_working_trees_script_on_both_sides(tmp_path):
    """``--head-script``: the base side runs the working tree's copy of the script (on the
    base's packages), so a metric only that copy reports is compared too.  The base, 29b26b0,
    is the commit before the parallel rows of bench_launch.py: its own copy lacks the metric."""
    import json

    base = "29b26b0"
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{base}^{{commit}}"])
    if known.returncode != 0:
        pytest.skip(f"a clone without {base} (shallow)")
    env = dict(os.environ, VEDA_BENCH_RESULTS=str(tmp_path), PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_compare.py"),
            "--base",
            base,
            "--head-script",
            "bench_launch.py",
            "--args=--quick",
            "--metric",
            "parallel_overhead_seconds",
            "--rounds",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (path,) = tmp_path.rglob("compare_bench_launch.json")
    data = json.loads(path.read_text())
    assert data["head_script"] is True
    row = data["metrics"]["parallel_overhead_seconds"]
    # Both sides report it (a difference of two timings: it may come out below zero in one
    # quick round on a busy machine, so only that it is a number is checked here).
    assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in ("base", "head")), row
