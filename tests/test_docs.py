"""The documentation site builds without a single warning.

The notebooks are not executed here (``VEDA_DOCS_EXECUTE=off``): ``tests/test_notebooks.py``
runs every one of them top to bottom, and executing them again in a Jupyter kernel took about
70 of this test's 75 seconds.  A plain ``sphinx-build docs ...`` executes them (docs/conf.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    env = dict(os.environ)
    env["VEDA_CACHE_DIR"] = str(tmp_path / "veda-cache")  # a fresh cache, not the user's
    env["VEDA_DOCS_EXECUTE"] = "off"  # the notebooks run in tests/test_notebooks.py
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"sphinx-build failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    for page in ("index", "api/index", "notebooks/quickstart", "dispatcher"):
        assert (out / f"{page}.html").is_file(), page
