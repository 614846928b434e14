"""The decision logic of the adaptive dispatcher, free of clocks and kernels so it can be tested
with injected measurements.

One :class:`Tuner` decides for one kernel and one size class (domain sizes within a power of
two).  It explores a bounded set of candidate configurations by successive halving: every
candidate runs once after a discarded warm-up launch (more while it still gets much faster), the
faster half runs again, each survivor's samples back to back, and so on until one is left
(about 3n launches for n candidates).  It then exploits the winner and
watches the time per element; when that stays off the winner's measured figure by more than
:data:`DRIFT` for :data:`DRIFT_REVIEWS` reviews in a row, or the machine changes (fewer free
cores), it explores again.

Measurements are seconds per element, so launches of different sizes in one class compare.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from veda._registry import Measured, get_policy
from veda._types import Decision

#: A review in exploit mode compares the median of this many launches with the winner's figure.
REVIEW_EVERY = 16
#: Relative change of the time per element that counts as drift (the launch-to-launch noise of a
#: settled kernel on the 2-core machine is well under 10%).
DRIFT = 0.35
#: Consecutive drifting reviews before the tuner explores again.
DRIFT_REVIEWS = 2
#: Samples per survivor in each halving round (round r runs each survivor ROUND_SAMPLES[r]
#: times).  Later rounds take more: the survivors are close, and on a shared machine the noise of
#: a memory-bound launch is 10-15% (bench/bench_dispatch.py).
ROUND_SAMPLES = (1, 3, 5, 5)
#: A candidate stays in warm-up while each launch is more than this many times faster than the
#: one before, for at most WARMUP_LAUNCHES launches.  The first parallel launches of a process
#: start Numba's thread pool and settle for a while: a 1e5 saxpy took 10 ms, 60 us, 22 us, then
#: 17-22 us on the 2-core machine, and the candidate that ran them first, measured at its second
#: launch, was dropped at three times its speed.
WARMUP_SPEEDUP = 1.5
WARMUP_LAUNCHES = 4


class _Samples:
    __slots__ = ("decision", "samples")

    def __init__(self, samples: Sequence[float]) -> None:
        self.decision = Decision("")
        self.samples = samples


def ranking(policy: str) -> Callable[[Measured], float]:
    """The scoring function of a registered policy ("fixed" ranks as "adaptive" would), guarded:
    a score that raises, or is not a real number, ranks the candidate last (NaN too), with a
    warning once per policy, so that a policy's bug cannot stop the tuner."""
    rank = get_policy(policy).score or get_policy("adaptive").score
    assert rank is not None

    def guarded(measured: Measured) -> float:
        try:
            value = float(rank(measured))
        except Exception as exc:
            _warn_policy(policy, f"{type(exc).__name__}: {exc}")
            return math.inf
        return math.inf if math.isnan(value) else value

    return guarded


_warned: set[str] = set()


def _warn_policy(policy: str, problem: str) -> None:
    if policy in _warned:
        return
    _warned.add(policy)
    warnings.warn(
        f"veda: policy {policy!r} could not score a candidate ({problem}); such "
        "candidates rank last",
        RuntimeWarning,
        stacklevel=3,
    )


def score(measured: Measured | Sequence[float], policy: str) -> float:
    """One number per candidate under ``policy`` (a registered policy's scoring function):
    lower is better.  ``measured`` is a :class:`Trial` or a list of seconds per element."""
    if isinstance(measured, Sequence):
        measured = _Samples(measured)
    return ranking(policy)(measured)


@dataclass
class Trial:
    """What the tuner measured of one candidate."""

    decision: Decision
    samples: list[float] = field(default_factory=list)  # seconds per element
    pruned: str = ""  # why it was dropped, if it was


