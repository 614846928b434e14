"""The disk cache: a new process reuses kernels, changed bodies recompile, races are safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import veda
from veda import cli

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import veda

    @veda.kernel
    def axpb(i, x, out):
        out[i] = SCALE * x[i] + 1.0

    @veda.kernel(reduce="max")
    def biggest(i, x):
        return x[i]

    x = np.arange(1000.0)
    out = np.empty_like(x)
    veda.launch(axpb, 1000, x, out, target="cpu")
    veda.launch(axpb, 1000, x, out, target="parallel", schedule="dynamic")
    top = biggest[1000](out)
    stats = [axpb.compile_stats.as_dict(), biggest.compile_stats.as_dict()]
    print(json.dumps({"stats": stats, "top": float(top)}))
    """
)


def _run(tmp_path, cache_dir, scale="2.0"):
    script = tmp_path / "job.py"
    script.write_text(f"SCALE = {scale}\n" + SCRIPT)
    env = dict(os.environ, VEDA_CACHE_DIR=str(cache_dir))
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_second_process_compiles_nothing(tmp_path):
    cache_dir = tmp_path / "cache"
    first = _run(tmp_path, cache_dir)
    assert all(s["compiled"] > 0 for s in first["stats"])
    second = _run(tmp_path, cache_dir)
    assert all(s["compiled"] == 0 for s in second["stats"]), second
    assert all(s["cache_hits"] > 0 for s in second["stats"])
    assert second["top"] == first["top"] == 2.0 * 999 + 1
    # a changed constant is a changed kernel: compiled anew, new result
    third = _run(tmp_path, cache_dir, scale="3.0")
    assert third["stats"][0]["compiled"] > 0
    assert third["top"] == 3.0 * 999 + 1


@pytest.mark.slow
def test_two_processes_compiling_at_once(tmp_path):
    cache_dir = tmp_path / "cache"
    script = tmp_path / "job.py"
    script.write_text("SCALE = 5.0\n" + SCRIPT)
    env = dict(os.environ, VEDA_CACHE_DIR=str(cache_dir))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["top"] for r in results] == [5.0 * 999 + 1] * 2
    after = _run(tmp_path, cache_dir, scale="5.0")
    assert after["top"] == 5.0 * 999 + 1
    assert all(s["compiled"] == 0 for s in after["stats"]), after


def test_cache_info_and_clear(tmp_path, capsys):
    cache_dir = str(tmp_path / "c")
    import numpy as np

    with veda.config(cache_dir=cache_dir):

        @veda.kernel
        def inc(i, x):
            x[i] += 1

        x = np.zeros(4)
        inc[4](x)
        info = veda.cache_info(cache_dir)
        assert info.modules >= 1 and info.bytes > 0
        assert cache_dir in str(info)
        cleared = veda.cache_clear(cache_dir)
        assert cleared.modules == info.modules
        assert veda.cache_info(cache_dir).modules == 0
        inc[4](x)  # a loaded kernel keeps working after a clear
    assert x.tolist() == [2.0] * 4


def test_cache_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VEDA_CACHE_DIR", str(tmp_path))
    with veda.config(cache_dir=str(tmp_path)):
        assert cli.main(["cache", "info"]) == 0
        assert str(tmp_path) in capsys.readouterr().out
        assert cli.main(["cache", "clear"]) == 0
        assert "removed" in capsys.readouterr().out


def test_cache_off_still_runs(tmp_path):
    import numpy as np

    with veda.config(cache=False, cache_dir=str(tmp_path)):

        @veda.kernel
        def dec(i, x):
            x[i] -= 1

        x = np.zeros(3)
        dec[3](x)
    assert x.tolist() == [-1.0] * 3
    assert veda.cache_info(str(tmp_path)).modules == 0


def test_kernel_without_source_runs(tmp_path):
    namespace = {"veda": veda}
    exec("@veda.kernel\ndef twice(i, x):\n    x[i] *= 2\n", namespace)
    import numpy as np

    x = np.ones(3)
    namespace["twice"][3](x)
    assert x.tolist() == [2.0] * 3
