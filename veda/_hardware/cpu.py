"""The CPUs: worker threads, affinity, the Numba threading layer, the machine's fingerprint.

Threading layers
----------------
Numba picks a threading layer the first time a parallel region runs: TBB if it loads, else
OpenMP, else its own "workqueue" layer.  OpenMP and TBB accept parallel regions from several
Python threads at once; workqueue aborts the process when two threads enter one together, so on
that layer veda serialises entry into parallel regions with :data:`region_lock`.  OpenMP does not
survive ``fork()``: use the ``spawn`` start method for process pools on that layer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import queue
import sys
import threading
import time
from _thread import allocate_lock as _allocate_lock
from typing import Any

import numba

from veda._hardware.signals import Waiters

__all__ = [
    "affinity",
    "affinity_reason",
    "cpu_model",
    "fingerprint",
    "fingerprint_id",
    "max_threads",
    "seconds_per_tick",
    "serialises_parallel_regions",
    "threading_layer",
]

#: Threading layers that take parallel regions from several Python threads at once.
THREAD_SAFE_LAYERS = ("tbb", "omp")


def max_threads() -> int:
    """The number of worker threads Numba starts (``NUMBA_NUM_THREADS``)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def affinity() -> int | None:
    """How many CPUs this process may run on, or None where the platform does not say
    (:func:`affinity_reason` says why).

    Linux: ``os.sched_getaffinity``; Windows and the BSDs: psutil's ``cpu_affinity``; macOS
    has no CPU affinity for processes.
    """
    return _affinity()[0]


def affinity_reason() -> str | None:
    """Why :func:`affinity` is None on this platform, or None when it is known."""
    return _affinity()[1]


