"""Parallel iterators: ``veda.par_range`` and ``veda.par_iter``, fused into one compiled loop.

A chain such as ``veda.par_iter(x).map(f).filter(p).sum()`` is lazy: each adaptor returns a new
iterator that only remembers its stage.  The terminal (``sum``) generates the source of one
``@veda.kernel`` for the whole chain and launches it through the dispatcher like any kernel, so
it is cached on disk, chooses its target, threads, schedule and chunk from telemetry, and shows
in ``veda.metrics()`` and ``veda.explain()``.

The kernel's domain is a number of fixed *blocks* of consecutive elements: launch index ``b``
runs the whole chain over block ``b`` in one loop (no temporary arrays) and writes one partial
result; the partials are combined in block order.  The block size depends on the length of the
sequence only (:func:`block_size`), never on the thread count, schedule or chunk, so every
reduction gives the same bits on every CPU target and configuration, in deterministic mode or
not.  ``collect`` counts each block's survivors, takes an exclusive prefix sum of the counts and
writes each block's values from its offset: order kept, an exact-size result.

Values flow through the stages as *components*: one for a plain sequence, several after
``zip`` or ``enumerate`` (or a ``map`` that returns a tuple), and a function of a later stage
receives the components as separate arguments.  Each stage's function is compiled (as a
:func:`veda.func` helper) for the types that reach it before the kernel is generated, so a
stage that cannot be compiled is named in the error, and the partial results get their types.
"""

from __future__ import annotations

import hashlib
import linecache
import re
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba.core import types as nt
from numba.core.types.containers import BaseTuple
from numba.np.numpy_support import as_dtype

from veda._config import get_config
from veda._dtypes import sum_dtype as _sum_dtype
from veda._kernel import cache as _cache
from veda._kernel import codegen
from veda._kernel.checks import is_masked
from veda._kernel.func import Func
from veda._kernel.source import literal
from veda._launch import Kernel
from veda.errors import KernelDefinitionError, KernelError, LaunchError

__all__ = ["ParIter", "block_size", "par_iter", "par_range"]

#: Largest block (elements per launch index).  Blocks grow with the sequence up to this size, so
#: that a sequence of a million elements still makes about a thousand launch indices.  Smaller
#: blocks cost a parallel loop time: a prange over blocks of 2048 elements ran a map -> filter
#: -> sum of 1e7 float64 about 10% slower than a prange over the elements, over blocks of 8192
#: and more at the same speed (2-core machine).
BLOCK_MAX = 16384
#: Launch indices a sequence is cut into, at least, while blocks are below BLOCK_MAX.
BLOCKS = 1024

#: Blocks in the first window ``any`` and ``all`` launch (each next window twice the last).
ANY_WINDOW = 1024

#: Elements a sum or product takes at a time, each into an accumulator of its own: one chain of
#: additions waits four cycles for each; with four, a map -> filter -> sum keeps level with a
#: prange loop (whose own reduction keeps one accumulator per thread).
UNROLL = 4
assert UNROLL & (UNROLL - 1) == 0, "the accumulators combine in a pairwise tree"

_INT_TYPES = (int, np.integer)


def block_size(n: int) -> int:
    """Elements per block for a sequence of ``n`` elements: the smallest power of two that cuts
    it into at most :data:`BLOCKS` blocks, capped at :data:`BLOCK_MAX`.  It depends on ``n``
    only, which is what makes every reduction's bits independent of how the blocks are run."""
    b = 1
    while b < BLOCK_MAX and b * BLOCKS < n:
        b *= 2
    return b


