"""What kernels and helpers share, below the code generator that tells them apart."""

from __future__ import annotations

import abc
import functools
import importlib
import sys
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from veda._kernel.cache import CompileStats
from veda._kernel.source import FunctionSource, get_source
from veda.errors import LaunchError

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
        #: This object's identity across processes: what it carries when pickled by value, so
        #: that a process keeps one copy of it (and the process that made it, itself); what
        #: Dask's tokens of veda.dask graphs are made of.
        self.token = uuid.uuid4().hex
        _originals[self.token] = self

    # -- pickling ------------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        """The constructor's arguments after the function (``reduce=``, ``ndim=``)."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by name where an importable module holds it (``module.qualname``), else by
        value: the Python function (which cloudpickle, as Dask uses it, sends by value), the
        options and the :attr:`token`.  Objects of ``__main__`` and of modules registered with
        ``cloudpickle.register_pickle_by_value`` go by value.  A process keeps one object per
        token it receives (the original, in the process that made it), so a Dask worker
        compiles a kernel once, not once per task."""
        fn = self.py_func
        if not _by_value(fn.__module__) and _by_name(fn.__module__, fn.__qualname__) is self:
            return (_named, (type(self), fn.__module__, fn.__qualname__))
        return (_unpickled, (type(self), self.token, fn, self._options()))

    def __copy__(self) -> Compiled:
        return self  # one object: its compiled code, its tuning

    def __deepcopy__(self, memo: dict[int, Any]) -> Compiled:
        return self

    def __dask_tokenize__(self) -> str:
        return self.token

    @property
    def source(self) -> FunctionSource:
        """The function's text and origin, as the generated modules carry it."""
        if self._source is None:
            self._source = get_source(self.py_func)
        return self._source


#: Objects made in this process, by token (weakly: one dropped by its user goes).
_originals: weakref.WeakValueDictionary[str, Compiled] = weakref.WeakValueDictionary()
#: Objects received by value, by token: held, the most recent :data:`RECEIVED` (a Dask worker
#: gets a kernel with every task, and must not compile it again between two).
_received: dict[str, Compiled] = {}
_received_lock = threading.Lock()
RECEIVED = 256


def _by_value(module: str) -> bool:
    """Whether an object of ``module`` is pickled by value: ``__main__`` (another process's is
    another program, a Dask worker's say) and modules registered with cloudpickle's
    ``register_pickle_by_value``."""
    if module == "__main__":
        return True
    cp = sys.modules.get("cloudpickle.cloudpickle")
    return module in getattr(cp, "_PICKLE_BY_VALUE_MODULES", ())


def _by_name(module: str, qualname: str) -> Any:
    """What ``module.qualname`` names, or None."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        try:
            obj = importlib.import_module(module)
        except ImportError:
            return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _named(cls: type[Compiled], module: str, qualname: str) -> Compiled:
    """The object pickled by name as ``module.qualname``."""
    found = _by_name(module, qualname)
    if not isinstance(found, cls):
        raise LaunchError(
            f"cannot unpickle {module}.{qualname}: it was sent by name, and this process's "
            f"{module} has {'no such name' if found is None else repr(found)}; install or "
            f"ship the module where it is unpickled, or send its kernels by value "
            f"(cloudpickle.register_pickle_by_value({module.split('.')[0]}))"
        )
    return found


def _unpickled(
    cls: type[Compiled], token: str, pyfunc: Callable[..., Any], options: dict[str, Any]
) -> Compiled:
    """The object pickled by value with ``token``: the original in the process that made it,
    else one copy per process."""
    found = _originals.get(token)
    if found is not None:
        return found
    with _received_lock:
        found = _received.pop(token, None)
        if found is None:
            found = cls(pyfunc, **options)  # type: ignore[call-arg]
            _originals.pop(found.token, None)  # not an original: the sender's copy
            found.token = token
        _received[token] = found  # the most recently used last
        while len(_received) > RECEIVED:
            del _received[next(iter(_received))]
    return found


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
