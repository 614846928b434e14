"""The GPU: is a CUDA device here, device arrays, what moving data to it costs, device buffers.

Importing this module imports no CUDA machinery: :func:`is_available` first looks for an NVIDIA
driver on the file system and for the ``numba-cuda`` package, and only then asks Numba's CUDA
driver about devices.  The answer is worked out once per process.  Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) explicit launches may run (:func:`explicit_reason` is None) but
:func:`is_available` stays False: the simulator is not a GPU.

The public face of this module is :mod:`veda.cuda`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from veda.errors import LaunchError, TargetUnavailableError

__all__ = [
    "DevicePool",
    "GPUCost",
    "device_resident",
    "driver_missing",
    "explicit_reason",
    "gpu_cost",
    "gpu_driver_present",
    "is_available",
    "is_device_array",
    "kernel_transfers",
    "measure",
    "pool",
    "simulator_enabled",
    "to_device",
    "to_host",
    "transfer_stats",
    "unavailable_reason",
]

_lock = threading.Lock()
_probed: tuple[str | None, str | None] | None = None  # (reason explicit fails, reason not a GPU)


#: Where NVIDIA's driver library usually lives (distribution packages, containers, WSL).
_DRIVER_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/wsl/lib",
)


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is visible, without importing any CUDA machinery.

    File-system checks only: on Linux the kernel driver's /proc entry or device node, or libcuda
    in the usual folders or on LD_LIBRARY_PATH (``ctypes.util.find_library`` would start
    ``ldconfig`` or a compiler, at the first adaptive launch of every process); on Windows
    ``nvcuda.dll`` in the system folder; on macOS never (:func:`driver_missing` says why).
    """
    if sys.platform == "darwin":
        return False
    if sys.platform == "win32":
        return os.path.exists(_windows_driver())
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0"):
        return True
    dirs = [*os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep), *_DRIVER_DIRS]
    return any(d and os.path.exists(os.path.join(d, "libcuda.so.1")) for d in dirs)


def _windows_driver() -> str:
    return os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll")


def driver_missing() -> str:
    """Why :func:`gpu_driver_present` found no driver, in words for this platform."""
    if sys.platform == "darwin":
        return "macOS has no CUDA driver (NVIDIA's last one was for macOS 10.13 and CUDA 10.2)"
    if sys.platform == "win32":
        return f"no NVIDIA driver found (no {_windows_driver()})"
    return (
        "no NVIDIA driver found (no /proc/driver/nvidia/version and no libcuda on the loader path)"
    )


def simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(getattr(numba.config, "ENABLE_CUDASIM", 0))


def _extra_installed() -> bool:
    return importlib.util.find_spec("numba_cuda") is not None


def _probe() -> tuple[str | None, str | None]:
    """(why an explicit target='cuda' cannot run, why there is no real GPU), None for "it can"."""
    global _probed
    if _probed is not None:
        return _probed
    with _lock:
        if _probed is not None:
            return _probed
        missing = (
            "the 'cuda' extra is not installed: numba-cuda is missing (pip install 'veda[cuda]')"
        )
        if not _extra_installed():
            _probed = (missing, missing)
        elif simulator_enabled():
            _probed = (
                None,
                "the CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1): it runs "
                "explicit target='cuda' launches for tests, but it is not a GPU",
            )
        elif not gpu_driver_present():
            reason = driver_missing()
            _probed = (reason, reason)
        else:
            reason = None
            try:
                from numba import cuda

                if not cuda.is_available():
                    reason = "an NVIDIA driver is present but Numba finds no usable CUDA device"
            except Exception as exc:  # a broken driver or toolkit: say what it said
                reason = f"an NVIDIA driver is present but CUDA did not start: {exc}"
            _probed = (reason, reason)
    return _probed


def is_available() -> bool:
    """True when a real CUDA GPU can run veda kernels in this process (never the simulator)."""
    return _probe()[1] is None


