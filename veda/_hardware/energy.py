"""Energy: counters that measure it, a power model where none can be read, and a thermal governor.

Readers
-------
A reader is a plug-in with :meth:`Reader.unavailable_reason` (None when it can read) and
:meth:`Reader.joules`, the energy used since the reader started, in joules:

* ``"rapl"``: the Linux powercap files of Intel's and AMD's RAPL counters,
  ``<sysfs_root>/class/powercap/intel-rapl:<package>[:<subzone>]/energy_uj``.  The packages are
  summed (their subzones, core, uncore and DRAM, are listed by :meth:`RAPL.zones`); each counter
  wraps at its ``max_energy_range_uj``, which the reader undoes.  Since Linux 5.10 only root
  may read the counters (a side channel, CVE-2020-8694): the reason then says so.
* ``"nvml"``: every NVIDIA GPU's total energy counter through NVML (``pip install
  nvidia-ml-py``, the ``energy`` extra; imported when first asked).
* ``"model"``, where nothing can be read (this project's CI machine, most VMs and containers):
  no counter; a launch's energy is its seconds times the modelled power of its configuration,
  ``static_watts + threads * watts_per_core`` (plus ``gpu_watts`` on a GPU), and it is labelled
  ``"model"`` wherever it appears.

The sysfs root comes from the callers; the model's watts from the configuration layer, through
the :data:`model` callback it installs (this layer imports no setting).
"""

from __future__ import annotations

import glob
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veda._hardware.cpu import max_threads
from veda._types import Decision

__all__ = [
    "NVML",
    "RAPL",
    "PowerModel",
    "Reader",
    "Thermal",
    "ThermalGovernor",
    "Zone",
    "reader",
    "reader_names",
    "record_observed",
    "threads_within",
    "watts",
]


