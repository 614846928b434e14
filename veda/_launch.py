"""The launch core: prepare, bind, run.  Every launch enters here.

The launch path is hot: an adaptive launch of a 100-element kernel must cost at most about a
microsecond more than calling the same ``@numba.njit`` loop directly (bench/bench_launch.py).
A launch looks up its prepared :class:`Entry` (one per kernel form, domain, argument count and
settings object), runs the form's per-launch checks, calls the runner its target prepared, and
appends the time to its telemetry recorder.  ``k[n]`` goes one step further: once its entry runs
one decision, the launcher it returns is specialised to that entry (:class:`_Site`), with the
checks written in and the compiled loop called directly.  Everything else takes a slower path:

* the first launch of an entry, or one under another configuration, prepares it
  (:meth:`Kernel._prepare`): checks the overrides, asks the dispatcher (or the fixed rule) for a
  decision and the target for a runner;
* while the dispatcher explores, or right after it changed its decision, the launch goes
  through :meth:`Kernel._adaptive_launch`;
* when anything watches or redirects launches (record, replay, listeners; later graph capture,
  task accounting, energy sampling), the launch takes the watched path.  They all enter through
  one slot, :data:`_watched`, so with none active the hot path pays one check
  (:class:`Interceptor`, :func:`add_interceptor`);
* a launch that meets new argument types compiles inside its runner; the compile hook then
  notes the compile's seconds on the launch's entry and brings its next review forward, where
  they are taken off the launch's time: a compile is never timed as run time, and the hot path
  checks nothing for it (:func:`_compiled_in_launch`).
"""

from __future__ import annotations

import contextvars
import math
import os
import statistics
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from time import perf_counter
from typing import Any, overload

import numpy as np

from veda import _config, _files, _registry, scheduler
from veda._config import Config, get_config, validate_launch_overrides
from veda._hardware import cpu as _hw_cpu
from veda._hardware import energy as _energy
from veda._hardware import gpu as _gpu
from veda._hardware.signals import held_interrupts, unwrap_interrupt
from veda._kernel import background as _background
from veda._kernel import checks as _checks
from veda._kernel.codegen import fastmath_label
from veda._kernel.definition import Form, KernelDefinition
from veda._types import Decision, LaunchOptions, Overrides
from veda.errors import KernelDefinitionError, LaunchError, VedaError
from veda.scheduler._rules import merge
from veda.telemetry import _events
from veda.telemetry import _registry as _telemetry

__all__ = [
    "Interceptor",
    "Kernel",
    "LaunchInfo",
    "add_interceptor",
    "kernel",
    "launch",
    "remove_interceptor",
]

_FOLD_AT = _telemetry.FOLD_AT


# --------------------------------------------------------------------------------------------
# The interceptor slot


#: The domain of the launch being made, as it was written, where it held ints of a subclass
#: (``veda.graph.param`` parameters): (kernel, the items).  LaunchInfo.domain reads it.
_written: contextvars.ContextVar[tuple[Any, tuple[Any, ...]] | None] = contextvars.ContextVar(
    "veda_written_domain", default=None
)


def _written_items(domain: Any) -> tuple[Any, ...] | None:
    """The items of ``domain`` if one is an int of a subclass (not a bool), else None."""
    items = tuple(domain) if isinstance(domain, (tuple, list)) else (domain,)
    for d in items:
        if type(d) is not int and isinstance(d, int) and not isinstance(d, bool):
            return items
    return None


def _noting(launcher: Callable[..., Any], kernel: Kernel, items: tuple[Any, ...]) -> Any:
    """``launcher``, noting the domain as written for the interceptors of its launches."""

    def launch(*args: Any) -> Any:
        token = _written.set((kernel, items))
        try:
            return launcher(*args)
        finally:
            _written.reset(token)

    launch.dims = launcher.dims  # type: ignore[attr-defined]
    return launch


class LaunchInfo:
    """One watched launch, as interceptors see it; times are ``time.perf_counter()`` seconds.

    ``domain`` is the domain as written where it held parameters (ints of a subclass, such as
    ``veda.graph.param``), else ``dims``.
    """

    __slots__ = (
        "args",
        "decision",
        "dims",
        "domain",
        "end",
        "error",
        "free",
        "kernel",
        "result",
        "start",
        "thread_id",
    )

    def __init__(
        self, kernel: Kernel, dims: tuple[int, ...], args: tuple[Any, ...], decision: Decision
    ) -> None:
        self.kernel = kernel
        self.dims = dims
        written = _written.get()
        self.domain = written[1] if written is not None and written[0] is kernel else dims
        self.args = args
        self.decision = decision
        self.thread_id = threading.get_ident()
        self.start = perf_counter()
        self.end: float | None = None
        #: ``"Type: message"`` of the exception a failed launch raised.
        self.error: str | None = None
        #: What the launch returned (its reduction's value, or None), once it ended.
        self.result: Any = None
        #: Whether the settings left the decision to veda (no target, threads, schedule or
        #: chunk set by veda.config or the launch, none forced by veda.replay).
        self.free = False


class Interceptor:
    """Something that watches or redirects launches.  Every hook is a no-op; override some.

    Interceptors are installed with :func:`add_interceptor`.  A launch asks each installed one
    whether it is :meth:`active` (a scoped interceptor, such as ``veda.record``, answers for its
    own thread or asyncio task), lets the active ones :meth:`redirect` it, and calls
    :meth:`start` and :meth:`end` around the run with the decision it ran with.
    """

    def active(self) -> bool:
        """Whether this interceptor applies to launches made here, now."""
        return True

    def redirect(self, kernel: Kernel, dims: tuple[int, ...]) -> Decision | None:
        """A decision to force on this launch, or None (the dispatcher decides)."""
        return None

    def start(self, launch: LaunchInfo) -> None:
        """The launch is about to run with ``launch.decision``."""

    def end(self, launch: LaunchInfo) -> None:
        """The launch ended (``launch.error`` says how, if it failed)."""


_interceptors: tuple[Interceptor, ...] = ()
#: The one check of the hot path: the interceptors installed, and the listener bridge while
#: telemetry listeners exist.  Replaced, never mutated, so a launch reads it without a lock.
_watched: tuple[Interceptor, ...] = ()
_slot_lock = threading.Lock()


class _Listeners(Interceptor):
    """Telemetry listeners' launch events (``on_launch_start`` / ``on_launch_end``)."""

    def active(self) -> bool:
        return bool(_events.listeners) and get_config().telemetry

    def start(self, launch: LaunchInfo) -> None:
        _events.emit("on_launch_start", self._event(launch))

    def end(self, launch: LaunchInfo) -> None:
        _events.emit("on_launch_end", self._event(launch))

    @staticmethod
    def _event(launch: LaunchInfo) -> _events.LaunchEvent:
        d = launch.decision
        return _events.LaunchEvent(
            launch.kernel.name,
            launch.dims,
            d.target,
            d.threads,
            d.schedule,
            d.chunk,
            launch.thread_id,
            launch.start,
            launch.end,
            launch.error,
            d.block,
        )


