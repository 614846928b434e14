"""The notebooks run top to bottom, are stored without outputs, and are part of the docs.

They run here in-process, which is quicker than a Jupyter kernel and points a failure at the
notebook and cell; the docs build in ``tests/test_docs.py`` renders them without executing
them again (a plain ``sphinx-build`` of the docs executes them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest

import veda

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(autouse=True)
def _headless():
    matplotlib.use("Agg")  # draw without a screen
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    for k, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {k} is stored with outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {k} has a count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    namespace: dict = {"__name__": "__main__"}
    for k, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, f"{path.name}[cell {k}]", "exec"), namespace)


def test_every_notebook_is_in_the_docs():
    listed = set(
        re.findall(r"^notebooks/(\S+)$", (ROOT / "docs" / "notebooks.md").read_text(), re.MULTILINE)
    )
    missing = [p.stem for p in NOTEBOOKS if p.stem not in listed]
    assert not missing, f"add notebooks/{missing[0]} to the toctree in docs/notebooks.md"


def test_there_are_notebooks():
    assert NOTEBOOKS


def test_notebook_in_a_jupyter_kernel_shows_html_and_progress():
    """notebooks/jupyter.ipynb in a real IPython kernel (nbclient, as myst-nb runs it): the
    kernel, ``veda.explain`` and ``veda.metrics()`` render as HTML tables, and the slow
    exploration draws a progress widget (ipywidgets is in the docs extra), with no error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / "jupyter.ipynb", as_version=4)
    # The suite's other worker process keeps a core busy, and the dispatcher would then leave
    # the serial loop the only candidate, with nothing to explore: the kernel's load monitor
    # reports every core free, as on an idle machine (a cell of the test's, not the notebook's).
    idle = "import veda\nveda.scheduler.dispatcher.load.free_cores = lambda: veda.max_threads()"
    nb.cells.insert(0, nbformat.v4.new_code_cell(idle))
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    code = [c for c in nb.cells[1:] if c.cell_type == "code"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    results = [o for c in code for o in c.outputs if o.output_type == "execute_result"]
    html = [o.data.get("text/html", "") for o in results]
    assert len(html) == 3, results
    assert "veda.kernel saxpy" in html[0] and "writes <code>out</code>" in html[0], html[0]
    assert "<table>" in html[1] and "veda.explain(heavy)" in html[1], html[1]
    assert "veda telemetry" in html[2] and "heavy" in html[2], html[2]
    if veda.max_threads() < 2:
        pytest.skip("one worker thread: the serial loop is the only candidate")
    heavy = next(c for c in code if "def heavy" in c.source)
    widgets = [
        o for o in heavy.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets, f"no progress widget for the slow exploration: {heavy.outputs}"
    assert "exploring heavy" in widgets[-1].data["text/plain"], widgets[-1].data
