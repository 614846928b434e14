"""The adaptive dispatcher: one :class:`~veda.scheduler._tuner.Tuner` per kernel, domain rank,
size class and policy, fed by the launch path's own timings, remembered in the tuning cache.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

from veda._config import max_threads
from veda.scheduler._tuner import Tuner
from veda.scheduler._wisdom import TuningCache
from veda.targets import Decision

CPU: Decision = ("cpu", 1, "static", 1)

#: Below this many elements no parallel configuration is a candidate: entering a parallel
#: region costs about 4 us here (bench/bench_threshold.py: a 1000-element saxpy takes 2.0 us on
#: "cpu" and 6.0 us on "parallel"), more than the whole serial loop of a small domain.
PARALLEL_FLOOR = 1024
#: After the serial candidate has run, parallel candidates are dropped when the serial launch
#: took less than this: with two threads the best parallel launch costs at least the region
#: entry plus half the serial time, which cannot win below about twice the entry cost.
PARALLEL_WORTHWHILE = 10e-6
#: Imbalance (max/mean worker busy time) of a profiled static launch from which static is
#: dropped, and up to which the chunked schedules are: a triangular loop shows 1.5 under static
#: and 1.01 under dynamic (tests/test_telemetry.py), a streaming kernel about 1.0.
IMBALANCED = 1.25
BALANCED = 1.05
#: How often (seconds) the machine's load is sampled.
LOAD_INTERVAL = 0.5


#: Below this many elements the GPU is never a candidate.  A CUDA launch from Numba costs about
#: 10-20 us of launch and synchronisation before any work (plus transfers), while the serial CPU
#: loop of a saxpy runs 1e5 elements in about 30 us and 2 threads in about 20 us on the 2-core
#: machine (bench/bench_threshold.py); bench/gpu_check.sh measures the crossover on a GPU.
CUDA_MIN_SIZE = 1 << 17
#: The GPU decision: (target, threads per block, schedule, grid) with the grid chosen at launch.
CUDA: Decision = ("cuda", 256, "grid", 0)


@dataclass
class GPUCost:
    """What the dispatcher knows of the GPU before running on it: host-device bandwidths and the
    fixed cost of one launch, measured once, lazily (:func:`veda.targets.cuda.measure`), or
    injected by tests."""

    host_to_device: float = math.nan  # bytes per second
    device_to_host: float = math.nan
    latency: float = math.nan  # seconds per launch (launch + synchronise)

    def transfer_seconds(self, bytes_in: int, bytes_out: int) -> float:
        """Predicted seconds of one launch before any kernel work: transfers and latency."""
        return bytes_in / self.host_to_device + bytes_out / self.device_to_host + self.latency


_gpu_cost: GPUCost | None = None
_gpu: bool | None = None
#: Why measuring the GPU failed (then the GPU is dropped from every tuner), or None.
_gpu_cost_error: str | None = None
_cost_lock = threading.Lock()


def gpu_available() -> bool:
    """Whether the dispatcher may consider the GPU (a real device: never the simulator)."""
    global _gpu
    if _gpu is None:
        from veda import cuda

        _gpu = cuda.is_available()
    return _gpu


def gpu_cost() -> GPUCost:
    """The GPU's measured transfer and launch costs (measured at the first question, by one
    thread: the others wait for its figures rather than measuring at the same time).

    Raises :class:`RuntimeError` when measuring failed (then and at every later question).
    """
    global _gpu_cost, _gpu_cost_error
    cost = _gpu_cost
    if cost is not None:
        return cost
    with _cost_lock:
        if _gpu_cost is None:
            if _gpu_cost_error is not None:
                raise RuntimeError(_gpu_cost_error)
            from veda.targets.cuda import measure

            try:
                _gpu_cost = GPUCost(*measure())
            except Exception as exc:
                _gpu_cost_error = f"measuring the GPU failed: {type(exc).__name__}: {exc}"
                raise RuntimeError(_gpu_cost_error) from exc
        return _gpu_cost


def size_class(size: int) -> int:
    """Sizes within a power of two share decisions: 0 for 0 or 1 element, else ceil(log2)."""
    return 0 if size <= 1 else (size - 1).bit_length()


def candidates(size: int, free_cores: int, gpu: bool = False) -> list[Decision]:
    """The configurations worth trying for a domain of ``size`` elements (serial first, the GPU
    last, and only with ``gpu`` and at least :data:`CUDA_MIN_SIZE` elements)."""
    out = _cpu_candidates(size, free_cores)
    if gpu and size >= CUDA_MIN_SIZE:
        out.append(CUDA)
    return out


def _cpu_candidates(size: int, free_cores: int) -> list[Decision]:
    from veda.scheduler import default_chunk

    out = [CPU]
    threads_max = min(max_threads(), max(1, free_cores))
    if threads_max < 2 or size < PARALLEL_FLOOR:
        return out
    options = sorted({threads_max, max(2, threads_max // 2)}, reverse=True)
    for t in options:
        # Static for even work; dynamic and guided, each at two granularities, for uneven work
        # (bench/bench_dispatch.py: a triangular loop wants dynamic chunks of 1/256 of a share,
        # a CSR product with power-law rows guided chunks down to 1/2048 of a share).
        dyn = default_chunk("dynamic", size, t)
        guided = default_chunk("guided", size, t)
        out += [
            ("parallel", t, "static", 1),
            ("parallel", t, "dynamic", dyn),
            ("parallel", t, "dynamic", max(1, dyn // 8)),
            ("parallel", t, "guided", guided),
            ("parallel", t, "guided", max(1, guided // 8)),
        ]
    return out


class LoadMonitor:
    """How many cores other processes leave free.

    A daemon thread samples the machine every LOAD_INTERVAL seconds (system-wide busy cores
    minus this process's own), so the launch path only reads a number.  It starts with the first
    question, and again in a forked child.
    """

    def __init__(self) -> None:
        self._free = max_threads()
        self._pid = -1
        self._lock = threading.Lock()

    def _run(self) -> None:
        process = psutil.Process()
        ncpu = psutil.cpu_count() or 1
        psutil.cpu_percent(interval=None)
        process.cpu_percent(interval=None)
        while True:
            time.sleep(LOAD_INTERVAL)
            total = psutil.cpu_percent(interval=None) / 100.0 * ncpu  # busy cores, all processes
            own = process.cpu_percent(interval=None) / 100.0  # busy cores of this process
            others = max(0.0, total - own)
            self._free = max(1, min(max_threads(), round(ncpu - others)))

    def free_cores(self) -> int:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    threading.Thread(target=self._run, name="veda-load-monitor",
                                     daemon=True).start()
        return self._free


@dataclass
class Entry:
    """One kernel's tuner for one domain rank, size class and policy."""

    kernel: str
    key: str
    tuner: Tuner
    free_cores: int
    pins: tuple[str | None, str | None] = (None, None)
    #: Host bytes a GPU launch would copy in and out (device-resident arrays count zero).
    transfer: tuple[int, int] = (0, 0)
    gpu: bool = False


class Dispatcher:
    """Every tuner in this process, and the tuning cache behind them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[Any, ...], Entry] = {}
        self.load = LoadMonitor()
        self._wisdom: dict[str, TuningCache] = {}

    def wisdom(self, cache_dir: str) -> TuningCache:
        w = self._wisdom.get(cache_dir)
        if w is None:
            w = self._wisdom[cache_dir] = TuningCache(cache_dir)
        return w

    def entry(self, kernel: Any, ndim: int, size: int, policy: str, cache_dir: str,
              pins: tuple[str | None, str | None] = (None, None),
              transfer: tuple[int, int] | None = None) -> Entry | None:
        """The tuner for this launch, or None when the pins leave no candidate.

        ``transfer`` is (bytes in, bytes out) of a GPU launch with these arguments, or None when
        the GPU is not a candidate; launches whose arrays already live on the device tune apart
        from launches with host arrays.
        """
        digest = _digest(kernel)
        cls = size_class(size)
        gpu = transfer is not None
        residency = "" if transfer is None else ("|device" if pins[0] == "cuda" else "|host")
        k = (kernel.module_name, kernel.name, digest, ndim, cls, policy, pins, residency)
        entry = self.entries.get(k)
        if entry is not None:
            return entry
        with self.lock:
            entry = self.entries.get(k)
            if entry is not None:
                return entry
            free = self.load.free_cores()
            if pins[0] == "cuda":  # device-resident arguments: only the GPU can read them
                cands = [CUDA]
            else:
                cands = _pinned(candidates(size, free, gpu), pins)
            if not cands:
                return None
            tuner = Tuner(cands, policy=policy)
            pin_text = "".join(f"|{p}" for p in pins if p)
            key = (f"{kernel.module_name}.{kernel.name}@{digest}|{ndim}d|2^{cls}|{policy}"
                   f"{pin_text}{residency}")
            remembered = self.wisdom(cache_dir).get(key)
            if remembered is not None:
                decision = tuple(remembered.get("decision", ()))
                spe = remembered.get("seconds_per_element")
                if (
                    len(decision) == 4 and decision in tuner.candidates
                    and isinstance(spe, (int, float)) and math.isfinite(spe)
                ):
                    tuner.adopt(decision, float(spe), "tuning cache")  # type: ignore[arg-type]
            entry = self.entries[k] = Entry(kernel.name, key, tuner, free, pins,
                                            transfer or (0, 0), gpu)
        return entry

    def observe(self, entry: Entry, decision: Decision, seconds: float, size: int,
                cache_dir: str, imbalance: float = math.nan) -> None:
        """One exploring launch's time; ``imbalance`` is its profile's max/mean busy time."""
        tuner = entry.tuner
        per_element = seconds / max(size, 1)
        was_exploring = tuner.exploring
        tuner.observe(decision, per_element)
        if tuner.exploring and decision[2] == "static" and math.isfinite(imbalance):
            self._steer(tuner, imbalance)
        if decision == CPU and tuner.exploring and seconds < PARALLEL_WORTHWHILE:
            for d in list(tuner.candidates):
                if d[0] != "cpu":
                    tuner.prune(d, f"the serial launch took {seconds * 1e6:.1f} us, too short "
                                   "to pay for a parallel region")
        if entry.gpu and tuner.exploring and decision[0] != "cuda":
            self._weigh_gpu(entry, size)
        if was_exploring and not tuner.exploring:
            self.wisdom(cache_dir).put(entry.key, {
                "decision": list(tuner.choice or CPU),
                "seconds_per_element": tuner.baseline,
                "policy": tuner.policy,
                "trials": {"/".join(map(str, d)): t.samples for d, t in tuner.trials.items()},
            })

    @staticmethod
    def _weigh_gpu(entry: Entry, size: int) -> None:
        """Drop the GPU before it runs when its transfers and launch cost alone exceed the best
        CPU time measured so far (the GPU's own kernel time is then measured, not guessed)."""
        tuner = entry.tuner
        cpu_best = min((min(t.samples) for d, t in tuner.trials.items()
                        if d[0] != "cuda" and t.samples), default=math.inf) * max(size, 1)
        if not math.isfinite(cpu_best):
            return
        try:
            fixed = gpu_cost().transfer_seconds(*entry.transfer)
        except RuntimeError as exc:
            # Runs after a CPU launch that succeeded: a GPU that fails here must not fail it.
            _warn_gpu_once(str(exc))
            for d in list(tuner.candidates):
                if d[0] == "cuda":
                    tuner.prune(d, f"unavailable: {exc}")
            entry.gpu = False
            return
        if fixed > cpu_best:
            for d in list(tuner.candidates):
                if d[0] == "cuda":
                    tuner.prune(d, f"transfers and launch would take {fixed * 1e6:.0f} us, the "
                                   f"best CPU launch took {cpu_best * 1e6:.0f} us")

    @staticmethod
    def _steer(tuner: Tuner, imbalance: float) -> None:
        """Let the load-imbalance profile of a static launch narrow the schedules to try.

        Workers that finish far apart (max/mean busy time >= IMBALANCED) leave static no
        chance; workers that finish together (<= BALANCED) leave nothing for dynamic or guided
        chunks to fix, only their overhead.
        """
        for d in list(tuner.candidates):
            if d[0] != "parallel":
                continue
            if imbalance >= IMBALANCED and d[2] == "static":
                tuner.prune(d, f"static imbalance {imbalance:.2f}")
            elif imbalance <= BALANCED and d[2] != "static":
                tuner.prune(d, f"static is balanced (imbalance {imbalance:.2f})")

    def review(self, entry: Entry, recent: list[float], size: int) -> None:
        """Drift and load checks of an exploiting tuner, every few launches."""
        tuner = entry.tuner
        if tuner.review([t / max(size, 1) for t in recent]):
            return
        free = self.load.free_cores()
        if free != entry.free_cores:
            entry.free_cores = free
            fresh = _pinned(candidates(max(size, 1), free, entry.gpu), entry.pins)
            if fresh and fresh != tuner.candidates:
                tuner.candidates = fresh
                tuner.restart("load")

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
            rows.append({
                "ndim": k[3], "size_class": f"<= 2^{k[4]}", "policy": k[5],
                "pinned": {n: v for n, v in zip(("target", "schedule"), k[6]) if v},
                "decision": t.choice, "source": t.source if t.choice else "exploring",
                "explorations": t.explorations, "seconds_per_element": t.baseline,
                "trials": [
                    {"decision": d, "samples": list(tr.samples), "pruned": tr.pruned}
                    for d, tr in t.trials.items()
                ],
            })
        return rows

    def forget(self) -> None:
        """Drop every in-process decision (the tuning cache on disk stays)."""
        with self.lock:
            self.entries.clear()


_warned: set[str] = set()


def _warn_gpu_once(reason: str) -> None:
    """Say once per process that the dispatcher stopped considering the GPU, and why."""
    with _cost_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    import warnings

    warnings.warn(f"veda: the dispatcher no longer considers the GPU: {reason}", RuntimeWarning,
                  stacklevel=2)


def _pinned(cands: list[Decision], pins: tuple[str | None, str | None]) -> list[Decision]:
    target, schedule = pins
    return [c for c in cands
            if (target is None or c[0] == target) and (schedule is None or c[2] == schedule)]


def _digest(kernel: Any) -> str:
    text = kernel.source.text or kernel.py_func.__code__.co_code.hex()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


dispatcher = Dispatcher()
