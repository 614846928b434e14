"""The veda command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from veda import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("numba", "threading layer", "kernel cache", "cuda target", "cpus"):
        assert word in out


@pytest.mark.slow
def test_demo_quick_runs_and_checks_results():
    proc = subprocess.run([sys.executable, "-m", "veda.cli", "demo", "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("saxpy", "dot", "mandelbrot", "jacobi2d", "histogram"):
        assert name in proc.stdout
    assert "differs" not in proc.stderr


def test_version():
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