# -- sources and stages ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where a sequence's elements come from: a range, an array's elements or rows, or
    consecutive chunks of an array."""

    kind: str  # "range" | "array" | "chunks"
    length: int
    data: Any = None  # the array, or (start, step) of a range
    size: int = 0  # elements per chunk

    def key(self) -> tuple[Any, ...]:
        if self.kind == "range":
            return ("range",)
        x = self.data
        layout = "C" if x.flags.c_contiguous else "F" if x.flags.f_contiguous else "A"
        return (self.kind, x.dtype.str, x.ndim, layout, x.flags.writeable)

    def args(self) -> tuple[Any, ...]:
        if self.kind == "range":
            start, step = self.data
            return (np.int64(start), np.int64(step))
        if self.kind == "chunks":
            return (self.data, np.int64(self.size))
        return (self.data,)

    def numba_type(self) -> Any:
        """The Numba type of one element."""
        if self.kind == "range":
            return nt.int64
        ty = numba.typeof(self.data)
        if self.kind == "chunks":  # a slice of the array, as Numba types one
            return ty.copy(layout="C" if ty.layout == "C" else "A")
        if ty.ndim == 1:
            return ty.dtype
        return ty.copy(ndim=ty.ndim - 1, layout="C" if ty.layout == "C" else "A")

    def describe(self, sizes: bool = True) -> str:
        """What it is, as written; without ``sizes`` (in kernel names) lengths and bounds
        are left out, so that one kernel serves every length."""
        if self.kind == "range":
            if not sizes:
                return "par_range"
            start, step = self.data
            return f"par_range({start}, {start + step * self.length}, {step})"
        shape = list(self.data.shape) if sizes else ["n", "m"][: self.data.ndim]
        what = f"{self.data.dtype}[{', '.join(map(str, shape))}]"
        chunks = f".chunks({self.size if sizes else 'c'})" if self.kind == "chunks" else ""
        return f"par_iter({what}){chunks}"


@dataclass(frozen=True)
class _Stage:
    kind: str  # "map" | "filter" | "map_with_index" | "enumerate" | "zip"
    fn: Any = None  # a Func or a Numba dispatcher
    source: _Source | None = None  # what "zip" adds


def _length(x: Any, what: str) -> int:
    if not isinstance(x, np.ndarray) or x.ndim not in (1, 2):
        got = f"a {x.ndim}-d array" if isinstance(x, np.ndarray) else type(x).__name__
        raise LaunchError(f"{what}: expected a 1-d or 2-d NumPy array, not {got}")
    if is_masked(x):
        raise LaunchError(
            f"{what}: masked arrays are not supported (the mask would be ignored); pass "
            "x.compressed() or x.filled(value)"
        )
    numbers = x.dtype.kind in "biu" or (x.dtype.kind, x.dtype.itemsize) in (
        ("f", 4),
        ("f", 8),
        ("c", 8),
        ("c", 16),
    )
    if not numbers:
        raise LaunchError(
            f"{what}: expected an array of booleans, integers, float32/64 or complex64/128, "
            f"not {x.dtype}"
        )
    if not x.dtype.isnative:
        raise LaunchError(
            f"{what}: expected an array in this machine's byte order, not {x.dtype.str}; "
            "convert it with x.astype(x.dtype.newbyteorder('='))"
        )
    return int(x.shape[0])


def par_range(start: int, stop: int | None = None, step: int = 1) -> ParIter:
    """A parallel iterator over ``range(start, stop, step)``; ``par_range(n)`` counts from 0.

    Examples
    --------
    >>> import veda
    >>> veda.par_range(10).map(lambda i: i * i).sum()
    np.int64(285)
    >>> veda.par_range(1, 10, 3).collect()
    array([1, 4, 7])
    """
    if stop is None:
        if step != 1:
            raise LaunchError("veda.par_range: a step needs a stop: par_range(start, stop, step)")
        start, stop = 0, start
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if not isinstance(v, _INT_TYPES) or isinstance(v, (bool, np.bool_)):
            raise LaunchError(f"veda.par_range: {name} must be an integer, not {v!r}")
    start, stop, step = int(start), int(stop), int(step)
    if step == 0:
        raise LaunchError("veda.par_range: step must not be zero")
    n = max(0, (stop - start + step - (1 if step > 0 else -1)) // step)
    last = start + step * (n - 1) if n else start
    if not all(-(2**63) <= v < 2**63 for v in (start, last, step, n)):
        raise LaunchError(
            f"veda.par_range({start}, {stop}, {step}): its values and length must fit in "
            "64-bit integers"
        )
    return ParIter((_Source("range", n, (start, step)),), ())


def par_iter(x: np.ndarray) -> ParIter:
    """A parallel iterator over the elements of a 1-d array, or the rows of a 2-d array.

    Examples
    --------
    >>> import numpy as np, veda
    >>> x = np.arange(6.0)
    >>> veda.par_iter(x).map(lambda v: v * v).filter(lambda v: v > 4.0).sum()
    np.float64(50.0)
    >>> veda.par_iter(x.reshape(3, 2)).map(lambda row: row[0] + row[1]).collect()
    array([1., 5., 9.])
    """
    n = _length(x, "veda.par_iter: x")
    return ParIter((_Source("array", n, x),), ())


# -- helpers: the stages' functions ------------------------------------------------------------

_funcs_lock = threading.Lock()
#: Helpers made for plain functions, by code and by what it reads from outside: a lambda
#: written inside a loop is a new function object each time round but the same helper, as long
#: as the globals and closure variables it uses spell the same (literal() text, or identity).
_funcs: OrderedDict[Any, Func] = OrderedDict()
_FUNCS_KEPT = 512


def _outside_key(fn: types.FunctionType, where: str) -> tuple[Any, ...]:
    """What a function reads from outside, as the generated module will spell it; arrays are
    refused (Numba would freeze each into the compiled code as a constant)."""
    out: list[Any] = []
    for name, value in codegen.references(fn).items():
        if isinstance(value, np.ndarray):
            raise LaunchError(
                f"{where}: `{_fn_name(fn)}` reads the array {name!r} from outside; make it a "
                "source (par_iter(x).zip(y)) or pass it to for_each(f, *arrays)"
            )
        lit = literal(value)
        out.append((name, type(value), lit) if lit is not None else (name, value))
    return tuple(out)


def _helper(fn: Any, where: str) -> Any:
    """The compiled form of a stage's function: a :class:`veda.Func` or a Numba dispatcher."""
    if isinstance(fn, Func) or isinstance(fn, numba.core.dispatcher.Dispatcher):
        return fn
    if isinstance(fn, Kernel):
        raise LaunchError(f"{where}: got kernel {fn.name!r}; a stage takes a function")
    if not isinstance(fn, types.FunctionType):
        raise LaunchError(f"{where}: expected a function (def or lambda), not {fn!r}")
    key: Any = (fn.__code__, _outside_key(fn, where))
    try:
        hash(key)
    except TypeError:  # something unhashable from outside: this function object only
        key = fn
    with _funcs_lock:
        helper = _funcs.get(key)
        if helper is not None:
            _funcs.move_to_end(key)
            return helper
    try:
        helper = Func(fn)
    except KernelDefinitionError as exc:
        raise KernelDefinitionError(f"{where}: {exc}") from None
    with _funcs_lock:
        helper = _funcs.setdefault(key, helper)
        while len(_funcs) > _FUNCS_KEPT:
            _funcs.popitem(last=False)
    return helper


def _fn_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", None) or getattr(fn, "qualname", "?"))


def _identity(fn: Any) -> str:
    """A name for a stage's function that is the same in every process (for kernel names)."""
    if isinstance(fn, Func):  # its generated module: a hash of its text and what it reads
        return f"{_dispatcher(fn).py_func.__module__}.{fn.name}"
    py = getattr(fn, "py_func", fn)
    return f"{getattr(py, '__module__', '')}.{getattr(py, '__qualname__', type(fn).__name__)}"


