"""``@veda.kernel``, ``@veda.func`` and the launch path.

The launch path is hot: a launch of a 100-element kernel must cost a couple of microseconds more
than calling the compiled loop directly.  Everything that can be worked out once per kernel
specialisation (argument checks, written arguments, domain checks, the generated module) is
worked out once and kept in a :class:`_Plan`; type checks and error translation happen in
Numba's compile hook, which runs only when a new combination of argument types arrives.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any, overload

import numpy as np
from numba.core import errors as numba_errors

from veda import _record, scheduler, targets
from veda import cuda as _cuda
from veda._config import get_config, validate_launch_overrides
from veda._kernel import cache as _cache
from veda._kernel import codegen
from veda._kernel.language import REDUCE_OPS
from veda._kernel.source import FunctionSource, analyse, get_source, plain_parameters
from veda.errors import KernelDefinitionError, LaunchError, VedaError
from veda.telemetry import _events
from veda.telemetry import _registry as _telemetry

__all__ = ["Func", "Kernel", "func", "kernel", "launch"]

_INT_TYPES = (int, np.integer)
_pending = _telemetry.pending_compile
_FOLD_AT = _telemetry.FOLD_AT
_SCALAR_TYPES = (bool, int, float, complex, np.bool_, np.number)


# --------------------------------------------------------------------------------------------
# Argument and error checks (slow path: run when Numba meets new argument types)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-d {value.dtype} array"
    mod = type(value).__module__
    name = type(value).__qualname__
    return f"a {name if mod == 'builtins' else mod + '.' + name}"


def _dtype_problem(dt: np.dtype, where: str) -> str | None:
    if dt.kind not in "biufc":
        return f"arrays must hold booleans or numbers, not {dt}"
    supported = {"f": (4, 8), "c": (8, 16)}.get(dt.kind)
    if supported is not None and dt.itemsize not in supported:
        return f"{dt} arrays are not supported by Numba on {where}; use float32 or float64"
    if not dt.isnative:
        return f"arrays must be in native byte order, not {dt.str}; use .astype({dt.name!r})"
    return None


def _arg_problem(value: Any, device: bool = False) -> str | None:
    """Why ``value`` cannot be a kernel argument, or None; ``device``: on the GPU target,
    which also takes GPU arrays."""
    if isinstance(value, np.ndarray):
        return _dtype_problem(value.dtype, "the GPU" if device else "the CPU")
    if isinstance(value, np.generic):
        return _arg_problem(np.asarray(value), device)
    if isinstance(value, _SCALAR_TYPES):
        return None
    if type(value) is tuple:
        for item in value:
            problem = _arg_problem(item, device)
            if problem is not None:
                return f"tuples must hold scalars or arrays: {problem}"
        return None
    if isinstance(value, list):
        return "lists are not accepted; pass a NumPy array (np.asarray(...))"
    if _cuda.is_device_array(value):
        if not device:
            return GPU_ARRAY_ON_CPU
        try:
            dt = np.dtype(value.dtype)
        except TypeError:
            return f"GPU arrays must hold booleans or numbers, not {value.dtype}"
        return _dtype_problem(dt, "the GPU")
    if device:
        return ("kernel arguments must be NumPy or GPU arrays, scalars (bool, int, float, "
                "complex) or tuples")
    return "kernel arguments must be NumPy arrays, scalars (bool, int, float, complex) or tuples"


GPU_ARRAY_ON_CPU = (
    "GPU arrays are not accepted by the CPU targets (they are not copied behind your back); "
    "copy to the host with veda.to_host(...), or launch with target='cuda'"
)


def refuse_device_arguments(kernel_name: str, names: list[str], args: tuple[Any, ...],
                            target: str) -> None:
    """Raise a clear error when a CPU launch failed because an argument lives on the GPU.

    Called only after a CPU launch failed, so it costs nothing on the launch path.
    """
    for name, value in zip(names, args):
        if _cuda.is_device_array(value):
            raise LaunchError(
                f"kernel {kernel_name!r}: argument {name!r} is {_describe(value)}, a GPU array, "
                f"on target {target!r}; {GPU_ARRAY_ON_CPU}"
            )


def check_arguments(kernel_name: str, names: list[str], args: tuple[Any, ...],
                    device: bool = False) -> None:
    """Refuse an argument no target can take, naming it; ``device``: for the GPU target."""
    for name, value in zip(names, args):
        problem = _arg_problem(value, device)
        if problem is not None:
            raise LaunchError(
                f"kernel {kernel_name!r}: argument {name!r} is {_describe(value)}; {problem}"
            )


# Numba names source lines as 'File "path", line N' and 'at path (N)', sometimes with relative
# paths; generated file names are unique, so their base names identify them.
_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)|at (\S+\.py) \((\d+)\)')
# Errors raised by veda's own kernel-language typing, buried in Numba's candidate list.
_VEDA_TYPING = re.compile(
    r"TypingError: ((?:atomic_\w+|local_array|a reduce=|reduce=)[^\n]*)"
)


def _summary(message: str) -> str:
    """The few lines of a Numba error message that say what went wrong."""
    kept: list[str] = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("Failed in ") or stripped.startswith(">>>"):
            if stripped.startswith(">>>"):
                kept.append(stripped)
            continue
        if stripped.startswith("File ") or stripped.startswith("During:"):
            break
        if stripped.startswith("There are") or stripped.startswith("- Of which"):
            break
        kept.append(stripped)
        if len(kept) >= 4:
            break
    kept.extend(dict.fromkeys(_VEDA_TYPING.findall(message)))
    return "\n  ".join(kept) if kept else message.strip().splitlines()[0]


def _user_location(message: str) -> str:
    for f1, l1, f2, l2 in _FILE_LINE.findall(message):
        fname, line = (f1, l1) if f1 else (f2, l2)
        for m in _cache.line_maps.get(os.path.basename(fname), ()):
            offset = int(line) - m.gen_start
            if 0 <= offset < m.length:
                ufile, uline, text = m.source.user_line(offset)
                return f"\n  at {ufile}:{uline}: {text}"
    return ""


def translate_compile_error(
    exc: Exception, kernel_name: str, names: list[str], args: tuple[Any, ...]
) -> VedaError:
    import numba

    message = str(exc)
    readonly = [
        n for n, a in zip(names, args) if isinstance(a, np.ndarray) and not a.flags.writeable
    ]
    if "readonly" in message and readonly:
        return LaunchError(
            f"kernel {kernel_name!r} writes argument {readonly[0]!r}, which is a read-only "
            f"array; pass a writeable array (e.g. {readonly[0]}.copy()){_user_location(message)}"
        )
    types = []
    for n, a in zip(names, args):
        try:
            types.append(f"{n}: {numba.typeof(a)}")
        except Exception:
            types.append(f"{n}: {type(a).__name__}")
    err = KernelDefinitionError(
        f"kernel {kernel_name!r} cannot be compiled for argument types ({', '.join(types)}):\n  "
        f"{_summary(message)}{_user_location(message)}"
    )
    err.numba_message = message  # type: ignore[attr-defined]
    return err


def install_compile_hook(
    dispatcher: Any, owner: _Compiled, offset: int, names: list[str]
) -> None:
    """Check, count and translate at the one point Numba meets new argument types."""
    original = dispatcher._compile_for_args

    def _compile_for_args(*args: Any, **kws: Any) -> Any:
        user_args = args[offset:]
        check_arguments(owner.name, names, user_args)
        hits = sum(dispatcher.stats.cache_hits.values())
        start = time.perf_counter()
        try:
            result = original(*args, **kws)
        except numba_errors.NumbaError as exc:
            raise translate_compile_error(exc, owner.name, names, user_args) from None
        end = time.perf_counter()
        hit = sum(dispatcher.stats.cache_hits.values()) > hits
        signature = (", ".join(str(t) for t in dispatcher.signatures[-1][offset:])
                     if dispatcher.signatures else "")
        with owner._lock:
            stats = owner.compile_stats
            if hit:
                stats.cache_hits += 1
            else:
                stats.compiled += 1
            stats.compile_seconds += end - start
            stats.signatures.append(signature)
        if get_config().telemetry:
            _telemetry.registry.compiled(owner.module_name, owner.name, end - start, hit)
            if isinstance(owner, Kernel):
                _telemetry.pending_compile.setdefault(threading.get_ident(), []).append(
                    (start, end - start))
            if _events.listeners:
                _events.emit("on_compile", _events.CompileEvent(
                    owner.name, signature, hit, threading.get_ident(), start, end))
        return result

    dispatcher._compile_for_args = _compile_for_args


# --------------------------------------------------------------------------------------------
# Helpers


class _Compiled:
    """What kernels and helpers share: the Python function, its source, compile counters."""

    name: str

    def __init__(self, pyfunc: Callable[..., Any]) -> None:
        self.py_func = pyfunc
        self.module_name: str = pyfunc.__module__ or "__main__"
        self._lock = threading.RLock()
        self._source: FunctionSource | None = None
        self.compile_stats = _cache.CompileStats()
        functools.update_wrapper(self, pyfunc)  # type: ignore[arg-type]

    @property
    def source(self) -> FunctionSource:
        """The function's text and origin, as the generated modules carry it."""
        if self._source is None:
            self._source = get_source(self.py_func)
        return self._source


