"""Live telemetry: per-kernel metrics, load-imbalance profiles, listeners, spans, traces.

Counters are always on and cheap (two clock reads and one buffer append per launch);
``veda.config(telemetry=False)`` switches them off in a scope.  ``veda.config(profile=True)``
runs parallel launches through a separately compiled loop that times each worker from inside,
for the load-imbalance figure.

Examples
--------
>>> import numpy as np, veda
>>> @veda.kernel
... def scale(i, x):
...     x[i] *= 2
>>> veda.telemetry.reset()
>>> for _ in range(3):
...     scale[100](np.ones(100))
>>> m = veda.metrics().kernel("scale")
>>> m.launches, m.errors, m.elements
(3, 0, 300)
"""

from __future__ import annotations

import threading
from typing import Any

from veda._config import get_config
from veda._hardware import gpu as _gpu
from veda._kernel import checks as _checks
from veda.telemetry import _events, _snapshot
from veda.telemetry._events import (
    CompileEvent,
    LaunchEvent,
    Listener,
    SpanEvent,
    add_listener,
    remove_listener,
    span,
    trace,
)
from veda.telemetry._registry import registry as _REGISTRY
from veda.telemetry._server import MetricsServer, serve
from veda.telemetry._snapshot import ConfigMetrics, Figures, KernelMetrics, Snapshot

__all__ = [
    "CompileEvent",
    "ConfigMetrics",
    "Figures",
    "KernelMetrics",
    "LaunchEvent",
    "Listener",
    "MetricsServer",
    "Snapshot",
    "SpanEvent",
    "add_listener",
    "metrics",
    "remove_listener",
    "reset",
    "serve",
    "span",
    "trace",
]


def metrics() -> Snapshot:
    """An immutable snapshot of every kernel's telemetry (also ``veda.metrics()``)."""
    return Snapshot.take(_REGISTRY)


def reset() -> None:
    """Zero all launch, compile and per-kernel transfer figures, and the task counters
    (kernels keep their code)."""
    _REGISTRY.reset()
    _gpu._per_kernel.clear()
    for source in list(_snapshot.sections.values()):
        source.reset()


def _compiled(
    owner: Any, seconds: float, hit: bool, signature: str, start: float, end: float
) -> None:
    """Count a compile (or a load from the disk cache) and tell the listeners."""
    if not get_config().telemetry:
        return
    _REGISTRY.compiled(owner.module_name, owner.name, seconds, hit)
    if _events.listeners:
        _events.emit(
            "on_compile",
            CompileEvent(owner.name, signature, hit, threading.get_ident(), start, end),
        )


_checks.compile_listeners.append(_compiled)
