"""What kernels and helpers share, below the code generator that tells them apart."""

from __future__ import annotations

import abc
import functools
import threading
from collections.abc import Callable
from typing import Any

from veda._kernel.cache import CompileStats
from veda._kernel.source import FunctionSource, get_source

#: The reductions a kernel may declare (``@veda.kernel(reduce=...)``).
REDUCE_OPS = ("sum", "prod", "min", "max")


class Compiled:
    """A Python function veda compiles: its source, its compile counters."""

    name: str

    def __init__(self, pyfunc: Callable[..., Any]) -> None:
        self.py_func = pyfunc
        self.module_name: str = pyfunc.__module__ or "__main__"
        self._lock = threading.RLock()
        self._source: FunctionSource | None = None
        self.compile_stats = CompileStats()
        functools.update_wrapper(self, pyfunc)  # type: ignore[arg-type]

    @property
    def source(self) -> FunctionSource:
        """The function's text and origin, as the generated modules carry it."""
        if self._source is None:
            self._source = get_source(self.py_func)
        return self._source


class Helper(Compiled, abc.ABC):
    """A function kernels may call: the generated modules import its own generated module."""

    @abc.abstractmethod
    def unit(self, options: tuple[bool, bool]) -> Any:
        """Its generated module for the CPU targets (a :class:`veda._kernel.codegen.Unit`)."""

    @abc.abstractmethod
    def cuda_unit(self, options: tuple[bool, bool]) -> Any:
        """Its generated module as a CUDA device function."""


class Launchable(Compiled):
    """A kernel: launched over a domain, never called from another kernel."""
