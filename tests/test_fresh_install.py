"""The README's first command on a fresh machine: a new virtual environment, the package
installed from this checkout (first without extras, then as the README says), ``veda demo
--quick`` run there with an empty cache, and every file the README lists written."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _quick_start() -> tuple[str, list[str]]:
    """The install spec of the README's first command (``.[demo]``), and the files it says
    ``veda demo`` writes."""
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", README, re.DOTALL)
    assert block, "README.md has no Quick start code block"
    first = block.group(1).splitlines()[0]
    words = shlex.split(first)
    assert words[:2] == ["pip", "install"] and words[-2:] == ["veda", "demo"], first
    paragraph = README[block.end() :].lstrip("\n").split("\n\n", 1)[0]
    files = re.findall(r"`([\w-]+\.(?:json|prom|png))`", paragraph)
    assert files, f"the quick start names no output files: {paragraph!r}"
    return words[2], files


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A new virtual environment (no system packages), with its pip."""
    where = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(where, with_pip=True, symlinks=os.name != "nt")
    bindir = where / ("Scripts" if os.name == "nt" else "bin")
    return where, bindir


def _run(argv, cwd, env, timeout=900):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{argv}: rc {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.mark.slow
def test_veda_demo_in_a_fresh_virtual_environment(fresh, tmp_path):
    where, bindir = fresh
    spec, promised = _quick_start()
    assert spec.startswith(".") and "[" in spec, f"{spec!r}: expected .[extra]"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VEDA_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        VEDA_CACHE_DIR=str(tmp_path / "cache"),  # empty: a new machine compiles everything
        PATH=str(bindir) + os.pathsep + env.get("PATH", ""),
    )
    python = str(bindir / "python")
    # Without extras: the demo runs, writes everything but the chart, and says how to get it.
    _run([python, "-m", "pip", "install", "-q", str(ROOT)], tmp_path, env)
    found = _run([python, "-c", "import veda, sys; print(veda.__file__)"], tmp_path, env)
    assert str(where) in found.stdout, f"veda imported from outside the new venv: {found.stdout}"
    bare = tmp_path / "bare"
    proc = _run([str(bindir / "veda"), "demo", "--quick", "--out", str(bare)], tmp_path, env)
    assert "no chart" in proc.stderr and "veda[demo]" in proc.stderr, proc.stderr
    assert sorted(p.name for p in bare.iterdir()) == sorted(
        f for f in promised if f != "speedup.png"
    )

    # As the README says: every file it lists, the chart included.
    extra = spec[1:]  # "[demo]"
    _run([python, "-m", "pip", "install", "-q", f"{ROOT}{extra}"], tmp_path, env)
    out = tmp_path / "veda-demo"
    proc = _run([str(bindir / "veda"), "demo", "--quick", "--out", str(out)], tmp_path, env)
    assert "no chart" not in proc.stderr, proc.stderr
    written = {p.name for p in out.iterdir()}
    assert set(promised) <= written, (promised, written)

    from veda_kernels import GALLERY

    assert all(name in proc.stdout for name in GALLERY) and "DIFFERS" not in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert {r["kernel"] for r in results["rows"]} == set(GALLERY)
    assert all(r["checked"] for r in results["rows"])
    telemetry = json.loads((out / "telemetry.json").read_text())
    assert {k["name"] for k in telemetry["kernels"]} >= {"saxpy", "dot", "mandelbrot"}
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name for f in text_string_to_metric_families((out / "metrics.prom").read_text())}
    assert "veda_launches" in families
    trace = json.loads((out / "trace.json").read_text())["traceEvents"]
    assert {e["name"] for e in trace if e.get("cat") == "launch"} == {
        case.kernel.name for case in GALLERY.values()
    }
    import matplotlib.image

    image = matplotlib.image.imread(out / "speedup.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_the_extra_the_readme_installs_holds_the_chart_library():
    spec, _ = _quick_start()
    extra = spec[spec.index("[") + 1 : spec.index("]")]
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"][extra])
    assert not any(d.startswith("matplotlib") for d in project["dependencies"])