class Reader:
    """A source of measured energy.  Subclasses set :attr:`name` and implement
    :meth:`covers`, :meth:`unavailable_reason` and :meth:`joules` (cumulative, any origin)."""

    name = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _every_reader.add(self)

    def covers(self, target: str) -> bool:
        """Whether this reader's counter holds the energy of launches on ``target``."""
        raise NotImplementedError

    def unavailable_reason(self) -> str | None:
        """Why this reader cannot read here, or None when it can."""
        raise NotImplementedError

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def reason_once(self) -> str | None:
        """:meth:`unavailable_reason`, asked once for the reader's life (the launch path's
        question; :func:`veda.hardware.energy_sources` asks afresh)."""
        if not hasattr(self, "_reason_once"):
            self._reason_once = self.unavailable_reason()
        return self._reason_once

    def joules(self) -> float:
        """Energy used since an arbitrary origin (the same for the reader's lifetime), in J."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# RAPL through powercap

_PACKAGE = re.compile(r"^intel-rapl:\d+$")
_SUBZONE = re.compile(r"^intel-rapl:\d+:\d+$")


@dataclass(frozen=True)
class Zone:
    """One powercap zone: a package (``intel-rapl:0``) or a subzone of one
    (``intel-rapl:0:1``), with the name the kernel gives it (``package-0``, ``core``, ``dram``)."""

    path: str
    name: str
    package: bool
    max_range_uj: int


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


class RAPL(Reader):
    """Package energy from the powercap files under ``<root>/class/powercap``.

    Examples
    --------
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> zone = os.path.join(root, "class", "powercap", "intel-rapl:0")
    >>> os.makedirs(zone)
    >>> for name, value in [("name", "package-0"), ("energy_uj", "1000000"),
    ...                     ("max_energy_range_uj", "262143328850")]:
    ...     _ = open(os.path.join(zone, name), "w").write(value)
    >>> rapl = RAPL(root)
    >>> rapl.unavailable_reason() is None, rapl.joules()
    (True, 0.0)
    >>> _ = open(os.path.join(zone, "energy_uj"), "w").write("3500000")
    >>> rapl.joules()
    2.5
    """

    name = "rapl"

    def __init__(self, root: str = "/sys") -> None:
        super().__init__()
        self.folder = os.path.join(root, "class", "powercap")
        self._last: dict[str, int] = {}
        self._total_uj = 0
        #: The package zones, found once (a launch's two reads open one file per package).
        self._counting: list[Zone] | None = None

    def covers(self, target: str) -> bool:
        return not on_gpu(target)  # the CPU packages: not a GPU's own energy

    def zones(self) -> list[Zone]:
        """The packages and their subzones, in order."""
        out = []
        for path in sorted(glob.glob(os.path.join(self.folder, "intel-rapl:*"))):
            base = os.path.basename(path)
            if not (_PACKAGE.match(base) or _SUBZONE.match(base)):
                continue
            try:
                with open(os.path.join(path, "name")) as f:
                    name = f.read().strip()
            except OSError:
                name = base
            try:
                top = _read_int(os.path.join(path, "max_energy_range_uj"))
            except (OSError, ValueError):
                top = 0
            out.append(Zone(path, name, bool(_PACKAGE.match(base)), top))
        return out

    def _packages(self) -> list[Zone]:
        return [z for z in self.zones() if z.package]

    def unavailable_reason(self) -> str | None:
        if not os.path.isdir(self.folder):
            return (
                f"no powercap folder {self.folder} (not Linux, or a machine, VM or container "
                "that exposes no RAPL counters)"
            )
        packages = self._packages()
        if not packages:
            return f"no RAPL package zone (intel-rapl:N) under {self.folder}"
        for z in packages:
            path = os.path.join(z.path, "energy_uj")
            try:
                _read_int(path)
            except PermissionError:
                return (
                    f"permission denied reading {path}: since Linux 5.10 only root may read "
                    "RAPL counters (run as root, or let a group read energy_uj)"
                )
            except (OSError, ValueError) as exc:
                return f"cannot read {path}: {exc}"
        return None

    def joules(self) -> float:
        """Raises ValueError for a reading no counter can give (negative, beyond its range)."""
        with self._lock:
            if self._counting is None:
                self._counting = self._packages()
            try:
                raws = [(z, _read_int(os.path.join(z.path, "energy_uj"))) for z in self._counting]
            except OSError:
                self._counting = None  # zones changed: found again at the next read
                raise
            for z, raw in raws:
                if raw < 0 or (z.max_range_uj > 0 and raw > z.max_range_uj):
                    raise ValueError(
                        f"{z.path}/energy_uj read {raw}, outside the counter's range "
                        f"[0, {z.max_range_uj}]"
                    )
            for z, raw in raws:
                last = self._last.get(z.path)
                if last is not None:
                    delta = raw - last
                    if delta < 0:
                        # A wrap at max_energy_range_uj goes from near the top to near zero;
                        # any other step back is a reset (counted as nothing), not a wrap of
                        # a quarter of a megajoule.
                        wrapped = delta + z.max_range_uj
                        delta = wrapped if 0 <= wrapped <= z.max_range_uj // 2 else 0
                    self._total_uj += delta
                self._last[z.path] = raw
            return self._total_uj / 1e6


# --------------------------------------------------------------------------------------------
# NVML


class NVML(Reader):
    """Every NVIDIA GPU's total energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
    millijoules since the driver loaded), through the ``pynvml`` module of nvidia-ml-py."""

    name = "nvml"

    def __init__(self, module: Any = None) -> None:
        super().__init__()
        self._module = module
        self._handles: list[Any] | None = None
        self._reason: str | None = None
        self._last: list[float] | None = None
        self._total_mj = 0.0

    def covers(self, target: str) -> bool:
        return on_gpu(target)  # the GPUs' energy: not the CPU launches'

    def _start(self) -> None:
        if self._handles is not None or self._reason is not None:
            return
        nvml = self._module
        if nvml is None:
            try:
                import pynvml as nvml  # type: ignore[import-not-found,no-redef]
            except ImportError:
                self._reason = (
                    "nvidia-ml-py is not installed (pip install 'veda[energy]' for NVML readings)"
                )
                return
        try:
            nvml.nvmlInit()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            if not handles:
                self._reason = "NVML sees no GPU"
                return
            for h in handles:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception as exc:  # pynvml.NVMLError, or a driver without the counter
            self._reason = f"NVML cannot read GPU energy: {type(exc).__name__}: {exc}"
            return
        self._module, self._handles = nvml, handles

    def unavailable_reason(self) -> str | None:
        with self._lock:
            self._start()
            return self._reason

    def joules(self) -> float:
        with self._lock:
            self._start()
            if self._handles is None:
                raise RuntimeError(self._reason)
            now = [
                float(self._module.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles
            ]
            if self._last is not None:
                # a counter that went back (the driver reloaded) restarts: nothing counted
                self._total_mj += sum(max(0.0, b - a) for a, b in zip(self._last, now))
            self._last = now
            return self._total_mj / 1e3


#: Every reader made, for the fork handler (a child gets fresh locks: a parent's thread may
#: have held one at the fork).
_every_reader: weakref.WeakSet[Reader] = weakref.WeakSet()

_READERS: dict[str, Callable[[str], Reader]] = {"rapl": RAPL, "nvml": lambda root: NVML()}
_made: dict[tuple[str, str], Reader] = {}
_made_lock = threading.Lock()


def reader_names() -> list[str]:
    """The measured sources veda knows, then ``"model"``."""
    return [*_READERS, "model"]


def reader(name: str, root: str = "/sys") -> Reader:
    """The process's reader ``name`` for the sysfs tree at ``root`` (made once)."""
    with _made_lock:
        got = _made.get((name, root))
        if got is None:
            got = _made[(name, root)] = _READERS[name](root)
        return got