def _affinity() -> tuple[int | None, str | None]:
    if hasattr(os, "sched_getaffinity"):  # Linux
        try:
            return len(os.sched_getaffinity(0)), None
        except OSError as exc:  # pragma: no cover - a kernel that refuses its own process
            return None, f"sched_getaffinity failed: {exc}"
    if sys.platform == "darwin":
        return None, "macOS has no CPU affinity for processes: threads may run on every core"
    import psutil

    try:
        cpus = psutil.Process().cpu_affinity()  # Windows, FreeBSD
    except (AttributeError, OSError, psutil.Error) as exc:
        why = "psutil has no cpu_affinity here" if isinstance(exc, AttributeError) else exc
        return None, f"{sys.platform} does not report this process's CPU affinity ({why})"
    if not cpus:  # pragma: no cover - an empty set means "all" on some platforms
        return None, f"{sys.platform} reported an empty CPU affinity"
    return len(cpus), None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The processor's model name: ``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, else what
    :func:`platform.processor` says (Windows: family, model and vendor), else the machine type.

    Part of the machine's fingerprint (the tuning cache's file name), so read once.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("model name"):  # x86; ARM kernels do not say
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    elif sys.platform == "darwin":
        import subprocess

        try:
            found = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            if found.returncode == 0 and found.stdout.strip():
                return found.stdout.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def fingerprint(version: str) -> dict[str, Any]:
    """What identifies this machine for remembered tuning decisions (with veda's ``version``)."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "numba_threads": max_threads(),
        "numba": numba.__version__,
        "veda": version,
    }


def fingerprint_id(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


_layer_lock = threading.Lock()
_layer: str | None = None
#: Held around parallel regions on a layer that is not thread-safe.
region_lock = threading.Lock()
#: Whether parallel regions must hold :data:`region_lock` (set with the layer).
serialise = False


class Grant:
    """The threads a :class:`ThreadBudget` lent one launch (0 until it has them)."""

    __slots__ = ("crowded", "threads")

    def __init__(self) -> None:
        self.threads = 0
        #: Whether other launches held (or waited for) threads when this one asked.
        self.crowded = False


class ThreadBudget:
    """The machine's threads (:func:`max_threads`), lent to the parallel launches whose thread
    count the dispatcher chose, so that launches running at once from several Python threads
    (tasks, say) share the cores instead of oversubscribing them.

    A launch asks for the threads its decision wants and gets as many as are free; when none
    is free it waits until a launch in flight gives its threads back.  So the threads lent add
    up to at most the machine, and a launch that finds the machine busy runs after the others
    rather than beside them.  Launches never wait on each other otherwise (a kernel cannot
    launch another), so this cannot deadlock.

    Interrupt-safe: a ``KeyboardInterrupt`` is raised between bytecodes, on entry to a Python
    function or after a call returns, never inside a call of a C function.  So :meth:`take`
    registers the caller's :class:`Grant` with one call of ``set.add``, its claim stored in it
    before (on the locked path the claim is dropped and the threads stored later), and a launch
    gives its grant back with one call of ``set.discard`` (:attr:`give`, not a Python method):
    whatever is interrupted, nothing stays lent.  A waiter that misses
    the wake-up of an interrupted giver looks again within :data:`POLL` seconds.

    Examples
    --------
    >>> budget = ThreadBudget(total=lambda: 4)
    >>> a, b, c = Grant(), Grant(), Grant()
    >>> budget.take(a, 3), budget.take(b, 3), budget.lent()
    (3, 1, 4)
    >>> budget.give(a); budget.take(c, 2), budget.lent()
    (2, 3)
    """

    #: Seconds between two looks of a waiting launch.  Long: :meth:`wake` wakes a waiter, so
    #: the looks matter only after a giver was interrupted between giving and waking (or a
    #: waiter woken by it was interrupted before taking the threads), and each
    #: look takes a core from the region running meanwhile (at 5 ms, three launches waiting
    #: behind a 16 ms region cost it about 2%, bench/bench_tasks.py).
    POLL = 0.05

    def __init__(self, total: Any = None) -> None:
        self._machine = max_threads if total is None else total
        self._total = self._machine
        self._reset()

    def _reset(self) -> None:
        # Also a forked child's fresh start: the parent's launches in flight do not exist there.
        self._lock = threading.Lock()
        # Not a threading.Condition: a parallel launch in the main thread may wait here, and
        # Ctrl-C must leave the lock whole (see Waiters).
        self._returned = Waiters(self._lock)
        self._grants: set[Grant] = set()
        #: Give a grant back (nothing, if :meth:`take` never finished): one C call.
        self.give = self._grants.discard
        self._waiting = 0
        self._short = threading.local()

    def cap(self, threads: int | None) -> None:
        """Lend at most ``threads`` threads in all from now on (None: the machine's,
        :func:`max_threads`): a process that holds a share of the machine, a Dask worker of
        that many threads, say.

        >>> budget = ThreadBudget(total=lambda: 8)
        >>> budget.cap(2); budget.take(Grant(), 4)
        2
        """
        machine = self._machine
        self._total = machine if threads is None else (lambda: min(threads, machine()))

    def lent(self) -> int:
        """Threads lent to the launches in flight now."""
        return sum(g.threads for g in self._grants.copy())  # copy: atomic, gives run lock-free

    def in_flight(self) -> int:
        """Launches holding (or waiting for) threads now."""
        return len(self._grants)

    def take(self, grant: Grant, wanted: int) -> int:
        """Lend up to ``wanted`` threads to ``grant`` (waiting while none is free); returns
        how many."""
        # The common case, without the lock (0.2 us of 0.45): nothing lent and nobody waiting
        # (a waiter holds a grant).  The threads are claimed before the grant is seen, so a
        # launch that registers after this one counts them; one that registered before
        # makes the set hold two, and this launch takes the locked path below.
        grants = self._grants
        total = self._total()
        grant.threads = wanted if wanted <= total else total
        grants.add(grant)
        if len(grants) == 1:
            if grant.threads < wanted:
                self._short.launch = True
            return grant.threads
        # Its claim dropped before the lock: a woken waiter that holds the lock meanwhile must
        # not count it (no launch takes the path above while this grant is registered).
        grant.threads = 0
        with self._lock:
            grant.crowded = True
            # Counted before reading what is free: a launch that gives its threads back after
            # that read sees a waiter and wakes it (counted after, the wake-up was lost).
            self._waiting += 1
            try:
                while True:
                    free = self._total() - self.lent()
                    if free > 0:
                        grant.threads = min(wanted, free)
                        if grant.threads < wanted:
                            self._short.launch = True
                        elif free > wanted and self._waiting > 1:
                            self._returned.notify()  # threads left over: the next waiter's
                        return grant.threads
                    self._returned.wait(self.POLL)
            finally:
                self._waiting -= 1

    def wake(self) -> None:
        """After :attr:`give`: wake a launch waiting for threads, if any.

        One, not all: the woken launch takes every free thread it wants and wakes the next
        if some are left (:meth:`take`).  Waking them all made every waiter but one take the
        GIL and the lock only to wait again, on the cores the new launch's region needed (four
        concurrent parallel launches on 2 cores, bench/bench_tasks.py)."""
        if self._waiting:
            with self._lock:
                self._returned.notify()
            # Let the woken launch take the GIL and the threads: a thread that launches again
            # at once (a graph replayed in a loop) took them back first, every time, and the
            # waiter starved.
            time.sleep(0)

    def shorted(self) -> bool:
        """Whether a launch of the calling thread got fewer threads than it asked for since
        the last call (which clears it).  The dispatcher does not credit an exploring launch
        that ran on a share smaller than its candidate's thread count to that candidate."""
        return bool(self._short.__dict__.pop("launch", False))


