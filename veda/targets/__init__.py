"""Targets: where a kernel launch runs.

A target is a plug-in (:class:`Target`): it says whether it can run here (and why not), which
settings it takes, the decisions the dispatcher may try for a domain on this machine, its
default decision, what a launch costs it before any work, and how it prepares a launch of a
kernel's form.  ``"cpu"``, ``"parallel"`` and ``"cuda"`` are registered here; the CUDA target
imports Numba's CUDA machinery only when a launch runs on it.  A target registered with
:func:`register` is accepted by name everywhere a built-in one is.

Examples
--------
>>> import veda.targets
>>> veda.targets.names()
['cpu', 'parallel', 'cuda']
>>> veda.targets.get("cpu").available()
True
"""

from __future__ import annotations

from veda._config import check_defaults as _check_defaults
from veda._registry import Profiler, Target, get, names, register, unregister
from veda._types import Decision, KernelForm, LaunchOptions, Runner
from veda.targets.cpu import CPUTarget, ParallelTarget
from veda.targets.cuda import CUDATarget

__all__ = [
    "CPUTarget",
    "CUDATarget",
    "Decision",
    "KernelForm",
    "LaunchOptions",
    "ParallelTarget",
    "Profiler",
    "Runner",
    "Target",
    "get",
    "names",
    "register",
    "unregister",
]

# Registration order is the dispatcher's order of candidates: the serial loop first, the GPU
# last.
for _target in (CPUTarget(), ParallelTarget(), CUDATarget()):
    register(_target)
_check_defaults()  # VEDA_TARGET was read before any target was registered
