"""The name ``"cuda"`` before veda's CUDA target exists in this build.

Registering the name keeps ``target="cuda"`` an *unavailable* target (a clear
:class:`~veda.TargetUnavailableError`) rather than an unknown one, and the dispatcher never picks
it.  The CUDA target replaces this entry when it is implemented.
"""

from __future__ import annotations

import ctypes.util
import os
from typing import Any

from veda.targets import Target


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is visible, without importing any CUDA machinery."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(ctypes.util.find_library("cuda"))


class CUDAPlaceholder(Target):
    name = "cuda"

    def unavailable_reason(self) -> str | None:
        driver = "an NVIDIA driver is present" if gpu_driver_present() else "no NVIDIA driver found"
        return f"this version of veda has no CUDA target yet ({driver})"

    def prepare(self, kernel: Any, dims: Any, nargs: Any, decision: Any, options: Any,
                profiler: Any, shared: bool = False) -> Any:
        raise AssertionError("unreachable: veda.targets.get refuses unavailable targets")
