"""The task runtime on the launch core: ``veda.submit``, ``veda.spawn``, ``veda.launch_async``,
``veda.scope``, priorities, deadlines and backpressure (``docs/tasks.md``).

``queue`` is the pure ordering (levels, deadlines, aging), ``executor`` the worker threads and
their metrics, ``api`` the public functions.
"""

from veda._tasks.api import (
    FALLBACK_ORDER,
    Scope,
    launch_async,
    scope,
    shutdown,
    spawn,
    submit,
    try_spawn,
    try_submit,
)
from veda._tasks.executor import Task, TaskMetrics
from veda._tasks.queue import AGE_STEP, Priority

__all__ = [
    "AGE_STEP",
    "FALLBACK_ORDER",
    "Priority",
    "Scope",
    "Task",
    "TaskMetrics",
    "launch_async",
    "scope",
    "shutdown",
    "spawn",
    "submit",
    "try_spawn",
    "try_submit",
]
