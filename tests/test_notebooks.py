"""The notebooks run top to bottom, and are stored without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, capsys):
    nb = json.loads(path.read_text())
    namespace: dict = {"__name__": "__main__"}
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs"), f"{path.name} cell {k} is stored with outputs"
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {k}]", "exec"), namespace)


def test_there_are_notebooks():
    assert NOTEBOOKS
