"""Argument checks and compile-error translation, at the one point Numba meets new types.

None of this runs on the launch path of a kernel already compiled for its argument types: the
checks run in a hook on Numba's compile step (:func:`install_compile_hook`), where a launch with
new argument types goes anyway, and turn what Numba would say into a veda error that names the
argument, the kernel and the user's line.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
from numba.core import errors as numba_errors

from veda._hardware.gpu import is_device_array
from veda._hardware.signals import held_interrupts
from veda._kernel import background as _background
from veda._kernel import cache as _cache
from veda.errors import KernelDefinitionError, LaunchError, VedaError

_SCALAR_TYPES = (bool, int, float, complex, np.bool_, np.number)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-d {value.dtype} array"
    mod = type(value).__module__
    name = type(value).__qualname__
    return f"a {name if mod == 'builtins' else mod + '.' + name}"


def _dtype_problem(dt: np.dtype[Any], where: str) -> str | None:
    if dt.kind not in "biufc":
        return f"arrays must hold booleans or numbers, not {dt}"
    supported = {"f": (4, 8), "c": (8, 16)}.get(dt.kind)
    if supported is not None and dt.itemsize not in supported:
        return f"{dt} arrays are not supported by Numba on {where}; use float32 or float64"
    if not dt.isnative:
        return f"arrays must be in native byte order, not {dt.str}; use .astype({dt.name!r})"
    return None


def is_masked(value: Any) -> bool:
    """Whether ``value`` is a NumPy masked array, without importing ``numpy.ma`` for it (no
    masked array exists before it is imported).  Numba's first call with an array imports it
    anyway (about 30 ms); veda's checks need not be the ones to pay it."""
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(value, ma.MaskedArray)


def _arg_problem(value: Any, device: bool = False) -> str | None:
    """Why ``value`` cannot be a kernel argument, or None; ``device``: on the GPU target,
    which also takes GPU arrays."""
    if is_masked(value):
        return "masked arrays are not supported; pass np.asarray(x) or x.filled(fill_value)"
    if isinstance(value, np.ndarray):
        return _dtype_problem(value.dtype, "the GPU" if device else "the CPU")
    if isinstance(value, np.generic):
        return _arg_problem(np.asarray(value), device)
    if isinstance(value, _SCALAR_TYPES):
        return None
    if type(value) is tuple:
        for item in value:
            problem = _arg_problem(item, device)
            if problem is not None:
                return f"tuples must hold scalars or arrays: {problem}"
        return None
    if isinstance(value, list):
        return "lists are not accepted; pass a NumPy array (np.asarray(...))"
    if is_device_array(value):
        if not device:
            return GPU_ARRAY_ON_CPU
        try:
            dt = np.dtype(value.dtype)
        except TypeError:
            return f"GPU arrays must hold booleans or numbers, not {value.dtype}"
        return _dtype_problem(dt, "the GPU")
    if device:
        return (
            "kernel arguments must be NumPy or GPU arrays, scalars (bool, int, float, "
            "complex) or tuples"
        )
    return "kernel arguments must be NumPy arrays, scalars (bool, int, float, complex) or tuples"


GPU_ARRAY_ON_CPU = (
    "GPU arrays are not accepted by the CPU targets (they are not copied behind your back); "
    "copy to the host with veda.to_host(...), or launch with target='cuda'"
)


def refuse_device_arguments(
    kernel_name: str, names: Sequence[str], args: Sequence[Any], target: str
) -> None:
    """Raise a clear error when a CPU launch failed because of an argument: one that lives on
    the GPU, or one no target can take.

    Called only after a CPU launch failed, so it costs nothing on the launch path.
    """
    for name, value in zip(names, args):
        if is_device_array(value):
            raise LaunchError(
                f"kernel {kernel_name!r}: argument {name!r} is {_describe(value)}, a GPU array, "
                f"on target {target!r}; {GPU_ARRAY_ON_CPU}"
            )
    # Arguments Numba could not even type (a masked array) fail before any compile hook runs.
    check_arguments(kernel_name, names, args)


def check_arguments(
    kernel_name: str, names: Sequence[str], args: Sequence[Any], device: bool = False
) -> None:
    """Refuse an argument no target can take, naming it; ``device``: for the GPU target."""
    for name, value in zip(names, args):
        problem = _arg_problem(value, device)
        if problem is not None:
            raise LaunchError(
                f"kernel {kernel_name!r}: argument {name!r} is {_describe(value)}; {problem}"
            )


