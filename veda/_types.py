"""The leaf types that cross layers: what a launch runs with, what its caller asked for.

They are named tuples: as cheap as plain tuples on the launch path (they hash and compare as
tuples, and are used as dictionary keys there), but each field says what it means on every
target, and a target-specific option (the CUDA block size) has a field of its own.

Examples
--------
>>> from veda._types import Decision
>>> Decision("parallel", threads=2, schedule="dynamic", chunk=4096)
Decision(target='parallel', threads=2, schedule='dynamic', chunk=4096, block=0)
>>> Decision("cpu")
Decision(target='cpu', threads=1, schedule='static', chunk=1, block=0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

__all__ = ["Decision", "KernelForm", "LaunchOptions", "Overrides", "Runner"]


class Decision(NamedTuple):
    """What one launch runs with: the target and its settings.

    Parameters
    ----------
    target : str
        A registered target's name.
    threads : int
        CPU worker threads the launch may use (1 for a serial target and for the GPU, whose
        launches are driven by one host thread).
    schedule : str
        How a ``"parallel"`` launch deals out chunks (``"static"`` for one block per worker);
        ``"grid"`` for the GPU's grid-stride loop.
    chunk : int
        Elements per chunk (the smallest chunk for ``"guided"``); 0 where chunks do not apply.
    block : int
        Threads per block of a GPU launch; 0 on the CPU targets.
    """

    target: str
    threads: int = 1
    schedule: str = "static"
    chunk: int = 1
    block: int = 0

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON object (records, the tuning cache, telemetry)."""
        return self._asdict()

    @classmethod
    def from_json(cls, value: Any) -> Decision:
        """Read :meth:`to_json`'s object, or the 4-item lists of older files.

        Raises ``ValueError`` (or ``TypeError``) for anything else.
        """
        if isinstance(value, dict):
            fields = {k: value[k] for k in cls._fields if k in value}
            if "target" not in fields:
                raise ValueError("a decision needs a target")
            decision = cls(**fields)
        elif isinstance(value, (list, tuple)) and len(value) in (4, 5):
            decision = cls(*value)
        else:
            raise ValueError(f"not a decision: {value!r}")
        ints = (decision.threads, decision.chunk, decision.block)
        if (
            not isinstance(decision.target, str)
            or not isinstance(decision.schedule, str)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
        ):
            raise ValueError(f"not a decision: {value!r}")
        if decision.threads < 1 or decision.chunk < 0 or decision.block < 0:
            raise ValueError(
                f"not a decision: {value!r} (threads must be at least 1, chunk and "
                "block at least 0)"
            )
        return decision


class Overrides(NamedTuple):
    """The settings one launch passed (``veda.launch(..., target=, threads=, ...)``);
    ``None`` leaves a setting to the configuration and the dispatcher."""

    target: str | None = None
    threads: int | None = None
    schedule: str | None = None
    chunk: int | None = None


class LaunchOptions(NamedTuple):
    """Settings that change the compiled code a target runs."""

    boundscheck: bool = False
    cache: bool = True
    deterministic: bool = False
    #: Where ``"parallel"`` launches pin their workers (``"compact"``, ``"scatter"``), or None.
    pin_threads: str | None = None

    @property
    def compile(self) -> tuple[bool, bool]:
        """(boundscheck, cache): the options of a generated module."""
        return (self.boundscheck, self.cache)


#: Runs one launch: takes the argument tuple, returns the reduction result or None.
Runner = Callable[[tuple[Any, ...]], Any]


class KernelForm(Protocol):
    """What a target may know of a kernel it prepares a launch of: one form of the kernel (its
    domain rank and argument count), with the facts veda's analysis found, and the generated
    code built for it.  Targets get this, never the kernel object itself."""

    #: The kernel's ``__qualname__`` and its ``module.qualname``.
    name: str
    label: str
    #: ``"sum"``, ``"prod"``, ``"min"``, ``"max"`` or None.
    reduce: str | None
    #: (position, op) of the array arguments reduced into private copies
    #: (``@veda.kernel(reduce={name: op})``); empty for other kernels.
    private: tuple[tuple[int, str], ...]
    ndim: int
    nargs: int
    #: The parameter names after the index parameters, in order.
    names: list[str]
    #: Positions of the arguments the kernel may write (all but those proved only read).
    maybe_written: list[int]

    def program(self, options: tuple[bool, bool]) -> Any:
        """The loaded generated module of the CPU family (``_veda_cpu``, ``_veda_parallel``, ...)
        for (boundscheck, cache)."""

    def cuda_program(
        self, options: tuple[bool, bool], acc: str | None, identity: str | None, block: int
    ) -> Any:
        """The loaded generated CUDA module for these options, accumulator and block size."""

    def refuse_device_arguments(self, args: Sequence[Any], target: str) -> None:
        """Raise veda's error when an argument is a GPU array on a CPU target."""
