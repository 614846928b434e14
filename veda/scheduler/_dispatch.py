"""The adaptive dispatcher: one :class:`~veda.scheduler._tuner.Tuner` per kernel, domain rank,
size class, policy and pins, fed by the launch path's own timings, remembered in the tuning
cache.

The candidates come from the registered targets (:meth:`veda.targets.Target.candidates`), in
registration order, so a third-party target takes part by registering; the cost hints targets
declare (:attr:`~veda.targets.Target.launch_overhead`, :meth:`~veda.targets.Target.fixed_seconds`)
drop candidates that cannot win before they run.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from veda import _progress, _registry
from veda._config import check_decision, get_config
from veda._hardware import gpu as _gpu
from veda._hardware.load import LoadMonitor
from veda._types import Decision
from veda.errors import LaunchError
from veda.scheduler._rules import thread_limit
from veda.scheduler._tuner import Tuner
from veda.scheduler._wisdom import TuningCache

__all__ = [
    "BALANCED",
    "IMBALANCED",
    "Dispatcher",
    "Entry",
    "candidates",
    "dispatcher",
    "size_class",
]

#: Domains smaller than this many elements keep the candidates of a target with a launch
#: overhead only when the serial launch took SMALL_MARGIN times longer than it otherwise must
#: (Dispatcher._too_short): 4 x 2 x 5 us = 40 us for "parallel".
SMALL_DOMAIN = 1024
SMALL_MARGIN = 4
#: Imbalance (max/mean worker busy time) of a profiled static launch from which static is
#: dropped, and up to which the chunked schedules are: a triangular loop shows 1.5 under static
#: and 1.01 under dynamic (tests/test_telemetry.py), a streaming kernel about 1.0.
IMBALANCED = 1.25
BALANCED = 1.05

#: Seconds an exploration takes (its launches' own times, and the wait for its first, which
#: compiles) before it shows a progress bar, where ``veda.config(progress=...)`` wants one
#: (by default in a notebook only).
PROGRESS_AFTER = 1.0

#: Pins: what the settings fix of an adaptive decision (target, schedule), and where the
#: arguments live ("host" or "device": device arrays can be read by some targets only).
Pins = tuple[str | None, str | None]


def size_class(size: int) -> int:
    """Sizes within a power of two share decisions: 0 for 0 or 1 element, else ceil(log2)."""
    return 0 if size <= 1 else (size - 1).bit_length()


def candidates(
    size: int,
    free_cores: int,
    residency: str = "host",
    deterministic: bool = False,
    arrays: bool = False,
) -> list[Decision]:
    """The configurations worth trying for a domain of ``size`` elements: every dispatchable
    target's candidates, in registration order (the serial loop first).

    ``residency`` "device" keeps the targets that read device arrays (each with its default
    decision at least, whatever the size: nothing else can read them); in ``deterministic`` mode
    only targets of the first one's numerics take part, so that a switch cannot change bits;
    for a kernel that reduces ``arrays`` into private copies, only targets that do.
    """
    out: list[Decision] = []
    numerics = None
    for target in _registry.targets():
        try:
            reads = (
                target.reads_device_arrays if residency == "device" else target.reads_host_arrays
            )
            if not reads or not target.dispatchable() or (arrays and not target.reduces_arrays):
                continue
            if deterministic:
                numerics = numerics or target.numerics
                if target.numerics != numerics:
                    continue
            found = list(target.candidates(size, free_cores))
            if residency == "device" and not found:
                found = [target.default_decision(size)]
            for d in found:
                if not isinstance(d, Decision) or d.target != target.name:
                    raise LaunchError(f"{d!r} is not a Decision of target {target.name!r}")
                check_decision(d, LaunchError, f"candidate {d}")
        except Exception as exc:
            # A plug-in's bug keeps that target out of the dispatcher's choices (said once); it
            # must not break every adaptive launch of every kernel.
            _warn_once(target.name, f"its candidates cannot be used: {type(exc).__name__}: {exc}")
            continue
        out += found
    return out


@dataclass
class Entry:
    """One kernel's tuner for one domain rank, size class, policy and pins."""

    kernel: str
    key: str
    tuner: Tuner
    free_cores: int
    pins: Pins = (None, None)
    #: Host bytes a launch copies in and out on a target that copies host arrays.
    transfer: tuple[int, int] = (0, 0)
    #: Whether some candidates copy host arrays and are priced before they run.
    priced: bool = False
    residency: str = "host"
    deterministic: bool = False
    #: The kernel reduces arrays into private copies: only targets that do take part.
    arrays: bool = False
    #: The exploration's progress bar: see :class:`Exploring`.
    exploring: Exploring | None = None