def unavailable_reason() -> str | None:
    """Why the dispatcher cannot use a GPU here (no driver, no device, extra not installed,
    simulator), or None when it can."""
    return _probe()[1]


def explicit_reason() -> str | None:
    """Why an explicit ``target="cuda"`` cannot run here, or None (a GPU or the simulator)."""
    return _probe()[0]


def _reset_probe() -> None:
    """Forget the probe (tests that fake a machine)."""
    global _probed
    _probed = None


def is_device_array(value: Any) -> bool:
    """True for CuPy arrays, Numba device arrays and anything else exposing
    ``__cuda_array_interface__`` (or the simulator's device arrays).

    >>> import numpy as np
    >>> is_device_array(np.zeros(3))
    False
    """
    if isinstance(value, np.ndarray):
        return False
    return hasattr(value, "__cuda_array_interface__") or (type(value).__name__ == "FakeCUDAArray")


def device_resident(args: tuple[Any, ...]) -> bool:
    """True when any argument already lives on the GPU."""
    return any(is_device_array(a) for a in args)


def _require() -> Any:
    reason = explicit_reason()
    if reason is not None:
        raise TargetUnavailableError(f"target 'cuda' is not available: {reason}")
    from numba import cuda

    return cuda


def to_device(array: Any) -> Any:
    """Copy a NumPy array to the GPU (a Numba device array); device arrays come back as they are.

    Device arrays passed to ``target="cuda"`` launches are used in place, and the kernel's
    outputs stay on the device: transfers then happen only where you ask for them.
    """
    cuda = _require()
    if is_device_array(array):
        return array
    if not isinstance(array, np.ndarray):
        raise LaunchError(f"veda.to_device: expected a NumPy array, not {type(array).__name__}")
    host = np.ascontiguousarray(array)
    _stats["host_to_device_bytes"] += host.nbytes
    _stats["host_to_device_copies"] += 1
    return cuda.to_device(host)


def to_host(array: Any) -> np.ndarray:
    """Copy a device array (Numba or CuPy) back to a NumPy array; NumPy arrays pass through."""
    if isinstance(array, np.ndarray):
        return array
    if not is_device_array(array):
        raise LaunchError(f"veda.to_host: expected a device array, not {type(array).__name__}")
    if hasattr(array, "copy_to_host"):
        host = array.copy_to_host()
    elif hasattr(array, "get"):  # CuPy
        host = array.get()
    else:
        cuda = _require()
        host = cuda.as_cuda_array(array).copy_to_host()
    _stats["device_to_host_bytes"] += host.nbytes
    _stats["device_to_host_copies"] += 1
    return np.asarray(host)


_stats: dict[str, int] = {
    "host_to_device_bytes": 0,
    "host_to_device_copies": 0,
    "device_to_host_bytes": 0,
    "device_to_host_copies": 0,
    "launches": 0,
}


# Per kernel ("module.qualname"): [bytes host to device, bytes device to host].
_per_kernel: dict[str, list[int]] = {}


def count_transfer(kernel: str, to_device: int, to_host: int) -> None:
    """Add one launch's copies to the per-kernel and process-wide counters."""
    row = _per_kernel.get(kernel)
    if row is None:
        row = _per_kernel[kernel] = [0, 0]
    row[0] += to_device
    row[1] += to_host


def kernel_transfers() -> dict[str, dict[str, int]]:
    """Bytes veda copied for each kernel's CUDA launches, by direction."""
    return {
        k: {"host_to_device_bytes": v[0], "device_to_host_bytes": v[1]}
        for k, v in list(_per_kernel.items())
    }


def transfer_stats() -> dict[str, int]:
    """Bytes and copies moved between host and device by veda in this process, and CUDA launches.

    >>> sorted(transfer_stats())  # doctest: +NORMALIZE_WHITESPACE
    ['device_to_host_bytes', 'device_to_host_copies', 'host_to_device_bytes',
     'host_to_device_copies', 'launches']
    """
    return dict(_stats)