def _forget_readers() -> None:  # a fork child starts its counters afresh
    global _made_lock, _observed_lock
    for r in list(_every_reader):
        r._lock = threading.Lock()
    _made.clear()
    _made_lock = threading.Lock()
    _observed.clear()
    _observed_source.clear()
    _observed_lock = threading.Lock()
    governor._lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# The power model, and what was measured per configuration


@dataclass(frozen=True)
class PowerModel:
    """Modelled power of a configuration: ``static_watts`` for the package while anything runs,
    ``watts_per_core`` for each busy worker thread, ``gpu_watts`` for a busy GPU.

    >>> PowerModel(20.0, 10.0, 150.0).watts(Decision("parallel", 4))
    60.0
    """

    static_watts: float
    watts_per_core: float
    gpu_watts: float

    def watts(self, decision: Decision) -> float:
        if on_gpu(decision.target):  # the GPU, and the launching thread waiting on it
            return self.static_watts + self.watts_per_core + self.gpu_watts
        return self.static_watts + max(1, int(decision.threads or 1)) * self.watts_per_core


#: Joules and seconds measured per (target, threads): the energy policy's watts where known.
_observed: dict[tuple[str, int], list[float]] = {}
_observed_lock = threading.Lock()
#: The reader that measured each target's launches.
_observed_source: dict[str, str] = {}

#: Measured seconds of a configuration before its measured watts replace the model's.
OBSERVED_ENOUGH = 0.05


def record_observed(decision: Decision, joules: float, seconds: float, source: str) -> None:
    """Add a measured launch to the watts known for its target and thread count."""
    key = (decision.target, int(decision.threads or 1))
    _observed_source[decision.target] = source
    with _observed_lock:
        got = _observed.setdefault(key, [0.0, 0.0])
        got[0] += joules
        got[1] += seconds


#: Whether a target runs on a GPU (it reads device arrays): set by the registry of targets
#: (this layer knows no target), by name until then.
on_gpu: Callable[[str], bool] = lambda target: target == "cuda"

#: The power model in force: set by the configuration layer (a callback: this layer reads no
#: setting), the model's defaults until then.
model: Callable[[], PowerModel] = lambda: PowerModel(20.0, 10.0, 150.0)


#: Whether the settings in force ask for measured energy (``energy`` is not ``"model"``): set
#: by the configuration layer, as :data:`model` is.
measuring: Callable[[], bool] = lambda: False


