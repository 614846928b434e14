"""``@veda.func``: helper functions that kernels (and other helpers) may call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from veda._config import get_config
from veda._kernel import codegen
from veda._kernel.base import Helper
from veda._kernel.checks import install_compile_hook
from veda._kernel.source import analyse, identifier, plain_parameters
from veda.errors import KernelDefinitionError

__all__ = ["Func", "callee_writes", "func"]


class Func(Helper):
    """A helper function that kernels (and other helpers) may call; see :func:`func`."""

    def __init__(self, pyfunc: Callable[..., Any]) -> None:
        self.params = plain_parameters(pyfunc, "func")
        super().__init__(pyfunc)
        self.name = identifier(pyfunc.__name__)  # as generated code spells it
        self.qualname = pyfunc.__qualname__
        self._units: dict[tuple[bool, bool], codegen.Unit] = {}
        self._cuda_units: dict[tuple[bool, bool], codegen.Unit] = {}
        self._written: set[int] | None = None
        self._maybe_written: set[int] | None = None

    def written_positions(self) -> set[int]:
        """Positions of the parameters this helper writes (directly or through helpers)."""
        if self._written is None and self.recursion():
            _written_fixpoint(self.recursion())
        if self._written is None:
            self._written = set()  # breaks cycles (none should be left)
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

    def recursion(self) -> list[Func]:
        """The helpers that call this one back, directly or through others, this one among
        them, in a fixed order; empty when it is not recursive."""
        calls: dict[Func, list[Func]] = {}
        todo = [self]
        while todo:
            h = todo.pop()
            if h not in calls:
                calls[h] = [
                    v for v in codegen.references(h.py_func).values() if isinstance(v, Func)
                ]
                todo.extend(calls[h])
        callers: dict[Func, list[Func]] = {}
        for h, callees in calls.items():
            for c in callees:
                callers.setdefault(c, []).append(h)
        group: set[Func] = set()
        todo = list(callers.get(self, ()))
        while todo:
            h = todo.pop()
            if h not in group:
                group.add(h)
                todo.extend(callers.get(h, ()))
        return sorted(group, key=lambda h: (h.module_name, h.qualname)) if self in group else []

    def unit(self, options: tuple[bool, bool]) -> codegen.Unit:
        unit = self._units.get(options)
        if unit is None and self.recursion():
            return _recursive_unit(self, options, "cpu")
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
        if unit is None and self.recursion():
            return _recursive_unit(self, options, "cuda")
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


#: Held while a group of recursive helpers is generated: one lock for all, since the group's
#: members would otherwise take their own locks in either order.
_recursive_lock = threading.RLock()


def _written_fixpoint(group: list[Func]) -> None:
    """What helpers that call each other write: each writes what its body writes directly and
    what the helpers it calls write of what it hands them, repeated until nothing changes (a
    member read before it is finished would otherwise answer too little, for good)."""
    with _recursive_lock:
        if all(h._written is not None for h in group):
            return
        for h in group:
            h._written = set()
        try:
            changed = True
            while changed:
                changed = False
                for h in group:
                    facts = analyse(h.source, h.params, [], callee_writes)
                    found = {h.params.index(p) for p in facts.written}
                    if found != h._written:
                        h._written, changed = found, True
        except BaseException:
            for h in group:
                h._written = None
            raise


def _recursive_unit(helper: Func, options: tuple[bool, bool], target: str) -> codegen.Unit:
    """The one generated module of ``helper``'s recursive group, kept by every member."""
    with _recursive_lock:
        units = helper._units if target == "cpu" else helper._cuda_units
        unit = units.get(options)
        if unit is not None:
            return unit
        group = helper.recursion()
        names: dict[str, Func] = {}
        for h in group:
            if h.source.text is None:
                raise KernelDefinitionError(
                    f"helper {h.qualname!r} is recursive (it calls itself, or helpers that call "
                    "it back), but veda cannot read its source; define it with def in a file"
                )
            other = names.setdefault(h.name, h)
            if other is not h:
                raise KernelDefinitionError(
                    f"helpers {other.qualname!r} ({other.module_name}) and {h.qualname!r} "
                    f"({h.module_name}) call each other and are both named {h.name!r}; "
                    "rename one of them"
                )
        unit = codegen.recursive_unit(group, options, target)
        for h in group:
            if target == "cpu":
                install_compile_hook(unit.module, h.name, h, 0, h.params, from_python=False)
                h._units[options] = unit
            else:
                h._cuda_units[options] = unit
        return unit


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
