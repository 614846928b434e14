"""Progress bars on long work, drawn by tqdm: a widget in a Jupyter notebook (with ipywidgets),
a text bar on a terminal or in a notebook without widgets.

tqdm is imported when the first bar is drawn (about 40 ms), never by ``import veda``.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["bar", "in_notebook", "wanted"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (an IPython ZMQ shell).

    >>> in_notebook()  # a doctest runs outside Jupyter
    False
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except AttributeError:  # pragma: no cover - a module named IPython that is not IPython
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def wanted(setting: bool | None, terminal: bool = False) -> bool:
    """Whether to draw a bar: ``setting`` is ``veda.config(progress=...)`` (None: auto).

    Auto draws in a notebook, and on a terminal (stderr a TTY) where ``terminal`` says the
    operation is a command-line one (``veda tune``, ``veda bench``, ``veda demo``).
    """
    if setting is not None:
        return setting
    if in_notebook():
        return True
    if not terminal:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> Any:
    """A tqdm bar of ``total`` steps (``update(n)``, ``set_postfix_str(s)``, ``close()``, and a
    context manager); a bar that draws nothing when ``enabled`` is False.

    In a notebook the bar is tqdm's widget when ipywidgets is installed (the ``docs`` extra
    has it), else tqdm's text bar on stderr.

    >>> with bar(3, "three steps", enabled=False) as b:  # draws nothing
    ...     for _ in range(3):
    ...         b.update(1)
    """
    if enabled and in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
    )
