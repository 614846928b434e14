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

from veda import cuda, random, scheduler, targets, telemetry
from veda._config import Config, config, deterministic, get_config, max_threads, set_config
from veda._hardware.cpu import threading_layer
from veda._kernel.cache import cache_clear, cache_info
from veda._kernel.func import Func, func
from veda._kernel.language import atomic_add, atomic_max, atomic_min, local_array
from veda._launch import Kernel, kernel, launch
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
from veda._version import __version__
from veda.cuda import to_device, to_host
from veda.errors import (
    ConfigError,
    DeadlineExceeded,
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

__all__ = [
    "Config",
    "ConfigError",
    "DeadlineExceeded",
    "Func",
    "Kernel",
    "KernelDefinitionError",
    "KernelError",
    "KernelIndexError",
    "LaunchError",
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
    "explain",
    "func",
    "get_config",
    "kernel",
    "launch",
    "launch_async",
    "local_array",
    "max_threads",
    "metrics",
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
]
