"""The task executor: lazily started worker threads over one :class:`~veda._tasks.queue.TaskQueue`.

* **Lazy.**  No thread exists before the first task; workers start as tasks arrive, up to
  :attr:`Executor.max_workers`, and are daemon threads, so interpreter exit never waits for them.
* **Backpressure.**  At most ``max_pending`` tasks wait in the queue (the submitter's
  ``veda.config(max_pending=...)``); a blocking submit waits up to its timeout for room.
* **Deadlines.**  A task whose deadline passes while it is queued fails with
  :class:`veda.DeadlineExceeded` and never runs: a reaper thread (started with the first
  deadline) expires it on time, and a worker checks again as it starts one.  A running task is
  never interrupted.
* **Waiting.**  A thread that waits (without a timeout) on tasks that have not started runs
  them itself.  A worker that waits on a future, a scope or room in the queue also runs
  queued *descendants* of the tasks it is running meanwhile (:meth:`Executor._descendant`),
  nested on its stack up to :data:`MAX_HELP_DEPTH` deep, and nothing else: a task run on top
  of a waiting one, that waited in turn on the task beneath it, could never finish.  A worker
  with nothing of its own to run blocks, and the pool starts another worker in its place, up
  to :data:`EXTRA_WORKERS` more than ``max_workers``.

Lock discipline: no future is completed or cancelled while the executor's lock is held (a
future's callbacks may take the lock).
"""

from __future__ import annotations

import _thread
import concurrent.futures
import contextvars
import dataclasses
import heapq
import itertools
import logging
import math
import numbers
import os
import queue
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from time import monotonic
from typing import Any

from veda._hardware import cpu as _hw_cpu
from veda._hardware.signals import Waiters, held_interrupts
from veda._tasks.queue import AGE_STEP, Priority, TaskQueue
from veda.errors import DeadlineExceeded, QueueFull, ShutdownError, TaskError
from veda.telemetry._histogram import LogHistogram

__all__ = ["EXTRA_WORKERS", "MAX_HELP_DEPTH", "Executor", "Stats", "Task", "TaskMetrics"]

#: Nested helps on one worker's stack before a waiting worker blocks instead of helping.  Each
#: level of helping costs about ten Python frames; 24 stays far inside the default recursion
#: limit (1000) however deep the user's own code is.
MAX_HELP_DEPTH = 24
#: How many workers beyond ``max_workers`` may be started in place of blocked ones.
EXTRA_WORKERS = 256
#: Queued tasks per priority level (the newest) a waiting worker looks through for one it
#: may run (Executor._descendant).
HELP_SCAN = 64


class _Local(threading.local):
    """Per thread: the executor whose worker this is, how deep tasks nest on its stack (a
    worker helping, or a thread running an awaited task), and a worker's ``[completed,
    failed]`` counts.  Class defaults, so that looking one up in a thread that never set it
    is a plain read instead of a caught ``AttributeError`` (0.5 us each)."""

    executor: Executor | None = None
    depth = 0
    counts: list[int] | None = None
    #: The task this thread runs now (the innermost, when tasks nest on its stack).
    task: Task | None = None


_local = _Local()
_LOG = logging.getLogger("veda.tasks")
_FUTURES_LOG = logging.getLogger("concurrent.futures")  # where Future logs its callbacks
#: This process's id, kept up to date across os.fork (os.getpid() is a system call).
_process = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _process.__setitem__(0, os.getpid()))


def default_workers() -> int:
    """Worker threads of the executor: as ``concurrent.futures.ThreadPoolExecutor`` chooses
    (CPUs + 4, at most 32): kernels release the GIL, and a few more than the CPUs keep them
    busy while other tasks run Python."""
    return min(32, (os.cpu_count() or 1) + 4)


#: The main thread waits in slices of this many seconds, so that Ctrl-C is seen while it waits
#: (a signal delivered to another thread does not wake a blocked lock acquire).
_SLICE = 0.1
#: The longest single wait on a lock or condition: longer ones overflow the platform's time_t
#: deep inside ``threading``; waits loop in such steps instead.
_LONGEST = 3600.0


def _wait_interruptibly(pending: list[Future[Any]], timeout: float | None) -> None:
    end = None if timeout is None else monotonic() + timeout
    while True:
        step = _SLICE if end is None else min(_SLICE, end - monotonic())
        if step <= 0:
            return
        not_done = concurrent.futures.wait(pending, step).not_done
        if not not_done:
            return
        pending = list(not_done)


_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
_sleep = time.sleep
#: How _settle waits for a lock's holder once yielding did not hand it the GIL: naps of this
#: many seconds (about 60 us each on Linux, with the timer slack), at most _NAPS of them.
_NAP = 1e-5
_NAPS = 200