class Func(_Compiled):
    """A helper function that kernels (and other helpers) may call; see :func:`func`."""

    def __init__(self, pyfunc: Callable[..., Any]) -> None:
        self.params = plain_parameters(pyfunc, "func")
        super().__init__(pyfunc)
        self.name = pyfunc.__name__
        self.qualname = pyfunc.__qualname__
        self._units: dict[tuple[bool, bool], codegen.Unit] = {}
        self._cuda_units: dict[tuple[bool, bool], codegen.Unit] = {}
        self._written: set[int] | None = None
        self._maybe_written: set[int] | None = None

    def written_positions(self) -> set[int]:
        """Positions of the parameters this helper writes (directly or through helpers)."""
        if self._written is None:
            self._written = set()  # breaks cycles between mutually recursive helpers
            try:
                facts = analyse(self.source, self.params, [], _callee_writes)
            except BaseException:
                self._written = None
                raise
            self._written = {self.params.index(p) for p in facts.written}
        return self._written

    def maybe_written_positions(self) -> set[int]:
        """Positions of the parameters this helper may write: all but those its analysis (and
        its helpers') proves it only reads.  The GPU target copies these back."""
        if self._maybe_written is None:
            self._maybe_written = set(range(len(self.params)))  # a cycle: assume the worst
            try:
                facts = analyse(self.source, self.params, [], _callee_writes)
            except BaseException:
                self._maybe_written = None
                raise
            self._maybe_written = {self.params.index(p) for p in facts.maybe_written}
        return self._maybe_written

    def unit(self, options: tuple[bool, bool]) -> codegen.Unit:
        unit = self._units.get(options)
        if unit is None:
            with self._lock:
                unit = self._units.get(options)
                if unit is None:
                    unit = codegen.function_unit(self.source, options)
                    install_compile_hook(getattr(unit.module, self.name), self, 0, self.params)
                    self._units[options] = unit
        return unit

    def cuda_unit(self, options: tuple[bool, bool]) -> codegen.Unit:
        """The helper's generated module as a CUDA device function."""
        unit = self._cuda_units.get(options)
        if unit is None:
            with self._lock:
                unit = self._cuda_units.get(options)
                if unit is None:
                    unit = codegen.cuda_function_unit(self.source, options)
                    self._cuda_units[options] = unit
        return unit

    def __call__(self, *args: Any) -> Any:
        """Call the compiled helper from Python (handy for testing it alone)."""
        cfg = get_config()
        return getattr(self.unit((cfg.boundscheck, cfg.cache)).module, self.name)(*args)

    def __repr__(self) -> str:
        return f"<veda.func {self.qualname}>"