def _dispatcher(fn: Any) -> Any:
    if isinstance(fn, Func):
        cfg = get_config()
        return getattr(fn.unit((cfg.boundscheck, cfg.cache)).module, fn.name)
    return fn


def _numba_message(exc: BaseException) -> str:
    """The line of a Numba error that says what is wrong (not "Failed in nopython mode")."""
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Failed in ", "During: ", "- Resolution failure")):
            return line
    return type(exc).__name__


#: Return types found by :func:`_returns`, by record name (also kept in the kernel cache).
_return_types: dict[str, Any] = {}


def _returns(fn: Any, argtypes: Sequence[Any], where: str) -> Any:
    """The Numba type ``fn`` returns for ``argtypes`` (compiling it, as the kernel will).

    For a helper the answer is also kept in the kernel cache, under its generated module's
    name (a hash of its text) and the argument types: a new process that finds it there needs
    not load the helper's compiled code just to learn its type (about 10 ms a helper), since
    the cached kernel holds that code already.
    """
    sig = tuple(argtypes)
    shown = ", ".join(str(t) for t in sig)
    try:
        disp = _dispatcher(fn)
        record = None
        if isinstance(fn, Func):
            what = f"{disp.py_func.__module__}|{fn.name}|{sig!r}"
            record = "veda_type_" + hashlib.sha256(what.encode()).hexdigest()[:24]
            found = _return_types.get(record)
            if found is None:
                found = _cache.load_record(record)
            if found is not None:
                _return_types[record] = found
                return found
        disp.compile(sig)
        ret = disp.overloads[sig].signature.return_type
        if record is not None:
            _return_types[record] = ret
            _cache.save_record(record, ret)
        return ret
    except KernelDefinitionError as exc:  # veda's own words (a helper calling something bad)
        raise KernelDefinitionError(f"{where}: {exc}") from None
    except Exception as exc:
        raise KernelDefinitionError(
            f"{where}: cannot compile `{_fn_name(fn)}` for ({shown}): {_numba_message(exc)}"
        ) from None


def _components(ty: Any) -> list[Any]:
    """A value's components: a tuple's items, or the value itself."""
    if isinstance(ty, BaseTuple):
        return list(ty.types)
    return [ty]


def _is_scalar(ty: Any) -> bool:
    return isinstance(ty, (nt.Number, nt.Boolean))


# -- the plan: what a terminal generates and how it combines -----------------------------------


@dataclass
class _Plan:
    kernel: Kernel
    comps: list[Any]  # the Numba types of the values that reach the terminal
    info: Any = None  # what the terminal's builder worked out (a fold's accumulator type)


_plans_lock = threading.Lock()
_plans: OrderedDict[Any, _Plan] = OrderedDict()
_PLANS_KEPT = 256


class _Writer:
    """Builds the text of a chain's kernel: one loop over a block's elements.

    The loop body is the chain's stages for element ``k`` (a filter opens an ``if`` around
    what follows it) and, innermost, the terminal's update.  A terminal may ask for the loop
    to be unrolled by two into two accumulators (:meth:`unroll`): a sum then runs two
    independent chains of additions, not one, and the block's result is their sum.
    """

    def __init__(self) -> None:
        self.params: list[str] = ["b", "_n", "_B"]
        self.globals: dict[str, Any] = {}
        self.pre: list[str] = []  # before the loop over the block's elements
        self.loop: list[str] = []  # its body, each line indented for where it sits
        self.post: list[str] = []  # after it
        #: The names of the components of the values that reach the terminal.
        self.values: list[str] = []
        self.depth = 0
        #: Whether the kernel runs blocks from a first block ``_b0`` on (launched in windows).
        self.windowed = False
        self._count = 0
        self._unrolled: tuple[str, str] | None = None

    def add(self, *lines: str) -> None:
        self.loop += ["    " * self.depth + line for line in lines]

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}{self._count}"

    def source_values(self, src: _Source, slot: int) -> list[str]:
        # Parameter names as errors show them ("writes argument 'source'"): the iterator's own
        # array is "source", zipped ones "zipped1", "zipped2", ...
        a = "source" if slot == 0 else f"zipped{slot}"
        if src.kind == "range":
            self.params += [f"{a}_start", f"{a}_step"]
            expr = f"{a}_start + k * {a}_step"
        elif src.kind == "chunks":
            self.params += [a, "chunk_size"]
            expr = f"{a}[k * chunk_size : min(k * chunk_size + chunk_size, len({a}))]"
        else:
            self.params.append(a)
            expr = f"{a}[k]"
        v = self.name("v")
        self.add(f"{v} = {expr}")
        return [v]

    def call(self, fn: Any, args: list[str], width: int, unpack: bool) -> list[str]:
        """``width`` names for what ``fn(*args)`` returns; ``unpack``: a tuple to unpack."""
        call = f"{self.global_(fn)}({', '.join(args)})"
        out = [self.name("v") for _ in range(width)]
        self.add(f"{', '.join(out)}{',' if unpack and width == 1 else ''} = {call}")
        return out

    def global_(self, value: Any) -> str:
        g = f"_f{len(self.globals)}"
        self.globals[g] = value
        return g

    def unroll(self, acc: str, combine: str) -> None:
        """Run the loop :data:`UNROLL` elements at a time into ``acc`` and accumulators of its
        own for each other element, combined at the end in a fixed pairwise order by
        ``combine`` (an operator)."""
        self._unrolled = (acc, combine)

    def text(self, name: str) -> str:
        params = self.params if not self.windowed else [*self.params[:3], "_b0", *self.params[3:]]
        lines = [f"def {name}({', '.join(params)}):"]
        lines.append("    _lo = (b + _b0) * _B" if self.windowed else "    _lo = b * _B")
        lines.append("    _hi = min(_lo + _B, _n)")
        lines += [f"    {s}" for s in self.pre]
        if self._unrolled is None:
            lines.append("    for k in range(_lo, _hi):")
            lines += [f"        {s}" for s in self.loop]
            lines += [f"    {s}" for s in self.post]
            return "\n".join(lines) + "\n"
        acc, combine = self._unrolled
        # Element k + j's copy of the loop body: names of its own (v3 -> v3_j, acc -> acc_j,
        # k -> k_j).
        local = re.compile(rf"\b(v\d+|{acc}|k)\b")
        accs = [acc] + [f"{acc}_{j}" for j in range(1, UNROLL)]
        lines += [f"    {a} = {acc}" for a in accs[1:]]
        lines += ["    k = _lo", f"    while k + {UNROLL - 1} < _hi:"]
        lines += [f"        {s}" for s in self.loop]
        for j in range(1, UNROLL):
            lines.append(f"        k_{j} = k + {j}")
            rename = rf"\1_{j}"
            lines += ["        " + local.sub(rename, s) for s in self.loop]
        lines += [f"        k += {UNROLL}", "    while k < _hi:"]
        lines += [f"        {s}" for s in self.loop]
        lines.append("        k += 1")
        while len(accs) > 1:  # a fixed pairwise tree
            accs = [f"({accs[i]} {combine} {accs[i + 1]})" for i in range(0, len(accs), 2)]
        lines.append(f"    {acc} = {accs[0]}")
        lines += [f"    {s}" for s in self.post]
        return "\n".join(lines) + "\n"


