"""Compiles in a background thread, for the dispatcher's exploration (``background_compile``).

An adaptive kernel's first launches explore candidates that may need code nobody compiled yet:
the parallel launcher of a new kernel took 1.2-1.6 s on the 2-core machine, against 0.2-0.3 s
for the serial one.  Instead of waiting, the launch asks :func:`submit` for that compile and
runs a candidate that is ready; the compile's candidates join the exploration once
:func:`state` says it is done.  A failed compile says so, and the next launch that needs it
compiles in its own thread and raises the error there, where the user sees it.

One thread compiles, one job at a time (Numba compiles under one process-wide lock anyway),
started on demand and ended when it has nothing left.  It is a daemon thread that an
``atexit`` hook joins after dropping the jobs not started, so that the interpreter never
stops in the middle of a compile; a fork waits for a running compile to end (the child would
otherwise inherit locks held by a thread it does not have: Numba's compile lock, llvmlite's),
and the child starts with no jobs.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Hashable

#: What :func:`state` says of a job.
PENDING, DONE, FAILED = "pending", "done", "failed"

_lock = threading.Lock()
_jobs: dict[Hashable, str] = {}  # key -> state
_queue: list[tuple[Hashable, Callable[[], object]]] = []
_thread: threading.Thread | None = None
_errors: dict[Hashable, BaseException] = {}


def in_compile_thread() -> bool:
    """Whether the calling thread is the compile thread."""
    return threading.current_thread() is _thread


def state(key: Hashable) -> str | None:
    """The state of the job ``key`` (None: never submitted in this process)."""
    return _jobs.get(key)


def error(key: Hashable) -> BaseException | None:
    """What the failed job ``key`` raised."""
    return _errors.get(key)


def submit(key: Hashable, job: Callable[[], object]) -> str:
    """Run ``job`` in the compile thread unless a job ``key`` was submitted before; its state."""
    global _thread
    with _lock:
        known = _jobs.get(key)
        if known is not None:
            return known
        _jobs[key] = PENDING
        _queue.append((key, job))
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
            key, job = _queue.pop(0)
        with _running:
            try:
                job()
            except BaseException as exc:  # the launch that needs it raises it in its thread
                with _lock:
                    _errors[key] = exc
                    _jobs[key] = FAILED
            else:
                with _lock:
                    _jobs[key] = DONE


def wait(timeout: float | None = None) -> bool:
    """Wait for the submitted compiles to end; False if ``timeout`` seconds passed first."""
    thread = _thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
        return not thread.is_alive()
    return True


def _at_exit() -> None:
    with _lock:
        dropped = [key for key, _ in _queue]
        _queue.clear()
        for key in dropped:
            del _jobs[key]
    wait()


atexit.register(_at_exit)


# Fork: the compile thread may hold locks the child would need and never get back: Numba's
# compile lock, llvmlite's lock around each LLVM call (the vectorisation report reads the IR
# after the compile), a kernel's statistics lock.  A fork waits for the job in progress to end
# (``_running``, held by the compile thread across each job), and the child starts with none.
_running = threading.Lock()


def _before_fork() -> None:
    _running.acquire()


def _after_fork_parent() -> None:
    _running.release()


def _after_fork_child() -> None:
    global _lock, _thread, _running
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
