"""veda: write a loop body once, run it on one CPU thread, all CPU threads or a GPU.

>>> import numpy as np, veda
>>> @veda.kernel
... def saxpy(i, a, x, y, out):
...     out[i] = a * x[i] + y[i]
>>> x = np.ones(1000); y = np.ones(1000); out = np.empty(1000)
>>> saxpy[1000](2.0, x, y, out)
>>> float(out[0])
3.0
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from veda import cuda, scheduler, targets, telemetry
from veda._config import Config, config, deterministic, get_config, max_threads, set_config
from veda._hardware.cpu import threading_layer
from veda._kernel.cache import cache_clear, cache_info
from veda._kernel.func import Func, func
from veda._launch import Kernel, kernel, launch
from veda._version import __version__
from veda.cuda import to_device, to_host
from veda.errors import (
    ConfigError,
    DeadlineExceeded,
    GraphError,
    KernelDefinitionError,
    KernelError,
    KernelIndexError,
    LaunchError,
    QueueFull,
    ReplayError,
    ShutdownError,
    TargetUnavailableError,
    TaskError,
    TelemetryError,
    UnknownKernelError,
    VedaError,
)
from veda.scheduler import explain
from veda.telemetry import metrics

if TYPE_CHECKING:
    from veda import random
    from veda._graph import graph
    from veda._iter import ParIter, par_iter, par_range
    from veda._kernel.language import atomic_add, atomic_max, atomic_min, local_array
    from veda._memory import empty, empty_like, memory_stats, zeros
    from veda._record import record, replay
    from veda._scan import scan
    from veda._tasks import (
        Priority,
        Scope,
        Task,
        launch_async,
        scope,
        shutdown,
        spawn,
        submit,
        try_spawn,
        try_submit,
    )

#: Names imported on first use (PEP 562), so that ``import veda`` does not pay for what a
#: program may never use: the kernel language's Numba extensions (a kernel body that calls
#: ``veda.atomic_add`` imports them as it compiles), the task runtime (with asyncio),
#: ``veda.random``, record/replay, scans and pooled arrays.  Each is imported once, by
#: whichever thread asks first (under the import lock).
_LAZY = {
    **dict.fromkeys(
        ("atomic_add", "atomic_max", "atomic_min", "local_array"), "veda._kernel.language"
    ),
    **dict.fromkeys(
        (
            "Priority",
            "Scope",
            "Task",
            "launch_async",
            "scope",
            "shutdown",
            "spawn",
            "submit",
            "try_spawn",
            "try_submit",
        ),
        "veda._tasks",
    ),
    **dict.fromkeys(("empty", "empty_like", "memory_stats", "zeros"), "veda._memory"),
    "record": "veda._record",
    "replay": "veda._record",
    "scan": "veda._scan",
    "graph": "veda._graph",
    **dict.fromkeys(("ParIter", "par_iter", "par_range"), "veda._iter"),
}
_LAZY_MODULES = (
    "random",
    "dask",
    "hardware",
    "_tasks",
    "_record",
    "_scan",
    "_iter",
    "_graph",
    "_memory",
)


if not TYPE_CHECKING:  # for type checkers the names are imported above: typos stay errors

    def __getattr__(name: str) -> Any:
        where = _LAZY.get(name)
        if where is not None:
            value = getattr(importlib.import_module(where), name)
        elif name in _LAZY_MODULES:
            try:
                value = importlib.import_module(f"veda.{name}")
            except ImportError as exc:  # an optional extra (veda.dask): hasattr() says False
                raise AttributeError(f"veda.{name} is not available: {exc}") from exc
        else:
            raise AttributeError(f"module 'veda' has no attribute {name!r}")
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    try:
        extras = {"dask"} if importlib.util.find_spec("dask") is not None else set()
    except (ImportError, ValueError):  # a module that is None or broken in sys.modules
        extras = set()
    return sorted({*globals(), *_LAZY, "random", "hardware", *extras})


__all__ = [
    "Config",
    "ConfigError",
    "DeadlineExceeded",
    "Func",
    "GraphError",
    "Kernel",
    "KernelDefinitionError",
    "KernelError",
    "KernelIndexError",
    "LaunchError",
    "ParIter",
    "Priority",
    "QueueFull",
    "ReplayError",
    "Scope",
    "ShutdownError",
    "TargetUnavailableError",
    "Task",
    "TaskError",
    "TelemetryError",
    "UnknownKernelError",
    "VedaError",
    "__version__",
    "atomic_add",
    "atomic_max",
    "atomic_min",
    "cache_clear",
    "cache_info",
    "config",
    "cuda",
    "deterministic",
    "empty",
    "empty_like",
    "explain",
    "func",
    "get_config",
    "graph",
    "kernel",
    "launch",
    "launch_async",
    "local_array",
    "max_threads",
    "memory_stats",
    "metrics",
    "par_iter",
    "par_range",
    "random",
    "record",
    "replay",
    "scan",
    "scheduler",
    "scope",
    "set_config",
    "shutdown",
    "spawn",
    "submit",
    "targets",
    "telemetry",
    "threading_layer",
    "to_device",
    "to_host",
    "try_spawn",
    "try_submit",
    "zeros",
]