class Exploring:
    """The progress bar of one exploration: drawn once the exploration has taken
    :data:`PROGRESS_AFTER` seconds (its launches' own times, and the wait for its first, which
    compiles) and ``veda.config(progress=...)`` wants it; closed when the tuner decides.  Its
    steps are measured launches, out of the tuner's upper bound on them."""

    __slots__ = ("bar", "launches", "lock", "round", "spent", "started")

    def __init__(self, tuner: Tuner) -> None:
        self.started = time.perf_counter()
        self.round = tuner.explorations
        self.launches = 0
        self.spent = -1.0  # seconds explored; < 0 until the first launch was observed
        self.bar: Any = None  # None: not drawn yet; False: not wanted
        self.lock = threading.Lock()

    def step(self, entry: Entry, seconds: float) -> None:
        tuner = entry.tuner
        with self.lock:
            self.launches += 1
            if self.spent < 0:  # the first launch, with its compile
                self.spent = time.perf_counter() - self.started
            else:
                self.spent += seconds
            try:
                if self.bar is None and self.spent >= PROGRESS_AFTER:
                    self._draw(entry)
                elif self.bar:
                    self.bar.update(self.launches <= self.bar.total)
                if not tuner.exploring:
                    self.done(tuner)
            except Exception as exc:  # a bar (a widget, stderr) that fails: never the launch
                self._give_up(entry, exc)

    def _draw(self, entry: Entry) -> None:
        self.bar = False
        if not _progress.wanted(get_config().progress):
            return
        bar = _progress.bar(
            entry.tuner.launches_to_explore(), f"exploring {entry.kernel}", unit="launch"
        )
        self.bar = bar
        bar.update(min(self.launches, bar.total))

    def done(self, tuner: Tuner) -> None:
        """Fill and close the bar (if drawn) with the decision."""
        bar, self.bar = self.bar, False
        if bar:
            bar.set_postfix_str(_registry.describe(tuner.choice))
            bar.update(bar.total - bar.n)
            bar.close()

    def _give_up(self, entry: Entry, exc: Exception) -> None:
        self.bar = False
        try:
            warnings.warn(
                f"veda: no progress bar for exploring {entry.kernel!r}: {exc}",
                RuntimeWarning,
                stacklevel=5,
            )
        except Exception:  # the warning's own stream failed too (stderr closed)
            pass


#: Policies that rank by the configurations' watts (veda._registry).
ENERGY_POLICIES = ("energy", "edp")


