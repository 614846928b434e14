"""A kernel's definition: its parameters, its forms, and the generated code of each form.

A *form* is one (domain rank, argument count) shape of a kernel's launches.  Everything that can
be worked out once per form (which arguments it writes, which it indexes by which launch index,
the per-launch checks, the generated modules) is worked out once and kept in a :class:`Form`,
which is also all a target sees of the kernel (:class:`veda._types.KernelForm`).  Launching is
the launch core's business (:mod:`veda._launch`), not this module's.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np

from veda._hardware.signals import held_interrupts
from veda._kernel import background, codegen
from veda._kernel.base import REDUCE_OPS, Launchable
from veda._kernel.checks import install_compile_hook, refuse_device_arguments
from veda._kernel.codegen import fastmath_label
from veda._kernel.func import callee_writes
from veda._kernel.source import analyse, plain_parameters
from veda.errors import KernelDefinitionError, LaunchError

__all__ = ["Form", "KernelDefinition"]

_INT_TYPES = (int, np.integer)
#: Domain sizes (each extent and their product) must be below this: the launchers count flat
#: indices in int64.
_INDEX_LIMIT = 2**63

#: The CPU launchers of a generated module and how many of their leading parameters are veda's
#: own beyond the domain (the parallel ones take the thread count, the schedule and the chunk).
LAUNCHERS = {
    "_veda_cpu": 0,
    "_veda_span": 2,  # the first tier of "cpu": the outermost indices [lo, hi)
    "_veda_det_cpu": 0,
    "_veda_parallel": 4,  # threads, schedule code, chunk, guided bounds
    "_veda_parallel_profile": 4,
    "_veda_det_parallel": 4,
}


class Form:
    """One (domain rank, argument count) form of a kernel: what its launches check, and the
    code built for it.

    ``check(dims, args)`` is generated source with the positions written in, because it runs at
    every launch: about 0.1 us per check instead of a loop over a table.  A failed check calls
    :meth:`fail`, which says in words what is wrong.
    """

    __slots__ = (
        "arrays",
        "check",
        "definition",
        "direct",
        "label",
        "maybe_written",
        "name",
        "names",
        "nargs",
        "nbytes",
        "ndim",
        "private",
        "reduce",
        "written",
    )

    def __init__(
        self,
        definition: KernelDefinition,
        ndim: int,
        names: list[str],
        written: list[int],
        direct: list[tuple[int, int, int, str, str]],
        arrays: list[int],
        maybe_written: list[int] | None = None,
        private: tuple[tuple[int, str], ...] = (),
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.label = f"{definition.module_name}.{definition.name}"
        self.reduce = definition.reduce
        self.ndim = ndim
        self.nargs = len(names)
        self.names = names
        self.written = written
        #: Positions the kernel may write (a superset of ``written``): all but the arguments the
        #: analysis proves are only read.  The GPU target copies these back to the host.
        self.maybe_written = list(range(len(names))) if maybe_written is None else maybe_written
        self.direct = direct
        self.arrays = arrays
        #: (position, op) of the arguments reduced into private copies (``reduce={name: op}``).
        self.private = private
        lines = ["def check(dims, args):"]
        for pos, op in private:
            kinds = "iuf" if op in ("min", "max") else "iufc"
            lines.append(
                f"    if not isinstance(args[{pos}], ndarray) or args[{pos}].dtype.kind not in "
                f"{kinds!r} or not args[{pos}].ndim:\n        fail(dims, args)"
            )
            # Only the arguments the analysis finds used as arrays: each pair costs about 0.5 us.
            others = tuple(q for q in arrays if q != pos)
            if others:
                lines.append(f"    if shares(args, {pos}, {others}):\n        fail(dims, args)")
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
        namespace: dict[str, Any] = {"ndarray": np.ndarray, "fail": self.fail, "shares": _shares}
        if lines:
            exec("\n".join(lines), namespace)
        self.check: Callable[..., None] | None = namespace.get("check")
        # In a namespace of its own: telemetry's recorders keep this function, and must not
        # keep the form (and through it the kernel) alive once the kernel is deleted.
        counted: dict[str, Any] = {}
        exec(
            f"def nbytes(args):\n    try:\n        return {fast}\n"
            f"    except AttributeError:\n        return {careful}",
            counted,
        )
        self.nbytes: Callable[[tuple[Any, ...]], int] = counted["nbytes"]

    def fail(self, dims: tuple[int, ...], args: tuple[Any, ...]) -> None:
        for pos, op in self.private:
            a = args[pos]
            ordered = op in ("min", "max")
            kinds = "integers or floats" if ordered else "numbers"
            if (
                not isinstance(a, np.ndarray)
                or a.dtype.kind not in ("iuf" if ordered else "iufc")
                or not a.ndim
            ):
                what = (
                    f"a {a.ndim}-d {a.dtype} array"
                    if isinstance(a, np.ndarray)
                    else type(a).__name__
                )
                raise LaunchError(
                    f"kernel {self.name!r} reduces argument {self.names[pos]!r} with {op!r} "
                    f"(reduce={{{self.names[pos]!r}: {op!r}}}), so it must be a NumPy array of "
                    f"{kinds} with at least one axis, not {what}"
                )
        for pos, _ in self.private:
            for q in range(len(self.names)):
                if q != pos and _shares(args, pos, (q,)):
                    raise LaunchError(
                        f"kernel {self.name!r} reduces argument {self.names[pos]!r} into "
                        f"private copies, and argument {self.names[q]!r} shares its memory: "
                        "the body would see the array's updates on 'cpu' and an untouched "
                        f"array on 'parallel'; pass a copy ({self.names[q]}.copy())"
                    )
        for pos in self.written:
            a = args[pos]
            if isinstance(a, np.ndarray) and not a.flags.writeable:
                raise LaunchError(
                    f"kernel {self.name!r} writes argument {self.names[pos]!r}, which is "
                    f"a read-only array; pass a writeable array (e.g. {self.names[pos]}.copy())"
                )
        for pos, axis, dim, arr, idx in self.direct:
            shape = getattr(args[pos], "shape", None)
            if shape is not None and axis < len(shape) and shape[axis] < dims[dim]:
                raise LaunchError(
                    f"kernel {self.name!r}: argument {arr!r} has {shape[axis]} element(s) "
                    f"along axis {axis}, but it is indexed there by {idx!r}, which runs over "
                    f"range({dims[dim]}) (domain {dims}); the domain does not match the arrays"
                )

    # -- what targets use ---------------------------------------------------------------------
    def program(self, options: tuple[bool, bool]) -> Any:
        """The loaded generated module of the CPU family for (boundscheck, cache)."""
        return self.definition.program(self.ndim, self.nargs, options)

    def cuda_program(
        self, options: tuple[bool, bool], acc: str | None, identity: str | None, block: int
    ) -> Any:
        """The loaded generated CUDA module for these options, accumulator and block size."""
        return self.definition.cuda_program(self.ndim, self.nargs, options, acc, identity, block)

    def refuse_device_arguments(self, args: Sequence[Any], target: str) -> None:
        """Raise veda's error when an argument is a GPU array on a CPU target (called after a
        CPU launch failed, so it costs nothing on the launch path)."""
        refuse_device_arguments(self.name, self.names, args, target)

    def __repr__(self) -> str:
        return f"<veda form {self.label} {self.ndim}-d, {self.nargs} argument(s)>"


#: Numba's fast-math flags (LLVM's), each allowing one kind of rewrite; ``True`` is all of them.
FASTMATH_FLAGS = ("nnan", "ninf", "nsz", "arcp", "contract", "afn", "reassoc")


def fastmath_flags(pyfunc: Callable[..., Any], value: Any) -> frozenset[str]:
    """``fastmath=`` checked: a bool, or a set of :data:`FASTMATH_FLAGS` names (``"fast"``: all
    of them).  An empty result means off."""
    if value is None or value is False:
        return frozenset()
    if value is True:
        return frozenset({"fast"})
    what = f"kernel {getattr(pyfunc, '__qualname__', pyfunc)!r}"
    expected = f"True, False or a set of flags from {', '.join(FASTMATH_FLAGS)}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (set, frozenset, list, tuple)):
        hint = f" (write fastmath={{{value!r}}})" if isinstance(value, str) else ""
        raise KernelDefinitionError(f"{what}: fastmath={value!r}; expected {expected}{hint}")
    unknown = [f for f in value if not isinstance(f, str) or f not in (*FASTMATH_FLAGS, "fast")]
    if unknown:
        raise KernelDefinitionError(
            f"{what}: unknown fastmath flag(s) {', '.join(map(repr, unknown))}; expected {expected}"
        )
    # Plain str of the same characters (a NumPy string, a subclass with its own repr): the
    # flags are written into generated source with repr.
    flags = frozenset("".join(f) for f in value)
    return frozenset({"fast"}) if "fast" in flags or flags >= set(FASTMATH_FLAGS) else flags


def _private_reductions(pyfunc: Callable[..., Any], reduce: Mapping[Any, Any]) -> dict[str, str]:
    """``reduce={name: op}`` checked against the function's parameters."""
    what = f"kernel {getattr(pyfunc, '__qualname__', pyfunc)!r}"
    params = plain_parameters(pyfunc, "kernel")
    if not reduce:
        raise KernelDefinitionError(f"{what}: reduce={{}} names no array to reduce")
    out = {}
    for name, op in reduce.items():
        if not isinstance(name, str) or name not in params:
            raise KernelDefinitionError(
                f"{what}: reduce={{{name!r}: ...}} is not one of its parameters "
                f"({', '.join(params)})"
            )
        if op not in REDUCE_OPS:
            raise KernelDefinitionError(
                f"{what}: unknown reduce={{{name!r}: {op!r}}}; expected one of "
                f"{', '.join(REDUCE_OPS)}"
            )
        out[name] = op
    return out


