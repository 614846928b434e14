"""Choosing where and how a launch runs.

Until the adaptive dispatcher lands, a launch without explicit settings uses one measured size
threshold: below :data:`PARALLEL_MIN_SIZE` elements the single-thread ``"cpu"`` target, above it
``"parallel"`` with a static schedule on every thread.  Explicit settings (``veda.launch``
arguments, then ``veda.config`` scopes, then process defaults) always win.
"""

from __future__ import annotations

from veda._config import Config, max_threads
from veda.targets import Decision

__all__ = ["PARALLEL_MIN_SIZE", "decide", "default_chunk"]

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


def decide(size: int, cfg: Config, overrides: Overrides | None) -> Decision:
    """Target, threads, schedule and chunk for one launch of ``size`` elements."""
    if overrides is None:
        target, threads, schedule, chunk = cfg.target, cfg.threads, cfg.schedule, cfg.chunk
    else:
        target, threads, schedule, chunk = overrides
        if target is None and threads is None and schedule is None and chunk is None:
            target = cfg.target
        elif target is None:
            target = "parallel"
        if target != "cpu":
            threads = threads if threads is not None else cfg.threads
            schedule = schedule if schedule is not None else cfg.schedule
            chunk = chunk if chunk is not None else cfg.chunk
    if target is None:
        if threads is not None or schedule is not None or chunk is not None:
            target = "parallel"
        elif size >= PARALLEL_MIN_SIZE and max_threads() > 1:
            target = "parallel"
        else:
            return ("cpu", 1, "static", 1)
    if target == "cpu":
        return ("cpu", 1, "static", 1)
    if threads is None:
        threads = max_threads()
    if schedule is None:
        schedule = "dynamic" if chunk is not None else "static"
    if chunk is None:
        chunk = default_chunk(schedule, size, threads)
    return (target, threads, schedule, chunk)
