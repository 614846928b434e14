"""``@veda.func``: helper functions that kernels (and other helpers) may call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veda._config import get_config
from veda._kernel import codegen
from veda._kernel.base import Helper
from veda._kernel.checks import install_compile_hook
from veda._kernel.source import analyse, plain_parameters

__all__ = ["Func", "callee_writes", "func"]


class Func(Helper):
    """A helper function that kernels (and other helpers) may call; see :func:`func`."""

    def __init__(self, pyfunc: Callable[..., Any]) -> None:
        self.params = plain_parameters(pyfunc, "func")
        super().__init__(pyfunc)
        self.name = pyfunc.__name__
        self.qualname = pyfunc.__qualname__
        self._units: dict[tuple[bool, bool], codegen.Unit] = {}
        self._cuda_units: dict[tuple[bool, bool], codegen.Unit] = {}
        self._written: set[int] | None = None
        self._maybe_written: set[int] | None = None

    def written_positions(self) -> set[int]:
        """Positions of the parameters this helper writes (directly or through helpers)."""
        if self._written is None:
            self._written = set()  # breaks cycles between mutually recursive helpers
            try:
                facts = analyse(self.source, self.params, [], callee_writes)
            except BaseException:
                self._written = None
                raise
            self._written = {self.params.index(p) for p in facts.written}
        return self._written

    def maybe_written_positions(self) -> set[int]:
        """Positions of the parameters this helper may write: all but those its analysis (and
        its helpers') proves it only reads.  The GPU target copies these back."""
        if self._maybe_written is None:
            self._maybe_written = set(range(len(self.params)))  # a cycle: assume the worst
            try:
                facts = analyse(self.source, self.params, [], callee_writes)
            except BaseException:
                self._maybe_written = None
                raise
            self._maybe_written = {self.params.index(p) for p in facts.maybe_written}
        return self._maybe_written

    def unit(self, options: tuple[bool, bool]) -> codegen.Unit:
        unit = self._units.get(options)
        if unit is None:
            with self._lock:
                unit = self._units.get(options)
                if unit is None:
                    unit = codegen.function_unit(self.source, options)
                    install_compile_hook(
                        unit.module, self.name, self, 0, self.params, from_python=False
                    )
                    self._units[options] = unit
        return unit

    def cuda_unit(self, options: tuple[bool, bool]) -> codegen.Unit:
        """The helper's generated module as a CUDA device function."""
        unit = self._cuda_units.get(options)
        if unit is None:
            with self._lock:
                unit = self._cuda_units.get(options)
                if unit is None:
                    unit = codegen.cuda_function_unit(self.source, options)
                    self._cuda_units[options] = unit
        return unit

    def __call__(self, *args: Any) -> Any:
        """Call the compiled helper from Python (handy for testing it alone)."""
        cfg = get_config()
        return getattr(self.unit((cfg.boundscheck, cfg.cache)).module, self.name)(*args)

    def __repr__(self) -> str:
        return f"<veda.func {self.qualname}>"


def callee_writes(callee: Any) -> set[int]:
    if isinstance(callee, Func):
        return callee.written_positions()
    return set()


def func(pyfunc: Callable[..., Any]) -> Func:
    """Mark a helper function that kernels may call.

    The helper is compiled for whichever target calls it; its source is copied into veda's
    generated modules, so a change to it is seen by the disk cache.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.func
    ... def clamp(v, lo, hi):
    ...     return min(max(v, lo), hi)
    >>> @veda.kernel
    ... def clip(i, x, out):
    ...     out[i] = clamp(x[i], 0.0, 1.0)
    >>> out = np.empty(3)
    >>> clip[3](np.array([-1.0, 0.5, 2.0]), out)
    >>> out
    array([0. , 0.5, 1. ])
    """
    return Func(pyfunc)
