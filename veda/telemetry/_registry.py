"""Where measurements accumulate: one series per kernel and configuration.

The launch path must stay within half a microsecond of its untimed self, so it does the least
possible: two clock reads and one ``list.append`` of the seconds into the :class:`Recorder` of
its prepared launch.  ``list.append`` is a single C call, atomic under the GIL, so launches from
many threads are counted exactly without a lock.  Recorders are folded into their
:class:`Series` (counters and a :class:`LogHistogram`) under the series' lock when a snapshot is
taken or a recorder's buffer grows past :data:`FOLD_AT` launches.

Bytes are an estimate twice over: each array argument counts once at its ``nbytes``, and since
reading ``nbytes`` costs about 0.1 us an array, a recorder reads them when a launch is prepared
and again each time its buffer is folded from a launch (every :data:`FOLD_AT` launches), and
counts that figure for the launches in between.  A recorder belongs to one kernel, configuration and
domain size, so its launches almost always pass arrays of the same sizes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veda._types import Decision
from veda.telemetry._histogram import LogHistogram

#: Launches buffered per recorder before they are folded into the series.
FOLD_AT = 4096

#: A configuration is the decision its launches ran with.
ConfigKey = Decision


@dataclass
class Series:
    """Accumulated figures of one kernel in one configuration."""

    config: ConfigKey
    launches: int = 0
    errors: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0
    elements: int = 0
    bytes: int = 0
    hist: LogHistogram = field(default_factory=LogHistogram)
    profiled: int = 0
    imbalance_sum: float = 0.0
    busy_seconds: float = 0.0
    chunks: int = 0
    #: Joules by source: a reader's name for measured launches, "model" for the others (priced
    #: as they are folded, at the power model of the launch's settings), and the seconds of the
    #: measured ones.
    energy: dict[str, float] = field(default_factory=dict)
    metered_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def copy(self) -> Series:
        """A detached copy (caller holds ``lock``)."""
        return dataclasses.replace(
            self, hist=self.hist.copy(), energy=dict(self.energy), lock=threading.Lock()
        )

    def fold(self, times: np.ndarray, nbytes: int, size: int) -> None:
        """Add a batch of launches (caller holds ``lock``)."""
        if times.size == 0:
            return
        self.launches += int(times.size)
        self.total += float(times.sum())
        self.min = min(self.min, float(times.min()))
        self.max = max(self.max, float(times.max()))
        self.elements += int(times.size) * size
        self.bytes += nbytes
        self.hist.add_many(times)


class Recorder:
    """The hot-path buffer of one prepared launch (one kernel, configuration and domain size,
    under one power model)."""

    __slots__ = ("metered_pending", "nbytes", "per_launch", "series", "size", "times", "watts")

    def __init__(self, series: Series, size: int, nbytes: Any, watts: float = 0.0) -> None:
        self.times: list[float] = []
        self.series = series
        self.size = size
        self.nbytes = nbytes  # callable(args) -> bytes of the array arguments
        self.per_launch = 0  # bytes per launch, as last read
        #: The power model's watts for this configuration, when the launch was prepared: the
        #: launches no reader measured are priced at it as they are folded.
        self.watts = watts
        #: Seconds of metered launches not folded yet (their energy is counted already).
        self.metered_pending = 0.0

    def fold(self, args: tuple[Any, ...] | None = None, nbytes: Any = None) -> None:
        """Move buffered launches into the series; with ``args``, re-read the bytes too (with
        ``nbytes``, the launching plan's reader, else the recorder's own)."""
        times = self.times
        with self.series.lock:
            n = len(times)
            if n:
                # Slicing and deleting are single C calls: launches in other threads append
                # meanwhile, beyond n, and their times stay for the next fold.
                t = np.array(times[:n], dtype=np.float64)
                del times[:n]
                self.series.fold(t, n * self.per_launch, self.size)
                modelled = float(t.sum()) - self.metered_pending
                self.metered_pending = max(0.0, -modelled)
                if modelled > 0 and self.watts > 0:
                    energy = self.series.energy
                    energy["model"] = energy.get("model", 0.0) + modelled * self.watts
            if args is not None:
                self.per_launch = int((nbytes or self.nbytes)(args))

    def error(self) -> None:
        with self.series.lock:
            self.series.errors += 1

    def metered(self, source: str, joules: float, seconds: float) -> None:
        """A launch whose energy ``source`` measured (its time is appended as any other's)."""
        with self.series.lock:
            series = self.series
            series.energy[source] = series.energy.get(source, 0.0) + joules
            series.metered_seconds += seconds
            self.metered_pending += seconds

    def profile(self, busy: np.ndarray, chunks: np.ndarray, seconds_per_tick: float) -> None:
        mean = float(busy.mean()) if busy.size else 0.0
        imbalance = float(busy.max()) / mean if mean > 0 else 1.0
        with self.series.lock:
            self.series.profiled += 1
            self.series.imbalance_sum += imbalance
            self.series.busy_seconds += float(busy.sum()) * seconds_per_tick
            self.series.chunks += int(chunks.sum())


@dataclass
class KernelRecord:
    """Everything telemetry keeps about one kernel."""

    name: str
    module: str
    series: dict[ConfigKey, Series] = field(default_factory=dict)
    recorders: dict[tuple[ConfigKey, int], Recorder] = field(default_factory=dict)
    compiles: int = 0
    cache_hits: int = 0
    compile_seconds: float = 0.0


class Registry:
    """All kernels' records in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kernels: dict[tuple[str, str], KernelRecord] = {}

    def record(self, module: str, name: str) -> KernelRecord:
        key = (module, name)
        rec = self.kernels.get(key)
        if rec is None:
            with self.lock:
                rec = self.kernels.setdefault(key, KernelRecord(name, module))
        return rec

    def recorder(
        self,
        module: str,
        name: str,
        config: ConfigKey,
        size: int,
        nbytes: Any,
        watts: float = 0.0,
    ) -> Recorder:
        rec = self.record(module, name)
        with self.lock:
            recorder = rec.recorders.get((config, size, watts))
            if recorder is None:
                series = rec.series.get(config)
                if series is None:
                    series = rec.series[config] = Series(config)
                recorder = Recorder(series, size, nbytes, watts)
                rec.recorders[(config, size, watts)] = recorder
        return recorder

    def compiled(self, module: str, name: str, seconds: float, cache_hit: bool) -> None:
        rec = self.record(module, name)
        with self.lock:
            if cache_hit:
                rec.cache_hits += 1
            else:
                rec.compiles += 1
            rec.compile_seconds += seconds

    def fold_all(self) -> None:
        with self.lock:
            recorders = [r for k in self.kernels.values() for r in k.recorders.values()]
        for r in recorders:
            r.fold()

    def reset(self) -> None:
        """Zero every figure; prepared launches keep their recorders, which restart empty."""
        self.fold_all()
        with self.lock:
            for rec in self.kernels.values():
                for key, series in list(rec.series.items()):
                    rec.series[key] = fresh = Series(series.config)
                    for rkey, r in rec.recorders.items():
                        if rkey[0] == key:
                            r.series = fresh
                            r.metered_pending = 0.0
                rec.compiles = rec.cache_hits = 0
                rec.compile_seconds = 0.0


registry = Registry()


def _after_fork_in_child() -> None:
    """The registry's and every series' lock anew in a fork child: another thread of the
    parent may have held one at the fork (a fold, a snapshot), and the child's next launch
    that folds its telemetry, or ``veda.metrics()``, would wait for it forever."""
    registry.lock = threading.Lock()
    for rec in list(registry.kernels.values()):
        for series in list(rec.series.values()):
            series.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