class Dispatcher:
    """Every tuner in this process, and the tuning cache behind them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[Any, ...], Entry] = {}
        self.load = LoadMonitor()
        self._wisdom: dict[str, TuningCache] = {}

    def free_cores(self) -> int:
        """The threads the dispatcher may give a launch now: the cores other processes leave
        free, within the power cap and the thermal governor's count
        (:func:`veda.scheduler._rules.thread_limit`)."""
        return self._free_cores()[0]

    def _free_cores(self) -> tuple[int, str]:
        """:meth:`free_cores`, and what bounds it: ``"load"`` or ``"power or thermal limit"``."""
        free = self.load.free_cores()
        limit = thread_limit(get_config())
        if limit is not None and limit < free:
            return limit, "power or thermal limit"
        return free, "load"

    def wisdom(self, cache_dir: str) -> TuningCache:
        w = self._wisdom.get(cache_dir)
        if w is None:
            w = self._wisdom[cache_dir] = TuningCache(cache_dir)
        return w

    def entry(
        self,
        kernel: Any,
        ndim: int,
        size: int,
        policy: str,
        cache_dir: str,
        pins: Pins = (None, None),
        transfer: tuple[int, int] | None = None,
        residency: str = "host",
        deterministic: bool = False,
        arrays: bool = False,
    ) -> Entry | None:
        """The tuner for this launch, or None when the pins leave no candidate.

        ``transfer`` is (bytes in, bytes out) a launch with these arguments copies on a target
        that copies host arrays; ``residency`` is where the arguments live.  Launches whose
        arrays live on a device tune apart from launches with host arrays.
        """
        digest = _digest(kernel)
        cls = size_class(size)
        cfg = get_config()
        cap = cfg.max_power_watts  # a capped tuner has its own candidates
        # Energy policies rank by the power model's watts: a tuner (and a remembered decision)
        # per model, so that changing it explores afresh.
        model = None
        if policy in ENERGY_POLICIES:  # (watts of the model, and the source of energy)
            model = (cfg.static_watts, cfg.watts_per_core, cfg.gpu_watts, cfg.energy)
        k = (
            kernel.module_name,
            kernel.name,
            digest,
            ndim,
            cls,
            policy,
            pins,
            residency,
            deterministic,
            cap,
            model,
        )
        entry = self.entries.get(k)
        if entry is not None:
            return entry
        with self.lock:
            entry = self.entries.get(k)
            if entry is not None:
                return entry
            free = self.free_cores()
            cands = _pinned(candidates(size, free, residency, deterministic, arrays), pins)
            if not cands:
                return None
            tuner = Tuner(cands, policy=policy)
            pin_text = "".join(f"|{p}" for p in pins if p)
            where = "" if residency == "host" else f"|{residency}"
            det = "|deterministic" if deterministic else ""  # other candidates: kept apart
            limits = f"|max {cap:g} W" if cap is not None else ""
            if model is not None:
                limits += "|model {:g}+{:g}/thread+{:g} W|energy {}".format(*model)
            key = (
                f"{kernel.module_name}.{kernel.name}@{digest}|{ndim}d|2^{cls}|{policy}"
                f"{pin_text}{where}{det}{limits}"
            )
            remembered = self.wisdom(cache_dir).get(key)
            if remembered is not None:
                try:
                    decision = Decision.from_json(remembered.get("decision"))
                except (TypeError, ValueError):
                    decision = None
                spe = remembered.get("seconds_per_element")
                if (
                    decision in tuner.candidates
                    and isinstance(spe, float)  # JSON numbers with a point or exponent
                    and math.isfinite(spe)
                    and spe > 0.0
                ):
                    assert decision is not None
                    tuner.adopt(decision, float(spe), "tuning cache")
            priced = any(_copies(d.target) for d in cands)
            entry = self.entries[k] = Entry(
                kernel.name,
                key,
                tuner,
                free,
                pins,
                transfer or (0, 0),
                priced,
                residency,
                deterministic,
                arrays,
                Exploring(tuner) if tuner.exploring else None,
            )
        return entry

    def observe(
        self,
        entry: Entry,
        decision: Decision,
        seconds: float,
        size: int,
        cache_dir: str,
        imbalance: float = math.nan,
    ) -> None:
        """One exploring launch's time; ``imbalance`` is its profile's max/mean busy time."""
        tuner = entry.tuner
        per_element = seconds / max(size, 1)
        was_exploring = tuner.exploring
        tuner.observe(decision, per_element)
        if was_exploring:
            shown = entry.exploring
            if shown is None or shown.round != tuner.explorations:
                shown = entry.exploring = Exploring(tuner)
            shown.step(entry, seconds)
        if tuner.exploring and decision.schedule == "static" and math.isfinite(imbalance):
            self._steer(tuner, imbalance)
        if tuner.exploring and _overhead(decision.target) == 0.0:
            self._too_short(tuner, decision, seconds, size)
        if entry.priced and tuner.exploring:
            self._price(entry, size)
        if was_exploring and not tuner.exploring:
            self._explored(entry, cache_dir)

    def _explored(self, entry: Entry, cache_dir: str) -> None:
        """The exploration ended: its progress display closes, the decision is remembered."""
        tuner = entry.tuner
        shown = entry.exploring
        if shown is not None:  # a prune may have ended the exploration before it showed
            with shown.lock:
                try:
                    shown.done(tuner)
                except Exception as exc:
                    shown._give_up(entry, exc)
        self.wisdom(cache_dir).put(
            entry.key,
            {
                "decision": (tuner.choice or tuner.candidates[0]).to_json(),
                "seconds_per_element": tuner.baseline,
                "policy": tuner.policy,
                "trials": {"/".join(map(str, d)): t.samples for d, t in tuner.trials.items()},
            },
        )

    def exclude_target(self, entry: Entry, target: str, reason: str, cache_dir: str) -> bool:
        """Drop every candidate of ``target`` (its loop cannot be compiled for a launch's
        arguments, say), exploring again without them if the decision was one of them;
        whether any candidate of another target is left to decide among.  An exploration
        this ends is remembered in the tuning cache as one that ran its course."""
        tuner = entry.tuner
        if not any(d.target != target for d in tuner.candidates):
            return False
        if tuner.choice is not None:
            if tuner.choice.target != target:
                return False  # decided on another target already: not its doing
            tuner.restart()
        elif not any(d.target != target for d in tuner._alive):
            tuner.restart()  # the others were dropped as slower: none would be left to run
        for d in list(tuner.candidates):
            if d.target == target:
                tuner.prune(d, reason)
        if not tuner.exploring:
            self._explored(entry, cache_dir)
        return True

    @staticmethod
    def _too_short(tuner: Tuner, measured: Decision, seconds: float, size: int) -> None:
        """After a candidate with no launch overhead (the serial loop) ran: drop the candidates
        of targets whose launch overhead alone is more than half its time (they cannot win).

        Below :data:`SMALL_DOMAIN` elements the serial launch must take :data:`SMALL_MARGIN`
        times longer still: such domains are mostly cheap (a 100-element saxpy: 1-7 us here,
        first launches included), and one slow sample of one must not send it exploring
        parallel regions; a small domain of heavy indices takes milliseconds."""
        factor = 2 * (SMALL_MARGIN if size < SMALL_DOMAIN else 1)
        for d in list(tuner.candidates):
            overhead = _overhead(d.target)
            if d.target != measured.target and overhead > 0 and seconds < factor * overhead:
                tuner.prune(
                    d,
                    f"the serial launch took {seconds * 1e6:.1f} us, too short to "
                    f"pay for the {overhead * 1e6:.0f} us a {d.target} launch costs",
                )

    @staticmethod
    def _price(entry: Entry, size: int) -> None:
        """Drop candidates that copy host arrays before they run when their copies and launch
        cost alone exceed the best time measured so far of a target that copies nothing (their
        own kernel time is then measured, not guessed)."""
        tuner = entry.tuner
        targets = {d: _registry.lookup(d.target) for d in tuner.candidates}
        copies = {d: t for d, t in targets.items() if t is not None and t.copies_host_arrays}
        best = min(
            (min(t.samples) for d, t in tuner.trials.items() if d not in copies and t.samples),
            default=math.inf,
        ) * max(size, 1)
        if not math.isfinite(best):
            return
        for d, target in copies.items():
            try:
                fixed = float(target.fixed_seconds(*entry.transfer))
            except Exception as exc:
                # Runs after a launch that succeeded: a target that fails here must not fail it.
                _warn_once(target.name, str(exc))
                tuner.prune(d, f"unavailable: {exc}")
                entry.priced = False
                continue
            if fixed > best:
                tuner.prune(
                    d,
                    f"transfers and launch would take {fixed * 1e6:.0f} us, the best "
                    f"launch that copies nothing took {best * 1e6:.0f} us",
                )

    @staticmethod
    def _steer(tuner: Tuner, imbalance: float) -> None:
        """Let the load-imbalance profile of a static launch narrow the schedules to try.

        Workers that finish far apart (max/mean busy time >= IMBALANCED) leave static no
        chance; workers that finish together (<= BALANCED) leave nothing for dynamic or guided
        chunks to fix, only their overhead.
        """
        for d in list(tuner.candidates):
            target = _registry.lookup(d.target)
            if target is None or not target.parallel:
                continue
            if imbalance >= IMBALANCED and d.schedule == "static":
                tuner.prune(d, f"static imbalance {imbalance:.2f}")
            elif imbalance <= BALANCED and d.schedule != "static":
                tuner.prune(d, f"static is balanced (imbalance {imbalance:.2f})")

    def review(self, entry: Entry, recent: list[float], size: int) -> None:
        """Drift and load checks of an exploiting tuner, every few launches."""
        tuner = entry.tuner
        before = tuner.choice
        if tuner.review([t / max(size, 1) for t in recent]):
            self._still_too_short(tuner, before, recent, size)
            return
        free, bound = self._free_cores()
        if free != entry.free_cores:
            entry.free_cores = free
            fresh = _pinned(
                candidates(max(size, 1), free, entry.residency, entry.deterministic, entry.arrays),
                entry.pins,
            )
            if not entry.priced:  # a target that failed its pricing stays out
                fresh = [d for d in fresh if not _copies(d.target)]
            if fresh and fresh != tuner.candidates:
                tuner.candidates = fresh
                tuner.restart(bound)
                self._still_too_short(tuner, before, recent, size)

    def _still_too_short(
        self, tuner: Tuner, before: Decision | None, recent: list[float], size: int
    ) -> None:
        """After a restart (drift, or a change of free cores) of a tuner that ran the serial
        loop: when its recent launches are still too short to pay for any other target, rule
        those out again at once and keep the serial loop, without exploring launches.  A cheap
        small kernel's times drift with the machine's noise; exploring again each time cost
        two launches under the tuner's lock and a write of the tuning cache (a 100-element
        saxpy ran about 40% slower, bench/bench_launch.py)."""
        if not tuner.exploring or before is None or _overhead(before.target) != 0.0:
            return
        if not recent:
            return
        if before not in tuner.candidates:
            return
        seconds = statistics.median(recent)
        self._too_short(tuner, before, seconds, size)
        alive = [d for d in tuner.candidates if not tuner.trials[d].pruned]
        if alive == [before]:
            tuner.adopt(before, seconds / max(size, 1), "serial launch too short for the others")

    def explain(self, kernel: Any) -> list[dict[str, Any]]:
        return self.rows(kernel.module_name, kernel.name)

    def rows(self, module: str, name: str) -> list[dict[str, Any]]:
        """Per size class: the candidates tried, their times, the decision and its source."""
        rows = []
        with self.lock:
            items = sorted(self.entries.items(), key=lambda kv: str(kv[0][3:]))
        for k, entry in items:
            if k[0] != module or k[1] != name:
                continue
            t = entry.tuner
            rows.append(
                {
                    "ndim": k[3],
                    "size_class": f"<= 2^{k[4]}",
                    "policy": k[5],
                    "pinned": {n: v for n, v in zip(("target", "schedule"), k[6]) if v},
                    "residency": entry.residency,
                    "max_power_watts": k[9],
                    # energy policies: (static, per thread, GPU) watts and the energy source
                    "power_model": k[10],
                    "decision": t.choice,
                    "source": t.source if t.choice else "exploring",
                    "explorations": t.explorations,
                    "seconds_per_element": t.baseline,
                    "trials": [
                        {
                            "decision": d,
                            "samples": list(tr.samples),
                            "pruned": tr.pruned,
                            "compiling": _compiling(t, d),
                        }
                        for d, tr in t.trials.items()
                    ],
                }
            )
        return rows

    def forget(self) -> None:
        """Drop every in-process decision (the tuning cache on disk stays)."""
        with self.lock:
            self.entries.clear()


def _compiling(tuner: Tuner, decision: Decision) -> bool:
    """Whether ``decision``'s loop is compiling in the background thread right now."""
    key = tuner.compiling.get(decision)
    if key is None:
        return False
    from veda._kernel import background

    return background.state(key) == background.PENDING