# Numba names source lines as 'File "path", line N' and 'at path (N)', sometimes with relative
# paths; generated file names are unique, so their base names identify them.
_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)|at (\S+\.py) \((\d+)\)')
# Errors raised by veda's own kernel-language typing, buried in Numba's candidate list.
_VEDA_TYPING = re.compile(r"TypingError: ((?:atomic_\w+|local_array|a reduce=|reduce=)[^\n]*)")


def _summary(message: str) -> str:
    """The few lines of a Numba error message that say what went wrong."""
    kept: list[str] = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("Failed in ") or stripped.startswith(">>>"):
            if stripped.startswith(">>>"):
                kept.append(stripped)
            continue
        if stripped.startswith("File ") or stripped.startswith("During:"):
            break
        if stripped.startswith("There are") or stripped.startswith("- Of which"):
            break
        kept.append(stripped)
        if len(kept) >= 4:
            break
    kept.extend(dict.fromkeys(_VEDA_TYPING.findall(message)))
    return "\n  ".join(kept) if kept else message.strip().splitlines()[0]


def _user_location(message: str) -> str:
    for f1, l1, f2, l2 in _FILE_LINE.findall(message):
        fname, line = (f1, l1) if f1 else (f2, l2)
        for m in _cache.line_maps.get(os.path.basename(fname), ()):
            offset = int(line) - m.gen_start
            if 0 <= offset < m.length:
                ufile, uline, text = m.source.user_line(m.first + offset)
                return f"\n  at {ufile}:{uline}: {text}"
    return ""


def translate_compile_error(
    exc: Exception, kernel_name: str, names: Sequence[str], args: Sequence[Any]
) -> VedaError:
    message = str(exc)
    readonly = [
        n for n, a in zip(names, args) if isinstance(a, np.ndarray) and not a.flags.writeable
    ]
    if "readonly" in message and readonly:
        return LaunchError(
            f"kernel {kernel_name!r} writes argument {readonly[0]!r}, which is a read-only "
            f"array; pass a writeable array (e.g. {readonly[0]}.copy()){_user_location(message)}"
        )
    types = []
    for n, a in zip(names, args):
        try:
            types.append(f"{n}: {numba.typeof(a)}")
        except Exception:
            types.append(f"{n}: {type(a).__name__}")
    err = KernelDefinitionError(
        f"kernel {kernel_name!r} cannot be compiled for argument types ({', '.join(types)}):\n  "
        f"{_summary(message)}{_user_location(message)}"
    )
    err.numba_message = message  # type: ignore[attr-defined]
    return err


#: Code objects of the launch path's calls (filled by the launch core), each saying whether it
#: times what it calls.  A launcher that compiles looks for the nearest of them on its stack.
TIMED_CODE: dict[types.CodeType, bool] = {}

#: Told ``(frame, seconds)`` when a launcher compiled inside a timed launch (the frame is the
#: launch path's), so that the launch core takes the compile off that launch's time.  Set by the
#: launch core; a callback, so this layer knows nothing of launches.
on_launch_compile: Callable[[types.FrameType, float], None] | None = None

#: Callbacks told of every compile: ``(owner, seconds, cache_hit, signature, start, end)``.
#: Telemetry listens here; kept as a list so that this layer imports no telemetry.
compile_listeners: list[Callable[..., None]] = []


def _timed_frame() -> types.FrameType | None:
    """The launch path's frame that times the current call of a launcher, if there is one."""
    frame: types.FrameType | None = sys._getframe(2)
    for _ in range(64):
        if frame is None:
            return None
        timed = TIMED_CODE.get(frame.f_code)
        if timed is not None:
            return frame if timed else None
        frame = frame.f_back
    return None


def hookable(dispatcher: Any) -> bool:
    """Whether this Numba dispatcher has the private compile step veda hooks into.

    ``Dispatcher._compile_for_args`` is private to Numba; pyproject.toml bounds the Numba range
    to releases that have it, and :func:`install_compile_hook` falls back to a Python wrapper
    where it is missing.
    """
    return callable(getattr(dispatcher, "_compile_for_args", None))


def _record_compile(owner: Any, signature: str, start: float, end: float, hit: bool) -> None:
    with owner._lock:
        stats = owner.compile_stats
        if hit:
            stats.cache_hits += 1
        else:
            stats.compiled += 1
        stats.compile_seconds += end - start
        stats.signatures.append(signature)
        if _background.in_compile_thread():
            stats.background += 1
    for listener in compile_listeners:
        listener(owner, end - start, hit, signature, start, end)