_listeners = _Listeners()


def _hook(interceptor: Interceptor, hook: str, call: Callable[..., Any], *args: Any) -> Any:
    """Call one of an interceptor's hooks; its own failure becomes a veda error naming it (veda
    errors, such as a replay's divergence, and KeyboardInterrupt pass as they are)."""
    try:
        return call(*args)
    except VedaError:
        raise
    except Exception as exc:
        raise _hook_failed(interceptor, hook, exc) from exc


def _hook_failed(interceptor: Interceptor, hook: str, exc: Exception) -> LaunchError:
    err = LaunchError(
        f"interceptor {interceptor!r}: its {hook}() hook raised {type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


def _start_all(watchers: tuple[Interceptor, ...], info: LaunchInfo) -> None:
    """Every watcher's start hook; when one fails, the launch does not run, and those that
    started see it end with the failure."""
    for k, w in enumerate(watchers):
        try:
            w.start(info)
        except BaseException as exc:
            err: BaseException = exc
            if isinstance(exc, Exception) and not isinstance(exc, VedaError):
                err = _hook_failed(w, "start", exc)
            info.end = perf_counter()
            info.error = f"{type(err).__name__}: {err}"
            _end_all(watchers[:k], info)
            if err is exc:
                raise
            raise err from exc


def _end_all(watchers: tuple[Interceptor, ...], info: LaunchInfo) -> VedaError | None:
    """Every watcher's end hook, even after one failed; the first failure, as a veda error."""
    failed: VedaError | None = None
    for w in watchers:
        try:
            w.end(info)
        except VedaError as exc:
            failed = failed or exc
        except Exception as exc:
            failed = failed or _hook_failed(w, "end", exc)
    return failed


def _refresh() -> None:
    global _watched
    with _slot_lock:
        _watched = _interceptors + ((_listeners,) if _events.listeners else ())


def add_interceptor(interceptor: Interceptor) -> Interceptor:
    """Install an interceptor for every launch in the process (it says where it applies)."""
    global _interceptors
    if not isinstance(interceptor, Interceptor):
        raise TypeError(f"expected a veda Interceptor, not {interceptor!r}")
    with _slot_lock:
        _interceptors = (*_interceptors, interceptor)
    _refresh()
    return interceptor


def remove_interceptor(interceptor: Interceptor) -> None:
    """Uninstall an interceptor (no error if it was not installed)."""
    global _interceptors
    with _slot_lock:
        _interceptors = tuple(i for i in _interceptors if i is not interceptor)
    _refresh()


_events.on_change.append(_refresh)


# --------------------------------------------------------------------------------------------
# Prepared launches


#: The decision of an entry not bound yet (no target has this name).
_UNBOUND = Decision("(unbound)")


def _meter(source: str, root: str) -> Any:
    """The reader that measures launch energy for ``energy=source``, or None for the model;
    a named reader that cannot read here falls back to the model, with a warning once."""
    names = ("rapl",) if source == "auto" else (source,)
    for name in names:
        reader = _energy.reader(name, root)
        reason = reader.reason_once()
        if reason is None:
            return reader
        if source != "auto":
            _files.warn_once(
                f"energy:{name}:{root}",
                f"energy={name!r} cannot be read here ({reason}); launch energy comes from "
                "the power model, labelled 'model' in telemetry",
            )
    return None


def _read_meter(meter: Any) -> tuple[float, float] | None:
    """When (the middle of the read, on the launch clock) and what the meter read, in joules;
    None (the launch is not metered) when the counter could not be read, which a launch never
    fails for."""
    t0 = perf_counter()
    try:
        joules = float(meter.joules())
    except Exception as exc:
        _files.warn_once(
            f"energy-read:{meter.name}",
            f"reading energy from {meter.name!r} failed ({type(exc).__name__}: {exc}); "
            "launches it could not measure count under the power model",
        )
        return None
    return (t0 + perf_counter()) / 2, joules


#: Watts above which a metered launch is taken for a misread counter (and left to the model):
#: more than a large server's CPUs and GPUs together.
IMPLAUSIBLE_WATTS = 20_000.0


def _meter_end(
    entry: Entry, meter: Any, recorder: Any, before: tuple[float, float], elapsed: float
) -> None:
    """Count a metered launch's joules: the counter's rise between the two reads, scaled to
    the launch's own time (the reads take microseconds of their own, inside that window).

    A launch that compiled is left to the model (its joules are mostly the compile's), as is
    one whose reading is implausible."""
    debts = entry.debts
    if debts is not None and threading.get_ident() in debts:
        return
    after = _read_meter(meter)
    if after is None:
        return
    window = after[0] - before[0]
    rise = joules = after[1] - before[1]
    if window > elapsed > 0:
        joules *= elapsed / window
    # A counter moves in steps of about a millisecond's energy: a short launch may catch one
    # whole step, so the rise is judged against at least a millisecond.
    if rise < 0 or rise > IMPLAUSIBLE_WATTS * max(window, 1e-3):
        _files.warn_once(
            f"energy-implausible:{meter.name}",
            f"{meter.name!r} read {rise:.3g} J over a {window * 1e6:.0f} us window; such "
            "launches count under the power model",
        )
        return
    recorder.metered(meter.name, joules, elapsed)
    _energy.record_observed(entry.decision, joules, elapsed, meter.name)


class Entry:
    """A prepared launch: one kernel form, domain, argument count and settings object."""

    __slots__ = (
        "cfg",
        "check",
        "debts",
        "decision",
        "dims",
        "form",
        "free",
        "last",
        "lock",
        "meter",
        "recorder",
        "resume_review_at",
        "review_at",
        "runner",
        "runners",
        "shorted",
        "size",
        "sized",
        "times",
        "tuning",
        "version",
    )

    def __init__(self, cfg: Config, form: Form, dims: tuple[int, ...], size: int) -> None:
        self.cfg = cfg
        self.form = form
        self.check = form.check
        self.dims = dims
        self.size = size
        self.runners: dict[Decision, tuple[Any, Any]] = {}
        self.lock = threading.Lock()
        #: The dispatcher's tuner entry while the dispatcher decides for this launch.
        self.tuning: Any = None
        self.version = 0
        self.last = 0.0
        self.review_at = _FOLD_AT
        self.runner: Any = None
        self.recorder: Any = None
        #: The energy reader measuring each launch, or None (the power model, telemetry off).
        self.meter: Any = None
        self.times: list[float] | None = None
        self.decision = _UNBOUND  # until _bind, before the first run
        #: Seconds of compiles inside launches not yet taken off their times, per thread id,
        #: and the review they brought forward (see :func:`_compiled_in_launch`).
        self.debts: dict[int, float] | None = None
        self.resume_review_at = _FOLD_AT
        #: Exploring launches in a row that ran on a smaller share of threads than they chose.
        self.shorted = 0
        #: Whether veda chose the thread count (nothing set ``threads``): such parallel
        #: launches borrow their threads from the machine's budget (veda._hardware.cpu).
        self.sized = False
        #: Whether the settings left the whole decision to veda (no target, threads, schedule
        #: or chunk set, nothing forced): LaunchInfo.free.
        self.free = False


def _checked_runner(
    runner: Callable[[tuple[Any, ...]], Any], target: str, kernel: str, reduce: str | None
) -> Callable[[tuple[Any, ...]], Any]:
    """A third-party target's runner, with what it returns checked: a reduction's result is a
    NumPy scalar (number or bool), a plain launch's is None.  veda's own targets are trusted:
    the check stays off their launch path."""

    def run(args: tuple[Any, ...]) -> Any:
        result = runner(args)
        if reduce is not None:
            if isinstance(result, np.generic) and result.dtype.kind in "biufc":
                return result
            expected = "a NumPy scalar (the reduction's result)"
        elif result is None:
            return None
        else:
            expected = "None (the kernel has no reduce=)"
        raise LaunchError(
            f"target {target!r}: its runner returned {result!r} for a launch of kernel "
            f"{kernel!r}, not {expected}"
        )

    return run


def _transfer(form: Form, args: tuple[Any, ...]) -> tuple[int, int]:
    """Host bytes a launch with ``args`` copies in and back on a target that copies host arrays."""
    host = [a.nbytes if isinstance(a, np.ndarray) else 0 for a in args]
    return sum(host), sum(host[p] for p in form.maybe_written)


def _copying_targets() -> bool:
    """Whether a dispatchable target copies host arrays or reads device arrays here: then where
    the arrays live is part of a prepared launch's key."""
    return any(
        (t.copies_host_arrays or t.reads_device_arrays) and t.dispatchable()
        for t in _registry.targets()
    )


class Kernel(KernelDefinition):
    """A compiled-on-demand parallel kernel; see :func:`kernel`.

    Launch it with ``k[n](*args)`` (a 1-d domain), ``k[(n, m)](*args)`` or
    ``k[(n, m, p)](*args)``, or with :func:`launch` for explicit settings.
    """

    def __init__(
        self,
        pyfunc: Callable[..., Any],
        reduce: str | Mapping[str, str] | None = None,
        ndim: int | None = None,
        fastmath: bool | AbstractSet[str] | Sequence[str] = False,
    ) -> None:
        super().__init__(pyfunc, reduce=reduce, ndim=ndim, fastmath=fastmath)
        #: The call site of each domain expression used (``k[n]``, ``k[(n,)]``; see :class:`_Site`).
        self._bound: dict[Any, _Site] = {}
        self._sites: dict[tuple[int, ...], _Site] = {}
        self._factories: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self._fast: dict[tuple[Any, ...], Entry] = {}
        #: Whether prepared launches are kept apart by where their arrays live (host or device):
        #: set once a target that copies or reads device arrays can be chosen, or a device array
        #: arrives, so that a CPU-only process keeps the plain key on its launch path.
        self._by_residency = False
        _kernels.add(self)

    def _repr_html_(self) -> str:
        """The kernel in a notebook: its signature, what it writes and reduces, and the
        dispatcher's decisions (:func:`veda.explain`)."""
        import html

        from veda.scheduler import explain

        esc = html.escape
        facts = [f"parameters <code>{esc(', '.join(self.params))}</code>"]
        if self.written:
            facts.append(f"writes <code>{esc(', '.join(self.written))}</code>")
        if self.reduce:
            facts.append(f"reduces with <code>{esc(self.reduce)}</code>")
        for name, op in self.private.items():
            facts.append(f"reduces <code>{esc(name)}</code> with <code>{esc(op)}</code>")
        if self.fastmath:
            facts.append(f"fastmath <code>{esc(fastmath_label(self.fastmath))}</code>")
        return (
            f"<div><p><b>veda.kernel {esc(self.name)}</b>: {'; '.join(facts)}</p>"
            f"{explain(self)._repr_html_()}</div>"
        )

    def _options(self) -> dict[str, Any]:
        return {
            "reduce": dict(self.private) if self.private else self.reduce,
            "ndim": self.ndim,
            "fastmath": set(self.fastmath),
        }

    # -- domains -------------------------------------------------------------------------------
    def __getitem__(self, domain: Any) -> Callable[..., Any]:
        if domain.__class__ is int:  # the common case, first
            site = self._bound.get(domain)
            if site is not None:
                return site.go or site.launch
        return self._bound_for(domain)

    def _bound_for(self, domain: Any) -> Callable[..., Any]:
        # Only plain ints (and tuples of them) are cached: 4.0 and True hash like 4 and 1 but
        # must be refused.
        cacheable = domain.__class__ is int or (
            domain.__class__ is tuple and all(d.__class__ is int for d in domain)
        )
        site = self._bound.get(domain) if cacheable else None
        if site is None:
            dims = self.domain(domain)
            site = self._sites.get(dims)
            if site is None:
                site = _Site(self, dims)
                if len(self._sites) < 256:
                    self._sites[dims] = site
            if cacheable and len(self._bound) < 256:
                self._bound[domain] = site
        if not cacheable and _watched:
            items = _written_items(domain)
            if items is not None:
                return _noting(site.go or site.launch, self, items)
        return site.go or site.launch

    # -- the hot path --------------------------------------------------------------------------
    def _launch(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any) -> Any:
        # One check for everything that watches launches, one dictionary look-up, the
        # per-launch checks, the compiled call, two clock reads and an append for telemetry.
        try:
            if _watched:
                return self._launch_watched(dims, args, overrides)
            cfg = get_config()
            if self._by_residency:  # a GPU here, or device arrays seen: host and device apart
                entry = self._fast.get((dims, len(args), overrides, _gpu.device_resident(args)))
            else:
                entry = self._fast.get((dims, len(args), overrides))
            if entry is None or entry.cfg is not cfg:
                entry = self._prepare(dims, args, overrides, cfg)
            if entry.check is not None:
                entry.check(dims, args)
            tuning = entry.tuning
            if tuning is not None and tuning.tuner.version != entry.version:
                return self._adaptive_launch(entry, args, ())  # exploring, or the decision changed
            recorder = entry.recorder
            if recorder is None:  # telemetry=False
                return entry.runner(args)
            if entry.meter is not None:  # a measured energy source reads around the launch
                return self._timed(entry, args, ())
            start = perf_counter()
            try:
                result = entry.runner(args)
            except BaseException as exc:
                recorder.error()
                if entry.debts is not None:  # a failed launch appends no time to take it off
                    _settle(entry, None)
                interrupt = unwrap_interrupt(exc)  # Ctrl-C seen by Numba's boxing: SystemError
                if interrupt is not exc:
                    raise interrupt from None
                raise
            elapsed = perf_counter() - start
            times: list[float] = entry.times  # type: ignore[assignment]  # set with the recorder
            times.append(elapsed)
            if len(times) > entry.review_at:
                self._review(entry, args, elapsed)
            return result
        except KernelDefinitionError as exc:  # (a try costs nothing until it catches)
            if not self._excluded(dims, args, overrides, exc):
                raise
        return self._launch(dims, args, overrides)  # the dispatcher decided again

    def _launch_watched(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any) -> Any:
        """A launch while interceptors are installed: those active here may force a decision
        (replay) and see the launch start and end."""
        watchers = tuple(w for w in _watched if _hook(w, "active", w.active))
        for w in watchers:
            forced = _hook(w, "redirect", w.redirect, self, dims)
            if forced is not None:
                if type(forced) is not Decision:
                    raise LaunchError(
                        f"interceptor {w!r}: redirect() returned {forced!r}, not "
                        "a veda.targets.Decision or None"
                    )
                overrides = forced
        cfg = get_config()
        entry = self._fast.get(self._key(dims, args, overrides))
        if entry is None or entry.cfg is not cfg:
            entry = self._prepare(dims, args, overrides, cfg)
        if entry.check is not None:
            entry.check(dims, args)
        tuning = entry.tuning
        if tuning is not None and tuning.tuner.version != entry.version:
            return self._adaptive_launch(entry, args, watchers)
        return self._timed(entry, args, watchers)

    def _timed(self, entry: Entry, args: tuple[Any, ...], watchers: tuple[Interceptor, ...]) -> Any:
        """One timed launch, seen by ``watchers``; returns the result (time in entry.last)."""
        recorder = entry.recorder
        info = None
        meter = entry.meter
        before = None  # (when, joules) of the energy reading before the launch
        if meter is not None and recorder is not None and meter.covers(entry.decision.target):
            # read before the watchers start: an interrupt here leaves none without its end
            before = _read_meter(meter)
        if watchers:
            info = LaunchInfo(self, entry.dims, args, entry.decision)
            info.free = entry.free
            _start_all(watchers, info)
        start = perf_counter()
        try:
            result = entry.runner(args)
        except BaseException as exc:
            if recorder is not None:
                recorder.error()
                if entry.debts is not None:  # a failed launch appends no time to take it off
                    _settle(entry, None)
            interrupt = unwrap_interrupt(exc)  # Ctrl-C seen by Numba's boxing: SystemError
            if info is not None:
                info.end = perf_counter()
                info.error = f"{type(interrupt).__name__}: {interrupt}"
                failed = _end_all(watchers, info)
                if failed is not None:  # the launch's own error comes first
                    warnings.warn(f"veda: after a failed launch, {failed}", RuntimeWarning, 2)
            if interrupt is not exc:
                raise interrupt from None
            raise
        end = perf_counter()
        elapsed = entry.last = end - start
        try:
            if before is not None:
                _meter_end(entry, meter, recorder, before, elapsed)
        finally:  # an interrupt while reading the meter still counts the launch, ends watchers
            if recorder is not None:
                recorder.times.append(elapsed)
                if len(recorder.times) > entry.review_at:
                    self._review(entry, args, elapsed)
            if info is not None:
                info.start, info.end, info.result = start, end, result
                failed = _end_all(watchers, info)
                if failed is not None:
                    raise failed from failed.__cause__
        return result

    # -- preparing -----------------------------------------------------------------------------
    def _key(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any) -> Any:
        """The launch path's key of a prepared launch (see :meth:`_launch`)."""
        if self._by_residency:
            return (dims, len(args), overrides, _gpu.device_resident(args))
        return (dims, len(args), overrides)

    def _prepare(
        self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any, cfg: Config
    ) -> Entry:
        """Everything a launch needs that its argument values do not change."""
        forced = overrides if type(overrides) is Decision else None
        if overrides is not None and forced is None:
            validate_launch_overrides(Overrides(*overrides)._asdict())
        form = self.form(len(dims), len(args))
        size = math.prod(dims)
        if size == 0 and self.reduce in ("min", "max"):
            raise LaunchError(
                f"kernel {self.name!r}: reduce={self.reduce!r} over an empty domain {dims} has "
                "no identity (as with np.min / np.max of an empty array)"
            )
        if cfg.deterministic and self.fastmath:
            raise LaunchError(
                f"kernel {self.name!r} was defined with fastmath={fastmath_label(self.fastmath)}, "
                "which lets LLVM reorder and approximate floating-point operations differently "
                "in each compiled loop; deterministic mode cannot promise the same bits for it. "
                "Launch it outside deterministic mode, or define it without fastmath"
            )
        entry = Entry(cfg, form, dims, size)
        if cfg.energy != "model" and cfg.telemetry:
            entry.meter = _meter(cfg.energy, cfg.sysfs_root)
        if forced is not None:  # replay: exactly the recorded decision
            _config.check_decision(forced, LaunchError, f"the forced decision {forced}")
            self._bind(entry, forced, args)
            self._store(dims, args, overrides, entry)
            return entry
        merged = merge(cfg, overrides)
        entry.sized = merged.threads is None  # by the dispatcher, or by the fixed rule
        entry.free = all(v is None for v in merged)
        resident = _gpu.device_resident(args)
        residency = "device" if resident else "host"
        # Where the arrays live decides which targets can read them, and what a copying target
        # would copy: once that can matter, the launch key includes it.  An explicit target
        # never depends on it, and asks for no GPU (a CPU launch loads no CUDA).
        copying = merged.target is None and (resident or _copying_targets())
        if (copying or resident) and not self._by_residency:
            with self._lock:
                self._by_residency = True
                self._fast.clear()  # entries under the plain key would be found no more
                self._drop_specialised()
        pins = scheduler.pins(cfg, overrides)
        tuner_entry = None
        if pins is not None and size > 0:
            transfer = _transfer(form, args) if copying else None
            tuner_entry = scheduler.dispatcher.entry(
                self,
                len(dims),
                size,
                cfg.policy,
                cfg.cache_dir,
                pins,
                transfer,
                residency,
                cfg.deterministic,
                bool(form.private),
            )
        if tuner_entry is not None and cfg.telemetry:
            entry.tuning = tuner_entry  # explores and learns from this entry's launches
            entry.version = -1  # bind at the first launch
            decision = tuner_entry.tuner.next()
        elif tuner_entry is not None and tuner_entry.tuner.choice is not None:
            decision = tuner_entry.tuner.choice  # telemetry off: keep the last decision
        else:
            decision = scheduler.decide(size, cfg, overrides, residency, bool(form.private))
        self._bind(entry, decision, args)
        self._store(dims, args, overrides, entry)
        return entry

    def _store(
        self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any, entry: Entry
    ) -> None:
        if len(self._fast) >= 1024:
            self._fast.clear()
        self._fast[self._key(dims, args, overrides)] = entry

    def _bind(self, entry: Entry, decision: Decision, args: tuple[Any, ...]) -> None:
        """Point an entry at the runner (and recorder) of one decision, preparing it once."""
        if decision.target == "parallel":
            forked = _hw_cpu.parallel_unavailable_reason()
            if forked is not None:  # a fork child of OpenMP: one thread, same loop body
                _files.warn_once(
                    "fork:parallel",
                    f"{forked}. Until then, 'parallel' launches in this process run on one "
                    "thread (target 'cpu'; telemetry records them under 'cpu')",
                )
                decision = Decision("cpu")
        got = entry.runners.get(decision)
        cfg = entry.cfg
        if got is None:
            recorder = None
            if cfg.telemetry:
                recorder = _telemetry.registry.recorder(
                    self.module_name,
                    self.name,
                    decision,
                    entry.size,
                    entry.form.nbytes,
                    _config.power_model(cfg).watts(decision),
                )
            target = _registry.get(decision.target)
            try:
                runner = target.prepare(
                    entry.form,
                    entry.dims,
                    decision,
                    LaunchOptions(
                        cfg.boundscheck, cfg.cache, cfg.deterministic, cfg.pin_threads or None
                    ),
                    recorder if cfg.profile else None,
                    shared=entry.sized,
                )
            except VedaError:
                raise
            except Exception as exc:
                raise LaunchError(
                    f"target {target.name!r} could not prepare a launch of kernel "
                    f"{self.name!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if not callable(runner):
                raise LaunchError(
                    f"target {target.name!r}: prepare() returned {runner!r}, not "
                    "a callable that runs a launch"
                )
            if not type(target).__module__.startswith("veda."):
                runner = _checked_runner(runner, target.name, self.name, self.reduce)
            got = entry.runners[decision] = (runner, recorder)
        runner, recorder = got
        if recorder is not None:
            recorder.per_launch = int(entry.form.nbytes(args))
        entry.runner, entry.recorder, entry.decision = runner, recorder, decision
        entry.times = None if recorder is None else recorder.times
        entry.review_at = _FOLD_AT
        if entry.times is not None and entry.tuning is not None:
            entry.review_at = len(entry.times) + scheduler.REVIEW_EVERY

    # -- the dispatcher's launches -------------------------------------------------------------
    def _adaptive_launch(
        self, entry: Entry, args: tuple[Any, ...], watchers: tuple[Interceptor, ...]
    ) -> Any:
        """A launch while the dispatcher explores, or right after it changed its decision."""
        tuning = entry.tuning
        if tuning.tuner.choice is None:
            with entry.lock:  # one exploring launch of this entry at a time: bind, run, credit
                return self._explore(entry, tuning, args, watchers)
        return self._explore(entry, tuning, args, watchers)

    def _explore(
        self, entry: Entry, tuning: Any, args: tuple[Any, ...], watchers: tuple[Interceptor, ...]
    ) -> Any:
        tuner = tuning.tuner
        if tuner.choice is not None:  # decided (here or in another entry): bind and run
            self._bind(entry, tuner.choice, args)
            entry.version = tuner.version
            return self._timed(entry, args, watchers)
        decision = tuner.next()
        self._bind(entry, decision, args)
        if entry.cfg.background_compile and getattr(entry.runner, "warm", None) is not None:
            decision, credited = self._compiled_choice(entry, tuner, decision, args)
            if not credited:  # a stand-in while the candidates left compile: not a sample
                return self._timed(entry, args, watchers)
        budget = _hw_cpu.budget
        budget.shorted()  # forget an earlier launch's shortfall
        result = self._timed(entry, args, watchers)
        if budget.shorted() and entry.shorted < _SHORTED_RETRIES:
            # Other parallel launches held part of the machine: this one ran on fewer threads
            # than the candidate has, so its time is not the candidate's; the tuner asks for
            # the same candidate again (a few times: a machine that stays shared is what
            # the kernel will run on, and exploring must end).
            entry.shorted += 1
            return result
        entry.shorted = 0
        imbalance = math.nan
        series = entry.recorder.series if entry.recorder is not None else None
        if entry.cfg.profile and series is not None and series.profiled:
            imbalance = series.imbalance_sum / series.profiled
        with held_interrupts():  # Ctrl-C must not leave the tuner between two rounds
            scheduler.dispatcher.observe(
                tuning, decision, entry.last, entry.size, entry.cfg.cache_dir, imbalance
            )
        return result

    def _excluded(
        self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any, exc: VedaError
    ) -> bool:
        """A launch failed with ``exc`` (a :class:`KernelDefinitionError`): when it ran the
        dispatcher's candidate of another target than ``"cpu"`` (Numba cannot build every
        loop everywhere: a parallel region over a tuple holding tuples, say), the dispatcher
        drops that target's candidates for the kernel and size class and decides again, says
        why in ``veda.explain`` and once as a warning; whether it did (then the caller launches
        again: the compile failed before the loop ran, so nothing was written).  A launch
        that asked for a target gets the error."""
        entry = self._fast.get(self._key(dims, args, overrides))
        if entry is None or entry.tuning is None or entry.decision is _UNBOUND:
            return False
        target = entry.decision.target
        if target == "cpu":  # the launch core's last resort (as after a fork): its error stands
            return False
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        detail = " ".join(ln for ln in lines if not ln.startswith("(its parallel loop"))
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        with held_interrupts():
            dropped = scheduler.dispatcher.exclude_target(
                entry.tuning,
                target,
                f"cannot be compiled for these arguments: {detail or type(exc).__name__}",
                entry.cfg.cache_dir,
            )
        if dropped:
            _files.warn_once(
                f"exclude-target:{id(self)}:{target}",
                f"kernel {self.name!r}: its {target!r} loop cannot be compiled for the "
                f"arguments of this launch ({detail or exc}); the dispatcher decides without "
                f"the {target!r} target for this kernel and size (veda.explain says why)",
            )
        return dropped

    def _compiled_choice(
        self, entry: Entry, tuner: Any, decision: Decision, args: tuple[Any, ...]
    ) -> tuple[Decision, bool]:
        """What an exploring launch runs (``background_compile``), bound, and whether its time
        is a sample of it.

        ``decision``, a sample, when its loop is compiled for these arguments and no compile
        runs in the background.  Otherwise its compile (if it needs one) goes to the background
        thread, and the launch runs a stand-in, whose time is not a sample: the best measured
        candidate, which is compiled.  No sample is taken while a background compile runs: it
        shares the machine, and the candidates that wait for it would be measured on a quieter
        one.  Where no candidate was measured yet (a new kernel's first launches) the launch
        runs ``decision`` as a sample, compiling it in its own thread if need be, as it would
        without the option; a candidate of the "cpu" target goes first, whose loop compiles
        fastest (a sample if the round still runs it), and the others' compiles start at the
        next launch.  A compile that failed in the background is left to the launch, which
        compiles again and raises its error."""
        job = _pending(entry.runner, args)
        if job is None and not _background.busy():
            return decision, True
        for d in sorted(
            (d for d, t in tuner.trials.items() if t.samples),
            key=lambda d: statistics.median(tuner.trials[d].samples),
        ):
            got = entry.runners.get(d)
            if got is not None and d != decision and _pending(got[0], args) is None:
                if job is not None:
                    tuner.compiling.update(
                        (q, job[0])
                        for q in [decision, *tuner.queued()]
                        if _waits(entry, q, args, job)
                    )
                    _background.submit(*job)
                self._bind(entry, d, args)
                return d, False
        if job is not None:  # nothing compiled to stand in: this launch compiles, serial first
            queued = tuner.queued()
            first = next((d for d in queued if d.target == "cpu"), None)
            if first is None:  # (new argument types once the serial loop was measured)
                first = next((d for d in tuner.trials if d.target == "cpu"), decision)
            if first != decision:
                self._bind(entry, first, args)
            return first, first in queued or first == decision
        return decision, True

    def _review(self, entry: Entry, args: tuple[Any, ...], elapsed: float) -> None:
        """Every few launches: the dispatcher's drift and load checks; folding telemetry.  Also
        brought forward to a launch that compiled, whose time ``elapsed`` it corrects first."""
        with held_interrupts():  # the tuner and the telemetry folds change together
            self._reviewed(entry, args, elapsed)

    def _reviewed(self, entry: Entry, args: tuple[Any, ...], elapsed: float) -> None:
        times = entry.times
        assert times is not None and entry.recorder is not None
        if entry.debts is not None and _settle(entry, elapsed):
            return  # brought forward for the compile only: the real review is not due
        step = _FOLD_AT
        if entry.tuning is not None and entry.tuning.tuner.choice is not None:
            recent = times[-scheduler.REVIEW_EVERY :]
            scheduler.dispatcher.review(entry.tuning, recent, entry.size)
            # Review every REVIEW_EVERY launches, but not more often than every ~10 ms of
            # launches: short kernels would otherwise pay for reviews on the launch path.
            typical = sorted(recent)[len(recent) // 2] if recent else 0.0
            step = min(_FOLD_AT, max(scheduler.REVIEW_EVERY, int(0.01 / max(typical, 1e-7))))
        if len(times) > _FOLD_AT:
            entry.recorder.fold(args, entry.form.nbytes)
        following = len(times) + step
        with _debt_lock:  # another thread's compile keeps reviews brought forward to it
            if entry.debts is None:
                entry.review_at = following
            else:
                entry.resume_review_at = following

    def forget(self) -> None:
        """Drop the prepared launches (a target was registered or removed)."""
        with self._lock:
            self._fast.clear()
            self._drop_specialised()

    def _drop_specialised(self) -> None:
        """Every site back to its own launcher: the specialised ones ran entries now gone."""
        for site in list(self._sites.values()):
            go = site.go
            if go is not None:
                site.unbind(go)

    # -- per call site -------------------------------------------------------------------------
    def _specialise(self, site: _Site, args: tuple[Any, ...]) -> None:
        """After a launch through ``site``: give the site a launcher specialised to the entry
        it ran, if that entry runs one decision as things stand (:class:`_Site`)."""
        if _watched or self._by_residency or self._sites.get(site.dims) is not site:
            return  # (a site beyond the 256 kept is made anew at each k[...]: not worth it)
        entry = self._fast.get((site.dims, len(args), None))
        if entry is None or entry.cfg is not get_config() or entry.runner is None:
            return
        if entry.meter is not None:
            return  # an energy reader reads around each launch: the general path does
        tuning = entry.tuning
        if tuning is not None and (
            tuning.tuner.choice is None or tuning.tuner.version != entry.version
        ):
            return  # exploring: each launch may bind another candidate
        # One snapshot of the entry, its version first: another thread may rebind it meanwhile,
        # and the launcher is bound below only if nothing changed.
        version, runner, times = entry.version, entry.runner, entry.times
        if getattr(runner, "tiering", False):
            return  # its first tier ("cpu", targets.cpu): specialised once its loop is compiled
        direct = getattr(runner, "direct", None)
        timed = times is not None
        form = entry.form
        variant = (
            form.ndim,
            form.nargs,
            direct is not None,
            bool(direct and direct[1]),
            timed,
            tuning is not None,
        )
        factory = self._factories.get(variant)
        if factory is None:
            factory = self._factories[variant] = _go_factory(form, *variant[2:])
        fn, _, failed = direct if direct is not None else (None, False, None)
        tuner = tuning.tuner if tuning is not None else None
        go = factory(
            self, site, entry, entry.cfg, runner, fn, failed, tuner, version, times, form.check
        )
        with self._lock:  # not across a forget() or the residency switch, which drop entries
            if (
                entry.version == version
                and entry.runner is runner
                and not self._by_residency
                and self._fast.get((site.dims, len(args), None)) is entry
            ):
                site.bind(go)

    def _go_failed(
        self, entry: Entry, exc: BaseException, args: tuple[Any, ...], failed: Any
    ) -> Any:
        """A specialised launcher's launch raised ``exc``: raise what :meth:`_launch` would,
        or launch again as it would (:meth:`_excluded`) and return the result."""
        try:
            self._go_raise(entry, exc, args, failed)
        except KernelDefinitionError as err:
            if not self._excluded(entry.dims, args, None, err):
                raise
        return self._launch(entry.dims, args, None)

    def _go_raise(
        self, entry: Entry, exc: BaseException, args: tuple[Any, ...], failed: Any
    ) -> None:
        try:
            if failed is not None and isinstance(exc, Exception):
                failed(exc, args)  # the target's error for it (always raises)
            raise exc
        except BaseException as err:
            recorder = entry.recorder
            if recorder is not None:
                recorder.error()
                if entry.debts is not None:
                    _settle(entry, None)
            interrupt = unwrap_interrupt(err)
            if interrupt is not err:
                raise interrupt from None
            raise


def _pending(runner: Any, args: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """The background compile ``runner`` still needs for ``args`` (its key and job), or None
    when it is compiled, its compile is done, or failed there (then the launch compiles and
    raises), or it has none (a runner without ``warm``: a CUDA or a user's target)."""
    warm = getattr(runner, "warm", None)
    job = warm(args) if warm is not None else None
    if job is None or _background.state(job[0]) in (_background.DONE, _background.FAILED):
        return None  # (DONE: should the code still be missing, the launch compiles it)
    return job


def _waits(entry: Entry, decision: Decision, args: tuple[Any, ...], job: Any) -> bool:
    """Whether ``decision`` (prepared in ``entry``) waits for the background ``job``."""
    got = entry.runners.get(decision)
    pending = _pending(got[0], args) if got is not None else None
    return pending is not None and pending[0] == job[0]


_debt_lock = threading.Lock()
#: Exploring launches in a row on a smaller share that the tuner does not credit (Entry.shorted).
_SHORTED_RETRIES = 8


def _compiled_in_launch(frame: Any, seconds: float) -> None:
    """A launcher compiled inside the timed launch running in ``frame``: note the compile's
    seconds on the launch's entry, for this thread, and bring the entry's review forward, so
    that the launch takes them off the time it is about to append (:func:`_settle`)."""
    entry = frame.f_locals.get("entry")
    if isinstance(entry, Entry) and entry.times is not None:
        tid = threading.get_ident()
        with _debt_lock:
            if entry.debts is None:
                entry.debts = {}
                entry.resume_review_at = entry.review_at
            entry.debts[tid] = entry.debts.get(tid, 0.0) + seconds
            entry.review_at = -1


def _settle(entry: Entry, elapsed: float | None) -> bool:
    """Take this thread's compile seconds off the time it just appended, ``elapsed`` (None: the
    launch failed and appended nothing); True when the entry's real review is not due yet.

    The time is found by identity from the end of the list: other threads may have appended
    after it; if a fold took it away meanwhile, the figure stays as it was.
    """
    times = entry.times
    with _debt_lock:
        debts = entry.debts
        seconds = debts.pop(threading.get_ident(), None) if debts is not None else None
        if not debts:  # no other thread's compile pending: resume the schedule of reviews
            entry.debts = None
            entry.review_at = entry.resume_review_at
        due = times is not None and len(times) > entry.resume_review_at
    if seconds is not None and elapsed is not None and times is not None:
        for k in range(len(times) - 1, max(len(times) - 256, 0) - 1, -1):
            if times[k] is elapsed:
                times[k] = max(elapsed - seconds, 0.0)
                if entry.last is elapsed:
                    entry.last = times[k]
                break
    return not due


#: Where a launcher that compiles asks whether it runs inside a timed launch: the launch path's
#: timed calls say yes (their local ``entry`` is the launch's), preparing says no (a target may
#: warm up its code there).
_checks.TIMED_CODE.update(
    {
        Kernel._launch.__code__: True,
        Kernel._timed.__code__: True,
        Kernel._bind.__code__: False,
    }
)
_checks.on_launch_compile = _compiled_in_launch

_kernels: weakref.WeakSet[Kernel] = weakref.WeakSet()


def _forget_prepared() -> None:
    for k in list(_kernels):
        k.forget()


_registry.on_change(_forget_prepared)


def _after_fork_in_child() -> None:
    """A forked child may have lost its parallel target (OpenMP): prepare every launch again.

    First every kernel's lock and every prepared launch's lock anew: another thread of the
    parent may have held one at the fork (an exploring launch holds its entry's for the whole
    launch), and the child would wait for it forever."""
    global _slot_lock, _debt_lock
    _slot_lock, _debt_lock = threading.Lock(), threading.Lock()
    for k in list(_kernels):
        k._lock = threading.RLock()
        for entry in list(k._fast.values()):
            entry.lock = threading.Lock()
    if _hw_cpu.parallel_unavailable_reason() is not None:
        _forget_prepared()
        scheduler.dispatcher.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Site:
    """One kernel and domain, as ``k[n]`` names them: the launchers a program calls.

    ``site.launch`` is the site's own: it launches through :meth:`Kernel._launch` (every
    check and slow path there) and then asks for a launcher *specialised* to the entry that
    launch ran (:meth:`Kernel._specialise`).  Once the entry runs one decision (no override,
    nothing watching, the dispatcher decided), the specialised launcher, ``site.go``, made
    from generated source per kernel form (:func:`_go_factory`), is what ``k[n]`` returns, and
    what the site's own launcher forwards to.  It does only what that entry's launch needs: the
    form's argument checks written in with the domain as closure values, the compiled loop
    called directly (veda's ``"cpu"`` target) or the runner, and the telemetry append; no
    dictionary look-up, no key built, one Python call fewer.

    It checks at every call that it still applies: the argument count, no interceptor, the
    same settings object (``veda.config`` scopes), the dispatcher's decision unchanged (its
    tuner's version) and the site still pointing at it.  Otherwise it unbinds itself and the
    launch takes the site's own launcher: a launcher kept from an earlier ``k[n]`` stays
    right, only slower.
    """

    __slots__ = ("dims", "go", "kernel", "launch")

    def __init__(self, kernel: Kernel, dims: tuple[int, ...]) -> None:
        self.kernel = kernel
        self.dims = dims
        self.go: Callable[..., Any] | None = None
        site = self
        launch_core = kernel._launch
        specialise = kernel._specialise

        def launch(*args: Any) -> Any:
            go = site.go
            if go is not None:
                return go(*args)
            result = launch_core(dims, args, None)
            specialise(site, args)
            return result

        launch.dims = dims  # type: ignore[attr-defined]  # what veda.launch and submit read
        launch.__qualname__ = launch.__name__ = f"{kernel.name}[{', '.join(map(str, dims))}]"
        self.launch = launch

    def bind(self, go: Callable[..., Any]) -> None:
        go.dims = self.dims  # type: ignore[attr-defined]
        go.__qualname__ = go.__name__ = self.launch.__name__
        self.go = go

    def unbind(self, go: Callable[..., Any]) -> None:
        """``go`` no longer applies: the site's own launcher again (if ``go`` was its)."""
        if self.go is go:
            self.go = None

    def __repr__(self) -> str:
        return f"<veda launch site {self.launch.__name__}>"


def _go_factory(
    form: Form, direct: bool, reduce: bool, timed: bool, tuned: bool
) -> Callable[..., Any]:
    """The factory of a form's specialised launchers (:class:`_Site`), from generated source
    with the form's checks written in (as :class:`~veda._kernel.definition.Form` does for its
    ``check``).  Its globals are this module's, so ``_watched`` is read live."""
    dim_names = [f"d{k}" for k in range(form.ndim)]
    # The form's checks (Form.check) as one condition over the unpacked arguments: lengths
    # first, then the written arrays' flags.  When it holds, or an argument that is not an
    # array (a tuple, a 0-d array, something else) raises in it, the careful check decides.
    conds = []
    for pos, axis, dim, _, _ in form.direct:
        shape = f"len(a{pos})" if axis == 0 else f"a{pos}.shape[{axis}]"
        conds.append(f"{shape} < {dim_names[dim]}")
    conds += [f"not a{pos}.flags.writeable" for pos in form.written]
    if form.private:  # its dtype, rank and aliasing checks: in the careful check only
        conds.append("True")
    body = [
        "def make(kernel, site, entry, cfg, runner, fn, failed, tuner, version, times, check):",
        f"    {', '.join(dim_names)}, = dims = entry.dims",
        "    unbind = site.unbind",
        "    scope_get = _config._scope.get",
        "    fallback = site.launch",
        "    review = kernel._review",
        "    go_failed = kernel._go_failed",
    ]
    if timed:
        body.append("    append = times.append")
    body += [
        "    def go(*args):",
        # get_config() written in: no call while no veda.config scope is open.
        f"        if len(args) != {form.nargs} or _watched or site.go is not go or ("
        "_config._defaults if (scope := scope_get()) is None else scope.effective()) is not cfg:",
        "            unbind(go)",
        "            return fallback(*args)",
    ]
    if tuned:
        body += [
            "        if tuner.version != version:  # the dispatcher changed its decision",
            "            unbind(go)",
            "            return fallback(*args)",
        ]
    names = [f"a{k}" for k in range(form.nargs)]
    if names and (direct or conds):
        body.append(f"        {', '.join(names)}, = args")
    if conds:
        body += [
            "        try:",
            f"            bad = {' or '.join(conds)}",
            "        except (TypeError, AttributeError, IndexError):",
            "            bad = True",
            "        if bad:",
            "            check(dims, args)  # the careful check: raises what is wrong, if anything",
        ]
    call = f"fn({', '.join(dim_names + names)})" if direct else "runner(args)"
    if timed:
        body.append("        start = perf_counter()")
    body += [
        "        try:",
        f"            result = {call}",
        "        except BaseException as exc:",
        "            return go_failed(entry, exc, args, failed)  # (raises, or launches again)",
    ]
    if timed:
        body += [
            "        elapsed = perf_counter() - start",
            "        append(elapsed)",
            "        if len(times) > entry.review_at:",
            "            review(entry, args, elapsed)",
        ]
    if direct:
        body.append("        return result[0]" if reduce else "        return None")
    else:
        body.append("        return result")
    body.append("    return go")
    code = compile("\n".join(body), f"<veda launcher {form.label}>", "exec")
    factory_code = next(c for c in code.co_consts if isinstance(c, type(code)))
    go_code = next(c for c in factory_code.co_consts if isinstance(c, type(code)))
    # A compile inside the call is taken off the launch's time, as in Kernel._launch (its
    # local 'entry' is the launch's).
    _checks.TIMED_CODE[go_code] = True
    return types.FunctionType(factory_code, globals(), "make")


# --------------------------------------------------------------------------------------------
# The public entry points


@overload
def kernel(pyfunc: Callable[..., Any], /) -> Kernel: ...
@overload
def kernel(
    *,
    reduce: str | Mapping[str, str] | None = None,
    ndim: int | None = None,
    fastmath: bool | AbstractSet[str] | Sequence[str] = False,
) -> Callable[[Callable[..., Any]], Kernel]: ...


def kernel(
    pyfunc: Callable[..., Any] | None = None,
    /,
    *,
    reduce: str | Mapping[str, str] | None = None,
    ndim: int | None = None,
    fastmath: bool | AbstractSet[str] | Sequence[str] = False,
) -> Kernel | Callable[[Callable[..., Any]], Kernel]:
    """Turn a loop body into a parallel kernel.

    The function's first D parameters receive the launch indices of a D-dimensional domain
    (D = 1, 2 or 3); the rest receive the launch's arguments: NumPy arrays of numbers or
    booleans, or scalars.  The body may use whatever Numba compiles (``math``, the NumPy functions
    Numba supports, complex numbers, tuples), module-level constants, ``@veda.func`` helpers,
    :func:`veda.atomic_add` and friends, and :func:`veda.local_array`.

    Parameters
    ----------
    reduce : {"sum", "prod", "min", "max"} or dict, optional
        Make a reduction: the body returns one value per index and the launch returns their
        combination as a NumPy scalar, with the dtype NumPy's reduction would give.
        A dict ``{name: op}`` instead reduces array arguments: the body updates ``name`` only
        with ``op`` (``hist[b] += 1`` for ``"sum"``, ``a[k] = min(a[k], v)`` for ``"min"``)
        and each parallel worker updates a private copy of its own, set to the op's identity;
        the copies are combined into the array at the end of the launch, as if every index
        had updated it in turn (a histogram or scatter-add without atomics).  Inside the body
        the array reads as the worker's copy.  CPU targets only; in deterministic mode the
        result has the same bits on every thread count.  See "Array reductions" in docs/guide.md.
    ndim : {1, 2, 3}, optional
        Declare the number of index parameters; launches over another rank are refused.
    fastmath : bool or set of str, optional
        Let LLVM rewrite floating-point code as Numba's ``fastmath`` does, in the body and in
        veda's loops around it: ``True`` for every flag, or a set of them (``"reassoc"``
        reorders the body's arithmetic, as veda's sums already are; ``"contract"`` fuses
        multiply-adds; also ``"nnan"``, ``"ninf"``, ``"nsz"``, ``"arcp"``, ``"afn"``).
        Results may change in the last bits, and with ``"nnan"``/``"ninf"`` wrongly where NaNs
        or infinities occur.
        ``@veda.func`` helpers keep their own strict arithmetic whatever the kernel's flags
        (unlike Numba, where a callee without flags of its own takes its caller's).  On
        ``"cuda"`` any flag turns on CUDA's fast math.  Deterministic mode refuses such
        kernels.  Whether a loop was vectorised, and how wide, is in :func:`veda.explain`
        (``.code``).

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def saxpy(i, a, x, y, out):
    ...     out[i] = a * x[i] + y[i]
    >>> x = np.arange(4.0); y = np.ones(4); out = np.empty(4)
    >>> saxpy[4](2.0, x, y, out)
    >>> out
    array([1., 3., 5., 7.])
    >>> @veda.kernel(reduce="sum")
    ... def dot(i, x, y):
    ...     return x[i] * y[i]
    >>> dot[4](x, y)
    np.float64(6.0)
    >>> @veda.kernel(reduce={"counts": "sum"})
    ... def histogram(i, values, counts):
    ...     counts[values[i] % 4] += 1
    >>> counts = np.zeros(4, np.int64)
    >>> veda.launch(histogram, 10, np.arange(10), counts, target="parallel")
    >>> counts
    array([3, 3, 2, 2])
    """

    def wrap(f: Callable[..., Any]) -> Kernel:
        return Kernel(f, reduce=reduce, ndim=ndim, fastmath=fastmath)

    if pyfunc is not None:
        return wrap(pyfunc)
    return wrap


def launch(
    k: Kernel,
    domain: Any,
    *args: Any,
    target: str | None = None,
    threads: int | None = None,
    schedule: str | None = None,
    chunk: int | None = None,
) -> Any:
    """Launch ``k`` over ``domain`` with explicit settings (``None``: veda decides).

    ``target`` is any registered target's name (:func:`veda.targets.names`).  ``threads``,
    ``schedule`` or ``chunk`` without ``target`` imply ``target="parallel"``; together with a
    target that does not take them (``"cpu"``, ``"cuda"``) they are refused.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def fill(i, out, v):
    ...     out[i] = v
    >>> out = np.zeros(10)
    >>> veda.launch(fill, 10, out, 3.0, target="parallel", threads=1, schedule="dynamic",
    ...             chunk=4)
    >>> out.sum()
    np.float64(30.0)
    """
    if not isinstance(k, Kernel):
        raise LaunchError(f"veda.launch: the first argument must be a @veda.kernel, not {k!r}")
    if threads.__class__ is not int and threads is not None:
        threads = _config.plain_int(threads)  # np.int64(2) counts as 2
    if chunk.__class__ is not int and chunk is not None:
        chunk = _config.plain_int(chunk)
    if (target is not None and target.__class__ is not str) or (
        schedule is not None and schedule.__class__ is not str
    ):  # refused here: the launch path keys on them before validating
        validate_launch_overrides({"target": target, "schedule": schedule})
    overrides = None
    if target is not None or threads is not None or schedule is not None or chunk is not None:
        # A plain tuple, the fields of Overrides: building the named tuple costs ~0.2 us on
        # the launch path.  Validated once, in Kernel._prepare.
        overrides = (target, threads, schedule, chunk)
    bound = k._bound.get(domain) if domain.__class__ is int else None
    dims = bound.dims if bound is not None else k[domain].dims
    items = _written_items(domain) if _watched and bound is None else None
    if items is not None:
        token = _written.set((k, items))
        try:
            return k._launch(dims, args, overrides)
        finally:
            _written.reset(token)
    return k._launch(dims, args, overrides)