_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def _warn_once(target: str, reason: str) -> None:
    """Say once per process that the dispatcher stopped considering a target, and why."""
    with _warn_lock:
        if (target, reason) in _warned:
            return
        _warned.add((target, reason))
    warnings.warn(
        f"veda: the dispatcher no longer considers target {target!r}: {reason}",
        RuntimeWarning,
        stacklevel=2,
    )


def _overhead(name: str) -> float:
    """A target's declared launch overhead (0 for one no longer registered, or not a number)."""
    target = _registry.lookup(name)
    try:
        return 0.0 if target is None else max(float(target.launch_overhead), 0.0)
    except (TypeError, ValueError):
        return 0.0


def _copies(name: str) -> bool:
    target = _registry.lookup(name)
    return target is not None and target.copies_host_arrays


def _pinned(cands: list[Decision], pins: Pins) -> list[Decision]:
    target, schedule = pins
    return [
        c
        for c in cands
        if (target is None or c.target == target) and (schedule is None or c.schedule == schedule)
    ]


def _digest(kernel: Any) -> str:
    text = kernel.source.text or kernel.py_func.__code__.co_code.hex()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def gpu_available() -> bool:
    """Whether the dispatcher may consider a GPU (a real device: never the simulator)."""
    return _gpu.is_available()


dispatcher = Dispatcher()
_registry.on_change(dispatcher.forget)  # a new or removed target changes the candidates


def _after_fork_in_child() -> None:
    """The dispatcher's lock and each exploration's anew in a fork child: another thread of
    the parent may have held one at the fork (an exploring launch credits its time under its
    exploration's), and the child's next decision or exploring launch (or the launch core's own
    fork handler, which forgets the decisions) would wait for it forever."""
    dispatcher.lock = threading.Lock()
    for entry in list(dispatcher.entries.values()):
        if entry.exploring is not None:
            entry.exploring.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