class _Owner:
    """Whose compiles a hooked dispatcher counts: held weakly, so that a generated module kept in
    ``sys.modules`` does not keep a deleted kernel alive, and replaced when the same generated
    module is loaded for a newer definition (a notebook cell run again)."""

    __slots__ = ("name", "ref")

    def __init__(self, owner: Any) -> None:
        self.name: str = owner.name
        self.ref = weakref.ref(owner)

    def set(self, owner: Any) -> None:
        self.ref = weakref.ref(owner)

    def get(self) -> Any:
        return self.ref()


def install_compile_hook(
    module: Any,
    attr: str,
    owner: Any,
    offset: int,
    names: Sequence[str],
    launcher: bool = False,
    from_python: bool = True,
) -> None:
    """Check, count and translate at the one point Numba meets new argument types.

    ``module.attr`` is a Numba dispatcher whose first ``offset`` parameters are veda's own (the
    domain, the thread count, ...) and whose others are the kernel's arguments, named ``names``.
    A ``launcher`` is called by targets inside timed launches: when it compiles there, the launch
    core is told (:data:`on_launch_compile`) and takes the compile off that launch's time.

    A generated module is shared by every definition with the same generated text (its name is
    a hash of it), so the hook is installed once per dispatcher; a later definition takes over
    as the owner that compiles are counted for, and the hook holds it weakly.

    Where Numba lacks the private compile step (:func:`hookable`), ``module.attr`` is replaced by
    a Python wrapper that checks the arguments at every call, translates compile errors after the
    fact and counts new signatures; its compile times then include the first run, and a compile
    inside a launch is timed with it (launchers are never called from compiled code, so the
    wrapper is only ever called from Python).  A function compiled code calls (``from_python``
    False: a ``@veda.func`` helper) keeps its dispatcher there; its errors surface through the
    launcher that calls it.
    """
    dispatcher = getattr(module, attr)
    installed = getattr(dispatcher, "_veda_owner", None)
    if isinstance(installed, _Owner):  # hooked for an earlier definition: take it over
        installed.set(owner)
        return
    who = _Owner(owner)
    if not hookable(dispatcher):
        if from_python:
            setattr(module, attr, _fallback(dispatcher, who, offset, names))
        return
    original = dispatcher._compile_for_args
    # Threads that meet the same new types at once all pass here, but Numba compiles once and
    # the others wait on its lock: only the first to finish counts a compile.
    seen: set[tuple[Any, ...]] = set()
    lock = threading.Lock()

    def _compile_for_args(*args: Any, **kws: Any) -> Any:
        user_args = args[offset:]
        check_arguments(who.name, names, user_args)
        start = time.perf_counter()
        try:
            # Ctrl-C during a compile is held to its end: raised inside one of llvmlite's
            # ctypes callbacks it would be printed and lost, and the launch would run on.
            # A fork in another thread waits for it (_background.compiling): the child of
            # one in the middle hung on the locks this thread held (Numba's, the cache's).
            with held_interrupts(), gc_paused, _background.compiling():
                hits = sum(dispatcher.stats.cache_hits.values())  # (builds the lazy cache)
                result = original(*args, **kws)
                hit = sum(dispatcher.stats.cache_hits.values()) > hits
                types_ = tuple(dispatcher.typeof_pyval(a) for a in args)
                with lock:  # (at once: a thread that waited on Numba's lock comes next)
                    first = types_ not in seen
                    seen.add(types_)
                if launcher and not hit and first:  # part of the compile: timed, held like it
                    _vector_reports(module)
        except numba_errors.NumbaError as exc:
            raise translate_compile_error(exc, who.name, names, user_args) from None
        except TypeError as exc:
            # Raised by Numba's lowering of a parallel region for arguments it cannot pass to
            # the region's workers (a nested tuple holding an array), where the serial loop
            # compiles: a compile error too, said as one (an adversarial test met the raw one).
            err = translate_compile_error(exc, who.name, names, user_args)
            if "parallel" in attr:
                err.args = (f"{err.args[0]}\n  (its parallel loop: launch it with target='cpu')",)
            raise err from None
        end = time.perf_counter()
        current = who.get()
        if first and current is not None:
            _record_compile(
                current,
                ", ".join(str(t) for t in types_[offset:]),
                start,
                end,
                hit,
            )
        if launcher and on_launch_compile is not None:  # a wait on the compile is not run time
            frame = _timed_frame()
            if frame is not None:
                on_launch_compile(frame, end - start)
        return result

    dispatcher._compile_for_args = _compile_for_args
    dispatcher._veda_owner = who


