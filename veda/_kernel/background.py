"""Compiles in a background thread, for the dispatcher's exploration (``background_compile``).

An adaptive kernel's first launches explore candidates that may need code nobody compiled yet:
the parallel loop of a new saxpy took 1.2-1.9 s to compile on the 2-core machine, against
0.2-0.3 s for the serial one.  Instead of waiting, the launch asks :func:`submit` for that
compile and runs a candidate that is compiled; the compile's candidates join the exploration once
:func:`state` says it is done.  A failed compile says so, and the next launch that needs it
compiles in its own thread and raises the error there, where the user sees it.  A job runs in
the context (``contextvars``: ``veda.config`` blocks) of the launch that submitted it.

One thread compiles, one job at a time (Numba compiles under one process-wide lock anyway),
started on demand and ended when it has nothing left.  It is a daemon thread that an
``atexit`` hook joins after dropping the jobs not started, so that the interpreter never
stops in the middle of a compile; a fork waits for a running compile to end (the child would
otherwise inherit locks held by a thread it does not have: Numba's compile lock, llvmlite's),
and the child starts with no jobs.
"""

from __future__ import annotations

import atexit
import contextvars
import os
import threading
from collections.abc import Callable, Hashable

#: What :func:`state` says of a job.
PENDING, DONE, FAILED = "pending", "done", "failed"

_lock = threading.Lock()
_jobs: dict[Hashable, str] = {}  # key -> state
_queue: list[tuple[Hashable, contextvars.Context, Callable[[], object]]] = []
_thread: threading.Thread | None = None
#: Held by the compile thread across each job: a fork takes it (after _lock, so that no next
#: job starts) to wait for the job in progress only.
_running = threading.Lock()


def in_compile_thread() -> bool:
    """Whether the calling thread is the compile thread."""
    return threading.current_thread() is _thread


def busy() -> bool:
    """Whether a compile is queued or running."""
    return _thread is not None


def state(key: Hashable) -> str | None:
    """The state of the job ``key`` (None: never submitted in this process, or dropped)."""
    return _jobs.get(key)


def submit(key: Hashable, job: Callable[[], object]) -> str:
    """Run ``job`` in the compile thread, in the caller's context, unless a job ``key`` was
    submitted before; its state."""
    global _thread
    with _lock:
        known = _jobs.get(key)
        if known is not None:
            return known
        _jobs[key] = PENDING
        _queue.append((key, contextvars.copy_context(), job))
        if _thread is None:
            _thread = threading.Thread(target=_work, name="veda-compile", daemon=True)
            _thread.start()
    return PENDING


def _work() -> None:
    global _thread
    while True:
        with _lock:
            if not _queue:
                _thread = None
                return
            key, context, job = _queue.pop(0)
        # (the exception is not kept: its traceback holds the launch's arrays; the launch that
        # needs the code compiles it and raises the error itself)
        with _running:
            try:
                context.run(job)
                outcome = DONE
            except BaseException:
                outcome = FAILED
        with _lock:
            if key in _jobs:
                _jobs[key] = outcome


def wait(timeout: float | None = None) -> bool:
    """Wait for the submitted compiles to end; False if ``timeout`` seconds passed first."""
    thread = _thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
        return not thread.is_alive()
    return True


def _at_exit() -> None:
    with _lock:
        dropped = [item[0] for item in _queue]
        _queue.clear()
        for key in dropped:
            del _jobs[key]
    wait()


atexit.register(_at_exit)


# Fork: the compile thread may hold locks the child would need and never get back: Numba's
# compile lock, llvmlite's lock around each LLVM call (the vectorisation report reads the IR
# after the compile), a kernel's statistics lock.  A fork waits for the job in progress to end
# (no next one starts: _lock is held), and the child starts with no jobs.
_forking = threading.local()


def _before_fork() -> None:
    _forking.held = not in_compile_thread()
    if _forking.held:
        _lock.acquire()
        _running.acquire()


def _after_fork_parent() -> None:
    if getattr(_forking, "held", False):
        _forking.held = False
        _running.release()
        _lock.release()


def _after_fork_child() -> None:
    global _lock, _thread, _running
    _forking.held = False
    _lock = threading.Lock()
    _running = threading.Lock()
    _thread = None
    _queue.clear()
    for key in [k for k, v in _jobs.items() if v == PENDING]:
        del _jobs[key]  # not compiled here: a launch that needs it submits it again


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
    )