def watts(decision: Decision) -> tuple[float, str]:
    """The power of ``decision``'s configuration and where that figure comes from: where the
    settings ask for measured energy, the measured watts of launches on its target and thread
    count (the reader's name) once there are enough; else the power model's (``"model"``)."""
    got = _observed.get((decision.target, int(decision.threads or 1))) if measuring() else None
    if got is not None and got[1] >= OBSERVED_ENOUGH:
        return got[0] / got[1], _observed_source.get(decision.target, "measured")
    return model().watts(decision), "model"


def threads_within(max_watts: float, watts: Callable[[int], float], most: int | None = None) -> int:
    """The most threads (1 to ``most``, by default :func:`max_threads`) whose power
    ``watts(threads)`` stays at or below ``max_watts``; 1 when even one thread is above it.

    >>> threads_within(45.0, lambda t: 20.0 + 10.0 * t, most=8)
    2
    """
    most = max_threads() if most is None else most
    best = 1
    for t in range(1, most + 1):
        if watts(t) <= max_watts:
            best = t
    return best


# --------------------------------------------------------------------------------------------
# Temperature


class Thermal:
    """The hottest temperature (degrees Celsius) of the machine's thermal zones,
    ``<root>/class/thermal/thermal_zone*/temp`` (millidegrees), or psutil's sensors where that
    folder is missing on the real ``/sys``."""

    def __init__(self, root: str = "/sys") -> None:
        self.root = root
        self.folder = os.path.join(root, "class", "thermal")

    def _zones(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.folder, "thermal_zone*", "temp")))

    def unavailable_reason(self) -> str | None:
        if self._zones():
            return None
        if os.path.abspath(self.root) == "/sys" and self._psutil() is not None:
            return None
        return f"no thermal zone under {self.folder} and no psutil temperature sensor"

    def _psutil(self) -> float | None:
        try:
            import psutil

            sensors = (
                psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
            )
        except Exception:
            return None
        temps = [s.current for group in sensors.values() for s in group if s.current]
        return max(temps) if temps else None

    def celsius(self) -> float | None:
        """The hottest reading now, or None when nothing is readable."""
        temps = []
        for path in self._zones():
            try:
                t = _read_int(path) / 1000.0
            except (OSError, ValueError, OverflowError):
                continue
            if -273.15 < t < 1000.0:  # anything else is a damaged reading, not a temperature
                temps.append(t)
        if temps:
            return max(temps)
        return self._psutil() if os.path.abspath(self.root) == "/sys" else None


class ThermalGovernor:
    """Lowers the threads veda lends while the machine is hot, with hysteresis.

    Each :meth:`allowed` call at least :attr:`interval` seconds after the last reads the
    temperature: at or above ``threshold`` one thread fewer is allowed (down to one); at or below
    ``threshold - hysteresis`` one more (up to ``most``); in between the count stays.  A pure
    core (:meth:`step`) with a thin shell that reads the clock and the sensor.

    >>> g = ThermalGovernor(most=4)
    >>> [g.step(t, 80.0) for t in (85, 85, 78, 76, 74, 74)]
    [3, 2, 2, 2, 3, 4]
    """

    #: Degrees below the threshold before threads come back.
    HYSTERESIS = 5.0

    def __init__(self, most: int | None = None, interval: float = 1.0) -> None:
        self.most = max_threads() if most is None else most
        self.threads = self.most
        self.interval = interval
        self._last = -math.inf
        self._lock = threading.Lock()
        self.celsius: float | None = None

    def step(self, celsius: float | None, threshold: float) -> int:
        if celsius is not None:
            if celsius >= threshold:
                self.threads = max(1, self.threads - 1)
            elif celsius <= threshold - self.HYSTERESIS:
                self.threads = min(self.most, self.threads + 1)
        self.celsius = celsius
        return self.threads

    def allowed(self, thermal: Thermal, threshold: float) -> int:
        """The threads allowed now, reading the temperature (and stepping) at most once per
        :attr:`interval` seconds whichever threads ask."""
        with self._lock:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                try:
                    reading = thermal.celsius()
                except Exception:
                    reading = None
                self.step(reading, threshold)
            return self.threads


#: The process's thermal governor (the dispatcher's and the size rule's).
governor = ThermalGovernor()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_readers)