def _function_from_text(name: str, text: str, globals_: dict[str, Any]) -> Any:
    """Function ``name`` defined by generated ``text``, its source where ``inspect`` (and so
    veda's code generator) finds it."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    filename = f"<veda par_iter {digest}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": __name__, **globals_}
    exec(compile(text, filename, "exec"), namespace)
    return namespace[name]


def _make_kernel(name: str, desc: str, text: str, globals_: dict[str, Any]) -> Kernel:
    """A :class:`Kernel` from generated text, named ``desc``."""
    fn = _function_from_text(name, text, globals_)
    fn.__qualname__ = desc
    kernel = Kernel(fn)
    #: What veda.graph says when asked to capture this kernel's launches.
    kernel._veda_graph_refusal = (
        "is part of a par_iter terminal, which combines its launches' partial results in "
        "Python: a graph replays kernels launched directly"
    )
    return kernel


# -- the iterator ------------------------------------------------------------------------------


class ParIter:
    """A lazy parallel iterator: adaptors return new iterators, terminals run one fused kernel.

    Made by :func:`veda.par_range` and :func:`veda.par_iter`.  Functions given to the stages are
    plain Python functions (``def`` or ``lambda``) compiled by Numba, ``@veda.func`` helpers or
    ``numba.njit`` functions; a value of several components (after ``zip`` or ``enumerate``)
    reaches them as separate arguments.
    """

    __slots__ = ("_length", "_sources", "_stages")

    def __init__(self, sources: tuple[_Source, ...], stages: tuple[_Stage, ...]) -> None:
        self._sources = sources
        self._stages = stages
        self._length = sources[0].length

    def __len__(self) -> int:
        """The number of elements before any ``filter``."""
        return self._length

    def __repr__(self) -> str:
        return f"<veda.ParIter {self._describe()}>"

    def _describe(self, terminal: str = "", sizes: bool = True) -> str:
        parts = [self._sources[0].describe(sizes)]
        for st in self._stages:
            if st.kind == "zip":
                assert st.source is not None
                parts.append(f"zip({st.source.describe(sizes)})")
            elif st.kind == "enumerate":
                parts.append("enumerate()")
            else:
                parts.append(f"{st.kind}({_fn_name(st.fn)})")
        if terminal:
            parts.append(terminal)
        return ".".join(parts)

    def _then(self, stage: _Stage, source: _Source | None = None) -> ParIter:
        sources = self._sources + ((source,) if source is not None else ())
        return ParIter(sources, (*self._stages, stage))

    def _stage_label(self, kind: str) -> str:
        return f".{kind} #{len(self._stages) + 1}"

    def _filtered(self) -> bool:
        return any(st.kind == "filter" for st in self._stages)

    # -- sources that combine ------------------------------------------------------------------
    def zip(self, other: Any) -> ParIter:
        """Pair each element with the element of ``other`` (an array, or an iterator made by
        ``par_iter``/``par_range`` with no stages) at the same position.

        >>> import numpy as np, veda
        >>> x, y = np.arange(4.0), np.ones(4)
        >>> veda.par_iter(x).zip(y).map(lambda a, b: a * b + 1.0).sum()
        np.float64(10.0)
        """
        where = self._stage_label("zip")
        if self._filtered():
            raise LaunchError(f"{where}: zip after filter has no positions to pair; zip first")
        if isinstance(other, ParIter):
            if other._stages or len(other._sources) != 1:
                raise LaunchError(f"{where}: zip takes an iterator with no stages yet")
            src = other._sources[0]
        else:
            src = _Source("array", _length(other, f"{where}: other"), other)
        if src.length != self._length:
            raise LaunchError(
                f"{where}: lengths {self._length} and {src.length} differ; zipped sequences "
                "must have the same length"
            )
        return self._then(_Stage("zip", source=src), src)

    def enumerate(self) -> ParIter:
        """Put each element's position first: values become ``(index, value...)``.

        >>> import numpy as np, veda
        >>> veda.par_iter(np.array([3.0, 1.0, 2.0])).enumerate().map(lambda i, v: i * v).sum()
        np.float64(5.0)
        """
        if self._filtered():
            raise LaunchError(
                f"{self._stage_label('enumerate')}: enumerate after filter has no positions; "
                "enumerate first"
            )
        return self._then(_Stage("enumerate"))

    def chunks(self, size: int) -> ParIter:
        """Consecutive slices of ``size`` elements (the last may be shorter) of the array this
        iterator was made from; each value is an array view.

        >>> import numpy as np, veda
        >>> veda.par_iter(np.arange(10.0)).chunks(4).map(lambda c: c.sum()).collect()
        array([ 6., 22., 17.])
        """
        where = self._stage_label("chunks")
        src = self._sources[0]
        if self._stages or src.kind != "array" or len(self._sources) != 1:
            raise LaunchError(f"{where}: chunks applies to par_iter(array) directly")
        if not isinstance(size, _INT_TYPES) or isinstance(size, (bool, np.bool_)) or size < 1:
            raise LaunchError(f"{where}: size must be a positive integer, not {size!r}")
        size = int(size)
        if size >= 2**63:
            raise LaunchError(f"{where}: size {size} does not fit in a 64-bit integer")
        n = -(-src.length // size)
        return ParIter((_Source("chunks", n, src.data, size),), ())

    # -- adaptors ------------------------------------------------------------------------------
    def map(self, f: Callable[..., Any]) -> ParIter:
        """Replace each value by ``f(value)``; a tuple result becomes several components."""
        return self._then(_Stage("map", _helper(f, self._stage_label("map"))))

    def map_with_index(self, f: Callable[..., Any]) -> ParIter:
        """Replace each value by ``f(index, value)``, the index being its position."""
        where = self._stage_label("map_with_index")
        if self._filtered():
            raise LaunchError(f"{where}: after filter values have no positions; map first")
        return self._then(_Stage("map_with_index", _helper(f, where)))

    def filter(self, p: Callable[..., bool]) -> ParIter:
        """Keep the values for which ``p(value)`` is True (``p`` must return a bool)."""
        return self._then(_Stage("filter", _helper(p, self._stage_label("filter"))))

    # -- building the kernel -------------------------------------------------------------------
    def _write_stages(self, w: _Writer) -> list[Any]:
        """Add the stages to ``w``; return the Numba types of the values they leave (their
        names are left in ``w.values``)."""
        src = self._sources[0]
        names = w.source_values(src, 0)
        comps = [src.numba_type()]
        slot = 1
        for number, st in enumerate(self._stages, 1):
            label = f".{st.kind} #{number}"
            if st.kind == "zip":
                assert st.source is not None
                names = names + w.source_values(st.source, slot)
                comps = [*comps, st.source.numba_type()]
                slot += 1
            elif st.kind == "enumerate":
                names, comps = ["k", *names], [nt.int64, *comps]
            elif st.kind in ("map", "map_with_index"):
                args, types_ = names, comps
                if st.kind == "map_with_index":
                    args, types_ = ["k", *names], [nt.int64, *comps]
                ret = _returns(st.fn, types_, label)
                if ret is nt.none:
                    raise KernelDefinitionError(f"{label}: `{_fn_name(st.fn)}` returns nothing")
                comps = _components(ret)
                if not comps:
                    raise KernelDefinitionError(
                        f"{label}: `{_fn_name(st.fn)}` returns an empty tuple"
                    )
                names = w.call(st.fn, args, len(comps), isinstance(ret, BaseTuple))
            else:  # filter
                ret = _returns(st.fn, comps, label)
                if not isinstance(ret, nt.Boolean):
                    raise KernelDefinitionError(
                        f"{label}: predicate `{_fn_name(st.fn)}` returns {ret} for "
                        f"({', '.join(map(str, comps))}); expected a bool"
                    )
                w.add(f"if {w.global_(st.fn)}({', '.join(names)}):")
                w.depth += 1
        w.values = names
        return comps

    def _plan(self, terminal: str, extra: tuple[Any, ...], build: Callable[..., Any]) -> _Plan:
        """The kernel of this chain for ``terminal`` (cached by the chain's shape)."""
        cfg = get_config()
        key = (
            terminal,
            extra,
            tuple(s.key() for s in self._sources),
            tuple((st.kind, st.fn) for st in self._stages),
            cfg.boundscheck,
            cfg.cache,
        )
        with _plans_lock:
            plan = _plans.get(key)
            if plan is not None:
                _plans.move_to_end(key)
                return plan
        w = _Writer()
        comps = self._write_stages(w)
        info = build(w, comps)
        name = f"par_iter_{terminal}"
        text = w.text(name)
        # Named by what it does, the same in every process (the name is in the generated
        # module's text, which the disk cache is keyed by): the digest tells apart chains
        # that read alike but call different functions.
        stable = "|".join(_identity(v) for _, v in sorted(w.globals.items()))
        digest = hashlib.sha256(f"{text}|{stable}".encode()).hexdigest()[:8]
        desc = f"{self._describe(terminal, sizes=False)} [{digest}]"
        kernel = _make_kernel(name, desc, text, w.globals)
        plan = _Plan(kernel, comps, info)
        with _plans_lock:
            plan = _plans.setdefault(key, plan)
            while len(_plans) > _PLANS_KEPT:
                _plans.popitem(last=False)
        return plan

    def _args(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for s in self._sources:
            out += s.args()
        return tuple(out)

    def _run(self, plan: _Plan, *extra: Any) -> None:
        """Launch ``plan``'s kernel over this sequence's blocks."""
        n = self._length
        block = block_size(n)
        nb = -(-n // block)
        if not nb:
            return
        try:
            plan.kernel[nb](np.int64(n), np.int64(block), *self._args(), *extra)
        except KernelError as exc:
            raise _in_block(exc, block, n) from None

    def _one_value(self, terminal: str, comps: list[Any]) -> Any:
        if len(comps) != 1 or not _is_scalar(comps[0]):
            shown = ", ".join(map(str, comps))
            raise LaunchError(
                f".{terminal}(): needs one number or bool per element, got ({shown}); "
                "map the values to a number first"
            )
        if terminal in ("min", "max", "argmin", "argmax") and isinstance(comps[0], nt.Complex):
            raise LaunchError(
                f".{terminal}(): complex values ({comps[0]}) have no order; map them to a "
                "real number first (abs, .real)"
            )
        return comps[0]

    def _blocks(self) -> int:
        n = self._length
        return -(-n // block_size(n))

    # -- terminals -----------------------------------------------------------------------------
    def kernel(self, terminal: str = "sum") -> Kernel:
        """The kernel that ``terminal`` (``"sum"``, ``"count"``, ...) launches for this chain,
        for :func:`veda.explain` and ``veda.metrics().kernel(...)``."""
        builders: dict[str, Callable[[], _Plan]] = {
            "sum": lambda: self._sum_plan("sum"),
            "prod": lambda: self._sum_plan("prod"),
            "min": lambda: self._min_plan("min"),
            "max": lambda: self._min_plan("max"),
            "argmin": lambda: self._min_plan("argmin"),
            "argmax": lambda: self._min_plan("argmax"),
            "count": self._count_plan,
            "collect": lambda: self._collect_plan()[0],
        }
        if terminal not in builders:
            raise LaunchError(
                f"kernel(): unknown terminal {terminal!r}; expected one of {', '.join(builders)}"
            )
        return builders[terminal]().kernel

    def _sum_plan(self, op: str) -> _Plan:
        def build(w: _Writer, comps: list[Any]) -> None:
            self._one_value(op, comps)
            w.params += ["_ident", "_out"]
            w.pre.append("acc = _ident")
            w.add(f"acc {'+=' if op == 'sum' else '*='} {w.values[0]}")
            w.unroll("acc", "+" if op == "sum" else "*")
            w.post.append("_out[b] = acc")

        return self._plan(op, (), build)

    def _reduce_sum(self, op: str) -> Any:
        plan = self._sum_plan(op)
        dtype = _sum_dtype(as_dtype(plan.comps[0]))
        ident = dtype.type(0 if op == "sum" else 1)
        out = np.empty(self._blocks(), dtype)
        self._run(plan, ident, out)
        ufunc = np.add if op == "sum" else np.multiply
        return ufunc.reduce(out, dtype=dtype) if out.size else ident

    def sum(self) -> Any:
        """The sum of the values, typed as :func:`numpy.sum` types it (0 when empty).

        >>> import veda
        >>> veda.par_range(5).sum()
        np.int64(10)
        """
        return self._reduce_sum("sum")

    def prod(self) -> Any:
        """The product of the values, typed as :func:`numpy.prod` types it (1 when empty)."""
        return self._reduce_sum("prod")

    def _count_plan(self) -> _Plan:
        def build(w: _Writer, comps: list[Any]) -> None:
            w.params.append("_out")
            w.pre.append("acc = 0")
            w.add("acc += 1")
            w.post.append("_out[b] = acc")

        return self._plan("count", (), build)

    def count(self) -> np.int64:
        """How many values reach the end of the chain (after the filters).

        >>> import veda
        >>> veda.par_range(10).filter(lambda i: i % 3 == 0).count()
        np.int64(4)
        """
        if not self._filtered():
            return np.int64(self._length)
        out = np.empty(self._blocks(), np.int64)
        self._run(self._count_plan(), out)
        return np.int64(np.add.reduce(out)) if out.size else np.int64(0)

    def _min_plan(self, op: str) -> _Plan:
        less = "<" if op in ("min", "argmin") else ">"

        def build(w: _Writer, comps: list[Any]) -> None:
            self._one_value(op, comps)
            v = w.values[0]
            w.params += ["_ident", "_out", "_at", "_has"]
            w.pre += ["acc = _ident", "at = -1", "have = False"]
            # NaN wins, once: the first NaN is kept, as numpy.min and numpy.argmin do
            w.add(
                f"if not have or {v} {less} acc or ({v} != {v} and acc == acc):",
                f"    acc = {v}",
                "    at = k",
                "    have = True",
            )
            w.post += ["_out[b] = acc", "_at[b] = at", "_has[b] = have"]

        return self._plan(op, (), build)

    def _reduce_min(self, op: str) -> tuple[Any, np.int64]:
        plan = self._min_plan(op)
        dtype = as_dtype(plan.comps[0])
        nb = self._blocks()
        out, at, has = np.empty(nb, dtype), np.empty(nb, np.int64), np.empty(nb, np.bool_)
        self._run(plan, dtype.type(0), out, at, has)
        if not has.any():
            after = " after its filters" if self._filtered() else ""
            raise LaunchError(f".{op}(): the sequence is empty{after}; {op} needs a value")
        vals, ats = out[has], at[has]
        j = int(np.argmin(vals) if op in ("min", "argmin") else np.argmax(vals))
        return vals[j], ats[j]

    def min(self) -> Any:
        """The smallest value (NaN if any value is NaN, as :func:`numpy.min`); an empty
        sequence is a :class:`veda.LaunchError`."""
        return self._reduce_min("min")[0]

    def max(self) -> Any:
        """The largest value (NaN if any is NaN); an empty sequence is an error."""
        return self._reduce_min("max")[0]

    def argmin(self) -> np.int64:
        """The position in the source of the first smallest value (of the first NaN, if any).

        After a ``filter`` the position is still the one in the source sequence.

        >>> import numpy as np, veda
        >>> veda.par_iter(np.array([3.0, 1.0, 2.0, 1.0])).argmin()
        np.int64(1)
        """
        return self._reduce_min("argmin")[1]

    def argmax(self) -> np.int64:
        """The position in the source of the first largest value (of the first NaN, if any)."""
        return self._reduce_min("argmax")[1]

    def _any_plan(self, p: Any, negate: bool) -> _Plan:
        op = "all" if negate else "any"
        where = f".{op}()"
        pred = _helper(p, where) if p is not None else None

        def build(w: _Writer, comps: list[Any]) -> None:
            names = w.values
            if pred is not None:
                ret = _returns(pred, comps, where)
                if not isinstance(ret, nt.Boolean):
                    raise KernelDefinitionError(
                        f"{where}: predicate `{_fn_name(pred)}` returns {ret}; expected a bool"
                    )
                test = f"{w.global_(pred)}({', '.join(names)})"
            else:
                self._one_value(op, comps)
                test = names[0]
            atomic = w.global_(_atomic_add())
            w.params.append("_found")
            w.windowed = True
            # Every block first looks whether another has found the answer already, and
            # stops its own loop at the first value that decides.
            w.pre += [f"if {atomic}(_found, 0, 0) != 0:", "    return"]
            w.add(
                f"if {'not ' if negate else ''}{test}:",
                f"    {atomic}(_found, 0, 1)",
                "    break",
            )

        return self._plan(op, (pred,), build)

    def _any(self, p: Any, negate: bool) -> bool:
        plan = self._any_plan(p, negate)
        n = self._length
        block = block_size(n)
        nb = -(-n // block)
        found = np.zeros(1, np.int64)
        # Windows of blocks that double in size: an answer found early ends the work after the
        # window it is in, and a search that finds nothing takes a few dozen launches.
        first, window = 0, ANY_WINDOW
        args = self._args()
        while first < nb and not found[0]:
            count = min(window, nb - first)
            try:
                plan.kernel[count](np.int64(n), np.int64(block), np.int64(first), *args, found)
            except KernelError as exc:
                raise _in_block(exc, block, n, first) from None
            first, window = first + count, window * 2
        return bool(found[0]) != negate

    def any(self, p: Callable[..., bool] | None = None) -> bool:
        """Whether some value is true (or satisfies ``p``); workers stop at the first found.

        >>> import veda
        >>> veda.par_range(10**6).any(lambda i: i == 123456)
        True
        """
        return self._any(p, negate=False)

    def all(self, p: Callable[..., bool] | None = None) -> bool:
        """Whether every value is true (or satisfies ``p``); workers stop at the first that
        is not."""
        return self._any(p, negate=True)

    def fold(
        self,
        identity: Any,
        f: Callable[..., Any],
        combine: Callable[[Any, Any], Any] | None = None,
    ) -> Any:
        """``f(acc, value)`` over the values of each block, from ``identity``.

        With ``combine``, the blocks' accumulators are combined in block order by
        ``combine(acc, acc)`` and the result returned: ``identity`` must be neutral for
        ``combine`` and the combination associative.  Without it, as in Rayon, the result is an
        iterator over the blocks' accumulators (one per block, in order; how many depends on the
        length only), to be reduced further.  The accumulator is one number or bool.

        >>> import veda
        >>> veda.par_range(1, 6).fold(0, lambda acc, i: acc + i * i, lambda a, b: a + b)
        np.int64(55)
        >>> veda.par_range(1, 6).fold(0, lambda acc, i: acc + i * i).sum()
        np.int64(55)
        """
        return self._fold(identity, f, combine, ".fold()")

    def _fold(self, identity: Any, f: Any, combine: Any, where: str) -> Any:
        step = _helper(f, where)
        comb = _helper(combine, f"{where} combine") if combine is not None else None
        if not isinstance(identity, (int, float, complex, np.number, np.bool_)):
            raise LaunchError(f"{where}: identity must be a number or bool, not {identity!r}")
        try:
            acc_type = numba.typeof(identity)
        except Exception:
            raise LaunchError(
                f"{where}: identity {identity!r} is not a number Numba can hold (64 bits)"
            ) from None

        def build(w: _Writer, comps: list[Any]) -> Any:
            t = acc_type
            for _ in range(3):  # the accumulator's type: what f returns for it
                r = _returns(step, [t, *comps], where)
                if r == t:
                    break
                t, before = r, t
            else:
                raise KernelDefinitionError(
                    f"{where}: `{_fn_name(step)}` returns {t} for an accumulator of {before}; "
                    "give an identity of the type it returns"
                )
            if not _is_scalar(t):
                raise KernelDefinitionError(
                    f"{where}: the accumulator must be one number or bool, not {t}"
                )
            g = w.global_(step)
            w.params += ["_ident", "_out"]
            w.pre.append("acc = _ident")
            w.add(f"acc = {g}(acc, {', '.join(w.values)})")
            w.post.append("_out[b] = acc")
            return t

        plan = self._plan("fold", (step, acc_type), build)
        if comb is not None:
            r = _returns(comb, [plan.info, plan.info], f"{where} combine")
            if r != plan.info:
                raise KernelDefinitionError(
                    f"{where}: combine `{_fn_name(comb)}` returns {r} for two accumulators of "
                    f"{plan.info}; expected {plan.info}"
                )
        dtype = as_dtype(plan.info)
        ident = dtype.type(identity)
        out = np.empty(self._blocks(), dtype)
        self._run(plan, ident, out)
        if comb is None:
            return par_iter(out)
        return dtype.type(_combiner(comb)(out, ident))

    def reduce(self, f: Callable[[Any, Any], Any], identity: Any) -> Any:
        """Combine the values with the associative ``f``, ``identity`` being neutral for it.

        >>> import veda
        >>> veda.par_range(1, 6).reduce(lambda a, b: a * b, 1)
        np.int64(120)
        """
        return self._fold(identity, f, f, ".reduce()")

    def for_each(self, f: Callable[..., Any], *args: Any) -> None:
        """Call ``f(value..., *args)`` for every value; ``args`` (arrays, numbers) are passed
        through to ``f``, which may write the arrays.

        >>> import numpy as np, veda
        >>> out = np.zeros(4)
        >>> def store(i, v, out):
        ...     out[i] = 2.0 * v
        >>> veda.par_iter(np.arange(4.0)).enumerate().for_each(store, out)
        >>> out
        array([0., 2., 4., 6.])
        """
        where = ".for_each()"
        fn = _helper(f, where)
        nargs = len(args)

        def build(w: _Writer, comps: list[Any]) -> None:
            argtypes = []
            for j, a in enumerate(args, 1):
                try:
                    argtypes.append(numba.typeof(a))
                except Exception:
                    raise LaunchError(
                        f"{where}: argument {j} ({type(a).__name__}) is not a value Numba "
                        "can pass (an array, a number, a tuple of them)"
                    ) from None
            if isinstance(fn, Func):
                written = fn.written_positions()
                for j, a in enumerate(args, 1):
                    ro = isinstance(a, np.ndarray) and not a.flags.writeable
                    if ro and len(comps) + j - 1 in written:
                        raise LaunchError(
                            f"{where}: argument {j} is a read-only array and "
                            f"`{_fn_name(fn)}` writes it"
                        )
            _returns(fn, [*comps, *argtypes], where)  # names the stage if f cannot compile
            extra = [f"arg{j}" for j in range(1, nargs + 1)]  # as errors name them
            w.params += extra
            w.add(f"{w.global_(fn)}({', '.join([*w.values, *extra])})")

        plan = self._plan("for_each", (fn, nargs), build)
        self._run(plan, *args)

    def _collect_plan(self) -> tuple[_Plan, _Plan | None]:
        def build(w: _Writer, comps: list[Any]) -> None:
            for c in comps:
                if not _is_scalar(c) and not (isinstance(c, nt.Array) and c.ndim == 1):
                    raise LaunchError(f".collect(): values must be numbers, bools or rows, not {c}")
            outs = [f"_o{j}" for j in range(len(comps))]
            w.params += ["_offs", *outs]
            w.pre.append("pos = _offs[b]")
            w.add(*(f"{o}[pos] = {v}" for o, v in zip(outs, w.values)), "pos += 1")

        write = self._plan("collect", (), build)
        count = self._count_plan() if self._filtered() else None
        return write, count

    def collect(self) -> Any:
        """The values in order, as an exact-size array (a tuple of arrays for several
        components; rows collect into a 2-d array).

        >>> import numpy as np, veda
        >>> veda.par_iter(np.arange(10)).filter(lambda v: v % 4 == 1).collect()
        array([1, 5, 9])
        """
        write, count = self._collect_plan()
        n, nb = self._length, self._blocks()
        block = block_size(n)
        if count is not None:
            counts = np.empty(nb, np.int64)
            self._run(count, counts)
            offs = np.zeros(nb, np.int64)
            if nb > 1:
                np.cumsum(counts[:-1], out=offs[1:])
            total = int(offs[-1] + counts[-1]) if nb else 0
        else:
            offs = np.arange(nb, dtype=np.int64) * block
            total = n
        outs = []
        for c in write.comps:
            if isinstance(c, nt.Array):
                width = self._row_width()
                outs.append(np.empty((total, width), as_dtype(c.dtype)))
            else:
                outs.append(np.empty(total, as_dtype(c)))
        self._run(write, offs, *outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _row_width(self) -> int:
        src = self._sources[0]
        if src.kind == "array" and src.data.ndim == 2 and not self._maps():
            return int(src.data.shape[1])
        raise LaunchError(
            ".collect(): only the rows of a 2-d par_iter (with no map or zip) can be collected "
            "as rows"
        )

    def _maps(self) -> bool:
        return any(st.kind in ("map", "map_with_index", "zip") for st in self._stages)


def _in_block(exc: KernelError, block: int, n: int, first: int = 0) -> KernelError:
    """``exc`` (raised at a launch index: block ``first + index``) said of the elements that
    block holds."""
    if exc.index is None:
        return exc
    b = first + exc.index[0]
    lo, hi = b * block, min(n, (b + 1) * block) - 1
    out = type(exc)(
        exc.kernel,
        exc.original_type,
        f"{exc.original_message} (at one of elements {lo}..{hi}, block {b})",
        None,
        exc.target,
    )
    out.__cause__ = exc.__cause__
    return out


def _atomic_add() -> Any:
    from veda._kernel.language import atomic_add

    return atomic_add


_combiners: OrderedDict[Any, Func] = OrderedDict()
_combiners_lock = threading.Lock()

_COMBINE_TEXT = """\
def par_iter_combine(parts, acc):
    for b in range(len(parts)):
        acc = _c(acc, parts[b])
    return acc
"""


def _combiner(comb: Any) -> Func:
    """A compiled loop that combines a fold's partial results in order with ``comb``."""
    with _combiners_lock:
        found = _combiners.get(comb)
        if found is None:
            fn = _function_from_text("par_iter_combine", _COMBINE_TEXT, {"_c": comb})
            found = _combiners[comb] = Func(fn)
            while len(_combiners) > _FUNCS_KEPT:
                _combiners.popitem(last=False)
        else:
            _combiners.move_to_end(comb)
        return found
