"""The veda command."""

from __future__ import annotations

import json

import pytest

import veda
from veda import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("numba", "threading layer", "kernel cache", "cuda target", "cpus"):
        assert word in out


@pytest.mark.slow
def test_bench_quick_then_compare(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    with veda.config(cache_dir=str(tmp_path / "cache")):
        for path in (a, b):
            assert (
                cli.main(
                    [
                        "bench",
                        "--quick",
                        "--kernels",
                        "saxpy",
                        "dot",
                        "--peers",
                        "numpy",
                        "numba",
                        "--out",
                        str(path),
                    ]
                )
                == 0
            )
    assert a.with_suffix(".png").stat().st_size > 0
    report = json.loads(a.read_text())
    assert [(r["kernel"], r["size"]) for r in report["rows"]] == [
        ("saxpy", "small"),
        ("dot", "small"),
    ]
    assert set(report["rows"][0]["seconds"]) == {"veda", "numpy", "numba"}
    capsys.readouterr()
    assert cli.main(["bench", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "saxpy" in out and "dot" in out and "geometric mean B / A" in out


def test_bench_refuses_bad_input(tmp_path, capsys):
    assert cli.main(["bench", "--kernels", "nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "no gallery kernel 'nope'" in capsys.readouterr().err
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    assert cli.main(["bench", "--compare", str(bogus), str(bogus)]) == 2
    assert "not a veda bench report" in capsys.readouterr().err
    assert cli.main(["bench", "--compare", str(tmp_path / "missing.json"), str(bogus)]) == 2
    assert "cannot read benchmark report" in capsys.readouterr().err


def test_version():
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0


TUNE_MODULE = """
import numpy as np
import veda

@veda.kernel
def tuned(i, x, out):
    out[i] = x[i] * 2.0

def make(size):
    x = np.ones(size)
    return tuned, size, (x, np.empty(size))
"""


def test_tune_a_user_kernel(tmp_path, monkeypatch, capsys):
    (tmp_path / "tunemod.py").write_text(TUNE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    with veda.config(cache_dir=str(tmp_path / "cache")):
        assert cli.main(["tune", "tunemod:make", "--sizes", "100", "2e5"]) == 0
    out = capsys.readouterr().out
    assert out.count("tuned ") == 2 and "undecided" not in out


def test_tune_needs_a_target(capsys):
    assert cli.main(["tune"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err
