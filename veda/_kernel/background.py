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

import _thread as _low_thread
import atexit
import contextvars
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable

from numba.core.compiler_lock import global_compiler_lock

from veda._hardware.signals import held_interrupts

#: What :func:`state` says of a job.
PENDING, DONE, FAILED = "pending", "done", "failed"

_lock = threading.Lock()
_jobs: dict[Hashable, str] = {}  # key -> state
_queue: list[tuple[Hashable, contextvars.Context, Callable[[], object]]] = []
#: Jobs that run at exit even if not started then (short writes: the tuning cache's).
_kept: set[Hashable] = set()
_thread: threading.Thread | None = None
#: Set when the compile thread ends: what :func:`wait` waits on.  A ``join`` that Ctrl-C
#: interrupts marks a thread that still runs as stopped in Python 3.11 (its
#: ``_wait_for_tstate_lock`` sees the thread's own lock held and releases it), and exit then
#: went on while the compile ran and the interpreter ended it in the middle.
_ended = threading.Event()
_exit_hooked = False
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


def submit(key: Hashable, job: Callable[[], object], keep: bool = False) -> str:
    """Run ``job`` in the compile thread, in the caller's context, unless a job ``key`` was
    submitted before; its state.  A ``keep`` job runs at exit even if it has not started by
    then (others are dropped): for short work that must not be lost, after the compiles
    queued before it."""
    global _thread, _ended, _exit_hooked
    # Ctrl-C held off: between the job's state, the queue and the thread's start, an interrupt
    # would leave a job pending that no thread runs (an adversarial test found both).
    with held_interrupts(), _lock:
        known = _jobs.get(key)
        if known is not None:
            return known
        if not _exit_hooked:
            # Registered now, after the cache's own exit hooks (a private temporary cache is
            # removed at exit): atexit runs this one first, so no compile writes after them.
            atexit.register(_at_exit)
            _exit_hooked = True
        thread = _thread
        if thread is None:
            ended = threading.Event()
            thread = threading.Thread(target=_work, args=(ended,), name="veda-compile", daemon=True)
            thread.start()  # (it waits on _lock for its first job)
            _thread, _ended = thread, ended
        _jobs[key] = PENDING
        if keep:
            _kept.add(key)
        _queue.append((key, contextvars.copy_context(), job))
    return PENDING


def _work(ended: threading.Event) -> None:
    global _thread
    while True:
        with _lock:
            if not _queue:
                _thread = None
                ended.set()
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
            _kept.discard(key)
            if key in _jobs:
                _jobs[key] = outcome


def wait(timeout: float | None = None) -> bool:
    """Wait for the submitted compiles to end; False if ``timeout`` seconds passed first."""
    thread, ended = _thread, _ended
    if thread is not None and thread is not threading.current_thread():
        return ended.wait(timeout)
    return True


def _at_exit() -> None:
    with _lock:
        dropped = [item[0] for item in _queue if item[0] not in _kept]
        _queue[:] = [item for item in _queue if item[0] in _kept]
        for key in dropped:
            del _jobs[key]
    running = _thread is not None and _thread.is_alive()
    while True:
        try:
            wait()
            break
        except KeyboardInterrupt:
            # Ctrl-C while exit waits: the compile cannot be stopped (the interpreter would
            # end it in the middle), and the jobs kept for exit must run; the wait goes on.
            continue
    if running:
        _keep_interrupted_exit()


def _keep_interrupted_exit() -> None:
    """After waiting for a compile at exit: a program ended by an uncaught Ctrl-C exits as
    killed by SIGINT (status 130 in a shell) again.

    CPython notes an uncaught ``KeyboardInterrupt`` in one process-wide flag, which every
    ``exec`` of a string clears, and Numba's compile runs some: a compile that ran on after
    the interrupt made the program exit with status 1.  Raising ``KeyboardInterrupt`` from an
    ``exec`` of a string sets the flag again.  Only for a script (not an interactive session
    or an IPython shell or kernel, whose last error may be an old one), whose last uncaught
    error was that interrupt."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    if sys.flags.interactive or hasattr(sys, "ps1") or shell is not None:
        return
    if not isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        return
    try:
        exec("raise KeyboardInterrupt")  # a constant string: see above
    except KeyboardInterrupt:
        pass


# Fork: the compile thread may hold locks the child would need and never get back: Numba's
# compile lock, llvmlite's lock around each LLVM call (the vectorisation report reads the IR
# after the compile), a kernel's statistics lock.  A fork waits for the job in progress to end
# (no next one starts: _lock is held), and the child starts with no jobs.  It waits too for
# what other threads compile in the foreground (a program's thread whose launch compiles):
# veda's compiles and module builds (:class:`compiling`), then Numba's compile lock, which any
# compile holds to its end.  The child of a fork in the middle of one hung at its first
# compile, on the lock (or on the import of ``numpy.ma``) that the other thread held.
_gate = threading.Condition(threading.Lock())
_inside: dict[int, int] = {}  # thread ident -> how deep it is in compiles
_closed_by: int | None = None  # the thread forking, while it waits and forks


class compiling:
    """A compile or module build in this thread, which a fork waits for (see above): enter
    and leave it with interrupts held (:class:`~veda._hardware.signals.held_interrupts`);
    it nests.  While a fork waits, a new one waits for the fork to end.

    The fork holds :data:`_lock` while it waits here, and then takes Numba's compiler lock:
    so nothing inside may call :func:`submit` (which takes ``_lock``), and it must be entered
    without holding Numba's compiler lock (a compile hook runs before Numba takes it)."""

    __slots__ = ()

    def __enter__(self) -> None:
        me = threading.get_ident()
        with _gate:
            depth = _inside.get(me, 0)
            while not depth and _closed_by is not None and _closed_by != me:
                _gate.wait()
            _inside[me] = depth + 1

    def __exit__(self, *exc: object) -> None:
        me = threading.get_ident()
        with _gate:
            depth = _inside.pop(me) - 1
            if depth:
                _inside[me] = depth
            else:
                _gate.notify_all()


