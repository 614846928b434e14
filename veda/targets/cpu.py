"""The two CPU targets: ``"cpu"`` (one thread) and ``"parallel"`` (veda's chunk schedules).

Both run launchers from one generated module per kernel specialisation (see
:mod:`veda._kernel.codegen`), so the body is compiled once for both.

Threading layers
----------------
Numba picks a threading layer the first time a parallel region runs: TBB if it loads, else
OpenMP, else its own "workqueue" layer.  OpenMP and TBB accept parallel regions from several
Python threads at once; workqueue aborts the process when two threads enter one together, so on
that layer veda serialises entry into parallel regions with a lock.  OpenMP does not survive
``fork()``: use the ``spawn`` start method for process pools on that layer.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numba

from veda._kernel.codegen import MODE_CODES
from veda.errors import KernelError, KernelIndexError, VedaError
from veda.targets import Decision, Runner, Target

if TYPE_CHECKING:
    from veda._kernel.kernel import Kernel
    from veda.telemetry._registry import Recorder


def refuse_device_arguments(name: str, names: list[str], args: tuple[Any, ...],
                            target: str) -> None:
    """Raise veda's error for GPU arrays given to a CPU target (after a launch failed)."""
    from veda._kernel.kernel import refuse_device_arguments as refuse

    refuse(name, names, args, target)


_tick: float | None = None


def seconds_per_tick() -> float:
    """Seconds per tick of the cycle counter profiled launches read (measured once, 20 ms)."""
    global _tick
    if _tick is None:
        import time

        from veda._kernel.runtime import read_cycles

        read_cycles()
        c0, t0 = read_cycles(), time.perf_counter()
        time.sleep(0.02)
        c1, t1 = read_cycles(), time.perf_counter()
        _tick = (t1 - t0) / max(c1 - c0, 1)
    return _tick

_layer_lock = threading.Lock()
_layer: str | None = None
_region_lock = threading.Lock()
_serialise = False
# One item per parallel launch in flight whose thread count the dispatcher chose (list.append
# and list.pop are atomic under the GIL).
_in_flight: list[None] = []

THREAD_SAFE_LAYERS = ("tbb", "omp")


# Numba's thread count is per Python thread and its public setter validates at some cost
# (about 1.9 us per call here); once the pool is up, veda uses the unchecked getter and setter
# it wraps, with the values veda has already validated.
_get_threads: Any = numba.get_num_threads
_set_threads: Any = numba.set_num_threads


def threading_layer() -> str:
    """The Numba threading layer veda's parallel launches use, starting Numba's pool if needed."""
    global _layer, _serialise, _get_threads, _set_threads
    if _layer is None:
        with _layer_lock:
            if _layer is None:
                from numba.np.ufunc import parallel

                parallel._launch_threads()
                _get_threads = getattr(parallel, "_get_num_threads", numba.get_num_threads)
                _set_threads = getattr(parallel, "_set_num_threads", numba.set_num_threads)
                layer = str(numba.threading_layer())
                _serialise = layer not in THREAD_SAFE_LAYERS
                _layer = layer
    return _layer


def serialises_parallel_regions() -> bool:
    """True when veda must let one Python thread at a time into a parallel region."""
    threading_layer()
    return _serialise


def _unflatten(flat: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    idx = []
    for n in reversed(dims[1:]):
        flat, r = divmod(flat, n)
        idx.append(r)
    idx.append(flat)
    return tuple(reversed(idx))


def recover_exception(
    kernel: Kernel, module: Any, lo: int, hi: int, dims: tuple[int, ...],
    args: tuple[Any, ...], target: str,
) -> KernelError:
    """Find the failing index of chunk [lo, hi) and re-run it to recover the body's exception.

    Indices of that chunk before the failing one run a second time on the way: after an
    exception the outputs of a launch are undefined anyway.
    """
    flat = int(module._veda_first_failure(lo, hi, *dims, *args))
    index = _unflatten(flat, dims) if flat >= 0 else None
    if index is not None:
        try:
            module._veda_at(*index, *args)
        except Exception as exc:  # the body's own exception, whatever its type
            cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
            return cls(kernel.name, type(exc), str(exc), index, target)
    return KernelError(
        kernel.name,
        RuntimeError,
        f"an exception was raised in the chunk of flat indices [{lo}, {hi}), but it did not "
        "recur when they were re-run on one thread, so its type and message are unknown",
        index,
        target,
    )


class CPUTarget(Target):
    """One thread: the kernel body in a plain loop, compiled with ``@njit``."""

    name = "cpu"

    def prepare(self, kernel: Kernel, dims: tuple[int, ...], nargs: int, decision: Decision,
                options: tuple[bool, bool, bool], profiler: Recorder | None,
                shared: bool = False) -> Runner:
        # One worker: nothing to balance, so a profiled launch runs the same loop.
        module = kernel.program(len(dims), nargs, options[:2])
        reduce = kernel.reduce is not None
        fn = module._veda_det_cpu if reduce and options[2] else module._veda_cpu
        name = kernel.name

        def run(args: tuple[Any, ...]) -> Any:
            try:
                result = fn(*dims, *args)
            except VedaError:
                raise
            except Exception as exc:
                refuse_device_arguments(name, kernel._plan(len(dims), nargs).names, args, "cpu")
                cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
                raise cls(name, type(exc), str(exc), None, "cpu") from exc
            return result[0] if reduce else None

        return run


class ParallelTarget(Target):
    """All or some CPU threads, with veda's chunk schedules generated into the loop."""

    name = "parallel"
    parallel = True

    def prepare(self, kernel: Kernel, dims: tuple[int, ...], nargs: int, decision: Decision,
                options: tuple[bool, bool, bool], profiler: Recorder | None,
                shared: bool = False) -> Runner:
        threading_layer()
        module = kernel.program(len(dims), nargs, options[:2])
        if kernel.reduce is not None and options[2]:
            fn = module._veda_det_parallel  # deterministic: no profiled variant, imbalance NaN
            profiler = None
        else:
            fn = module._veda_parallel if profiler is None else module._veda_parallel_profile
        tick = seconds_per_tick() if profiler is not None else 0.0
        _, wanted, schedule, chunk = decision
        mode = MODE_CODES[schedule]
        reduce = kernel.reduce is not None
        get_threads, set_threads, serialise = _get_threads, _set_threads, _serialise

        def run(args: tuple[Any, ...]) -> Any:
            threads = wanted
            if shared:
                # Launches the dispatcher sized share the cores with the other veda parallel
                # launches in flight instead of oversubscribing them.
                _in_flight.append(None)
                threads = max(1, wanted // len(_in_flight))
            # The region runs on as many workers as this Python thread's Numba thread count:
            # set it for the launch (also right in a newly started thread), then restore it.
            previous = get_threads()
            if previous != threads:
                set_threads(threads)
            try:
                if serialise:
                    with _region_lock:
                        out = fn(*dims, threads, mode, chunk, *args)
                else:
                    out = fn(*dims, threads, mode, chunk, *args)
            except VedaError:
                raise
            except Exception:
                refuse_device_arguments(kernel.name, kernel._plan(len(dims), nargs).names, args,
                                        "parallel")
                raise
            finally:
                if previous != threads:
                    set_threads(previous)
                if shared:
                    _in_flight.pop()
            if profiler is not None:
                result, lo, hi, busy, chunks = out
                profiler.profile(busy, chunks, tick)
            else:
                result, lo, hi = out
            if lo >= 0:
                raise recover_exception(kernel, module, lo, hi, dims, args, "parallel")
            return result[0] if reduce else None

        return run