# --------------------------------------------------------------------------------------------
# What a GPU launch costs before any kernel work


@dataclass
class GPUCost:
    """Host-device bandwidths and the fixed cost of one launch, measured once, lazily
    (:func:`measure`), or injected by tests."""

    host_to_device: float = math.nan  # bytes per second
    device_to_host: float = math.nan
    latency: float = math.nan  # seconds per launch (launch + synchronise)

    def transfer_seconds(self, bytes_in: int, bytes_out: int) -> float:
        """Predicted seconds of one launch before any kernel work: transfers and latency."""
        return bytes_in / self.host_to_device + bytes_out / self.device_to_host + self.latency


_gpu_cost: GPUCost | None = None
#: Why measuring the GPU failed (then and at every later question), or None.
_gpu_cost_error: str | None = None
_cost_lock = threading.Lock()


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
            try:
                _gpu_cost = GPUCost(*measure())
            except Exception as exc:
                _gpu_cost_error = f"measuring the GPU failed: {type(exc).__name__}: {exc}"
                raise RuntimeError(_gpu_cost_error) from exc
        return _gpu_cost


def measure(nbytes: int = 32 << 20, repeats: int = 3) -> tuple[float, float, float]:
    """Host-to-device and device-to-host bandwidth (bytes/s) of pageable NumPy memory, and the
    seconds one empty launch with a synchronisation takes; best of ``repeats``.

    :func:`gpu_cost` calls this once, the first time the dispatcher weighs the GPU (about 0.1 s).
    """
    import time

    from numba import cuda

    host = np.ones(nbytes // 8)
    dev = cuda.device_array_like(host)
    up = down = launch = math.inf

    @cuda.jit
    def _empty(x):  # type: ignore[no-untyped-def]
        pass

    # Configured once, with Numba's low-occupancy warning silenced: a one-block probe is meant
    # to be small, and under a test's "warnings are errors" filter the warning would drop the GPU.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size")
        probe = _empty[1, 32]
    probe(dev)  # compile
    cuda.synchronize()
    for _ in range(repeats):
        t0 = time.perf_counter()
        dev.copy_to_device(host)
        cuda.synchronize()
        t1 = time.perf_counter()
        dev.copy_to_host(host)
        t2 = time.perf_counter()
        probe(dev)
        cuda.synchronize()
        t3 = time.perf_counter()
        up, down, launch = min(up, t1 - t0), min(down, t2 - t1), min(launch, t3 - t2)
    return host.nbytes / up, host.nbytes / down, launch


# --------------------------------------------------------------------------------------------
# Device buffers


class DevicePool:
    """Device buffers kept between launches, by shape and dtype, so that a kernel launched again
    with NumPy arrays of the same shapes allocates nothing on the device."""

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._free: dict[tuple[tuple[int, ...], str], list[Any]] = {}
        self._lock = threading.Lock()

    def take(self, cuda: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        key = (shape, dtype.str)
        with self._lock:
            free = self._free.get(key)
            if free:
                self.hits += 1
                buf = free.pop()
                self.bytes -= buf.nbytes
                return buf
            self.misses += 1
        return cuda.device_array(shape, dtype)

    def give(self, buffers: list[Any]) -> None:
        with self._lock:
            for buf in buffers:
                if self.bytes + buf.nbytes > self.limit_bytes:
                    continue  # dropped: the driver frees it
                self._free.setdefault((tuple(buf.shape), buf.dtype.str), []).append(buf)
                self.bytes += buf.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self.bytes = 0

    def info(self) -> dict[str, int]:
        with self._lock:
            return {
                "cached_bytes": self.bytes,
                "hits": self.hits,
                "misses": self.misses,
                "buffers": sum(len(v) for v in self._free.values()),
            }


#: The process's device buffers.
pool = DevicePool()
