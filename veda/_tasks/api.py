"""Tasks on the launch core: ``veda.submit``, ``veda.spawn``, ``veda.launch_async``,
``veda.scope``, ``veda.shutdown``.  The executor is :mod:`veda._tasks.executor`; this module
checks the arguments, builds what a task runs (retries, fallbacks) and keeps the one executor of
the process (a fresh one in a forked child)."""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import math
import numbers
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from time import monotonic
from types import TracebackType
from typing import Any

import numpy as np

from veda import _registry
from veda._config import get_config, validate_launch_overrides
from veda._launch import Kernel, launch
from veda._tasks import executor as _executor
from veda._tasks.executor import Executor, Task, TaskMetrics
from veda._tasks.queue import Priority
from veda.errors import DeadlineExceeded, TaskError
from veda.telemetry import _snapshot

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "FALLBACK_ORDER",
    "Scope",
    "launch_async",
    "scope",
    "shutdown",
    "spawn",
    "submit",
    "try_spawn",
    "try_submit",
]

#: The targets ``on_error="fallback"`` moves through, in order, after the one that failed.
FALLBACK_ORDER = ("cuda", "parallel", "cpu")
_ON_ERROR = ("raise", "retry", "fallback")

# --------------------------------------------------------------------------------------------
# The process's executor


_executor_lock = threading.Lock()
_current: Executor | None = None


def current() -> Executor:
    """The process's executor, created with the first task (no thread starts before one)."""
    global _current
    ex = _current
    if ex is None:
        with _executor_lock:
            ex = _current
            if ex is None:
                ex = _current = Executor()
    return ex


def _after_fork_in_child() -> None:
    # The parent's workers do not exist here: a fresh executor, started by the child's first
    # task.  The parent's queued tasks are dropped in the child (their futures never finish
    # there); the locks are new, whoever held the old ones at the fork.
    global _current, _executor_lock
    _current = None
    _executor_lock = threading.Lock()
    _executor._local.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    ex = _current
    if ex is not None:  # running tasks are not waited for: exit never hangs on one
        ex.shutdown(wait=False, cancel_pending=True)


atexit.register(_at_exit)


class _Metrics:
    """The ``tasks`` section of ``veda.metrics()``."""

    def take(self) -> TaskMetrics | None:
        ex = _current
        return None if ex is None else ex.stats.take(ex.pending, ex.workers)

    def reset(self) -> None:
        ex = _current
        if ex is not None:
            ex.stats.reset()


_snapshot.sections["tasks"] = _Metrics()


def shutdown(wait: bool = True, cancel_pending: bool = False) -> None:
    """Stop the task executor: later submits raise :class:`veda.ShutdownError`.

    Parameters
    ----------
    wait : bool
        Wait until the queued tasks (unless cancelled) and the running ones have finished.
    cancel_pending : bool
        Cancel the tasks that have not started.

    Interpreter exit calls ``shutdown(wait=False, cancel_pending=True)`` itself, and workers
    are daemon threads, so exit never waits for a task.  Called from a task, it does not wait
    for the other workers (one of them may be waiting on this task).
    """
    for name, value in (("wait", wait), ("cancel_pending", cancel_pending)):
        if not isinstance(value, (bool, np.bool_)):
            raise TaskError(f"veda.shutdown: {name} must be True or False, not {value!r}")
    current().shutdown(wait=bool(wait), cancel_pending=bool(cancel_pending))


# --------------------------------------------------------------------------------------------
# Checking arguments


def _priority(where: str, priority: Any) -> Priority:
    if isinstance(priority, Priority):
        return priority
    if isinstance(priority, str):
        try:
            return Priority[priority.upper()]
        except KeyError:
            pass
    elif isinstance(priority, numbers.Integral) and not isinstance(priority, (bool, np.bool_)):
        try:
            return Priority(int(priority))
        except ValueError:
            pass
    names = ", ".join(p.name for p in Priority)
    raise TaskError(f"{where}: unknown priority={priority!r}; expected a veda.Priority ({names})")