def _callee_writes(callee: Any) -> set[int]:
    if isinstance(callee, Func):
        return callee.written_positions()
    return set()


def func(pyfunc: Callable[..., Any]) -> Func:
    """Mark a helper function that kernels may call.

    The helper is compiled for whichever target calls it; its source is copied into veda's
    generated modules, so a change to it is seen by the disk cache.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.func
    ... def clamp(v, lo, hi):
    ...     return min(max(v, lo), hi)
    >>> @veda.kernel
    ... def clip(i, x, out):
    ...     out[i] = clamp(x[i], 0.0, 1.0)
    >>> out = np.empty(3)
    >>> clip[3](np.array([-1.0, 0.5, 2.0]), out)
    >>> out
    array([0. , 0.5, 1. ])
    """
    return Func(pyfunc)


# --------------------------------------------------------------------------------------------
# Kernels


class _Plan:
    """What one (index count, argument count) form of a kernel checks at every launch.

    ``check(dims, args)`` is generated source with the positions written in, because it runs at
    every launch: about 0.1 us per check instead of a loop over a table.  A failed check calls
    :meth:`fail`, which says in words what is wrong.
    """

    __slots__ = ("check", "direct", "kernel_name", "maybe_written", "names", "nbytes",
                 "written")

    def __init__(self, kernel_name: str, names: list[str], written: list[int],
                 direct: list[tuple[int, int, int, str, str]], arrays: list[int],
                 maybe_written: list[int] | None = None) -> None:
        self.kernel_name = kernel_name
        self.names = names
        self.written = written
        #: Positions the kernel may write (a superset of ``written``): all but the arguments the
        #: analysis proves are only read.  The GPU target copies these back to the host.
        self.maybe_written = list(range(len(names))) if maybe_written is None else maybe_written
        self.direct = direct
        lines = ["def check(dims, args):"]
        for pos in written:
            lines.append(
                f"    if isinstance(args[{pos}], ndarray) and not args[{pos}].flags.writeable:"
                "\n        fail(dims, args)"
            )
        for pos, axis, dim, _, _ in direct:
            if axis == 0:
                lines.append(
                    f"    if isinstance(args[{pos}], ndarray) and args[{pos}].ndim and "
                    f"len(args[{pos}]) < dims[{dim}]:\n        fail(dims, args)"
                )
            else:
                lines.append(
                    f"    if isinstance(args[{pos}], ndarray) and args[{pos}].ndim > {axis} and "
                    f"args[{pos}].shape[{axis}] < dims[{dim}]:\n        fail(dims, args)"
                )
        if len(lines) == 1:
            lines = []  # nothing to check
        # Bytes of the array arguments, for telemetry: each array once, at its nbytes.  The
        # direct attribute reads are the fast path; a tuple (no nbytes) takes the careful one.
        fast = " + ".join(f"args[{p}].nbytes" for p in arrays) or "0"
        careful = " + ".join(f"getattr(args[{p}], 'nbytes', 0)" for p in arrays) or "0"
        lines.append(
            f"def nbytes(args):\n    try:\n        return {fast}\n"
            f"    except AttributeError:\n        return {careful}"
        )
        namespace: dict[str, Any] = {"ndarray": np.ndarray, "fail": self.fail}
        exec("\n".join(lines), namespace)
        self.check: Callable[..., None] | None = namespace.get("check")
        self.nbytes: Callable[[tuple[Any, ...]], int] = namespace["nbytes"]

    def fail(self, dims: tuple[int, ...], args: tuple[Any, ...]) -> None:
        for pos in self.written:
            a = args[pos]
            if isinstance(a, np.ndarray) and not a.flags.writeable:
                raise LaunchError(
                    f"kernel {self.kernel_name!r} writes argument {self.names[pos]!r}, which is "
                    f"a read-only array; pass a writeable array (e.g. {self.names[pos]}.copy())"
                )
        for pos, axis, dim, arr, idx in self.direct:
            shape = getattr(args[pos], "shape", None)
            if shape is not None and axis < len(shape) and shape[axis] < dims[dim]:
                raise LaunchError(
                    f"kernel {self.kernel_name!r}: argument {arr!r} has {shape[axis]} element(s) "
                    f"along axis {axis}, but it is indexed there by {idx!r}, which runs over "
                    f"range({dims[dim]}) (domain {dims}); the domain does not match the arrays"
                )