def _shares(args: tuple[Any, ...], pos: int, others: tuple[int, ...]) -> bool:
    """Whether the array at ``pos`` may share memory with an array among ``others``."""
    a = args[pos]
    return any(isinstance(args[q], np.ndarray) and np.may_share_memory(a, args[q]) for q in others)


def _is_element(node: ast.AST, name: str) -> bool:
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == name
    )


def _same_element(a: ast.AST, b: ast.AST) -> bool:
    return _is_element(b, a.value.id) and ast.dump(a.slice) == ast.dump(b.slice)  # type: ignore[attr-defined]


def _private_misuse(tree: ast.FunctionDef, name: str, op: str) -> str | None:
    """What the body does with a reduced array that its private copies cannot give, or None.

    A worker's copy starts at the op's identity and holds only that worker's updates: a sum or
    product must be built by ``+=`` / ``*=`` (or ``a[k] = a[k] + v``) and never read, and
    every reduced array must be updated somewhere (or handed to a helper that may)."""
    binop = {"sum": ast.Add, "prod": ast.Mult}.get(op)
    sign = {"sum": "+=", "prod": "*="}.get(op)
    updated = False
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AugAssign) and _is_element(node.target, name):
            if binop is None or not isinstance(node.op, binop):
                how = f"with {sign}" if sign else f"as {name}[k] = {op}({name}[k], v)"
                return f"updates {name}[...] with an augmented assignment; update it {how}"
            updated = True
            allowed.add(id(node.target))
        elif isinstance(node, ast.Assign) and any(_is_element(t, name) for t in node.targets):
            updated = True
            if binop is None:  # min / max: compared with and set as the body likes
                continue
            target = next(t for t in node.targets if _is_element(t, name))
            value = node.value
            same = (
                isinstance(value, ast.BinOp)
                and isinstance(value.op, binop)
                and next((x for x in (value.left, value.right) if _same_element(target, x)), None)
            )
            if not same:
                return (
                    f"assigns {name}[...]; a {op} may only be built with {sign} (each worker's "
                    "copy holds its own updates, added up at the end)"
                )
            allowed.update((id(target), id(same)))
        elif isinstance(node, ast.Call) and any(
            isinstance(a, ast.Name) and a.id == name
            for a in (*node.args, *(k.value for k in node.keywords))
        ):
            updated = True  # a helper or veda.atomic_add may update it (len(c) counts too)
    if binop is not None:
        for node in ast.walk(tree):
            if _is_element(node, name) and id(node) not in allowed:
                return (
                    f"reads {name}[...]; a worker's copy holds its own updates only, so a "
                    f"reduced {op} must not be read in the body"
                )
    if not updated:
        return f"never updates {name}"
    return None