def _settle(lock: Any) -> None:
    """Before ``with lock``: while another thread holds ``lock``, let it have the GIL, first by
    yielding (4 times), then by short naps (:data:`_NAP`, up to :data:`_NAPS`), instead of
    blocking on the lock at once.

    A thread that blocks on a contended ``threading.Lock`` is woken *owning* it, and then
    waits for the GIL; the thread that holds the GIL soon wants the lock again and must block
    in turn.  Once started, this convoy hands the GIL over at every entry to the lock, around
    all the threads that want it.  The holder of the executor's lock needs only the GIL to
    leave its (pure Python) critical section; a thread that takes the lock while it holds the
    GIL keeps the convoy from starting.

    A yield alone often hands the GIL straight back (the holder is still waking when the
    yielding thread takes it again): with up to 32 yields and then a blocking acquire, trivial
    tasks still fell into the convoy in some rounds (one context switch per task, 30,000 to
    40,000 tasks per second against 90,000 to 100,000 without it).  A nap releases the GIL for
    long enough that the holder surely takes it: 72,000 to 86,000 tasks per second in every
    round, against 40,000 to 48,000 before (bench/bench_tasks.py, 2 cores).  Naps are rare: the
    lock is held for microseconds, so a thread naps only where the holder lost the GIL inside
    its critical section.  The lock itself stays a plain ``threading.Lock`` taken by ``with``,
    whose acquire and release run in C: a ``KeyboardInterrupt`` cannot leave it half taken.
    """
    if not lock.locked():
        return
    for _ in range(4):
        _yield()
        if not lock.locked():
            return
    for _ in range(_NAPS):
        _sleep(_NAP)
        if not lock.locked():
            return


