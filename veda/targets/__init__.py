"""Targets: where a kernel launch runs.

A target is a small plug-in: it says whether it can run here (and why not), and it runs one
launch of a kernel with a decision (threads, schedule, chunk) the dispatcher made.  ``"cpu"`` and
``"parallel"`` and ``"cuda"`` are registered here; the CUDA target's module imports Numba's CUDA
machinery only when a launch runs on it.

Examples
--------
>>> import veda.targets
>>> sorted(veda.targets.names())
['cpu', 'cuda', 'parallel']
>>> veda.targets.get("cpu").available()
True
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from veda.errors import LaunchError, TargetUnavailableError

if TYPE_CHECKING:
    from veda._kernel.kernel import Kernel
    from veda.telemetry._registry import Recorder

__all__ = ["Decision", "Runner", "Target", "get", "names", "register"]

# (target, threads, schedule, chunk): what one launch runs with.
Decision = tuple[str, int, str, int]
# Runs one launch: takes the argument tuple, returns the reduction result or None.
Runner = Callable[[tuple[Any, ...]], Any]


class Target(abc.ABC):
    """One place a kernel can run."""

    #: The name users pass as ``target=``.
    name: str = ""
    #: Whether launches may use several CPU threads (the dispatcher's candidates depend on it).
    parallel: bool = False

    def available(self) -> bool:
        """True when this target can run launches in this process."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or None when it can."""
        return None

    @abc.abstractmethod
    def prepare(self, kernel: Kernel, dims: tuple[int, ...], nargs: int, decision: Decision,
                options: tuple[bool, bool, bool], profiler: Recorder | None,
                shared: bool = False) -> Runner:
        """A callable that runs ``kernel`` over ``dims`` with this decision.

        It takes the launch's argument tuple and returns the reduction result or None.  veda
        keeps it for later launches with the same domain, settings and argument count, so
        everything that does not depend on the arguments' values belongs here, not in it.
        ``options`` is (boundscheck, cache, deterministic).  With a ``profiler``, a target that
        has workers reports each launch's per-worker busy time to it (``profiler.profile``).
        ``shared`` says the dispatcher chose the thread count, so the target may lower it while
        other launches share the cores; an explicit ``threads=`` is never lowered.
        """


_registry: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add (or replace) a target under ``target.name``."""
    if not target.name:
        raise ValueError("a target needs a name")
    _registry[target.name] = target
    return target


def get(name: str) -> Target:
    """The target called ``name``; raises when unknown or unavailable here."""
    try:
        target = _registry[name]
    except KeyError:
        raise LaunchError(
            f"unknown target={name!r}; expected one of {', '.join(sorted(_registry))}"
        ) from None
    reason = target.unavailable_reason()
    if reason is not None:
        raise TargetUnavailableError(f"target {name!r} is not available: {reason}")
    return target


def names() -> list[str]:
    """Every registered target's name, available here or not."""
    return list(_registry)


def _register_builtin() -> None:
    from veda.targets.cpu import CPUTarget, ParallelTarget
    from veda.targets.cuda import CUDATarget

    register(CPUTarget())
    register(ParallelTarget())
    register(CUDATarget())


_register_builtin()