@dataclass
class Tuner:
    """Explore-then-exploit decisions for one kernel and size class."""

    candidates: list[Decision]
    policy: str = "adaptive"
    trials: dict[Decision, Trial] = field(default_factory=dict)
    choice: Decision | None = None
    baseline: float = math.nan  # the winner's seconds per element
    source: str = ""  # "explored", "tuning cache"
    explorations: int = 0
    version: int = 0  # bumped at every change of decision
    _round: int = 0
    #: Candidates in warm-up, with the time per element of their last warm-up launch (NaN
    #: before the first) and how many they ran.
    _cold: dict[Decision, tuple[float, int]] = field(default_factory=dict)
    _alive: list[Decision] = field(default_factory=list)
    _queue: list[Decision] = field(default_factory=list)
    _drifting: int = 0
    #: The policy's scoring function, resolved once: a policy unregistered meanwhile does not
    #: break a tuner that is exploring with it.
    _rank: Any = None
    #: Candidates whose loop was sent to the background compile thread, with the job's key
    #: (``veda.explain`` says which are still compiling).
    compiling: dict[Decision, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rank = ranking(self.policy)
        if self.choice is None:
            self.restart()

    def restart(self, reason: str = "") -> None:
        """Forget the decision and explore the candidates again."""
        self.trials = {d: Trial(d) for d in self.candidates}
        self.choice = None
        self._round = 0
        # The first launch of each candidate is discarded: it pays for things later launches
        # do not (first touch of fresh output pages, the thread pool's start, cold caches);
        # so are the next ones while they still get much faster (WARMUP_SPEEDUP).
        self._cold = {d: (math.nan, 0) for d in self.candidates}
        self._alive = list(self.candidates)
        self._drifting = 0
        self.explorations += 1
        self.version += 1
        if len(self._alive) == 1:  # nothing to compare
            self.adopt(self._alive[0], math.nan, "only candidate")
        else:
            self._queue = self._schedule_round()

    # -- state --------------------------------------------------------------------------------
    @property
    def exploring(self) -> bool:
        return self.choice is None

    def adopt(self, decision: Decision, seconds_per_element: float, source: str) -> None:
        """Exploit a decision made elsewhere (the tuning cache) without exploring."""
        self.choice = decision
        self.baseline = seconds_per_element
        self.source = source
        self._drifting = 0
        self.version += 1

    def prune(self, decision: Decision, reason: str) -> None:
        """Drop a candidate before it runs (known to be pathological here)."""
        if decision in self._alive and len(self._alive) > 1:
            self._alive.remove(decision)
            self.trials[decision].pruned = reason
            self._queue = [d for d in self._queue if d != decision]
            if not self._queue:
                self._next_round()

    # -- exploring ----------------------------------------------------------------------------
    def _schedule_round(self) -> list[Decision]:
        reps = ROUND_SAMPLES[min(self._round, len(ROUND_SAMPLES) - 1)]
        # Each survivor's samples back to back, as in a loop that launches the kernel again and
        # again: a static schedule finds each worker's part of the arrays in that worker's
        # cache from its last launch, which interleaved samples took away (a 1e5 saxpy on 2
        # threads, static: 17 us after itself, 28-39 us after another schedule).
        return [d for d in self._alive for _ in range(reps)]

    def next(self) -> Decision:
        """The configuration to run next."""
        if self.choice is not None:
            return self.choice
        queue = self._queue  # another thread may be between rounds: fall back to a survivor
        return queue[0] if queue else self._alive[0]

    def queued(self) -> list[Decision]:
        """The candidates the current round still runs, in the order :meth:`next` takes them,
        each once (empty once decided).  A launch may run any of them first, when the one
        :meth:`next` names is still compiling (``background_compile``)."""
        if self.choice is not None:
            return []
        return list(dict.fromkeys(self._queue))

    def observe(self, decision: Decision, seconds_per_element: float) -> None:
        """Record one launch's time per element (of a candidate this round still runs)."""
        if self.choice is not None:
            return
        if decision not in self.trials or decision not in self._queue:
            return  # a launch that the tuner did not ask for (a stand-in, say)
        cold = self._cold.get(decision)
        if cold is not None:
            last, launches = cold
            warm = launches > 0 and (
                seconds_per_element * WARMUP_SPEEDUP >= last or launches >= WARMUP_LAUNCHES
            )
            if not warm:
                self._cold[decision] = (seconds_per_element, launches + 1)
                return  # a warm-up launch: run the same candidate again
            del self._cold[decision]  # this launch is its first sample
        self._queue.remove(decision)  # its first place: run before those still compiling
        self.trials[decision].samples.append(seconds_per_element)
        if not self._queue:
            self._next_round()

    def _next_round(self) -> None:
        ranked = sorted(self._alive, key=lambda d: self._rank(self.trials[d]))
        keep = max(1, len(ranked) // 2) if len(ranked) > 2 else 1
        if len(ranked) == 2 and self._round == 0:
            keep = 2  # two candidates: measure both once more before choosing
        for d in ranked[keep:]:
            self.trials[d].pruned = f"slower in round {self._round + 1}"
        self._alive = ranked[:keep]
        self._round += 1
        if len(self._alive) == 1:
            winner = self._alive[0]
            # The baseline is a time (launches are reviewed by their median time per element),
            # whatever the policy ranks by: joules, say.
            samples = self.trials[winner].samples
            baseline = statistics.median(samples) if samples else self._rank(self.trials[winner])
            self.adopt(winner, baseline, "explored")
        else:
            self._queue = self._schedule_round()

    # -- exploiting ---------------------------------------------------------------------------
    def review(self, recent: Sequence[float]) -> bool:
        """Compare recent times per element with the baseline; True if it starts exploring."""
        if self.choice is None or not recent or not math.isfinite(self.baseline):
            return False
        now = statistics.median(recent)
        ratio = now / self.baseline if self.baseline > 0 else math.inf
        if ratio > 1 + DRIFT or ratio < 1 / (1 + DRIFT):
            self._drifting += 1
        else:
            self._drifting = 0
        if self._drifting >= DRIFT_REVIEWS:
            self.restart("drift")
            return True
        return False

    def launches_to_explore(self) -> int:
        """An upper bound on the launches a full exploration takes (the exploration budget)."""
        n, r = len(self.candidates), 0
        total = n * WARMUP_LAUNCHES  # warm-up launches per candidate, at most
        while n > 1:
            total += n * ROUND_SAMPLES[min(r, len(ROUND_SAMPLES) - 1)]
            n = 2 if (n == 2 and r == 0) else max(1, n // 2)
            r += 1
            if r > 8:
                break
        return total
