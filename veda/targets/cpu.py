"""The two CPU targets: ``"cpu"`` (one thread) and ``"parallel"`` (veda's chunk schedules).

Both run launchers from one generated module per kernel form (see
:mod:`veda._kernel.codegen`), so the body is compiled once for both.  Threading-layer facts
(which layer, whether parallel regions must be serialised) live in :mod:`veda._hardware.cpu`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from veda._hardware import cpu as hw
from veda._hardware.pinning import pinner
from veda._hardware.signals import from_signal_handler, handler_codes, unwrap_interrupt
from veda._kernel import background
from veda._kernel.checks import background_job, in_disk_cache
from veda._kernel.codegen import MODE_CODES, REDUCE_BLOCK, SERIAL_PIECE, private_pieces
from veda._registry import Profiler, Target
from veda._types import Decision, KernelForm, LaunchOptions, Runner
from veda.errors import (
    KernelDefinitionError,
    KernelError,
    KernelIndexError,
    LaunchError,
    VedaError,
)

__all__ = [
    "PARALLEL_FLOOR_PER_THREAD",
    "PARALLEL_MIN_SIZE",
    "CPUTarget",
    "ParallelTarget",
    "default_chunk",
    "recover_exception",
]

#: Domain size from which a launch under the fixed policy goes to ``"parallel"``.  Measured with
#: ``python bench/bench_threshold.py`` on the 2-core machine: a saxpy in a parallel region breaks
#: even with the serial loop between 32k (parallel/cpu 1.10) and 64k elements (0.89).
PARALLEL_MIN_SIZE = 49152
#: Indices per thread below which no parallel configuration is a candidate.  Whether a
#: parallel launch can pay for its region (about 4-5 us here, bench/bench_threshold.py) is
#: judged by time, not size: after the serial candidate ran, the dispatcher drops the parallel
#: ones when it took less than twice :data:`REGION_ENTRY` (eight times under 1024 elements,
#: veda.scheduler._dispatch.SMALL_MARGIN; Dispatcher._too_short).  So a small domain of heavy
#: indices (256 indices of 10,000 operations each) is tried in parallel, and a small cheap one
#: costs its serial warm-up and measured launches to rule it out.  The floor was 1024
#: elements: such a domain stayed on one thread, 1.9-4.5x slower than a prange loop (issue 12).
PARALLEL_FLOOR_PER_THREAD = 2
#: Seconds a parallel region costs before any work.  With two threads the best parallel launch
#: costs at least this plus half the serial time, so it cannot win when the serial launch took
#: less than twice this (10 us): the dispatcher then drops the parallel candidates.
REGION_ENTRY = 5e-6


def default_chunk(schedule: str, size: int, threads: int) -> int:
    """Elements per chunk when none is given.

    ``dynamic`` and ``interleaved`` deal 32 chunks per thread, small enough that the last chunk
    of a skewed loop (cost rising with the index) holds a few percent of the work, large enough
    that the atomic counter is touched rarely.  ``guided`` shrinks down to 1/256 of a share.
    """
    if schedule == "static":
        return 1
    per = 256 if schedule == "guided" else 32
    return max(1, -(-size // (threads * per)))


#: What a launcher whose schedule is not guided gets for its table of chunk boundaries.
_NO_BOUNDS = np.zeros(1, np.int64)


def guided_bounds(n: int, threads: int, min_chunk: int) -> np.ndarray:
    """Chunk boundaries for the guided schedule over ``range(n)``.

    Each chunk takes half of an even share of what is left (``remaining / (2 * threads)``), never
    less than ``min_chunk``: large chunks first for low overhead, small ones last for balance.
    Plain Python: made once per thread count and launcher, it takes microseconds (about
    ``2 * threads * ln(n / (2 * threads * min_chunk))`` steps), where compiling it took 1-2 s
    of the first launch that met a guided candidate.
    """
    threads = max(1, int(threads))
    min_chunk = max(1, int(min_chunk))
    bounds = [0]
    lo = 0
    while lo < n:
        lo = min(lo + max((n - lo) // (2 * threads), min_chunk), n)
        bounds.append(lo)
    return np.array(bounds, np.int64)


def _guided_table(size: int, threads: int, chunk: int, blocks: bool) -> np.ndarray:
    """The guided schedule's chunk boundaries over a domain of ``size`` indices, or of its
    REDUCE_BLOCK blocks (``blocks``: a deterministic reduction's work items)."""
    if blocks:
        size = -(-size // REDUCE_BLOCK)
        chunk = max(1, -(-chunk // REDUCE_BLOCK))
    return guided_bounds(size, threads, chunk)


def _copies_failed(
    form: KernelForm, args: tuple[Any, ...], copies: int, deterministic: bool
) -> LaunchError:
    """The error of a launch of a kernel with ``reduce={name: op}`` that ran out of memory:
    NumPy's MemoryError from generated code would read as the body's own failure, though the
    private copies are the likely cause (a body that allocates is not told apart)."""
    names = [form.names[pos] for pos, _ in form.private]
    nbytes = sum(getattr(args[pos], "nbytes", 0) for pos, _ in form.private)
    fewer = (
        "a smaller array (deterministic mode makes up to 64 copies, fewer for large arrays)"
        if deterministic
        else "a smaller array, fewer threads"
    )
    return LaunchError(
        f"kernel {form.name!r} ran out of memory; its private copies of "
        f"{', '.join(map(repr, names))} take {copies} copies of {nbytes:,} bytes: reduce "
        f"{fewer}, or update the array with veda.atomic_add instead"
    )


def _det_pieces(form: KernelForm, args: tuple[Any, ...]) -> int:
    """How many pieces (and copies) a deterministic launch of a private form uses."""
    return private_pieces(sum(getattr(args[pos], "nbytes", 0) for pos, _ in form.private))


def _unflatten(flat: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    idx = []
    for n in reversed(dims[1:]):
        flat, r = divmod(flat, n)
        idx.append(r)
    idx.append(flat)
    return tuple(reversed(idx))


def exception_at(
    form: KernelForm, module: Any, index: tuple[int, ...], args: tuple[Any, ...], target: str
) -> KernelError | None:
    """Run the body at ``index`` on one CPU thread: the error of the exception it raises there
    (its own type and message), or None if it does not raise."""
    try:
        module._veda_at(*index, *args)
    except Exception as exc:  # the body's own exception, whatever its type
        cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
        return cls(form.name, type(exc), str(exc), index, target)
    return None


def recover_exception(
    form: KernelForm,
    module: Any,
    lo: int,
    hi: int,
    dims: tuple[int, ...],
    args: tuple[Any, ...],
    target: str,
) -> KernelError:
    """Find the failing index of chunk [lo, hi) and re-run it to recover the body's exception.

    Indices of that chunk before the failing one run a second time on the way: after an
    exception the outputs of a launch are undefined anyway.
    """
    flat = int(module._veda_first_failure(lo, hi, *dims, *args))
    index = _unflatten(flat, dims) if flat >= 0 else None
    if index is not None:
        err = exception_at(form, module, index, args, target)
        if err is not None:
            return err
    return KernelError(
        form.name,
        RuntimeError,
        f"an exception was raised in the chunk of flat indices [{lo}, {hi}), but it did not "
        "recur when they were re-run on one thread, so its type and message are unknown",
        index,
        target,
    )


class CPUTarget(Target):
    """One thread: the kernel body in a plain loop, compiled with ``@njit``.

    **Two tiers.**  The serial launcher ``_veda_cpu`` checks for signals between pieces of its
    loop, and that loop structure doubles its cold compile (a saxpy: 145-175 ms against 70-75 ms
    for Numba's plain loop on the 2-core machine).  So where the dispatcher may compile in the
    background (``background_compile``), a kernel without reductions first runs ``_veda_span``,
    the body in a plain loop over a range of outermost indices, which compiles as fast as the
    plain loop, called piece by piece from Python so that Ctrl-C still ends a long launch
    between pieces.  The first launch compiles only the span (unless Numba's disk cache holds
    the serial loop: then it loads that); the second sends the serial loop's compile to the
    background thread, and the launches after it is ready run it.  Both run the body over the
    same indices in the same order.  The span keeps the GIL while it runs: threads that launch
    at once take turns on the first tier.
    """

    name = "cpu"
    reduces_arrays = True
    refuses_settings_because = "runs on one thread"
    settings_hint = ", or drop target= (or use target='parallel') to run on several threads"

    def candidates(self, size: int, free_cores: int) -> list[Decision]:
        return [Decision(self.name)]

    def rule_min_size(self) -> int | None:
        return 0

    def prepare(
        self,
        form: KernelForm,
        dims: tuple[int, ...],
        decision: Decision,
        options: LaunchOptions,
        profiler: Profiler | None = None,
        shared: bool = False,
    ) -> Runner:
        # One worker: nothing to balance, so a profiled launch runs the same loop.
        from veda._config import get_config

        module = form.program(options.compile)
        reduce = form.reduce is not None
        det = options.deterministic and (reduce or bool(form.private))
        fn = module._veda_det_cpu if det else module._veda_cpu
        name = form.name
        size = math.prod(dims)
        span = getattr(module, "_veda_span", None)
        tiered = span is not None and not det and get_config().background_compile

        def failed(exc: Exception, args: tuple[Any, ...]) -> None:
            """Raise what a launch that raised ``exc`` raises."""
            if isinstance(exc, VedaError):
                raise exc
            if isinstance(exc, MemoryError) and det and form.private:
                raise _copies_failed(form, args, _det_pieces(form, args), True) from exc
            interrupt = unwrap_interrupt(exc)
            if interrupt is not exc:
                raise interrupt from None
            if from_signal_handler(exc):  # a signal handler's exception, not the body's
                raise exc
            form.refuse_device_arguments(args, "cpu")
            cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
            index = _failing_index(module, size, dims, args)
            raise cls(name, type(exc), str(exc), index, "cpu") from exc

        def run(args: tuple[Any, ...]) -> Any:
            if run.tiering:  # type: ignore[attr-defined]
                return first_tier(args)
            try:
                result = fn(*dims, *args)
            except Exception as exc:
                failed(exc, args)
            return result[0] if reduce else None

        def settle() -> None:
            """``_veda_cpu`` from now on (the call site's launchers may call it directly)."""
            run.direct = (fn, reduce, failed)  # type: ignore[attr-defined]
            run.tiering = False  # type: ignore[attr-defined]
            run.warm = _warm(fn, lambda args: (*dims, *args))  # type: ignore[attr-defined]

        launched = [False]  # whether a launch ran on the first tier yet

        def first_tier(args: tuple[Any, ...]) -> Any:
            params = (*dims, *args)
            job = background_job(fn, params)
            state = background.state(job[0]) if job is not None else background.DONE
            if state is None and not launched[0]:
                # The first launch: the serial loop unless it must be compiled (Numba's disk
                # cache has it), else the span, and no compile behind it yet: a program that
                # launches once has no use for it, and this launch's time is a clean sample.
                launched[0] = True
                if in_disk_cache(fn, params):
                    state = background.DONE
            elif state is None and not background.in_compile_thread():
                try:
                    state = background.submit(*job)  # type: ignore[misc]
                except RuntimeError:  # no new thread (the interpreter is exiting)
                    state = background.FAILED
            if state not in (None, background.PENDING):
                # Compiled or loadable (or its compile ended: the launch compiles what is still
                # missing, and raises a failed compile's error itself).
                settle()
                return run(args)
            try:
                _in_pieces(span, dims, args)
            except KernelDefinitionError:
                # A body the span cannot hold as written (a case the checks in
                # codegen.inline_body missed): the serial loop, compiled here, as before.
                settle()
                return run(args)
            except Exception as exc:
                if _raised_between_pieces(exc):
                    raise  # a signal handler's (TimeoutError from SIGALRM, say), as it is
                failed(exc, args)
            return None

        # For the dispatcher's background compiles (veda._kernel.background): during the first
        # tier the "cpu" candidate needs only its span compiled.
        run.warm = _warm(span, lambda args: (0, 0, *dims, *args))  # type: ignore[attr-defined]
        run.tiering = tiered  # type: ignore[attr-defined]
        if not tiered:
            settle()
        return run


#: Seconds a piece of a first-tier launch (``_veda_span``) aims at: Ctrl-C ends a launch
#: within about this once pieces have grown (``_veda_cpu`` polls every 64 ms or so).  The span
#: keeps the GIL, and between two pieces the background compile may take it for up to
#: Python's switch interval (5 ms): pieces of 1 ms ran at half speed while it compiled.
PIECE_SECONDS = 0.02


def _raised_between_pieces(exc: BaseException) -> bool:
    """Whether ``exc`` came from a signal handler that Python ran between two pieces of
    :func:`_in_pieces` (a TimeoutError from a SIGALRM handler, say), rather than from the
    compiled span.  Both leave a frame past ``_in_pieces``'s: the handler's own, or the one
    Numba adds at the line of the body that raised (a code object of no Python function), so
    the frame's code is compared with the installed handlers'."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not _in_pieces.__code__:
        tb = tb.tb_next
    if tb is None or tb.tb_next is None:
        return False
    return tb.tb_next.tb_frame.f_code in handler_codes()


def _in_pieces(span: Any, dims: tuple[int, ...], args: tuple[Any, ...]) -> None:
    """Run ``span`` over the domain in pieces of outermost indices that grow until each takes
    about :data:`PIECE_SECONDS`, starting from SERIAL_PIECE flat elements as ``_veda_cpu``
    does.  Python runs pending signal handlers between two pieces: a raising one (Ctrl-C) ends
    the launch with its exception."""
    n0 = dims[0]
    step = max(1, SERIAL_PIECE // max(1, math.prod(dims[1:])))
    if n0 <= step:
        span(0, n0, *dims, *args)
        return
    lo = 0
    while True:
        hi = min(lo + step, n0)
        start = time.perf_counter()
        span(lo, hi, *dims, *args)
        if hi >= n0:
            return
        took = time.perf_counter() - start
        lo = hi
        if took < PIECE_SECONDS:  # toward pieces of PIECE_SECONDS, at most 64 times larger
            step *= min(64, max(2, int(PIECE_SECONDS / max(took, 1e-6))))


#: The CPUs to pin workers to, node by node, per sysfs root (read once).
_pin_nodes: dict[str, list[list[int]]] = {}


def _pin(mode: str | None) -> None:
    """Pin this thread's workers for ``mode``, or restore them (None): see
    :mod:`veda._hardware.pinning`.  Where the layer or platform cannot, a warning, once."""
    from veda import _files
    from veda._config import get_config
    from veda._hardware import numa, pinning

    reason = pinning.unavailable_reason(hw.threading_layer())
    if reason is not None:
        if mode is not None:
            _files.warn_once(
                "pin_threads",
                f"pin_threads={mode!r} is not applied: {reason}; workers run unpinned",
            )
        return
    root = get_config().sysfs_root
    nodes = _pin_nodes.get(root)
    if nodes is None:
        allowed = pinning.pinner.allowed()
        try:
            topo = numa.read_topology(root)
            nodes = [[c for c in n.cpus if c in allowed] for n in topo.nodes]
        except Exception:  # no usable topology: one node of the CPUs this process may use
            nodes = []
        nodes = [n for n in nodes if n] or [sorted(allowed)]
        _pin_nodes[root] = nodes
    # (workqueue, the one layer that serialises regions, refuses pinning above)
    pinning.pinner.apply(mode, hw.max_threads(), nodes, hw.get_threads, hw.set_threads)


def _warm(fn: Any, params: Any) -> Any:
    """A runner's ``warm(args)``: None when ``fn`` has code for the launch's parameters
    (``params(args)``), else the background job that compiles it (:func:`background_job`).
    Only exploring launches ask (a few microseconds: the parameters' Numba types)."""
    return lambda args: background_job(fn, params(args))


def _failing_index(
    module: Any, size: int, dims: tuple[int, ...], args: tuple[Any, ...]
) -> tuple[int, ...] | None:
    """The first index at which the body raises, found as the parallel target finds it in its
    failing chunk: the serial loop keeps no index, so it is run again up to the failure (after
    an exception a launch's outputs are undefined anyway).  None when it does not recur."""
    try:
        flat = int(module._veda_first_failure(0, size, *dims, *args))
    except Exception:
        return None
    return _unflatten(flat, dims) if flat >= 0 else None


class ParallelTarget(Target):
    """All or some CPU threads, with veda's chunk schedules generated into the loop."""

    name = "parallel"
    reduces_arrays = True
    parallel = True
    settings = ("threads", "schedule", "chunk")
    launch_overhead = REGION_ENTRY

    def unavailable_reason(self) -> str | None:
        return hw.parallel_unavailable_reason()

    def candidates(self, size: int, free_cores: int) -> list[Decision]:
        threads_max = min(hw.max_threads(), max(1, free_cores))
        if threads_max < 2 or size < PARALLEL_FLOOR_PER_THREAD * threads_max:
            return []
        out = []
        for t in sorted({threads_max, max(2, threads_max // 2)}, reverse=True):
            # Static for even work; dynamic and guided, each at two granularities, for uneven
            # work (bench/bench_dispatch.py: a triangular loop wants dynamic chunks of 1/256 of
            # a share, a CSR product with power-law rows guided chunks down to 1/2048 of one).
            dyn = default_chunk("dynamic", size, t)
            guided = default_chunk("guided", size, t)
            out += [
                Decision(self.name, t, "static", 1),
                Decision(self.name, t, "dynamic", dyn),
                Decision(self.name, t, "dynamic", max(1, dyn // 8)),
                Decision(self.name, t, "guided", guided),
                Decision(self.name, t, "guided", max(1, guided // 8)),
            ]
        # On a small domain the two granularities meet (chunks of 1): each candidate once.
        return list(dict.fromkeys(out))

    def default_decision(
        self,
        size: int,
        threads: int | None = None,
        schedule: str | None = None,
        chunk: int | None = None,
    ) -> Decision:
        if threads is None:
            threads = hw.max_threads()
        if schedule is None:
            schedule = "dynamic" if chunk is not None else "static"
        if chunk is None:
            chunk = default_chunk(schedule, size, threads)
        return Decision(self.name, threads, schedule, chunk)

    def rule_min_size(self) -> int | None:
        return PARALLEL_MIN_SIZE if hw.max_threads() > 1 else None

    def prepare(
        self,
        form: KernelForm,
        dims: tuple[int, ...],
        decision: Decision,
        options: LaunchOptions,
        profiler: Profiler | None = None,
        shared: bool = False,
    ) -> Runner:
        hw.threading_layer()
        module = form.program(options.compile)
        det = options.deterministic and (form.reduce is not None or bool(form.private))
        blocks = det and form.reduce is not None
        if det:
            fn = module._veda_det_parallel  # deterministic: no profiled variant, imbalance NaN
            profiler = None
        else:
            fn = module._veda_parallel if profiler is None else module._veda_parallel_profile
        tick = 0.0
        if profiler is not None:
            from veda._kernel.runtime import read_cycles  # compiled helpers: on first use

            tick = hw.seconds_per_tick(read_cycles)
        # A chunk beyond the domain is the whole domain; clamped, chunk arithmetic in the loop
        # (chunk index x chunk) cannot overflow 64 bits.
        wanted, chunk = decision.threads, max(1, min(decision.chunk, math.prod(dims)))
        mode = MODE_CODES[decision.schedule]
        # (a deterministic kernel with reduce={name: op} hands out its pieces in order whatever
        # the schedule, and reads no table)
        guided = mode == MODE_CODES["guided"] and not (det and form.private)
        # The guided schedule's chunk boundaries depend on the thread count, which the budget
        # may lower per launch: made here, once per count, rather than compiled into the
        # launcher (an allocation there costs a compile of its own).
        bounds: dict[int, np.ndarray] = {}
        size = math.prod(dims)
        if guided:  # the usual count's table here, outside the timed launches
            bounds[wanted] = _guided_table(size, wanted, chunk, blocks)
        reduce = form.reduce is not None
        get_threads, set_threads, serialise = hw.get_threads, hw.set_threads, hw.serialise
        budget, region_lock, Grant = hw.budget, hw.region_lock, hw.Grant
        regions, task_thread = hw.regions, hw.task_thread

        ran = False  # whether a region ran (and so compiled): only then can it be handed over
        pins = options.pin_threads

        def run(args: tuple[Any, ...]) -> Any:
            nonlocal ran
            if (pins is not None or pinner.pinned) and pinner.mode() != pins:
                _pin(pins)
            # An interrupt (KeyboardInterrupt) may be raised after any call returns, so each
            # change is made by the first call inside the ``try`` that undoes it, and each undo
            # is one call in its own ``finally``: when this returns or raises, the in-flight
            # count and this thread's Numba thread count are as they were.
            threads = wanted
            previous = 0  # the thread count to restore; 0 until the count was read
            grant = Grant() if shared else None
            try:
                if grant is not None:
                    # Launches the dispatcher sized share the machine's threads with the
                    # other such launches in flight instead of oversubscribing them.
                    threads = budget.take(grant, wanted)
                # The region runs on as many workers as this Python thread's Numba thread
                # count: set it for the launch (also right in a newly started thread), then
                # restore it.
                previous = get_threads()
                if previous != threads:
                    set_threads(threads)
                table = _NO_BOUNDS
                if guided:
                    table = bounds.get(threads)
                    if table is None:
                        table = bounds[threads] = _guided_table(size, threads, chunk, blocks)
                if grant is not None and grant.crowded and threads > 1 and task_thread.on and ran:
                    # A task worker's launch among others: its region runs on a warm region
                    # thread (veda._hardware.cpu.RegionThreads), not on this thread's team.
                    # Not the first (it may compile, which must be timed in this thread).
                    params = (*dims, threads, mode, chunk, table, *args)
                    if serialise:
                        with region_lock:
                            out = regions.run(fn, params, threads)
                    else:
                        out = regions.run(fn, params, threads)
                elif serialise:
                    with region_lock:
                        out = fn(*dims, threads, mode, chunk, table, *args)
                else:
                    out = fn(*dims, threads, mode, chunk, table, *args)
                ran = True
            except VedaError:
                raise
            except Exception as exc:
                interrupt = unwrap_interrupt(exc)
                if interrupt is not exc:
                    raise interrupt from None
                if from_signal_handler(exc):  # a signal handler's exception, not the body's
                    raise
                if isinstance(exc, MemoryError) and form.private:
                    copies = _det_pieces(form, args) if det else threads
                    raise _copies_failed(form, args, copies, det) from exc
                form.refuse_device_arguments(args, "parallel")
                raise
            finally:
                try:
                    if previous and previous != threads:
                        set_threads(previous)
                finally:
                    if grant is not None:
                        budget.give(grant)  # set.discard: one C call, never half done
                        budget.wake()
            if profiler is not None:
                result, lo, hi, busy, chunks = out
                profiler.profile(busy, chunks, tick)
            else:
                result, lo, hi = out
            if lo >= 0:
                raise recover_exception(form, module, lo, hi, dims, args, "parallel")
            return result[0] if reduce else None

        # For the dispatcher's background compiles (veda._kernel.background): the types of a
        # launch's parameters (the guided table is an int64 vector like _NO_BOUNDS).
        run.warm = _warm(  # type: ignore[attr-defined]
            fn, lambda args: (*dims, wanted, mode, chunk, _NO_BOUNDS, *args)
        )
        return run
