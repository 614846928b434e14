"""Signals during launches: telling a signal handler's exception from the kernel's, and holding
interrupts off while veda updates shared state.

Python runs a signal handler (for SIGINT, ``signal.default_int_handler``, which raises
``KeyboardInterrupt``) only when the main thread executes bytecode, and between any two calls.
veda's launchers are machine code: they poll for pending handlers between chunks of work (see
:mod:`veda._kernel.language`, ``poll_signals``), so a long launch is interrupted within a fraction
of a second; the Python around a launch is written so that an interrupt between two of its calls
leaves nothing behind; the few slower updates of shared state (the dispatcher's tuner, the
telemetry folds) run under :func:`held_interrupts`.
"""

from __future__ import annotations

import _signal
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["Waiters", "from_signal_handler", "handler_codes", "held_interrupts", "unwrap_interrupt"]

#: Set by the launchers' poll on a signal handler's exception (see ``language.SIGNAL_MARK``).
SIGNAL_MARK = "_veda_signal_handler"

_SYSTEM_ERROR_TEXT = "returned a result with an exception set"


def from_signal_handler(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a signal handler that a launcher ran while polling."""
    return getattr(exc, SIGNAL_MARK, False) is True


def handler_codes() -> set[Any]:
    """The code objects of the Python signal handlers installed now (functions, methods,
    ``functools.partial`` objects and callable instances): a traceback frame with one of them
    is a handler's, where Numba's frame at the line compiled code raised from is of no
    function."""
    codes = set()
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):  # (a signal this platform lists but cannot query)
            continue
        fn = getattr(handler, "func", handler)  # functools.partial
        fn = getattr(fn, "__func__", fn)  # a bound method
        code = getattr(fn, "__code__", None)
        if code is None and callable(fn):  # a callable instance
            code = getattr(type(fn).__call__, "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def unwrap_interrupt(exc: BaseException) -> BaseException:
    """The exception a launch should raise instead of ``exc``.

    Numba's compiled functions box some results (arrays, their dtypes) by calling back into
    Python; a pending signal handler runs there, and when it raises, the call returns a result
    with the exception set, which CPython turns into ``SystemError(... returned a result with an
    exception set)`` caused by the handler's exception (a ``KeyboardInterrupt`` for Ctrl-C).
    That cause is what the caller must see.  Any other exception is returned as it is.
    """
    if isinstance(exc, SystemError) and _SYSTEM_ERROR_TEXT in str(exc):
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            return cause
    return exc


class held_interrupts:
    """Hold SIGINT's handler off for the block; run it at the end if SIGINT came meanwhile.

    For short updates of state that other launches read (the dispatcher's tuner, telemetry):
    an interrupt in their middle would leave it half-changed.  The block runs with a handler
    that only notes the signal; on exit the handler that was installed is back, and runs for a
    noted signal (``default_int_handler`` raises ``KeyboardInterrupt`` there).  Costs two
    ``signal.signal`` calls (about 0.5 us): only for paths that are not taken every launch.
    Outside the main thread (where Python never runs handlers) and when SIGINT has no Python
    handler (``SIG_IGN``, ``SIG_DFL``, or one installed from C), it does nothing.

    While :attr:`open` is true, a SIGINT runs the installed handler at once, as if nothing
    were held: a block that holds interrupts around user code it runs sets it (with plain
    stores, which no signal handler can come between) just around that code.
    """

    __slots__ = ("_caught", "_previous", "open")

    def __init__(self) -> None:
        self._previous: Any = None
        self._caught: tuple[int, FrameType | None] | None = None
        self.open = False

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.open and self._previous is not None:
            self._previous(signum, frame)
        elif self._caught is None:
            self._caught = (signum, frame)

    def __enter__(self) -> held_interrupts:
        if threading.get_ident() != _main_ident:
            return self
        previous = _signal.getsignal(signal.SIGINT)
        if callable(previous):
            # An interrupt after this call runs the noting handler, which is installed by then.
            self._previous = _signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        previous = self._previous
        if previous is None:
            return
        self._previous = None
        _signal.signal(signal.SIGINT, previous)
        caught, self._caught = self._caught, None
        if caught is not None:
            previous(*caught)


_main_ident = threading.main_thread().ident


class Waiters:
    """The threads waiting on a plain lock's condition, each on a lock of its own: the subset
    of ``threading.Condition`` (``wait``, ``notify``, ``notify_all``) that keeps the lock
    whole under Ctrl-C.

    ``threading.Condition.wait`` takes its lock back in a Python method, at whose entry a
    ``KeyboardInterrupt`` can land, and a blocking ``acquire`` gives up when a signal handler
    raises: the lock stays released, and the ``with`` around the wait then releases it again
    or releases another thread's hold of it (an adversarial review of the task executor caught
    8-12 of 5,000 interrupts doing that).  :meth:`wait` holds SIGINT off
    (:class:`held_interrupts`) except during the wait itself (``gate.open``, plain stores): an
    interrupt there ends the wait, the lock is taken back with interrupts held, and the
    interrupt is raised once the lock is held again.  Every method is called with the lock
    held.
    """

    __slots__ = ("_lock", "_waiting")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._waiting: list[Any] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, timeout: float) -> None:
        """Release the lock, wait up to ``timeout`` seconds for a notify, take it back."""
        gate = held_interrupts()
        with gate:
            waiter = threading.Lock()
            waiter.acquire()
            self._waiting.append(waiter)
            try:
                self._lock.release()
                gate.open = True
                waiter.acquire(True, timeout)
            finally:
                gate.open = False
                self._lock.acquire()
                if waiter in self._waiting:  # timed out or interrupted, not notified
                    self._waiting.remove(waiter)

    def notify(self, n: int = 1) -> None:
        """Wake the ``n`` longest-waiting threads.

        With interrupts held: a ``KeyboardInterrupt`` between a release and the removal from
        the list left a released waiter listed, which the next notify released again
        (``RuntimeError: release unlocked lock`` in a launch that had done nothing wrong)."""
        with held_interrupts():
            for waiter in self._waiting[:n]:
                waiter.release()
            del self._waiting[:n]

    def notify_all(self) -> None:
        self.notify(len(self._waiting))
