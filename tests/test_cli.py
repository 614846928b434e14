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


TUNE_MODULE = '''
import numpy as np
import veda

@veda.kernel
def tuned(i, x, out):
    out[i] = x[i] * 2.0

def make(size):
    x = np.ones(size)
    return tuned, size, (x, np.empty(size))
'''


def test_tune_a_user_kernel(tmp_path, monkeypatch, capsys):
    (tmp_path / "tunemod.py").write_text(TUNE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import veda

    with veda.config(cache_dir=str(tmp_path / "cache")):
        assert cli.main(["tune", "tunemod:make", "--sizes", "100", "2e5"]) == 0
    out = capsys.readouterr().out
    assert out.count("tuned ") == 2 and "undecided" not in out


def test_tune_needs_a_target(capsys):
    assert cli.main(["tune"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err