class Kernel(_Compiled):
    """A compiled-on-demand parallel kernel; see :func:`kernel`.

    Launch it with ``k[n](*args)`` (a 1-d domain), ``k[(n, m)](*args)`` or
    ``k[(n, m, p)](*args)``, or with :func:`launch` for explicit settings.
    """

    def __init__(self, pyfunc: Callable[..., Any], reduce: str | None = None,
                 ndim: int | None = None) -> None:
        if reduce is not None and reduce not in REDUCE_OPS:
            raise KernelDefinitionError(
                f"kernel {getattr(pyfunc, '__qualname__', pyfunc)!r}: unknown reduce={reduce!r}; "
                f"expected one of {', '.join(REDUCE_OPS)}"
            )
        if ndim is not None and ndim not in (1, 2, 3):
            raise KernelDefinitionError(f"ndim={ndim!r}: kernels take 1, 2 or 3 index parameters")
        self.params = plain_parameters(pyfunc, "kernel")
        if ndim is not None and len(self.params) < ndim:
            raise KernelDefinitionError(
                f"kernel {pyfunc.__qualname__!r} declares ndim={ndim} but has only "
                f"{len(self.params)} parameter(s)"
            )
        if not self.params:
            raise KernelDefinitionError(
                f"kernel {pyfunc.__qualname__!r} needs at least one index parameter"
            )
        super().__init__(pyfunc)
        self.reduce = reduce
        self.ndim = ndim
        self.name = pyfunc.__qualname__
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._programs: dict[tuple[int, int, tuple[bool, bool]], Any] = {}
        self._cuda_programs: dict[tuple[Any, ...], Any] = {}
        self._bound: dict[Any, BoundLaunch] = {}
        self._fast: dict[tuple[Any, ...], _Entry] = {}
        #: Whether prepared launches are kept apart by where their arrays live (host or GPU):
        #: set once a GPU is available or a device array arrives, so that a CPU-only process
        #: keeps the plain key on its launch path.
        self._by_residency = False

    # -- introspection ---------------------------------------------------------------------
    @property
    def written(self) -> list[str]:
        """Names of the parameters the kernel writes, as veda's analysis finds them."""
        facts = analyse(self.source, self.params, [], _callee_writes)
        return [p for p in self.params if p in facts.written]

    def __repr__(self) -> str:
        red = f", reduce={self.reduce!r}" if self.reduce else ""
        return f"<veda.kernel {self.name}{red}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise LaunchError(
            f"kernel {self.name!r} needs a domain: launch it as {self.py_func.__name__}[n](...) "
            f"or veda.launch({self.py_func.__name__}, n, ...)"
        )

    # -- launching -------------------------------------------------------------------------
    def __getitem__(self, domain: Any) -> BoundLaunch:
        if domain.__class__ is int:  # the common case, first
            bound = self._bound.get(domain)
            if bound is not None:
                return bound
        return self._bound_for(domain)

    def _bound_for(self, domain: Any) -> BoundLaunch:
        # Only plain ints (and tuples of them) are cached: 4.0 and True hash like 4 and 1 but
        # must be refused.
        cacheable = domain.__class__ is int or (
            domain.__class__ is tuple and all(d.__class__ is int for d in domain))
        bound = self._bound.get(domain) if cacheable else None
        if bound is None:
            bound = BoundLaunch(self, self._domain(domain))
            if cacheable and len(self._bound) < 256:
                self._bound[domain] = bound
        return bound

    def _domain(self, domain: Any) -> tuple[int, ...]:
        items = tuple(domain) if isinstance(domain, (tuple, list)) else (domain,)
        if not 1 <= len(items) <= 3:
            raise LaunchError(
                f"kernel {self.name!r}: domain must have 1, 2 or 3 dimensions, got {domain!r}"
            )
        dims = []
        for axis, n in enumerate(items):
            if isinstance(n, bool) or not isinstance(n, _INT_TYPES):
                raise LaunchError(
                    f"kernel {self.name!r}: domain axis {axis} must be a non-negative integer, "
                    f"not {n!r}"
                )
            if n < 0:
                raise LaunchError(
                    f"kernel {self.name!r}: domain axis {axis} is {n}; sizes must be >= 0"
                )
            dims.append(int(n))
        if self.ndim is not None and len(dims) != self.ndim:
            raise LaunchError(
                f"kernel {self.name!r} is declared with ndim={self.ndim}, but the domain "
                f"{tuple(dims)} has {len(dims)} dimension(s)"
            )
        return tuple(dims)

    def _plan(self, ndim: int, nargs: int) -> _Plan:
        with self._lock:
            plan = self._plans.get((ndim, nargs))
            if plan is not None:
                return plan
            expected = len(self.params) - ndim
            if nargs != expected:
                index = ", ".join(self.params[:ndim])
                rest = ", ".join(self.params[ndim:]) or "none"
                if expected < 0:
                    raise LaunchError(
                        f"kernel {self.name!r} has {len(self.params)} parameter(s), too few for a "
                        f"{ndim}-d domain"
                    )
                raise LaunchError(
                    f"kernel {self.name!r} takes {expected} argument(s) after its {ndim} index "
                    f"parameter(s) ({index}): {rest}; got {nargs}"
                )
            index_params = self.params[:ndim]
            names = self.params[ndim:]
            facts = analyse(self.source, self.params, index_params, _callee_writes)
            if self.source.tree is not None:
                if self.reduce is not None and not facts.returns_value:
                    raise KernelDefinitionError(
                        f"kernel {self.name!r} has reduce={self.reduce!r} but returns no value; "
                        "return one value per index"
                    )
                if self.reduce is None and facts.returns_value:
                    raise KernelDefinitionError(
                        f"kernel {self.name!r} returns a value but has no reduce=; use "
                        "@veda.kernel(reduce='sum') (or prod, min, max) to combine the values"
                    )
            written = [names.index(p) for p in names if p in facts.written]
            maybe_written = [names.index(p) for p in names if p in facts.maybe_written]
            direct = [
                (names.index(arr), axis, index_params.index(idx), arr, idx)
                for arr, axis, idx in facts.direct_index
                if arr in names
            ]
            arrays = ([names.index(p) for p in names if p in facts.arrays]
                      if self.source.tree is not None else list(range(nargs)))
            plan = _Plan(self.name, names, written, direct, arrays, maybe_written)
            self._plans[(ndim, nargs)] = plan
            return plan

    def program(self, ndim: int, nargs: int, options: tuple[bool, bool]) -> Any:
        """The loaded generated module for this form and options (CPU family)."""
        key = (ndim, nargs, options)
        module = self._programs.get(key)
        if module is None:
            with self._lock:
                module = self._programs.get(key)
                if module is None:
                    module = self._build(ndim, nargs, options)
                    self._programs[key] = module
        return module

    def cuda_program(self, ndim: int, nargs: int, options: tuple[bool, bool], acc: str | None,
                     identity: str | None, block: int) -> Any:
        """The loaded generated CUDA module for this form, options, accumulator and block."""
        key = (ndim, nargs, options, acc, block)
        module = self._cuda_programs.get(key)
        if module is None:
            with self._lock:
                module = self._cuda_programs.get(key)
                if module is None:
                    module = codegen.cuda_kernel_unit(
                        self.source, ndim, nargs, self.reduce, acc, identity, block, options
                    ).module
                    self._cuda_programs[key] = module
        return module

    def _build(self, ndim: int, nargs: int, options: tuple[bool, bool]) -> Any:
        names = self._plan(ndim, nargs).names
        unit = codegen.kernel_unit(self.source, ndim, nargs, self.reduce, options)
        module = unit.module
        if hasattr(module, "_veda_acc_probe"):
            install_compile_hook(module._veda_acc_probe, self, 0, names)
        for name in ("_veda_cpu", "_veda_at", "_veda_det_cpu"):
            if hasattr(module, name):
                install_compile_hook(getattr(module, name), self, ndim, names)
        for name in ("_veda_parallel", "_veda_parallel_profile", "_veda_det_parallel"):
            if hasattr(module, name):
                install_compile_hook(getattr(module, name), self, ndim + 3, names)
        return module

    def _prepare(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any,
                 cfg: Any) -> _Entry:
        """Everything a launch needs that its argument values do not change."""
        if overrides is not None:
            target, threads, schedule, chunk = overrides
            validate_launch_overrides(
                {"target": target, "threads": threads, "schedule": schedule, "chunk": chunk}
            )
        nargs = len(args)
        plan = self._plan(len(dims), nargs)
        size = 1
        for n in dims:
            size *= n
        if size == 0 and self.reduce in ("min", "max"):
            raise LaunchError(
                f"kernel {self.name!r}: reduce={self.reduce!r} over an empty domain {dims} has "
                "no identity (as with np.min / np.max of an empty array)"
            )
        entry = _Entry(cfg, plan, dims, nargs, size)
        merged = scheduler._merge(cfg, overrides)
        resident = _cuda.device_resident(args)
        # Where the arrays live decides between the GPU and the CPU targets (device arrays) and
        # what a GPU launch would copy: once that can matter, the launch key includes it.  An
        # explicit target never depends on it, and asks for no GPU (a CPU launch loads no CUDA).
        gpu = merged[0] is None and (scheduler.gpu_available() or resident)
        if (gpu or resident) and not self._by_residency:
            with self._lock:
                self._by_residency = True
                self._fast.clear()  # entries under the plain key would be found no more
        pins = scheduler.pins(cfg, overrides)
        if (pins is None and resident and merged == (None, None, None, None)
                and scheduler.gpu_available()):
            # A fixed policy: device-resident arguments still go to the GPU, the only target
            # that can read them (the rule comes before the policy).
            decision = scheduler.decide(size, cfg, ("cuda", None, None, None))
            self._bind(entry, decision, args)
            self._store(dims, args, overrides, entry)
            return entry
        tuner_entry = None
        transfer = None
        if pins is not None and size > 0 and scheduler.gpu_available():
            transfer = _gpu_transfer(plan, args)
            if _cuda.device_resident(args):
                pins = ("cuda", None)  # the CPU targets cannot read device arrays
            elif cfg.deterministic:
                # GPU reductions repeat run to run but are not the CPU targets' bits: in
                # deterministic mode the dispatcher does not switch between the two.
                transfer = None
        if pins is not None and size > 0:
            tuner_entry = scheduler.dispatcher.entry(self, len(dims), size, cfg.policy,
                                                     cfg.cache_dir, pins, transfer)
        if tuner_entry is not None and cfg.telemetry:
            entry.tuning = tuner_entry  # explores and learns from this entry's launches
            entry.version = -1  # bind at the first launch
            decision = tuner_entry.tuner.next()
        elif tuner_entry is not None and tuner_entry.tuner.choice is not None:
            decision = tuner_entry.tuner.choice  # telemetry off: keep the last decision
        else:
            decision = scheduler.decide(size, cfg, overrides)
        self._bind(entry, decision, args)
        self._store(dims, args, overrides, entry)
        return entry

    def _key(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any) -> Any:
        """The launch path's key of a prepared launch (see :meth:`_launch`)."""
        if self._by_residency:
            return (dims, len(args), overrides, _cuda.device_resident(args))
        return (dims, len(args), overrides)

    def _store(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any,
               entry: _Entry) -> None:
        if len(self._fast) >= 1024:
            self._fast.clear()
        self._fast[self._key(dims, args, overrides)] = entry

    def _bind(self, entry: _Entry, decision: targets.Decision, args: tuple[Any, ...]) -> None:
        """Point an entry at the runner (and recorder) of one decision, preparing it once."""
        got = entry.runners.get(decision)
        cfg = entry.cfg
        if got is None:
            recorder = None
            if cfg.telemetry:
                recorder = _telemetry.registry.recorder(
                    self.module_name, self.name, decision, entry.size, entry.plan.nbytes)
            runner = targets.get(decision[0]).prepare(
                self, entry.dims, entry.nargs, decision,
                (cfg.boundscheck, cfg.cache, cfg.deterministic),
                recorder if cfg.profile else None, shared=entry.tuning is not None)
            got = entry.runners[decision] = (runner, recorder)
        runner, recorder = got
        if recorder is not None:
            recorder.per_launch = int(entry.plan.nbytes(args))
        entry.runner, entry.recorder, entry.decision = runner, recorder, decision
        entry.times = None if recorder is None else recorder.times
        entry.review_at = _FOLD_AT
        if entry.times is not None and entry.tuning is not None:
            entry.review_at = len(entry.times) + scheduler.REVIEW_EVERY

    def _launch(self, dims: tuple[int, ...], args: tuple[Any, ...], overrides: Any,
                raw: bool = False) -> Any:
        # The hot path: one dictionary look-up, the per-launch checks, the compiled call, two
        # clock reads and an append for telemetry.  Everything else takes a slower path.
        if _record.active and not raw:
            return self._launch_recorded(dims, args, overrides)
        cfg = get_config()
        if self._by_residency:  # a GPU here, or device arrays seen: host and device apart
            entry = self._fast.get((dims, len(args), overrides, _cuda.device_resident(args)))
        else:
            entry = self._fast.get((dims, len(args), overrides))
        if entry is None or entry.cfg is not cfg:
            entry = self._prepare(dims, args, overrides, cfg)
        if entry.check is not None:
            entry.check(dims, args)
        tuning = entry.tuning
        if tuning is not None and tuning.tuner.version != entry.version:
            return self._adaptive_launch(entry, args)  # exploring, or the decision changed
        recorder = entry.recorder
        if recorder is None:  # telemetry=False
            return entry.runner(args)
        if _events.listeners:
            return self._timed(entry, args)
        start = perf_counter()
        try:
            result = entry.runner(args)
        except BaseException:
            recorder.error()
            raise
        elapsed = perf_counter() - start
        if _pending:  # a launch compiled: count run time only
            elapsed = max(elapsed - _telemetry.take_pending_compile(start), 0.0)
        times: list[float] = entry.times  # type: ignore[assignment]  # set with the recorder
        times.append(elapsed)
        if len(times) > entry.review_at:
            self._review(entry, args)
        return result

    def _launch_recorded(self, dims: tuple[int, ...], args: tuple[Any, ...],
                         overrides: Any) -> Any:
        """A launch inside ``veda.record`` (note the decision) or ``veda.replay`` (force it)."""
        scope = _record.current()
        if isinstance(scope, _record.replay):
            return self._launch(dims, args, scope.next(self, dims), raw=True)
        try:
            return self._launch(dims, args, overrides, raw=True)
        finally:
            entry = self._fast.get(self._key(dims, args, overrides))
            if (isinstance(scope, _record.record) and entry is not None
                    and entry.cfg is get_config()):
                scope.add(self, dims, entry.decision)

    def _timed(self, entry: _Entry, args: tuple[Any, ...]) -> Any:
        """One timed launch, with listener events; returns the result (time in entry.last)."""
        recorder = entry.recorder
        target, threads, schedule, chunk = entry.decision
        listening = bool(_events.listeners)
        tid = threading.get_ident()
        if listening:
            _events.emit("on_launch_start", _events.LaunchEvent(
                self.name, entry.dims, target, threads, schedule, chunk, tid, perf_counter()))
        start = perf_counter()
        try:
            result = entry.runner(args)
        except BaseException as exc:
            end = perf_counter()
            if recorder is not None:
                recorder.error()
            if listening:
                _events.emit("on_launch_end", _events.LaunchEvent(
                    self.name, entry.dims, target, threads, schedule, chunk, tid, start, end,
                    f"{type(exc).__name__}: {exc}"))
            raise
        end = perf_counter()
        elapsed = end - start
        if _pending:
            elapsed = max(elapsed - _telemetry.take_pending_compile(start), 0.0)
        entry.last = elapsed
        if recorder is not None:
            recorder.times.append(elapsed)
            if len(recorder.times) > entry.review_at:
                self._review(entry, args)
        if listening:
            _events.emit("on_launch_end", _events.LaunchEvent(
                self.name, entry.dims, target, threads, schedule, chunk, tid, start, end))
        return result

    def _adaptive_launch(self, entry: _Entry, args: tuple[Any, ...]) -> Any:
        """A launch while the dispatcher explores, or right after it changed its decision."""
        tuning = entry.tuning
        assert tuning is not None
        if tuning.tuner.choice is None:
            with entry.lock:  # one exploring launch of this entry at a time: bind, run, credit
                return self._explore(entry, tuning, args)
        return self._explore(entry, tuning, args)

    def _explore(self, entry: _Entry, tuning: Any, args: tuple[Any, ...]) -> Any:
        tuner = tuning.tuner
        if tuner.choice is not None:  # decided (here or in another entry): bind and run
            self._bind(entry, tuner.choice, args)
            entry.version = tuner.version
            return self._timed(entry, args)
        decision = tuner.next()
        self._bind(entry, decision, args)
        result = self._timed(entry, args)
        imbalance = math.nan
        series = entry.recorder.series if entry.recorder is not None else None
        if entry.cfg.profile and series is not None and series.profiled:
            imbalance = series.imbalance_sum / series.profiled
        scheduler.dispatcher.observe(tuning, decision, entry.last, entry.size,
                                     entry.cfg.cache_dir, imbalance)
        return result

    def _review(self, entry: _Entry, args: tuple[Any, ...]) -> None:
        """Every few launches: the dispatcher's drift and load checks; folding telemetry."""
        times = entry.times
        assert times is not None and entry.recorder is not None
        step = _FOLD_AT
        if entry.tuning is not None and entry.tuning.tuner.choice is not None:
            recent = times[-scheduler.REVIEW_EVERY:]
            scheduler.dispatcher.review(entry.tuning, recent, entry.size)
            # Review every REVIEW_EVERY launches, but not more often than every ~10 ms of
            # launches: short kernels would otherwise pay for reviews on the launch path.
            typical = sorted(recent)[len(recent) // 2] if recent else 0.0
            step = min(_FOLD_AT, max(scheduler.REVIEW_EVERY, int(0.01 / max(typical, 1e-7))))
        if len(times) > _FOLD_AT:
            entry.recorder.fold(args, entry.plan.nbytes)
        entry.review_at = len(times) + step


def _gpu_transfer(plan: _Plan, args: tuple[Any, ...]) -> tuple[int, int]:
    """Host bytes a GPU launch with ``args`` copies to the device and back."""
    host = [a.nbytes if isinstance(a, np.ndarray) else 0 for a in args]
    return sum(host), sum(host[p] for p in plan.maybe_written)


class _Entry:
    """A prepared launch: one kernel form, domain, argument count and settings object."""

    __slots__ = ("cfg", "check", "decision", "dims", "last", "lock", "nargs", "plan",
                 "recorder", "review_at", "runner", "runners", "size", "times", "tuning",
                 "version")

    def __init__(self, cfg: Any, plan: _Plan, dims: tuple[int, ...], nargs: int,
                 size: int) -> None:
        self.cfg = cfg
        self.plan = plan
        self.check = plan.check
        self.dims = dims
        self.nargs = nargs
        self.size = size
        self.runners: dict[targets.Decision, tuple[Any, Any]] = {}
        self.lock = threading.Lock()
        self.tuning: Any = None
        self.version = 0
        self.last = 0.0
        self.review_at = _FOLD_AT
        self.runner: Any = None
        self.recorder: Any = None
        self.times: list[float] | None = None
        self.decision: targets.Decision = ("cpu", 1, "static", 1)


class BoundLaunch:
    """A kernel with its domain, ready to be called with the kernel's arguments."""

    __slots__ = ("dims", "kernel")

    def __init__(self, kernel: Kernel, dims: tuple[int, ...]) -> None:
        self.kernel = kernel
        self.dims = dims

    def __call__(self, *args: Any) -> Any:
        return self.kernel._launch(self.dims, args, None)

    def __repr__(self) -> str:
        return f"<veda launch {self.kernel.name}[{', '.join(map(str, self.dims))}]>"


@overload
def kernel(pyfunc: Callable[..., Any], /) -> Kernel: ...
@overload
def kernel(
    *, reduce: str | None = None, ndim: int | None = None
) -> Callable[[Callable[..., Any]], Kernel]: ...


def kernel(
    pyfunc: Callable[..., Any] | None = None,
    /,
    *,
    reduce: str | None = None,
    ndim: int | None = None,
) -> Kernel | Callable[[Callable[..., Any]], Kernel]:
    """Turn a loop body into a parallel kernel.

    The function's first D parameters receive the launch indices of a D-dimensional domain
    (D = 1, 2 or 3); the rest receive the launch's arguments: NumPy arrays of numbers or
    booleans, or scalars.  The body may use whatever Numba compiles (``math``, the NumPy functions
    Numba supports, complex numbers, tuples), module-level constants, ``@veda.func`` helpers,
    :func:`veda.atomic_add` and friends, and :func:`veda.local_array`.

    Parameters
    ----------
    reduce : {"sum", "prod", "min", "max"}, optional
        Make a reduction: the body returns one value per index and the launch returns their
        combination as a NumPy scalar, with the dtype NumPy's reduction would give.
    ndim : {1, 2, 3}, optional
        Declare the number of index parameters; launches over another rank are refused.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def saxpy(i, a, x, y, out):
    ...     out[i] = a * x[i] + y[i]
    >>> x = np.arange(4.0); y = np.ones(4); out = np.empty(4)
    >>> saxpy[4](2.0, x, y, out)
    >>> out
    array([1., 3., 5., 7.])
    >>> @veda.kernel(reduce="sum")
    ... def dot(i, x, y):
    ...     return x[i] * y[i]
    >>> dot[4](x, y)
    np.float64(6.0)
    """

    def wrap(f: Callable[..., Any]) -> Kernel:
        return Kernel(f, reduce=reduce, ndim=ndim)

    if pyfunc is not None:
        return wrap(pyfunc)
    return wrap


def launch(
    k: Kernel,
    domain: Any,
    *args: Any,
    target: str | None = None,
    threads: int | None = None,
    schedule: str | None = None,
    chunk: int | None = None,
) -> Any:
    """Launch ``k`` over ``domain`` with explicit settings (``None``: veda decides).

    ``threads``, ``schedule`` or ``chunk`` without ``target`` imply ``target="parallel"``;
    together with ``target="cpu"`` they are a contradiction and are refused.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def fill(i, out, v):
    ...     out[i] = v
    >>> out = np.zeros(10)
    >>> veda.launch(fill, 10, out, 3.0, target="parallel", threads=1, schedule="dynamic",
    ...             chunk=4)
    >>> out.sum()
    np.float64(30.0)
    """
    if not isinstance(k, Kernel):
        raise LaunchError(f"veda.launch: the first argument must be a @veda.kernel, not {k!r}")
    overrides = None
    if target is not None or threads is not None or schedule is not None or chunk is not None:
        overrides = (target, threads, schedule, chunk)  # validated once, in Kernel._prepare
    bound = k._bound.get(domain) if domain.__class__ is int else None
    dims = bound.dims if bound is not None else k[domain].dims
    return k._launch(dims, args, overrides)