#: The budget of the parallel launches whose thread count the dispatcher chose.
budget = ThreadBudget()


class _RegionThread:
    """One thread of :class:`RegionThreads`: runs the regions handed to it, one at a time."""

    __slots__ = ("_jobs", "_pool")

    def __init__(self, pool: RegionThreads, number: int) -> None:
        self._pool = pool
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=f"veda-region-{number}", daemon=True).start()

    def _serve(self) -> None:
        jobs, pool = self._jobs, self._pool
        while True:
            fn, params, threads, reply = jobs.get()
            try:
                if get_threads() != threads:
                    set_threads(threads)
                reply[1] = fn(*params)
            except BaseException as exc:  # the caller raises it
                reply[2] = exc
            finally:
                done = reply[0]
                del fn, params, reply  # an idle thread keeps nothing of its last region alive
                pool._idle.append(self)  # list.append: one C call, safe without the lock
                done.release()


class RegionThreads:
    """A few threads that run the parallel regions of launches made from veda's task workers.

    Each Python thread that enters a parallel region has an OpenMP team of its own (libgomp
    keeps one per thread), and a team that has been idle for some tens of milliseconds
    starts slowly: four parallel launches made one after another from four threads took 1.20x
    the time of the same four from one thread, four from concurrent tasks 1.14x without the
    hand-over below and 1.04x with it (``bench/bench_tasks.py``, 2026-12-02, 2 cores).  Task
    workers rotate (each task runs on whichever worker is free), so a task's launch that finds
    other launches holding or waiting for threads (:attr:`Grant.crowded`) hands its region to
    these threads, the most recently used first, whose teams are warm.  A lone task's launches,
    and regions of one thread, run where they are: a handed-over region costs two thread
    wake-ups.  So does a launch's first region, which may compile: compile times are taken off
    the launch's time in the thread that launched it (``veda._launch``).  Where no region
    thread can be started (interpreter exit, a thread limit), the region runs in place.

    At most as many are started as regions ever ran at once, which the
    :class:`ThreadBudget` bounds by the machine's threads.  The main thread never hands a
    region over: Ctrl-C must interrupt its launches where they run.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also a forked child's fresh start: the parent's threads do not exist there.
        self._idle: list[_RegionThread] = []
        self._lock = threading.Lock()
        self._started = 0

    def started(self) -> int:
        """Region threads started so far."""
        return self._started

    def run(self, fn: Any, params: tuple[Any, ...], threads: int) -> Any:
        """``fn(*params)`` on a region thread with ``threads`` Numba threads; its result, or
        its exception raised here."""
        try:
            server = self._idle.pop()  # the most recently used: its team is the warmest
        except IndexError:
            try:
                with self._lock:
                    server = _RegionThread(self, self._started + 1)
                    self._started += 1
            except RuntimeError:  # no thread to be had (interpreter exit, a thread limit)
                return fn(*params)  # here, on the caller's own team
        done = _allocate_lock()
        done.acquire()
        reply: list[Any] = [done, None, None]
        server._jobs.put((fn, params, threads, reply))
        done.acquire()
        _, out, exc = reply
        if exc is None:
            return out
        reply.clear()
        try:
            raise exc
        finally:  # the traceback holds this frame: no cycle through it keeps the arguments
            del exc, params, fn


class _TaskThread(threading.local):
    """Per thread: whether this is one of veda's task workers (their regions are handed to
    :data:`regions`)."""

    on = False


#: Set by veda's task workers for themselves.
task_thread = _TaskThread()
#: The region threads of launches from task workers.
regions = RegionThreads()

# Numba's thread count is per Python thread and its public setter validates at some cost
# (about 1.9 us per call here); once the pool is up, veda uses the unchecked getter and setter
# it wraps, with the values veda has already validated.
get_threads: Any = numba.get_num_threads
set_threads: Any = numba.set_num_threads


def threading_layer() -> str:
    """The Numba threading layer veda's parallel launches use, starting Numba's pool if needed."""
    global _layer, serialise, get_threads, set_threads
    if _layer is None:
        with _layer_lock:
            if _layer is None:
                from numba.np.ufunc import parallel

                parallel._launch_threads()
                get_threads = getattr(parallel, "_get_num_threads", numba.get_num_threads)
                set_threads = getattr(parallel, "_set_num_threads", numba.set_num_threads)
                layer = str(numba.threading_layer())
                serialise = layer not in THREAD_SAFE_LAYERS
                _layer = layer
    return _layer


def serialises_parallel_regions() -> bool:
    """True when veda must let one Python thread at a time into a parallel region."""
    threading_layer()
    return serialise


#: Layers whose worker threads do not survive ``fork()``: a child that enters a parallel region
#: is terminated by the runtime ("fork() called from a process already using GNU OpenMP").
FORK_UNSAFE_LAYERS = ("omp",)
_forked_with: str | None = None


def _after_fork_in_child() -> None:
    global _forked_with
    budget._reset()
    regions._reset()
    if hasattr(region_lock, "_at_fork_reinit"):  # held by a region of a thread gone in the child
        region_lock._at_fork_reinit()
    layer = _layer
    if layer is None:  # the pool may have been started outside veda (a user's own prange)
        try:
            from numba.np.ufunc import parallel

            if getattr(parallel, "_is_initialized", False):
                layer = str(numba.threading_layer())
        except Exception:  # no layer could be named: assume none was started
            layer = None
    if layer in FORK_UNSAFE_LAYERS:
        _forked_with = layer


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_unavailable_reason() -> str | None:
    """Why this process cannot enter a parallel region, or None: it was forked from a process
    whose OpenMP worker threads had started."""
    if _forked_with is None:
        return None
    return (
        f"this process was forked after Numba's {_forked_with!r} threading layer had started "
        "its threads, and that layer does not survive fork(); start processes with the "
        "'spawn' method (multiprocessing.get_context('spawn')), or use "
        "NUMBA_THREADING_LAYER=tbb"
    )


_tick: float | None = None


def seconds_per_tick(read_cycles: Any) -> float:
    """Seconds per tick of the cycle counter ``read_cycles()`` reads (measured once, 20 ms)."""
    global _tick
    if _tick is None:
        read_cycles()
        c0, t0 = read_cycles(), time.perf_counter()
        time.sleep(0.02)
        c1, t1 = read_cycles(), time.perf_counter()
        _tick = (t1 - t0) / max(c1 - c0, 1)
    return _tick