#: The longest deadline: a year of seconds (a wait longer than the platform's time_t allows
#: would fail deep inside ``threading``).
MAX_SECONDS = 365 * 24 * 3600.0


def _seconds(value: Any) -> float | None:
    """``value`` as a float if it is a real number (NumPy's included, bool not), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _deadline(where: str, deadline: Any) -> float | None:
    """``deadline`` is seconds from now; returns the absolute ``time.monotonic()`` time."""
    if deadline is None:
        return None
    seconds = _seconds(deadline)
    if seconds is None:
        raise TaskError(
            f"{where}: deadline must be a number of seconds from now (int or float), "
            f"not {type(deadline).__name__}"
        )
    if math.isnan(seconds):
        raise TaskError(f"{where}: deadline must be a number of seconds, not NaN")
    if seconds <= 0:
        raise TaskError(
            f"{where}: deadline={deadline!r} is in the past; it counts seconds from now and "
            "must be positive"
        )
    if seconds > MAX_SECONDS:
        raise TaskError(
            f"{where}: deadline={deadline!r} is more than a year away; for no deadline, "
            "pass deadline=None"
        )
    return monotonic() + seconds


def _timeout(where: str, timeout: Any) -> float | None:
    """Seconds to wait, or None for as long as it takes (also for ``inf``)."""
    if timeout is None:
        return None
    seconds = _seconds(timeout)
    if seconds is None or not seconds >= 0:
        raise TaskError(f"{where}: timeout must be None or seconds >= 0, not {timeout!r}")
    return None if seconds > MAX_SECONDS else seconds


def _attempts(where: str, on_error: Any, retries: Any, fallback: bool) -> int:
    """How many times one target is tried."""
    if on_error not in _ON_ERROR or (on_error == "fallback" and not fallback):
        allowed = _ON_ERROR if fallback else _ON_ERROR[:2]
        raise TaskError(
            f"{where}: unknown on_error={on_error!r}; expected one of {', '.join(allowed)}"
            + ("" if fallback else " (fallback moves kernel launches: use veda.submit)")
        )
    if retries is not None and (
        isinstance(retries, (bool, np.bool_))
        or not isinstance(retries, numbers.Integral)
        or retries < 0
    ):
        raise TaskError(f"{where}: retries must be an integer >= 0, not {retries!r}")
    if on_error == "raise":
        if retries:
            raise TaskError(f"{where}: retries={retries} needs on_error='retry' or 'fallback'")
        return 1
    if on_error == "retry":
        return 1 + (1 if retries is None else int(retries))
    return 1 + int(retries or 0)


# --------------------------------------------------------------------------------------------
# What a task runs


def _retrying(ex: Executor, attempts: int, call: Callable[[], Any]) -> Callable[[], Any]:
    if attempts == 1:
        return call

    def run() -> Any:
        for attempt in range(attempts):
            try:
                return call()
            except Exception:
                if attempt == attempts - 1:
                    raise
                ex.stats.add("retries")
        raise AssertionError("unreachable")

    return run


def _fallbacks(target: str | None) -> list[str | None]:
    """The targets a failed launch moves to: those after ``target`` in :data:`FALLBACK_ORDER`
    (all but the first with no target set), skipping the ones unavailable here."""
    if target in FALLBACK_ORDER:
        later = FALLBACK_ORDER[FALLBACK_ORDER.index(target) + 1 :]
    else:
        later = FALLBACK_ORDER[1:]
    out: list[str | None] = []
    for name in later:
        t = _registry.lookup(name)
        if t is not None and t.unavailable_reason() is None:
            out.append(name)
    return out


def _kernel_call(
    ex: Executor,
    k: Kernel,
    domain: Any,
    args: tuple[Any, ...],
    overrides: dict[str, Any],
    attempts: int,
    fallback: bool,
) -> Callable[[], Any]:
    def on(target: str | None) -> Callable[[], Any]:
        settings = dict(overrides)
        if target is not None and target != overrides.get("target"):
            settings["target"] = target
            t = _registry.lookup(target)
            if t is not None:  # drop the settings the fallback target does not take
                settings = {
                    key: v for key, v in settings.items() if key == "target" or key in t.settings
                }
        return lambda: launch(k, domain, *args, **settings)

    first = _retrying(ex, attempts, on(overrides.get("target")))
    if not fallback:
        return first
    chain = [first] + [_retrying(ex, attempts, on(t)) for t in _fallbacks(overrides.get("target"))]

    def run() -> Any:
        for step, call in enumerate(chain):
            try:
                return call()
            except Exception:
                if step == len(chain) - 1:
                    raise
                ex.stats.add("fallbacks")
        raise AssertionError("unreachable")

    return run


def _queue(
    where: str,
    what: Any,
    call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any] | None],
    priority: Any,
    deadline: Any,
    timeout: Any,
    block: bool,
    quiet: bool = False,
) -> Task | None:
    # The defaults first: a trivial spawn's whole cost is a few microseconds of this.
    level = priority if priority.__class__ is Priority else _priority(where, priority)
    wait = None if timeout is None else _timeout(where, timeout)
    due = None if deadline is None else _deadline(where, deadline)
    ex = _current or current()
    fn, args, kwargs = call
    # The submitter's context: its veda.config scopes (and other context variables) apply.
    task = Task(ex, level, due, what, fn, args, kwargs, contextvars.copy_context())
    if not ex.put(task, get_config().max_pending, wait, block, quiet):
        task._drop()
        return None
    return task


def _prepare_submit(
    where: str,
    k: Any,
    domain: Any,
    args: tuple[Any, ...],
    on_error: Any,
    retries: Any,
    overrides: dict[str, Any],
) -> tuple[Any, tuple[Callable[[], Any], tuple[()], None]]:
    if not isinstance(k, Kernel):
        raise TaskError(f"{where}: kernel must be a @veda.kernel, not {k!r}")
    attempts = _attempts(where, on_error, retries, fallback=True)
    given = {key: v for key, v in overrides.items() if v is not None}
    if given:
        validate_launch_overrides(given)
    # Refuse now, in the submitter (a veda.LaunchError), a bad domain and arguments that do
    # not fit the kernel's parameters; their types and shapes are checked as the launch starts.
    k.form(len(k[domain].dims), len(args))
    call = _kernel_call(current(), k, domain, args, given, attempts, on_error == "fallback")
    return k, (call, (), None)


def _prepare_spawn(
    where: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], on_error: Any, retries: Any
) -> tuple[Any, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any] | None]]:
    if not callable(fn):
        raise TaskError(f"{where}: fn must be callable, not {fn!r}")
    if isinstance(fn, Kernel):
        raise TaskError(
            f"{where}: fn is the veda kernel {fn.name!r}: queue its launch with "
            "veda.submit(kernel, domain, *args)"
        )
    if on_error == "raise" and retries is None:
        return fn, (fn, args, kwargs or None)  # an empty dict would be one more object per task
    attempts = _attempts(where, on_error, retries, fallback=False)
    return fn, (_retrying(current(), attempts, functools.partial(fn, *args, **kwargs)), (), None)


# --------------------------------------------------------------------------------------------
# The public functions


def submit(
    kernel: Kernel,
    domain: Any,
    *args: Any,
    priority: Priority | int | str = Priority.NORMAL,
    deadline: float | None = None,
    timeout: float | None = None,
    on_error: str = "raise",
    retries: int | None = None,
    target: str | None = None,
    threads: int | None = None,
    schedule: str | None = None,
    chunk: int | None = None,
) -> Task:
    """Queue a launch of ``kernel`` over ``domain``; returns a :class:`concurrent.futures.Future`
    of its result.

    The launch runs through :func:`veda.launch` on a veda worker thread, under the
    ``veda.config`` scopes in force where ``submit`` was called.

    Parameters
    ----------
    kernel, domain, *args
        As for :func:`veda.launch`.
    priority : veda.Priority, int or str
        ``REALTIME`` starts first, ``BACKGROUND`` last (with aging: see ``docs/tasks.md``).
    deadline : float, optional
        Seconds from now by which the launch must have *started*; if it has not, the future
        fails with :class:`veda.DeadlineExceeded` and the launch never runs.  A launch that
        has started is never interrupted.
    timeout : float, optional
        How long to wait for room when ``veda.config(max_pending=...)`` tasks are queued
        already, then raise :class:`veda.QueueFull` (None: as long as it takes).
    on_error : {"raise", "retry", "fallback"}
        ``"retry"`` runs a failed launch again, ``retries`` times (default 1); ``"fallback"``
        moves it to the next target of ``cuda -> parallel -> cpu`` (each tried ``1 + retries``
        times).  Both run the whole launch again, so they suit kernels whose outputs depend
        only on their inputs.
    target, threads, schedule, chunk
        As for :func:`veda.launch`.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def fill(i, out, v):
    ...     out[i] = v
    >>> out = np.zeros(8)
    >>> veda.submit(fill, 8, out, 2.0, priority=veda.Priority.HIGH).result(timeout=60)
    >>> out.sum()
    np.float64(16.0)
    """
    name, call = _prepare_submit(
        "veda.submit",
        kernel,
        domain,
        args,
        on_error,
        retries,
        {"target": target, "threads": threads, "schedule": schedule, "chunk": chunk},
    )
    task = _queue("veda.submit", name, call, priority, deadline, timeout, True)
    assert task is not None
    return task


def try_submit(
    kernel: Kernel,
    domain: Any,
    *args: Any,
    priority: Priority | int | str = Priority.NORMAL,
    deadline: float | None = None,
    on_error: str = "raise",
    retries: int | None = None,
    target: str | None = None,
    threads: int | None = None,
    schedule: str | None = None,
    chunk: int | None = None,
) -> Task | None:
    """:func:`submit` that never waits: None when the queue is full.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def one(i, out):
    ...     out[i] = 1.0
    >>> out = np.zeros(4)
    >>> f = veda.try_submit(one, 4, out)
    >>> f is None or f.result(timeout=60) is None
    True
    """
    name, call = _prepare_submit(
        "veda.try_submit",
        kernel,
        domain,
        args,
        on_error,
        retries,
        {"target": target, "threads": threads, "schedule": schedule, "chunk": chunk},
    )
    return _queue("veda.try_submit", name, call, priority, deadline, None, False)


def spawn(
    fn: Callable[..., Any],
    /,
    *args: Any,
    priority: Priority | int | str = Priority.NORMAL,
    deadline: float | None = None,
    timeout: float | None = None,
    on_error: str = "raise",
    retries: int | None = None,
    **kwargs: Any,
) -> Task:
    """Queue ``fn(*args, **kwargs)`` on a veda worker thread; returns a Future of its result.

    ``priority``, ``deadline``, ``timeout``, ``on_error`` (``"raise"`` or ``"retry"``) and
    ``retries`` are as for :func:`submit` (and so are not passed on to ``fn``).

    Examples
    --------
    >>> import veda
    >>> veda.spawn(pow, 2, 10).result(timeout=60)
    1024
    """
    name, call = _prepare_spawn("veda.spawn", fn, args, kwargs, on_error, retries)
    task = _queue("veda.spawn", name, call, priority, deadline, timeout, True)
    assert task is not None
    return task


def try_spawn(
    fn: Callable[..., Any],
    /,
    *args: Any,
    priority: Priority | int | str = Priority.NORMAL,
    deadline: float | None = None,
    on_error: str = "raise",
    retries: int | None = None,
    **kwargs: Any,
) -> Task | None:
    """:func:`spawn` that never waits: None when the queue is full.

    Examples
    --------
    >>> import veda
    >>> f = veda.try_spawn(sum, [1, 2, 3])
    >>> f is None or f.result(timeout=60) == 6
    True
    """
    name, call = _prepare_spawn("veda.try_spawn", fn, args, kwargs, on_error, retries)
    return _queue("veda.try_spawn", name, call, priority, deadline, None, False)


async def launch_async(
    kernel: Kernel,
    domain: Any,
    *args: Any,
    priority: Priority | int | str = Priority.NORMAL,
    deadline: float | None = None,
    on_error: str = "raise",
    retries: int | None = None,
    target: str | None = None,
    threads: int | None = None,
    schedule: str | None = None,
    chunk: int | None = None,
) -> Any:
    """Launch ``kernel`` on a veda worker and await its result without blocking the event loop.

    Cancelling the awaiting asyncio task cancels the launch if it has not started (a running
    launch finishes, and its result is dropped).  While the queue is full, this waits in the
    event loop (sleeping, never blocking it) for room.

    Examples
    --------
    >>> import asyncio, numpy as np, veda
    >>> @veda.kernel(reduce="sum")
    ... def total(i, x):
    ...     return x[i]
    >>> asyncio.run(veda.launch_async(total, 4, np.arange(4.0)))
    np.float64(6.0)
    """
    what, call = _prepare_submit(
        "veda.launch_async",
        kernel,
        domain,
        args,
        on_error,
        retries,
        {"target": target, "threads": threads, "schedule": schedule, "chunk": chunk},
    )
    due = _deadline("veda.launch_async", deadline)  # counted from this call, not a retry
    delay = 0.0005
    while True:
        left = None if due is None else due - monotonic()
        if left is not None and left <= 0:
            current().stats.add("deadline_missed")
            raise DeadlineExceeded(
                f"veda.launch_async: the deadline of {kernel.name} passed while the queue was "
                "full; it never ran"
            )
        task = _queue("veda.launch_async", what, call, priority, left, None, False, quiet=True)
        if task is not None:
            break
        if delay == 0.0005:  # polled: a full queue counts once per launch, not at every look
            current().stats.add("queue_full")
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.02)
    return await asyncio.wrap_future(task)


# --------------------------------------------------------------------------------------------
# Scopes


class Scope:
    """Structured concurrency: tasks started in the block are waited for at its end.

    Use :func:`scope`.  ``s.spawn`` and ``s.submit`` take the arguments of :func:`veda.spawn`
    and :func:`veda.submit` and return their futures.  At the end of the block the scope waits
    for every child (a veda worker runs the queued children meanwhile, so scopes nest inside
    tasks to any depth).  The first child to fail cancels the children that have not started, unless
    ``cancel_on_error=False``; then the block raises an :class:`ExceptionGroup` of every
    child's exception (cancelled children are not failures), with the block's own exception
    first if it raised one too.  ``KeyboardInterrupt`` in the block or while waiting cancels
    the children that have not started and propagates at once.
    """

    def __init__(self, cancel_on_error: bool = True) -> None:
        if not isinstance(cancel_on_error, bool):
            raise TaskError(
                f"veda.scope: cancel_on_error must be True or False, not {cancel_on_error!r}"
            )
        self.cancel_on_error = cancel_on_error
        self._lock = threading.Lock()
        self._children: list[Task] = []
        self._open = 0
        self._failed = False
        self._closing = False
        self._all_done: Future[None] = Future()
        self._entered = False

    # -- children -------------------------------------------------------------------------
    def spawn(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task:
        """:func:`veda.spawn` in this scope."""
        return self._adopt(lambda: spawn(fn, *args, **kwargs))

    def submit(self, kernel: Kernel, domain: Any, *args: Any, **kwargs: Any) -> Task:
        """:func:`veda.submit` in this scope."""
        return self._adopt(lambda: submit(kernel, domain, *args, **kwargs))

    def _adopt(self, start: Callable[[], Task]) -> Task:
        if not self._entered:
            raise TaskError(
                "veda.scope: start tasks inside the with block (with veda.scope() as s)"
            )
        with self._lock:
            if self._all_done.done():
                raise TaskError("veda.scope: the block has ended; its scope takes no more tasks")
            self._open += 1
        try:
            task = start()
        except BaseException:
            self._settle()
            raise
        with self._lock:
            self._children.append(task)
            failed = self._failed
        if failed and self.cancel_on_error:
            task.cancel()
        task.add_done_callback(self._child_done)
        return task

    def _child_done(self, task: Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            with self._lock:
                first = not self._failed
                self._failed = True
            if first and self.cancel_on_error:
                self.cancel()
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._open -= 1
            done = self._closing and self._open == 0
        if done and not self._all_done.done():
            self._all_done.set_result(None)

    def cancel(self) -> int:
        """Cancel the children that have not started; returns how many were cancelled."""
        with self._lock:
            children = list(self._children)
        return sum(1 for t in children if t.cancel())

    # -- the block ------------------------------------------------------------------------
    def __enter__(self) -> Scope:
        if self._entered:
            raise TaskError("veda.scope: a scope is entered once; make a new veda.scope()")
        self._entered = True
        return self

    def _close(self) -> None:
        with self._lock:
            self._closing = True
            done = self._open == 0
        if done and not self._all_done.done():
            self._all_done.set_result(None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None and not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
            self.cancel()
            return False
        if exc is not None and self.cancel_on_error:
            self.cancel()
        self._close()
        try:
            ex = current()
            with self._lock:
                children = list(self._children)
            for t in children:
                if t._inherited() and not t.done():  # forked inside the block
                    raise _executor._inherited_error(t)
            ex.run_awaited(children)  # those not started yet run here, in the waiting thread
            ex.wait_for((self._all_done,))
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self._raise(exc)

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None and not isinstance(exc, Exception):
            self.cancel()
            return False
        if exc is not None and self.cancel_on_error:
            self.cancel()
        self._close()
        try:
            await asyncio.shield(asyncio.wrap_future(self._all_done))
        except asyncio.CancelledError:
            self.cancel()
            raise
        return self._raise(exc)

    def _raise(self, exc: BaseException | None) -> bool:
        with self._lock:
            children = list(self._children)
        errors = [e for t in children if not t.cancelled() and (e := t.exception()) is not None]
        if not errors:
            return False  # the block's own exception, if any, propagates as it is
        n = len(errors)
        if exc is not None:
            errors.insert(0, exc)
        # An ExceptionGroup, or a BaseExceptionGroup where a child raised KeyboardInterrupt.
        raise BaseExceptionGroup(
            f"veda.scope: {n} of {len(children)} task{'s' if len(children) != 1 else ''} failed",
            errors,
        )


def scope(cancel_on_error: bool = True) -> Scope:
    """A block whose tasks are all finished when it ends (``with`` or ``async with``).

    See :class:`Scope` for what happens on failures.

    Examples
    --------
    >>> import veda
    >>> with veda.scope() as s:
    ...     a = s.spawn(sum, [1, 2])
    ...     b = s.spawn(max, 4, 5)
    >>> a.result(), b.result()
    (3, 5)
    >>> try:
    ...     with veda.scope() as s:
    ...         _ = s.spawn(int, "x")
    ... except Exception as group:  # an ExceptionGroup of every child's exception
    ...     print(group.exceptions)
    (ValueError("invalid literal for int() with base 10: 'x'"),)
    """
    return Scope(cancel_on_error)