class KernelDefinition(Launchable):
    """A kernel's definition: see :func:`veda.kernel`."""

    def __init__(
        self,
        pyfunc: Callable[..., Any],
        reduce: str | Mapping[str, str] | None = None,
        ndim: int | None = None,
        fastmath: bool | AbstractSet[str] | Sequence[str] = False,
    ) -> None:
        #: The kernel's fast-math flags (empty: off; ``{"fast"}``: all of them).
        self.fastmath = fastmath_flags(pyfunc, fastmath)
        private: dict[str, str] = {}
        if isinstance(reduce, Mapping):
            private = _private_reductions(pyfunc, reduce)
            reduce = None
        if reduce is not None and reduce not in REDUCE_OPS:
            raise KernelDefinitionError(
                f"kernel {getattr(pyfunc, '__qualname__', pyfunc)!r}: unknown reduce={reduce!r}; "
                f"expected one of {', '.join(REDUCE_OPS)}"
            )
        if ndim is not None and (
            isinstance(ndim, bool) or ndim not in (1, 2, 3) or not isinstance(ndim, _INT_TYPES)
        ):
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
        tree = self.source.tree
        for name, op in private.items():
            misuse = None if tree is None else _private_misuse(tree, name, op)
            if misuse:
                raise KernelDefinitionError(
                    f"kernel {pyfunc.__qualname__!r} has reduce={{{name!r}: {op!r}}} but {misuse}"
                )
        self.reduce = reduce
        #: Array parameters reduced into per-worker copies: name -> op (``reduce={name: op}``).
        self.private = private
        self.ndim = ndim
        self.name = pyfunc.__qualname__
        self._forms: dict[tuple[int, int], Form] = {}
        self._programs: dict[tuple[int, int, tuple[bool, bool]], Any] = {}
        self._cuda_programs: dict[tuple[Any, ...], Any] = {}

    # -- introspection ---------------------------------------------------------------------
    @property
    def written(self) -> list[str]:
        """Names of the parameters the kernel writes, as veda's analysis finds them."""
        facts = analyse(self.source, self.params, [], callee_writes)
        return [p for p in self.params if p in facts.written]

    def __repr__(self) -> str:
        red = f", reduce={self.reduce or self.private!r}" if self.reduce or self.private else ""
        fast = f", fastmath={fastmath_label(self.fastmath)}" if self.fastmath else ""
        return f"<veda.kernel {self.name}{red}{fast}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise LaunchError(
            f"kernel {self.name!r} needs a domain: launch it as {self.py_func.__name__}[n](...) "
            f"or veda.launch({self.py_func.__name__}, n, ...)"
        )

    # -- forms ---------------------------------------------------------------------------------
    def domain(self, domain: Any) -> tuple[int, ...]:
        """The domain as a tuple of sizes; raises :class:`veda.LaunchError` naming the axis."""
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
            if n >= _INDEX_LIMIT:
                raise LaunchError(
                    f"kernel {self.name!r}: domain axis {axis} is {n}; sizes must be below "
                    "2**63 (indices are 64-bit integers)"
                )
            dims.append(int(n))
        if math.prod(dims) >= _INDEX_LIMIT:
            raise LaunchError(
                f"kernel {self.name!r}: domain {tuple(dims)} has {math.prod(dims)} elements; "
                "a domain must have fewer than 2**63 (indices are 64-bit integers)"
            )
        if self.ndim is not None and len(dims) != self.ndim:
            raise LaunchError(
                f"kernel {self.name!r} is declared with ndim={self.ndim}, but the domain "
                f"{tuple(dims)} has {len(dims)} dimension(s)"
            )
        return tuple(dims)

    def form(self, ndim: int, nargs: int) -> Form:
        """The form of launches over an ``ndim``-d domain with ``nargs`` arguments."""
        form = self._forms.get((ndim, nargs))
        if form is not None:
            return form
        with self._lock:
            form = self._forms.get((ndim, nargs))
            if form is not None:
                return form
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
            facts = analyse(self.source, self.params, index_params, callee_writes)
            if self.source.tree is not None:
                if self.reduce is not None and not facts.returns_value:
                    raise KernelDefinitionError(
                        f"kernel {self.name!r} has reduce={self.reduce!r} but returns no value; "
                        "return one value per index"
                    )
                lam = self.py_func.__name__ == "<lambda>"  # its value is its body: ignored
                if self.private and facts.returns_value and not lam:
                    raise KernelDefinitionError(
                        f"kernel {self.name!r} returns a value, but its reduce={{...}} reduces "
                        "arrays, whose kernels return nothing; drop the return (or make the "
                        "values a reduce='sum' kernel of their own)"
                    )
                if self.reduce is None and facts.returns_value and not lam:
                    raise KernelDefinitionError(
                        f"kernel {self.name!r} returns a value but has no reduce=; use "
                        "@veda.kernel(reduce='sum') (or prod, min, max) to combine the values"
                    )
            for p in self.private:
                if p not in names:
                    raise KernelDefinitionError(
                        f"kernel {self.name!r}: reduce={{{p!r}: ...}} names an index parameter "
                        f"of a {ndim}-d launch ({', '.join(index_params)}); name an array "
                        "argument"
                    )
            private = tuple((names.index(p), op) for p, op in self.private.items())
            written = [names.index(p) for p in names if p in facts.written]
            maybe_written = [names.index(p) for p in names if p in facts.maybe_written]
            direct = [
                (names.index(arr), axis, index_params.index(idx), arr, idx)
                for arr, axis, idx in facts.direct_index
                if arr in names
            ]
            arrays = (
                [names.index(p) for p in names if p in facts.arrays]
                if self.source.tree is not None
                else list(range(nargs))
            )
            form = Form(self, ndim, names, written, direct, arrays, maybe_written, private)
            self._forms[(ndim, nargs)] = form
            return form

    # -- generated code ------------------------------------------------------------------------
    def program(self, ndim: int, nargs: int, options: tuple[bool, bool]) -> Any:
        """The loaded generated module for this form and options (CPU family)."""
        key = (ndim, nargs, options)
        module = self._programs.get(key)
        if module is None:
            # (a fork in another thread waits for the build: background.compiling)
            with held_interrupts(), background.compiling(), self._lock:
                module = self._programs.get(key)
                if module is None:
                    module = self._build(ndim, nargs, options)
                    self._programs[key] = module
        return module

    def cuda_program(
        self,
        ndim: int,
        nargs: int,
        options: tuple[bool, bool],
        acc: str | None,
        identity: str | None,
        block: int,
    ) -> Any:
        """The loaded generated CUDA module for this form, options, accumulator and block.

        Registers the kernel language's CUDA implementations first: the module's code calls
        them (atomics, ``veda.random``), and a body typed before they exist finds the CPU
        ones, or none."""
        from veda._kernel import cuda_language

        cuda_language.register()
        key = (ndim, nargs, options, acc, block)
        module = self._cuda_programs.get(key)
        if module is None:
            with held_interrupts(), background.compiling(), self._lock:
                module = self._cuda_programs.get(key)
                if module is None:
                    module = codegen.cuda_kernel_unit(
                        self.source,
                        ndim,
                        nargs,
                        self.reduce,
                        acc,
                        identity,
                        block,
                        options,
                        bool(self.fastmath),
                    ).module
                    self._cuda_programs[key] = module
        return module

    def _build(self, ndim: int, nargs: int, options: tuple[bool, bool]) -> Any:
        names = self.form(ndim, nargs).names
        private = self.form(ndim, nargs).private
        module = codegen.kernel_unit(
            self.source, ndim, nargs, self.reduce, options, private, self.fastmath
        ).module
        if hasattr(module, "_veda_acc_probe"):  # typed inside a CUDA reduction's first launch
            install_compile_hook(module, "_veda_acc_probe", self, 0, names, launcher=True)
        if hasattr(module, "_veda_at"):
            install_compile_hook(module, "_veda_at", self, ndim, names)
        for attr, extra in LAUNCHERS.items():
            if hasattr(module, attr):
                install_compile_hook(module, attr, self, ndim + extra, names, launcher=True)
        return module
