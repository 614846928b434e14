"""veda's exceptions.

Every error veda raises on purpose is a :class:`VedaError`.  Most also derive from the built-in
exception a Python programmer would expect (``ValueError`` for a bad value, ``TypeError`` for a
kernel that cannot be typed, ``IndexError`` for an out-of-bounds access, ``KeyError`` for an
unknown name), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "KernelDefinitionError",
    "KernelError",
    "KernelIndexError",
    "LaunchError",
    "QueueFull",
    "ReplayError",
    "ShutdownError",
    "TargetUnavailableError",
    "TaskError",
    "TelemetryError",
    "UnknownKernelError",
    "VedaError",
]


class VedaError(Exception):
    """Base class of every error veda raises on purpose."""


class ConfigError(VedaError, ValueError):
    """A configuration value is unknown or out of range (``veda.config``, ``VEDA_*``)."""


class KernelDefinitionError(VedaError, TypeError):
    """A kernel or helper cannot be defined or compiled (bad signature, untypable body)."""


class LaunchError(VedaError, ValueError):
    """A launch was refused before running: bad domain, arguments or overrides."""


class GraphError(LaunchError):
    """A launch graph that cannot be captured or replayed as asked (:class:`veda.graph`)."""


class TargetUnavailableError(VedaError, RuntimeError):
    """The requested target cannot run here (no GPU, no driver, extra not installed)."""


class ReplayError(VedaError, RuntimeError):
    """A replayed run diverged from its record, or the record cannot be read."""


class TelemetryError(VedaError, RuntimeError):
    """Telemetry cannot do what was asked: an unwritable trace path, a port in use."""


class UnknownKernelError(VedaError, KeyError):
    """A kernel name that veda has no record of."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class KernelError(VedaError, RuntimeError):
    """An exception raised inside a kernel body, carried to the caller.

    Attributes
    ----------
    kernel : str
        The kernel's qualified name.
    original_type : type
        The type of the exception the body raised.
    original_message : str
        Its message.
    index : tuple of int or None
        The launch index at which it was raised, where veda knows it.
    target : str or None
        The target the launch ran on.
    context : str or None
        Where the launch ran, where a layer above the launch says (``veda.dask``: the block
        and the worker).
    """

    def __init__(
        self,
        kernel: str,
        original_type: type[BaseException],
        original_message: str,
        index: tuple[int, ...] | None = None,
        target: str | None = None,
        context: str | None = None,
    ) -> None:
        self.kernel = kernel
        self.original_type = original_type
        self.original_message = original_message
        self.index = index
        self.target = target
        #: Where the launch ran, when a layer above says (``veda.dask``: the block, the worker).
        self.context = context
        where = ""
        if index is not None:
            where = f" at index {index[0] if len(index) == 1 else index}"
        on = f" on target {target!r}" if target else ""
        more = f" ({context})" if context else ""
        super().__init__(
            f"kernel {kernel!r} raised {original_type.__name__}{where}{on}{more}: "
            f"{original_message}"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            type(self),
            (
                self.kernel,
                self.original_type,
                self.original_message,
                self.index,
                self.target,
                self.context,
            ),
        )


class KernelIndexError(KernelError, IndexError):
    """An out-of-bounds access inside a kernel (with ``veda.config(boundscheck=True)``)."""


class TaskError(VedaError, ValueError):
    """A task was refused before it was queued: a bad priority, deadline, ``on_error`` or
    ``retries``, or something that is not a kernel (``veda.submit``) or not callable
    (``veda.spawn``)."""


class DeadlineExceeded(VedaError, TimeoutError):
    """A task's deadline passed before it started; the task never ran."""


class QueueFull(VedaError):
    """The task queue held ``max_pending`` tasks for the whole ``timeout`` of a submit."""


class ShutdownError(VedaError, RuntimeError):
    """A task was submitted after :func:`veda.shutdown`."""