def _close_gate() -> None:
    global _closed_by
    me = threading.get_ident()
    with _gate:
        _closed_by = me
        while any(t != me for t in _inside):
            _gate.wait()


def _open_gate() -> None:
    global _closed_by
    with _gate:
        _closed_by = None
        _gate.notify_all()


_forking = threading.local()
_GATE = object()  # what _forking.locks holds for the closed gate


def _note_sigint(signum: int, frame: object) -> None:
    _forking.caught = True


def _before_fork() -> None:
    # A Ctrl-C while the fork waits is held to its end (Python ignores what an at-fork hook
    # raises, and an interrupted wait would let the fork go ahead with the locks half taken)
    # and raised again after it, in the parent (_let_go).
    state = _forking
    state.locks, state.previous, state.caught = [], None, False
    if in_compile_thread():
        return
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if callable(previous):
            state.previous = signal.signal(signal.SIGINT, _note_sigint)
    for lock in (_lock, _running):  # _running: the job in progress ends first
        lock.acquire()
        state.locks.append(lock)
    _close_gate()  # then the compiles of the other threads
    state.locks.append(_GATE)
    global_compiler_lock.acquire()  # and any compile that veda did not start
    state.locks.append(global_compiler_lock)


def _let_go(child: bool) -> None:
    state = _forking
    locks = getattr(state, "locks", [])
    state.locks = []
    for lock in reversed(locks):
        if lock is _GATE:
            if not child:  # (made again in the child: _after_fork_child)
                _open_gate()
        elif lock is global_compiler_lock:
            lock.release()  # in the child too: the forking thread holds it there
        elif not child:
            lock.release()
    previous, state.previous = getattr(state, "previous", None), None
    caught, state.caught = getattr(state, "caught", False), False
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
        if caught and not child:  # (the child did not exist when it came)
            _interrupt_after_hooks()


#: The fork hooks' code: the main thread is in them while one is on its stack.
_HOOKS: set[object] = set()


def _interrupt_after_hooks() -> None:
    """Raise the Ctrl-C held during a fork in the main thread once the fork has returned.

    Raised here, it would be raised in the at-fork hook, and Python ignores what a hook
    raises (it prints "Exception ignored"; ``signal.raise_signal`` runs the handler at once):
    a thread waits until the main thread has left the hooks, then interrupts it
    (``_thread.interrupt_main``: the handler runs at its next bytecode)."""
    main = threading.main_thread().ident

    def interrupt() -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(main)
            while frame is not None and frame.f_code not in _HOOKS:
                frame = frame.f_back
            if frame is None:  # no hook on the main thread's stack: the fork returned
                break
            time.sleep(0.001)
        _low_thread.interrupt_main(signal.SIGINT)

    threading.Thread(target=interrupt, name="veda-fork-interrupt", daemon=True).start()


def _after_fork_parent() -> None:
    _let_go(child=False)


def _after_fork_child() -> None:
    global _lock, _thread, _running, _gate, _closed_by
    _lock = threading.Lock()
    _running = threading.Lock()
    _gate = threading.Condition(threading.Lock())
    me = threading.get_ident()
    mine = _inside.get(me)
    _inside.clear()  # the other threads are not in the child
    if mine:
        _inside[me] = mine
    _closed_by = None
    _thread = None
    _queue.clear()
    _kept.clear()
    for key in [k for k, v in _jobs.items() if v == PENDING]:
        del _jobs[key]  # not compiled here: a launch that needs it submits it again
    _let_go(child=True)


_HOOKS.update(f.__code__ for f in (_after_fork_parent, _let_go, _interrupt_after_hooks))

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
    )