class _GcPause:
    """The cyclic garbage collector's automatic collections held off while veda compiles:
    Numba's compile of a launcher makes hundreds of thousands of short-lived objects, and each
    full collection they set off walks every object of the process (45-58 ms of a 0.26 s cold
    "cpu" compile, one or two per compile, on the 2-core machine).  Held off by a zero
    threshold for the youngest generation (CPython's way to stop automatic collections), put
    back when the last of nested and concurrent compiles ends: ``gc.isenabled()`` and a
    program's ``gc.disable()``, made before or during a compile, are left alone (an adversarial
    test found a program's ``gc.disable()`` undone when a pause that disabled the collector
    ended).  Reference counting frees as usual meanwhile.  A compile in the background thread
    (:mod:`veda._kernel.background`), which nobody waits for, does not pause it itself: the
    program runs on meanwhile (though a compile in another thread that waits on Numba's lock
    behind it pauses the collector for both)."""

    __slots__ = ("_paused",)
    _lock = threading.Lock()
    _depth = 0
    _thresholds: tuple[int, ...] = ()

    def __init__(self) -> None:
        self._paused = threading.local()

    def __enter__(self) -> None:
        cls = _GcPause
        here = not _background.in_compile_thread()
        self._paused.on = here
        if not here:
            return
        with cls._lock:
            if cls._depth == 0:
                cls._thresholds = gc.get_threshold()
                gc.set_threshold(0, *cls._thresholds[1:])
            cls._depth += 1

    def __exit__(self, *exc: object) -> None:
        cls = _GcPause
        if not self._paused.on:
            return
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and gc.get_threshold()[0] == 0:  # (unless changed meanwhile)
                gc.set_threshold(*cls._thresholds)


def _gc_forked() -> None:  # a compile of the parent's other threads does not exist here
    if _GcPause._depth:
        _GcPause._depth = 0
        if gc.get_threshold()[0] == 0:
            gc.set_threshold(*_GcPause._thresholds)
    _GcPause._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gc_forked)

gc_paused = _GcPause()


def background_job(dispatcher: Any, params: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """Where ``dispatcher`` has no code for ``params`` yet: the job that compiles it (through
    the compile hook, as a launch would, without running it) and its key; None when it has
    (or cannot tell: a dispatcher without the hook compiles in the launch, as before)."""
    hooked = getattr(dispatcher, "_veda_owner", None)
    if hooked is None or not isinstance(hooked, _Owner) or not hasattr(dispatcher, "overloads"):
        return None
    try:
        signature = tuple(dispatcher.typeof_pyval(p) for p in params)
    except Exception:  # the launch's own compile says what is wrong
        return None
    if signature in dispatcher.overloads:
        return None
    return (dispatcher, signature), lambda: dispatcher._compile_for_args(*params)


def in_disk_cache(dispatcher: Any, params: tuple[Any, ...]) -> bool:
    """Whether Numba's disk cache holds code of ``dispatcher`` for ``params`` (read from the
    cache's index, nothing loaded).  Numba's ``FunctionCache`` internals: False where they are
    missing or the index cannot be read (the launch then compiles as if it were not there)."""
    try:
        cache = dispatcher._cache
        if not getattr(cache, "_enabled", False):
            return False
        signature = tuple(dispatcher.typeof_pyval(p) for p in params)
        key = cache._index_key(signature, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:
        return False


def _vector_reports(module: Any) -> None:
    """Keep the vectorisation reports of a module's new launchers (:mod:`veda._kernel.simd`)
    while Numba still holds their IR.  A report is a diagnostic: failing to make one never
    fails a launch (``veda.explain`` then says the report is missing)."""
    from veda._kernel import simd

    with contextlib.suppress(Exception):
        simd.record(module)


def _fallback(dispatcher: Any, who: _Owner, offset: int, names: Sequence[str]) -> Any:
    lock = threading.Lock()

    def call(*args: Any) -> Any:
        # Without the compile step's hook, nothing says when new types arrive: every call is
        # checked (about 0.5 us; only on a Numba release without the private method).
        user_args = args[offset:]
        check_arguments(who.name, names, user_args)
        known = len(dispatcher.signatures)
        start = time.perf_counter()
        try:
            result = dispatcher(*args)
        except numba_errors.NumbaError as exc:
            raise translate_compile_error(exc, who.name, names, user_args) from None
        current = who.get()
        if len(dispatcher.signatures) > known and current is not None:
            signature = ", ".join(str(t) for t in dispatcher.signatures[-1][offset:])
            with lock:
                _record_compile(current, signature, start, time.perf_counter(), False)
        return result

    call.py_func = dispatcher.py_func  # type: ignore[attr-defined]
    call.dispatcher = dispatcher  # type: ignore[attr-defined]
    call._veda_owner = who  # type: ignore[attr-defined]
    return call
