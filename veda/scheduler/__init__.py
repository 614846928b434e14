"""Choosing where and how a launch runs.

Explicit settings (``veda.launch`` arguments, then ``veda.config`` scopes, then process defaults)
always win.  What they leave open, the adaptive dispatcher decides: per kernel and size class it
explores a bounded set of candidates, exploits the fastest, re-explores on drift or when other
processes take cores, and remembers its decisions in the tuning cache
(:mod:`veda.scheduler._dispatch`).  With ``policy="fixed"`` (or telemetry off before anything was
learned) the rule :func:`decide` applies: below :data:`PARALLEL_MIN_SIZE` elements the
single-thread ``"cpu"`` target, above it ``"parallel"`` with a static schedule on every thread.
"""

from __future__ import annotations

from typing import Any

from veda._config import Config, max_threads
from veda.scheduler._dispatch import dispatcher, gpu_available
from veda.scheduler._tuner import POLICIES, REVIEW_EVERY
from veda.targets import Decision

__all__ = ["PARALLEL_MIN_SIZE", "POLICIES", "REVIEW_EVERY", "Explanation", "decide",
           "default_chunk", "dispatcher", "explain", "gpu_available", "pins"]

#: Domain size from which a launch with no settings goes to ``"parallel"``.  Measured with
#: ``python bench/bench_threshold.py`` on the 2-core machine: a saxpy in a parallel region breaks
#: even with the serial loop between 32k (parallel/cpu 1.10) and 64k elements (0.89).
PARALLEL_MIN_SIZE = 49152

Overrides = tuple[str | None, int | None, str | None, int | None]


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


def _merge(cfg: Config, overrides: Overrides | None) -> Overrides:
    """The settings in force for one launch: its own arguments over the configuration."""
    if overrides is None:
        return cfg.target, cfg.threads, cfg.schedule, cfg.chunk
    target, threads, schedule, chunk = overrides
    if target is None and threads is None and schedule is None and chunk is None:
        target = cfg.target
    elif target is None:
        target = "parallel"
    if target != "cpu":
        threads = threads if threads is not None else cfg.threads
        schedule = schedule if schedule is not None else cfg.schedule
        chunk = chunk if chunk is not None else cfg.chunk
    return target, threads, schedule, chunk


def pins(cfg: Config, overrides: Overrides | None) -> tuple[str | None, str | None] | None:
    """What the settings fix of an adaptive decision, or None when nothing is left to decide.

    The dispatcher chooses when the policy adapts and neither ``threads`` nor ``chunk`` is set;
    a set ``target="parallel"`` or ``schedule`` narrows its candidates.
    """
    if cfg.policy == "fixed":
        return None
    target, threads, schedule, chunk = _merge(cfg, overrides)
    if threads is not None or chunk is not None or target not in (None, "parallel"):
        return None
    if schedule is not None:
        target = "parallel"  # a schedule implies parallel, as in decide()
    return target, schedule


def decide(size: int, cfg: Config, overrides: Overrides | None) -> Decision:
    """The rule: target, threads, schedule and chunk for a launch of ``size`` elements."""
    target, threads, schedule, chunk = _merge(cfg, overrides)
    if target is None:
        if threads is not None or schedule is not None or chunk is not None:
            target = "parallel"
        elif size >= PARALLEL_MIN_SIZE and max_threads() > 1:
            target = "parallel"
        else:
            return ("cpu", 1, "static", 1)
    if target == "cpu":
        return ("cpu", 1, "static", 1)
    if target == "cuda":
        from veda.targets.cuda import default_block

        return ("cuda", default_block(), "grid", 0)
    if threads is None:
        threads = max_threads()
    if schedule is None:
        schedule = "dynamic" if chunk is not None else "static"
    if chunk is None:
        chunk = default_chunk(schedule, size, threads)
    return (target, threads, schedule, chunk)


class Explanation:
    """Why veda chose what it chose for one kernel: see :func:`explain`."""

    def __init__(self, kernel: str, rows: list[dict[str, Any]]) -> None:
        self.kernel = kernel
        self.rows = rows

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "size_classes": self.rows}

    def decision_for(self, size: int, ndim: int | None = None,
                     policy: str | None = None) -> tuple[str, int, str, int] | None:
        """The decision taken for launches of ``size`` elements, or None while exploring.

        >>> import numpy as np, veda
        >>> @veda.kernel
        ... def twice(i, x):
        ...     x[i] *= 2
        >>> twice[10](np.ones(10))
        >>> veda.explain(twice).decision_for(10)
        ('cpu', 1, 'static', 1)
        """
        cls = f"<= 2^{max(0, (int(size) - 1).bit_length())}"
        for r in self.rows:
            if (r["size_class"] == cls and (ndim is None or r["ndim"] == ndim)
                    and (policy is None or r["policy"] == policy) and r["decision"]):
                return tuple(r["decision"])  # type: ignore[return-value]
        return None

    @staticmethod
    def label(d: Any) -> str:
        """A short text for a decision: ``"cpu"`` or ``"parallel 2t guided chunk 4096"``."""
        if d is None:
            return "(exploring)"
        target, threads, schedule, chunk = d
        if target == "cpu":
            return "cpu"
        extra = f" chunk {chunk}" if schedule != "static" else ""
        return f"{target} {threads}t {schedule}{extra}"

    def __str__(self) -> str:
        if not self.rows:
            return f"{self.kernel}: no adaptive decisions yet"
        lines = [f"{self.kernel}:"]
        for r in self.rows:
            state = (f"{self.label(r['decision'])} ({r['source']})" if r["decision"]
                     else "exploring")
            lines.append(f"  {r['ndim']}-d, size {r['size_class']}, policy {r['policy']}: "
                         f"{state}")
            for t in r["trials"]:
                times = ", ".join(f"{s * 1e9:.3g}" for s in t["samples"]) or "-"
                note = f"  [{t['pruned']}]" if t["pruned"] else ""
                lines.append(f"      {self.label(t['decision']):<34} ns/element: {times}{note}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(str(self)) + "</pre>"


def explain(kernel: Any) -> Explanation:
    """The dispatcher's decisions for ``kernel``: per size class, the candidates it tried, their
    measured times per element, what it chose and why (explored, tuning cache, only candidate).

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def add_one(i, x):
    ...     x[i] += 1
    >>> add_one[10](np.zeros(10))
    >>> print(veda.explain(add_one))  # doctest: +ELLIPSIS
    add_one:
      1-d, size <= 2^4, policy adaptive: cpu (only candidate)
    ...
    """
    return Explanation(kernel.name, dispatcher.explain(kernel))
