"""Listeners, spans and Chrome/Perfetto traces.

Nothing here costs a launch anything until a listener is added: the launch path then takes its
watched path (its one interceptor check).  A listener is any object with some of the methods
``on_launch_start(event)``, ``on_launch_end(event)``, ``on_compile(event)`` and
``on_span(event)``; :class:`Listener` is a base class with all four as no-ops.  A listener that
raises is reported once with a warning and detached; the launch goes on.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veda.errors import TelemetryError

_lock = threading.Lock()
#: The listeners in force; replaced (never mutated) so the launch path can read it without a lock.
listeners: tuple[Any, ...] = ()
#: Called with no arguments whenever a listener is added or removed (the launch core watches).
on_change: list[Callable[[], None]] = []

_HOOKS = ("on_launch_start", "on_launch_end", "on_compile", "on_span")


@dataclass(frozen=True)
class LaunchEvent:
    """One launch, as listeners see it.  Times are ``time.perf_counter()`` seconds."""

    kernel: str
    domain: tuple[int, ...]
    target: str
    threads: int
    schedule: str
    chunk: int
    thread_id: int
    start: float
    end: float | None = None
    error: str | None = None
    #: Threads per block of a GPU launch (0 on the CPU targets).
    block: int = 0

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True)
class CompileEvent:
    """One compilation (or load from the disk cache) of a kernel specialisation."""

    kernel: str
    signature: str
    cache_hit: bool
    thread_id: int
    start: float
    end: float


@dataclass(frozen=True)
class SpanEvent:
    """A ``veda.telemetry.span`` that ended."""

    name: str
    depth: int
    thread_id: int
    start: float
    end: float


class Listener:
    """A base class for listeners: every hook is a no-op, override the ones you need.

    Examples
    --------
    >>> import numpy as np, veda
    >>> class Slowest(veda.telemetry.Listener):
    ...     worst = 0.0
    ...     def on_launch_end(self, event):
    ...         self.worst = max(self.worst, event.seconds)
    >>> watch = veda.telemetry.add_listener(Slowest())
    >>> @veda.kernel
    ... def fill(i, x):
    ...     x[i] = 1.0
    >>> fill[10](np.zeros(10))
    >>> watch.worst > 0
    True
    >>> veda.telemetry.remove_listener(watch)
    """

    def on_launch_start(self, event: LaunchEvent) -> None:
        """A launch is about to run."""

    def on_launch_end(self, event: LaunchEvent) -> None:
        """A launch ended (``event.error`` says how, if it failed)."""

    def on_compile(self, event: CompileEvent) -> None:
        """A kernel specialisation was compiled or loaded from the disk cache."""

    def on_span(self, event: SpanEvent) -> None:
        """A :class:`span` ended."""


def _changed() -> None:
    for callback in on_change:
        callback()


def add_listener(listener: Any) -> Any:
    """Call ``listener``'s hooks on every launch start/end, compile and span; returns it.

    Examples
    --------
    >>> import numpy as np, veda
    >>> class Count:
    ...     n = 0
    ...     def on_launch_end(self, event):
    ...         self.n += 1
    >>> counter = veda.telemetry.add_listener(Count())
    >>> @veda.kernel
    ... def one(i, x):
    ...     x[i] = 1
    >>> one[3](np.zeros(3)); one[3](np.zeros(3))
    >>> counter.n
    2
    >>> veda.telemetry.remove_listener(counter)
    """
    global listeners
    if not any(callable(getattr(listener, h, None)) for h in _HOOKS):
        raise TelemetryError(
            f"a listener needs at least one of the methods {', '.join(_HOOKS)}; "
            f"{type(listener).__name__} has none"
        )
    with _lock:
        listeners = (*listeners, listener)
    _changed()
    return listener


def remove_listener(listener: Any) -> None:
    """Stop calling ``listener`` (no error if it was not added)."""
    global listeners
    with _lock:
        kept = tuple(x for x in listeners if x is not listener)
        changed = len(kept) != len(listeners)
        listeners = kept
    if changed:
        _changed()


def emit(hook: str, event: Any) -> None:
    for listener in listeners:
        method = getattr(listener, hook, None)
        if method is None:
            continue
        try:
            method(event)
        except Exception as exc:
            remove_listener(listener)
            warnings.warn(
                f"veda telemetry listener {listener!r} raised {type(exc).__name__}: {exc} in "
                f"{hook}; it has been detached",
                RuntimeWarning,
                stacklevel=2,
            )


# --------------------------------------------------------------------------------------------
# Spans

_span_stack = threading.local()


class span:
    """Time a region of code; nests per thread, and appears in traces around its launches.

    Examples
    --------
    >>> import veda
    >>> with veda.telemetry.span("step"):
    ...     with veda.telemetry.span("inner"):
    ...         pass
    """

    def __init__(self, name: str) -> None:
        self.name = str(name)
        self.start = 0.0

    def __enter__(self) -> span:
        stack = getattr(_span_stack, "names", None)
        if stack is None:
            stack = _span_stack.names = []
        stack.append(self.name)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        end = time.perf_counter()
        stack = _span_stack.names
        stack.pop()
        if listeners:
            emit(
                "on_span", SpanEvent(self.name, len(stack), threading.get_ident(), self.start, end)
            )


# --------------------------------------------------------------------------------------------
# Chrome / Perfetto trace


class trace:
    """Write a Chrome/Perfetto trace-event JSON file of the launches, compiles and spans inside.

    Open the file in https://ui.perfetto.dev or ``chrome://tracing``: one track per Python
    thread; each launch is a complete event whose args give the kernel, domain size, target,
    threads, schedule and chunk.

    Examples
    --------
    >>> import os, tempfile, numpy as np, veda
    >>> path = os.path.join(tempfile.mkdtemp(), "run.json")
    >>> @veda.kernel
    ... def fill(i, x):
    ...     x[i] = 2
    >>> with veda.telemetry.trace(path):
    ...     with veda.telemetry.span("step"):
    ...         fill[4](np.zeros(4))
    >>> import json; sorted({e["cat"] for e in json.load(open(path))["traceEvents"] if "cat" in e})
    ['compile', 'launch', 'span']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.events: list[dict[str, Any]] = []
        self._threads: dict[int, str] = {}
        self._origin = 0.0
        self._file: Any = None

    def _us(self, t: float) -> float:
        return (t - self._origin) * 1e6

    def _thread(self, ident: int) -> int:
        if ident not in self._threads:
            name = next((t.name for t in threading.enumerate() if t.ident == ident), str(ident))
            self._threads[ident] = name
        return ident

    def __enter__(self) -> trace:
        try:
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise TelemetryError(f"cannot write the trace to {self.path!r}: {exc}") from exc
        self._origin = time.perf_counter()
        add_listener(self)
        return self

    def __exit__(self, *exc: object) -> None:
        remove_listener(self)
        pid = os.getpid()
        meta = [
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
            for tid, name in self._threads.items()
        ]
        meta.append(
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "veda"}}
        )
        with self._file as fh:
            json.dump({"traceEvents": meta + self.events, "displayTimeUnit": "ns"}, fh)

    # listener hooks
    def on_launch_end(self, e: LaunchEvent) -> None:
        size = 1
        for n in e.domain:
            size *= n
        args = {
            "kernel": e.kernel,
            "domain": list(e.domain),
            "size": size,
            "target": e.target,
            "threads": e.threads,
            "schedule": e.schedule,
            "chunk": e.chunk,
        }
        if e.error:
            args["error"] = e.error
        self.events.append(
            {
                "name": e.kernel,
                "cat": "launch",
                "ph": "X",
                "pid": os.getpid(),
                "tid": self._thread(e.thread_id),
                "ts": self._us(e.start),
                "dur": self._us(e.end or e.start) - self._us(e.start),
                "args": args,
            }
        )

    def on_compile(self, e: CompileEvent) -> None:
        self.events.append(
            {
                "name": f"compile {e.kernel}",
                "cat": "compile",
                "ph": "X",
                "pid": os.getpid(),
                "tid": self._thread(e.thread_id),
                "ts": self._us(e.start),
                "dur": self._us(e.end) - self._us(e.start),
                "args": {"kernel": e.kernel, "signature": e.signature, "cache_hit": e.cache_hit},
            }
        )

    def on_span(self, e: SpanEvent) -> None:
        self.events.append(
            {
                "name": e.name,
                "cat": "span",
                "ph": "X",
                "pid": os.getpid(),
                "tid": self._thread(e.thread_id),
                "ts": self._us(e.start),
                "dur": self._us(e.end) - self._us(e.start),
                "args": {"depth": e.depth},
            }
        )