def _checked_timeout(timeout: Any) -> float | None:
    """A wait's ``timeout``: None (no limit) or seconds; ``inf`` is None, a negative one 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or math.isnan(timeout):
        raise TaskError(f"timeout={timeout!r}: expected a number of seconds or None")
    seconds = float(timeout)
    return None if seconds == math.inf else max(0.0, seconds)


def _inherited_error(task: Task) -> ShutdownError:
    return ShutdownError(
        f"task {task.name} was queued or running in the process this one was forked from; "
        "it never runs or finishes in the forked child (submit it again here)"
    )


class _Condition(_thread.RLock):  # type: ignore[misc]
    """The condition of a :class:`Task`: what ``threading.Condition`` does for a future, in one
    object instead of eight.

    ``threading.Condition`` keeps its lock's bound methods and a deque of waiters as attributes:
    eight objects that the garbage collector tracks, per future.  A program that holds 50,000
    futures at once then spends more time in collections than in its tasks (10-25 us per task
    here, bench/bench_tasks.py).  This is the lock itself (a C ``RLock``: acquire, release and
    ``with`` run in C) with, once somebody waits, a list of waiters: the subset of the
    Condition interface that ``concurrent.futures`` uses on a future's ``_condition``.
    """

    __slots__ = ("_waiters",)

    def wait(self, timeout: float | None = None) -> bool:
        waiter = _allocate_lock()
        waiter.acquire()
        waiters: list[Any] | None = getattr(self, "_waiters", None)
        if waiters is None:
            waiters = []
            self._waiters = waiters
        waiters.append(waiter)
        saved = self._release_save()  # type: ignore[attr-defined]
        woken = False
        try:
            if timeout is None:
                woken = waiter.acquire()
            else:
                woken = waiter.acquire(True, timeout) if timeout > 0 else waiter.acquire(False)
            return woken
        finally:
            self._acquire_restore(saved)  # type: ignore[attr-defined]
            if not woken:
                try:
                    waiters.remove(waiter)
                except ValueError:  # notified between the timeout and here
                    pass

    def notify_all(self) -> None:
        waiters = getattr(self, "_waiters", None)
        if waiters:
            for waiter in waiters:
                waiter.release()
            waiters.clear()


#: What ``Future.__init__`` sets.  Task sets the same itself (with a :class:`_Condition`),
#: where this Python's Future sets exactly these; otherwise it calls ``Future.__init__``.
_FUTURE_FIELDS = {"_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"}
_SLIM_FUTURE = set(Future().__dict__) == _FUTURE_FIELDS
_PENDING = Future()._state
_RUNNING = concurrent.futures._base.RUNNING
_CANCELLED = concurrent.futures._base.CANCELLED
_CANCELLED_AND_NOTIFIED = concurrent.futures._base.CANCELLED_AND_NOTIFIED
_FINISHED = concurrent.futures._base.FINISHED
_DONE = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))
_seq = itertools.count()


class _Lineage:
    """A task's place in the tree of who queued whom: its parent's lineage.  Tasks point at
    lineages, not at each other, so a queued child does not keep its finished parent (and
    the parent's result) alive."""

    __slots__ = ("parent",)

    def __init__(self, parent: _Lineage | None) -> None:
        self.parent = parent


class Task(Future[Any]):
    """A veda task: a :class:`concurrent.futures.Future` with a priority and a deadline.

    Cancelling a task that has not started takes it out of the queue at once.  Waiting on it
    (:meth:`result`, :meth:`exception`) from a veda worker runs its queued descendants meanwhile;
    a ``KeyboardInterrupt`` while waiting cancels the task if it has not started.

    A task is also its own entry in the executor's queue (the attributes of
    :class:`veda._tasks.queue.Item`), and holds what it runs until it starts.

    Attributes
    ----------
    priority : veda.Priority
    deadline : float or None
        The ``time.monotonic()`` time by which it must have started.
    name : str
        What it runs (the kernel's or function's name).
    """

    def __init__(
        self,
        executor: Executor,
        priority: Priority,
        deadline: float | None,
        what: Any,
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        if _SLIM_FUTURE:
            self._condition = _Condition()  # type: ignore[assignment]
            self._state = _PENDING
            self._result = None
            self._exception = None
            # Future's two lists exist only once something waits or is called back: two
            # objects fewer per task for the garbage collector (see _waiters).
            self._waiting: list[Any] | None = None
            self._done_callbacks: list[Any] | None = None
        else:  # pragma: no cover - a Python whose Future has other fields
            super().__init__()
        self._executor = executor
        self.priority = priority
        self.level: int = priority
        self.deadline = deadline
        self._what = what
        # The queue's fields (veda._tasks.queue.Item); "taken" until it is queued.
        self.enqueued = 0.0
        self.seq = next(_seq)
        self.taken = True
        # What it runs: context.run(fn, *args, **kwargs); dropped when it starts.
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._context = context
        self._watch: list[Any] | None = None  # its entry in the executor's deadline heap
        #: Where it comes from: the lineage of the task that queued it (None when queued from
        #: outside any task); and its own, made when it queues a task (Executor._descendant).
        running = _local.task
        self._parent: _Lineage | None = None if running is None else running._lineage()
        self._node: _Lineage | None = None

    # -- Future's waiters and callbacks, made when first needed --------------------------
    # A program that holds 50,000 futures has the garbage collector go through all of them
    # again and again while it queues more: each object a task holds costs there (with
    # 50,000 held, the collections were about 3 us of a 6 us spawn here).  Future's list of waiters
    # (which concurrent.futures.wait and as_completed append to) and its done callbacks are
    # made when something first waits or adds one, and Future's three methods that read the
    # waiters are redone here on ``_waiting`` (what they do, unchanged since Python 3.8).
    # Only where Task sets up its Future fields itself (_SLIM_FUTURE).

    @property
    def _waiters(self) -> list[Any]:
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = []
        return waiting

    @_waiters.setter
    def _waiters(self, value: list[Any]) -> None:
        self._waiting = value

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        if self._done_callbacks is None:
            with self._condition:
                if self._done_callbacks is None:
                    self._done_callbacks = []
        super().add_done_callback(fn)

    def _invoke_callbacks(self) -> None:
        # Called once, when it is done.  As Future's, an exception in a callback is logged;
        # unlike Future's, one that is not an Exception (SystemExit) stops no later callback
        # (a scope's count of open children, a waiting worker's wake-up) and is raised after
        # them.  The callbacks are dropped: a scope's refers to the scope, which refers to its
        # children, a reference cycle that kept every child's result alive until the garbage
        # collector found it.
        callbacks = self._done_callbacks
        if not callbacks:
            return
        escaped: BaseException | None = None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _FUTURES_LOG.exception("exception calling callback for %r", self)
            except BaseException as exc:
                escaped = escaped or exc
        callbacks.clear()
        if escaped is not None:
            raise escaped

    def set_running_or_notify_cancel(self) -> bool:
        if not _SLIM_FUTURE:  # pragma: no cover
            return super().set_running_or_notify_cancel()
        with self._condition:
            state = self._state
            if state == _PENDING:
                self._state = _RUNNING
                return True
            if state == _CANCELLED:
                self._state = _CANCELLED_AND_NOTIFIED
                for waiter in self._waiting or ():
                    waiter.add_cancelled(self)
                return False  # cancel() notified the condition
        _FUTURES_LOG.critical("Future %s in unexpected state: %s", id(self), state)
        raise RuntimeError("Future in unexpected state")

    def set_result(self, result: Any) -> None:
        if not _SLIM_FUTURE:  # pragma: no cover
            return super().set_result(result)
        with self._condition:
            if self._state in _DONE:
                raise concurrent.futures.InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = _FINISHED
            for waiter in self._waiting or ():
                waiter.add_result(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        if not _SLIM_FUTURE:  # pragma: no cover
            return super().set_exception(exception)
        with self._condition:
            if self._state in _DONE:
                raise concurrent.futures.InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = _FINISHED
            for waiter in self._waiting or ():
                waiter.add_exception(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def _lineage(self) -> _Lineage:
        node = self._node
        if node is None:
            node = self._node = _Lineage(self._parent)
        return node

    def _inherited(self) -> bool:
        """Whether this task belongs to the process this one was forked from: it never runs
        or finishes here (its executor's workers and locks are the parent's)."""
        return self._executor._pid != _process[0]

    def _drop(self) -> None:
        """Forget what it runs (started, cancelled or expired): no reference cycle through a
        closure is left for the garbage collector to find, and the executor's deadline watch
        lets go of it."""
        self._fn = self._args = self._kwargs = self._context = None  # type: ignore[assignment]
        watch = self._watch
        if watch is not None:
            watch[2] = None
            self._watch = None

    @property
    def name(self) -> str:
        what = self._what
        if isinstance(what, str):
            return what
        try:
            return str(getattr(what, "__qualname__", None) or getattr(what, "name", None) or what)
        except Exception:  # a proxy whose attributes raise: a name must never fail
            return f"<{type(what).__name__} object>"

    def cancel(self) -> bool:
        if self._inherited():  # the parent's executor and its lock are not this process's
            return super().cancel()
        with held_interrupts():  # Ctrl-C must not leave it cancelled but not notified
            if not super().cancel():
                return False
            if self._executor._discard(self):
                # Out of the queue: no worker will see it, so it is notified here, as a worker
                # would (concurrent.futures.wait and as_completed count it done only then).
                self.set_running_or_notify_cancel()
            return True

    # A task that fails in the thread that waits on it (Executor.run_awaited) keeps, in its
    # exception's traceback, every frame that thread was in: the methods that wait let go of
    # the task in their frames (``del self``) as they leave, or the task would hold itself
    # (task -> exception -> traceback -> frame -> task) until the garbage collector found it.

    def result(self, timeout: float | None = None) -> Any:
        try:
            if self._state != _FINISHED:
                self._wait(timeout)
            if self._state == _FINISHED and self._exception is None:  # final: no lock needed
                return self._result
            return super().result(timeout=0)
        finally:
            del self

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            if self._state != _FINISHED:
                self._wait(timeout)
            return super().exception(timeout=0)
        finally:
            del self

    def _wait(self, timeout: float | None) -> None:
        try:
            if self._state in _DONE:  # a done future's state is final: read without the lock
                return
            timeout = _checked_timeout(timeout)
            if self._inherited():
                raise _inherited_error(self)
            try:
                if self._executor.in_worker():
                    self._executor.wait_for((self,), timeout)  # runs it here if it is queued
                    return
                if timeout is None:
                    self._executor.run_awaited((self,))
                    if self.done():
                        return
                self._wait_here(timeout)
            except KeyboardInterrupt:
                self.cancel()
                raise
        finally:
            del self

    def _wait_here(self, timeout: float | None) -> None:
        """Wait on the future itself (the main thread in slices, so that Ctrl-C is seen)."""
        main = threading.current_thread() is threading.main_thread()
        end = None if timeout is None else monotonic() + timeout
        while not self.done():
            step = _LONGEST if end is None else min(_LONGEST, end - monotonic())
            if main:
                step = min(_SLICE, step)
            if step is not None and step <= 0:
                return
            try:
                super().exception(timeout=step)
                return
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                return

    def __repr__(self) -> str:
        return f"<veda task {self.name} {self.priority.name} {self._state.lower()}>"


@dataclasses.dataclass(frozen=True)
class TaskMetrics:
    """The ``tasks`` section of :func:`veda.metrics`: counters since the last reset, the queue
    now, and each priority's queue wait (seconds from submit to start)."""

    submitted: int
    completed: int
    failed: int
    cancelled: int
    retries: int
    fallbacks: int
    deadline_missed: int
    queue_full: int
    pending: int
    workers: int
    #: Per priority name: ``count``, ``sum``, ``p50``, ``p90``, ``p99`` (seconds; NaN if none).
    queue_wait: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def families(self) -> list[tuple[str, str, str, list[tuple[str, str, float]]]]:
        """Prometheus metric families: (name, type, help, [(suffix, labels, value)])."""
        out: list[tuple[str, str, str, list[tuple[str, str, float]]]] = []
        helps = {
            "submitted": "Tasks queued.",
            "completed": "Tasks that returned.",
            "failed": "Tasks that raised (after their retries and fallbacks).",
            "cancelled": "Tasks cancelled before they started.",
            "retries": "Attempts repeated after a failure (on_error='retry').",
            "fallbacks": "Launches moved to the next target (on_error='fallback').",
            "deadline_missed": "Tasks whose deadline passed before they started.",
            "queue_full": "Submits refused because the queue was full.",
        }
        for name, help_ in helps.items():
            out.append(
                (f"veda_tasks_{name}_total", "counter", help_, [("", "", getattr(self, name))])
            )
        out.append(
            ("veda_tasks_pending", "gauge", "Tasks waiting in the queue.", [("", "", self.pending)])
        )
        samples: list[tuple[str, str, float]] = []
        for level, q in self.queue_wait.items():
            for qname, label in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
                samples.append(("", f'priority="{level}",quantile="{label}"', q[qname]))
            samples.append(("_sum", f'priority="{level}"', q["sum"]))
            samples.append(("_count", f'priority="{level}"', q["count"]))
        out.append(
            ("veda_task_queue_wait_seconds", "summary", "Seconds from submit to start.", samples)
        )
        return out


_COUNTERS = (
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "retries",
    "fallbacks",
    "deadline_missed",
    "queue_full",
)


class Stats:
    """The executor's counters and per-priority queue waits.  Waits are appended to a list
    (atomic under the GIL) and folded into histograms at a snapshot or every 4096 tasks.

    ``completed`` and ``failed``, counted once per task, are counted by each worker in its own
    ``[completed, failed]`` list (:meth:`register`): no lock per task.  The other counters
    (and tasks run by a thread that waited on them) change under :attr:`lock`, ``submitted``
    under the executor's lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self._workers: dict[int, list[int]] = {}  # by id(): equal lists are not the same
        self._retired = [0, 0]
        self._base = [0, 0]
        self.waits: list[list[float]] = [[] for _ in Priority]
        self.histograms = [LogHistogram() for _ in Priority]
        self.sums = [0.0] * len(Priority)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def register(self) -> list[int]:
        """The ``[completed, failed]`` counts of a new worker; only that worker changes them."""
        counts = [0, 0]
        with self.lock:
            self._workers[id(counts)] = counts
        return counts

    def retire(self, counts: list[int]) -> None:
        """A worker ends: its counts stay in the totals."""
        with self.lock:
            del self._workers[id(counts)]
            self._retired[0] += counts[0]
            self._retired[1] += counts[1]

    def _ran(self) -> list[int]:
        """Under the lock: ``[completed, failed]`` since the last reset."""
        totals = list(self._retired)
        for counts in self._workers.values():
            totals[0] += counts[0]
            totals[1] += counts[1]
        return [totals[0] - self._base[0], totals[1] - self._base[1]]

    def waited(self, level: int, seconds: float) -> None:
        waits = self.waits[level]
        waits.append(seconds)
        if len(waits) > 4096:
            self.fold()

    def fold(self) -> None:
        with self.lock:
            for level, waits in enumerate(self.waits):
                n = len(waits)
                if n:
                    values = waits[:n]
                    del waits[:n]  # what other threads appended meanwhile stays
                    self.histograms[level].add_many(values)
                    self.sums[level] += math.fsum(values)

    def reset(self) -> None:
        self.fold()
        with self.lock:
            self.counts = dict.fromkeys(_COUNTERS, 0)
            ran = self._ran()
            self._base = [self._base[0] + ran[0], self._base[1] + ran[1]]
            self.histograms = [LogHistogram() for _ in Priority]
            self.sums = [0.0] * len(Priority)

    def take(self, pending: int, workers: int) -> TaskMetrics:
        self.fold()
        with self.lock:
            waits = {
                p.name: {
                    "count": float(h.count),
                    "sum": s,
                    "p50": h.quantile(0.5),
                    "p90": h.quantile(0.9),
                    "p99": h.quantile(0.99),
                }
                for p, h, s in zip(Priority, self.histograms, self.sums)
            }
            counts = dict(self.counts)
            ran = self._ran()  # what workers counted; counts: what ran outside them
            counts["completed"] += ran[0]
            counts["failed"] += ran[1]
            return TaskMetrics(**counts, pending=pending, workers=workers, queue_wait=waits)


class Executor:
    """Worker threads over one priority queue; see the module docstring.

    Parameters
    ----------
    max_workers : int, optional
        Workers that run tasks (:func:`default_workers` by default).
    age_step : float
        Seconds a queued task waits to climb one priority level
        (:data:`veda._tasks.queue.AGE_STEP`).
    """

    def __init__(self, max_workers: int | None = None, age_step: float = AGE_STEP) -> None:
        self.max_workers = max_workers or default_workers()
        self.stats = Stats()
        self._lock = threading.Lock()
        self._pid = _process[0]
        #: Idle workers wait for a token here, outside the lock: a condition notified under
        #: the lock would wake a worker only to block it again on that lock (it measured 3x
        #: slower submit -> result than concurrent.futures, bench/bench_tasks.py).  A token
        #: is put under the lock; the woken worker needs the GIL before it needs the lock.
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        #: Threads waiting for room in the queue (a condition that keeps the lock whole under
        #: Ctrl-C: the main thread's submit waits here).
        self._space = Waiters(self._lock)
        self._helping = threading.Condition(self._lock)
        self._reaping = threading.Condition(self._lock)
        self._queue: TaskQueue[Task] = TaskQueue(age_step)
        self._threads: set[threading.Thread] = set()
        self._alive = 0
        #: Workers idle (or about to be) that no token was put for yet.
        self._idle = 0
        #: Workers woken that have not yet come back to the queue (see _more_hands).
        self._waking = 0
        self._blocked = 0
        self._helpers = 0
        self._deadlines: list[list[Any]] = []  # [deadline, seq, task or None]
        self._reaper: threading.Thread | None = None
        self._shutdown = False
        self._started = 0

    # -- state ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Tasks waiting in the queue."""
        return len(self._queue)

    @property
    def workers(self) -> int:
        """Worker threads alive now (0 before the first task)."""
        return self._alive

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown

    def in_worker(self) -> bool:
        """Whether the calling thread is one of this executor's workers."""
        return _local.executor is self

    # -- queueing -------------------------------------------------------------------------
    def put(
        self,
        task: Task,
        max_pending: int,
        timeout: float | None,
        block: bool,
        quiet: bool = False,
    ) -> bool:
        """Queue ``task``; False when the queue is full and ``block`` is false.  Blocks up to
        ``timeout`` seconds for room (None: as long as it takes), then raises
        :class:`veda.QueueFull`.  A refused non-blocking put counts in the metrics unless
        ``quiet``."""
        _settle(self._lock)
        with self._lock:
            if self._shutdown:
                raise ShutdownError(f"cannot queue task {task.name}: veda.shutdown() was called")
            if len(self._queue) >= max_pending:
                if not block:
                    if not quiet:
                        self.stats.add("queue_full")
                    return False
                self._wait_for_room(task, max_pending, timeout)
            task.enqueued = monotonic()
            self._queue.push(task)
            self.stats.counts["submitted"] += 1  # every writer holds the executor's lock
            if task.deadline is not None:
                self._watch_deadline(task)
            if not self._waking:  # else the worker woken earlier does this (_worker)
                self._more_hands()
            if self._helpers:
                self._helping.notify_all()
        return True

    def _more_hands(self) -> None:
        """Under the lock, with tasks queued: wake an idle worker, or else start one if there
        is room (``max_workers``, not counting blocked workers).

        One wake-up is in flight at a time: a put that finds a worker woken and not yet at the
        queue leaves it to that worker, which calls this again if it leaves more queued
        behind it (:meth:`_worker`).  A burst of puts then costs one wake-up per worker that
        takes a task instead of one per task: each is a thread switch, and trivial tasks ran
        10-25% faster without the surplus ones (bench/bench_tasks.py, 2 cores).  Starting a
        worker is not throttled: a burst of long tasks gets its workers at once.
        """
        if self._idle:
            self._idle -= 1
            self._waking += 1
            # In the lock, and one C call: an interrupt cannot come between counting the
            # worker awake and waking it (a SimpleQueue never blocks a put).
            self._wake.put(None)
        elif (
            self._alive - self._blocked < self.max_workers
            and self._alive < self.max_workers + EXTRA_WORKERS
        ):
            self._start_worker()

    def _wait_for_room(self, task: Task, max_pending: int, timeout: float | None) -> None:
        """Under the lock: wait until the queue has room.

        A worker that waits without a timeout runs queued descendants of its tasks meanwhile
        (:meth:`_descendant`): a task that fans out runs its own children rather than blocking
        a worker per level.  A worker that waits otherwise is replaced meanwhile (a task that
        fans out cannot deadlock on its own backpressure).
        """
        end = None if timeout is None else monotonic() + timeout
        main = threading.current_thread() is threading.main_thread()
        helping = timeout is None and self.in_worker()
        while len(self._queue) >= max_pending:
            if self._shutdown:
                raise ShutdownError(f"cannot queue task {task.name}: veda.shutdown() was called")
            now = monotonic()
            if task.deadline is not None and now >= task.deadline:
                # A deadline bounds the wait for room too: the task could only miss it.
                self.stats.add("deadline_missed")
                raise DeadlineExceeded(
                    f"cannot queue task {task.name}: its deadline passed while the queue was "
                    f"full ({len(self._queue)} tasks pending, max_pending={max_pending}); it "
                    "never ran"
                )
            remaining = None if end is None else end - now
            if remaining is not None and remaining <= 0:
                self.stats.add("queue_full")
                raise QueueFull(
                    f"cannot queue task {task.name}: {len(self._queue)} tasks are pending "
                    f"(max_pending={max_pending}) and no room came within timeout={timeout}"
                )
            if task.deadline is not None:
                left = task.deadline - now
                remaining = left if remaining is None else min(remaining, left)
            child = self._descendant() if helping else None
            if child is not None:
                self._run_nested(child)
                continue
            # A worker that waits here is blocked: another may start in its place, or a queue
            # kept full by the tasks of blocked workers would never drain.
            blocked = self.in_worker()
            if blocked:
                self._blocked += 1
                self._replace_blocked()
            step = _LONGEST if remaining is None else min(remaining, _LONGEST)
            if main:  # in slices: a SIGINT that another thread received is seen here too
                step = min(step, _SLICE)
            try:
                self._space.wait(step)
            finally:
                if blocked:
                    self._blocked -= 1

    def _watch_deadline(self, item: Task) -> None:
        assert item.deadline is not None
        heap = self._deadlines
        if len(heap) > 2 * len(self._queue) + 64:  # started tasks linger until their deadline
            heap[:] = [e for e in heap if not getattr(e[2], "taken", True)]
            heapq.heapify(heap)
        # A list, whose task the task clears when it starts or leaves the queue (Task._drop):
        # an entry that lingers here until its deadline keeps no finished task alive.
        entry = [item.deadline, item.seq, item]
        item._watch = entry
        heapq.heappush(heap, entry)
        if self._reaper is None:
            self._reaper = threading.Thread(
                target=self._reap, name="veda-task-deadlines", daemon=True
            )
            self._reaper.start()
        elif heap[0][2] is item:
            self._reaping.notify()

    def _discard(self, task: Task) -> bool:
        """A cancelled task leaves the queue; False if it was no longer there (then whoever
        took it out notifies it)."""
        with self._lock:
            if not self._queue.remove(task):
                return False
            self._room()
        task._drop()
        self.stats.add("cancelled")
        return True

    def _room(self) -> None:
        """Under the lock: wake every thread waiting for room."""
        if self._space:
            self._space.notify_all()

    def _next(self) -> Task | None:
        """Under the lock: the next item to start, or None."""
        item = self._queue.pop(monotonic())
        if item is not None:
            self._room()
        return item

    # -- running --------------------------------------------------------------------------
    def _start_worker(self) -> None:
        self._alive += 1
        self._started += 1
        t = threading.Thread(target=self._worker, name=f"veda-task-{self._started}", daemon=True)
        self._threads.add(t)
        t.start()

    def _worker(self) -> None:
        _local.executor = self
        _hw_cpu.task_thread.on = True  # its parallel regions go to veda's region threads
        _local.depth = 0
        _local.counts = counts = self.stats.register()
        me = threading.current_thread()
        lock = self._lock
        woken = False
        while True:
            _settle(lock)
            with lock:
                if woken:
                    self._waking -= 1
                    woken = False
                item = self._next()
                if item is None:
                    if self._shutdown or self._alive - self._blocked > self.max_workers:
                        self._alive -= 1
                        self._threads.discard(me)
                        self.stats.retire(counts)
                        return
                    self._idle += 1
                elif len(self._queue) and not self._waking:
                    self._more_hands()  # more is queued: another worker takes it
            if item is None:
                self._wake.get()  # a token: work was queued, or shutdown
                woken = True
                continue
            try:
                self._run(item, counts)
            except BaseException:  # from a done callback (SystemExit, say): the worker lives on
                _LOG.exception("veda task worker: a done callback raised")

    def _run(
        self, task: Task, counts: list[int] | None, gate: held_interrupts | None = None
    ) -> None:
        """Run ``task``, taken out of the queue.  A worker passes its own ``[completed,
        failed]`` list (no lock); a thread that waits on the task (:meth:`run_awaited`) passes
        None (counted under the stats lock) and the ``gate`` that holds Ctrl-C off all but the
        task's own code."""
        call = self._start(task)
        if call is None:
            return
        fn, args, kwargs, context = call
        outer = _local.task  # the task beneath this one on this thread's stack, if any
        _local.task = task
        if gate is not None:
            gate.open = True  # Ctrl-C now interrupts the task's code, as in any call
        try:
            result = context.run(fn, *args, **kwargs) if kwargs else context.run(fn, *args)
        except BaseException as exc:  # a task's failure, KeyboardInterrupt included, is its own
            if gate is not None:
                gate.open = False
            _local.task = outer
            if counts is None:
                self.stats.add("failed")
            else:
                counts[1] += 1
            try:
                task.set_exception(exc)
            finally:
                # The exception's traceback holds this frame: without these the task would
                # hold itself (task -> exception -> traceback -> frame -> task), and what it
                # ran, until the garbage collector found the cycle.
                del task, call, fn, args, kwargs, context, outer
        else:
            if gate is not None:
                gate.open = False
            _local.task = outer
            if counts is None:
                self.stats.add("completed")
            else:
                counts[0] += 1
            task.set_result(result)

    def _start(self, task: Task) -> tuple[Any, Any, Any, Any] | None:
        """Start ``task``: what it runs, or None when it was cancelled or missed its deadline."""
        call = task._fn, task._args, task._kwargs, task._context
        task._drop()  # nothing it ran stays alive with its future
        if not task.set_running_or_notify_cancel():
            self.stats.add("cancelled")  # between leaving the queue and here
            return None
        started = monotonic()
        self.stats.waited(task.level, started - task.enqueued)
        if task.deadline is not None and started > task.deadline:
            self._missed(task, started - task.deadline)
            return None
        return call

    def _expire(self, task: Task, now: float) -> None:
        task._drop()
        if task.set_running_or_notify_cancel():
            self._missed(task, now - (task.deadline or now))
        else:
            self.stats.add("cancelled")

    def _missed(self, task: Task, late: float) -> None:
        self.stats.add("deadline_missed")
        task.set_exception(
            DeadlineExceeded(
                f"task {task.name}: its deadline passed {late:.3g} s before it could start; "
                "it never ran"
            )
        )

    def _reap(self) -> None:
        """Expire queued tasks at their deadlines."""
        heap = self._deadlines
        with self._lock:
            while not self._shutdown:
                while heap and getattr(heap[0][2], "taken", True):  # one read: None or done
                    heapq.heappop(heap)
                if not heap:
                    self._reaping.wait()
                    continue
                now = monotonic()
                if heap[0][0] > now:
                    self._reaping.wait(min(heap[0][0] - now, _LONGEST))
                    continue
                expired = []
                while heap and heap[0][0] <= now:
                    task = heapq.heappop(heap)[2]
                    if task is not None and self._queue.remove(task):
                        expired.append(task)
                if expired:
                    self._room()
                    self._lock.release()
                    try:
                        for task in expired:
                            try:
                                self._expire(task, now)
                            except BaseException:  # a done callback's; the reaper lives on
                                _LOG.exception("veda task deadlines: a done callback raised")
                    finally:
                        self._lock.acquire()

    # -- waiting --------------------------------------------------------------------------
    def run_awaited(self, futures: Iterable[Future[Any]]) -> None:
        """Run in the calling thread those of ``futures`` that are this executor's tasks and
        still queued: a thread about to wait on a task has nothing better to do, and running
        the task itself saves the two thread switches of a hand-over (and a worker).

        Only waits without a timeout do this (a task run here could take longer than a
        timeout).  A ``KeyboardInterrupt`` in a task run here (Ctrl-C while the main thread runs
        it) fails the task and propagates to the waiter as well; an interrupt that lands in the
        bookkeeping around the task fails the task with it too, so no future is left running.
        Nested past :data:`MAX_HELP_DEPTH` tasks on one stack, in a forked child (whose
        executor this is not), it runs nothing.
        """
        depth = _local.depth
        if depth >= MAX_HELP_DEPTH or self._pid != _process[0]:
            return
        worker = self.in_worker()
        f = None
        try:
            for f in futures:
                if not isinstance(f, Task) or f._executor is not self or f.taken:
                    continue
                # In the main thread Ctrl-C can land anywhere: from taking the task out of the
                # queue to its future's done callbacks (a scope's count of open children), only
                # the task's own code may be interrupted; an interrupt noted elsewhere is raised
                # as the gate closes, once the task's state is whole.
                gate = held_interrupts()
                with gate:
                    with self._lock:
                        if not self._queue.remove(f):
                            continue
                        self._room()
                    _local.depth = depth + 1
                    try:
                        self._run(f, _local.counts if worker else None, gate)
                    finally:
                        _local.depth = depth
                if isinstance(f._exception, KeyboardInterrupt):
                    raise f._exception
        finally:
            del f, futures  # no cycle through this frame (see Task.result)

    def wait_for(self, futures: Iterable[Future[Any]], timeout: float | None = None) -> None:
        """Wait until every future is done or ``timeout`` seconds passed.  Without a timeout
        the waiting thread runs those still queued itself (:meth:`run_awaited`), and a worker
        of this executor runs queued descendants of its task meanwhile (:meth:`_help`); a
        worker that only waits blocks, and another may start in its place."""
        pending: list[Future[Any]] = []
        try:
            pending = [f for f in futures if not f.done()]
            if not pending:
                return
            inherited = next((f for f in pending if isinstance(f, Task) and f._inherited()), None)
            if inherited is not None:
                raise _inherited_error(inherited)
            if timeout is None:
                self.run_awaited(pending)
                pending = [f for f in pending if not f.done()]
                if not pending:
                    return
            if not self.in_worker():
                if threading.current_thread() is threading.main_thread():
                    _wait_interruptibly(pending, timeout)
                else:
                    concurrent.futures.wait(pending, timeout)
                return
            if timeout is None:
                self._help(pending)
                return
            end = monotonic() + timeout
            # Bounded by a timeout (which a helped task could run past): block, and let
            # another worker start in this one's place.
            with self._lock:
                self._blocked += 1
                self._replace_blocked()
            try:
                while pending and (end is None or monotonic() < end):
                    step = _LONGEST if end is None else min(_LONGEST, end - monotonic())
                    pending = list(concurrent.futures.wait(pending, max(0.0, step)).not_done)
            finally:
                with self._lock:
                    self._blocked -= 1
        finally:
            del futures, pending  # no cycle through this frame (see Task.result)

    def _help(self, pending: list[Future[Any]]) -> None:
        """A worker waits (without a timeout) until every one of ``pending`` is done, running
        queued descendants of its tasks meanwhile; with none to run (or nested too deep) it
        counts as blocked, so that another worker may start in its place."""
        for f in pending:
            f.add_done_callback(self._poke)
        with self._lock:
            while not all(f.done() for f in pending):
                child = self._descendant()
                if child is not None:
                    self._run_nested(child)
                    continue
                self._blocked += 1
                self._helpers += 1
                self._replace_blocked()
                try:
                    if self._stuck():
                        raise TaskError(
                            f"task {_local.task.name if _local.task else '?'}: it waits on "
                            f"queued tasks that no worker can start: all {self._alive} workers "
                            "wait on tasks and the pool is at its limit (max_workers + "
                            f"{EXTRA_WORKERS}); tasks that each wait on the next nest deeper "
                            f"than about {MAX_HELP_DEPTH * self._alive} levels here.  Wait "
                            "on fewer levels (a loop, or return the futures and wait outside)"
                        )
                    self._helping.wait(_LONGEST)
                finally:
                    self._blocked -= 1
                    self._helpers -= 1

    def _stuck(self) -> bool:
        """Under the lock, for a worker about to block waiting on tasks: whether queued
        descendants of its task can never start, because every worker waits on tasks without a
        timeout and no other may start (a chain of tasks each waiting on the next, deeper than
        the pool holds).
        Then blocking would hang for ever; the wait fails instead (:meth:`_help`)."""
        # Only workers that wait here, without a timeout, count: one waiting with a timeout
        # (or for room) comes back by itself and may run the queued work then.
        return (
            len(self._queue) > 0
            and not self._idle
            and not self._waking
            and self._alive - self._helpers <= 0
            and self._alive >= self.max_workers + EXTRA_WORKERS
            and self._descendant(take=False, deep=True) is not None
        )

    def _poke(self, _: Future[Any]) -> None:
        with self._lock:
            self._helping.notify_all()

    def _descendant(self, take: bool = True, deep: bool = False) -> Task | None:
        """Under the lock: a queued task descended from the one this worker runs (queued by
        it, or by one of its descendants), taken out of the queue; None if there is none (or
        the worker's stack is :data:`MAX_HELP_DEPTH` deep).

        Only those, and only of the innermost task on the worker's stack: a waiting worker
        that ran any other queued task could bury the task it waits in under one that waits
        on that task, and neither would ever finish (everything lower on the stack waits, in
        the end, on the innermost task).  A descendant waits on its ancestor only if handed
        the ancestor's future.  The newest :data:`HELP_SCAN` queued tasks of each priority
        level are looked at.  With ``take`` false the task stays queued; with ``deep``, one is
        found however deep the stack is.
        """
        running = _local.task
        mine = None if running is None else running._node  # None: it queued nothing
        if mine is None or (_local.depth >= MAX_HELP_DEPTH and not deep) or not len(self._queue):
            return None

        def descends(item: Task) -> bool:
            p = item._parent
            while p is not None:
                if p is mine:
                    return True
                p = p.parent
            return False

        found = self._queue.find(descends, HELP_SCAN)
        if found is not None and take:
            self._queue.remove(found)
            self._room()
        return found

    def _run_nested(self, item: Task) -> None:
        """Under the lock, a waiting worker runs ``item`` on its stack (the lock released)."""
        _local.depth += 1
        self._lock.release()
        try:
            self._run(item, _local.counts)
        except BaseException:  # a done callback's, not the waiting task's
            _LOG.exception("veda task worker: a done callback raised")
        finally:
            self._lock.acquire()
            _local.depth -= 1

    def _replace_blocked(self) -> None:
        """Under the lock, for a worker about to block: start another in its place if tasks
        are queued and no worker is idle (at most EXTRA_WORKERS beyond max_workers)."""
        if (
            len(self._queue)
            and not self._idle
            and self._alive - self._blocked < self.max_workers
            and self._alive < self.max_workers + EXTRA_WORKERS
        ):
            self._start_worker()

    # -- the end --------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Refuse new tasks; cancel the queued ones if asked; wait for the workers if asked."""
        with self._lock:
            self._shutdown = True
            dropped = self._queue.items() if cancel_pending else []
            for item in dropped:
                self._queue.remove(item)
            self._room()
            for cond in (self._helping, self._reaping):
                cond.notify_all()
            idle, self._idle = self._idle, 0
            self._waking += idle
            threads = list(self._threads)
        for _ in range(idle):
            self._wake.put(None)
        for task in dropped:
            task._drop()
            if task.cancel():  # out of the queue already: notified here
                task.set_running_or_notify_cancel()
                self.stats.add("cancelled")
        # A task joining the workers could deadlock: one of them may be waiting on it.  Tasks
        # run in workers, and in threads that waited on them (nested on their stacks).
        if wait and not self.in_worker() and not _local.depth:
            for t in threads:
                t.join()
