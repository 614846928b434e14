"""Generated source for kernels and helpers.

A kernel body is copied, decorators stripped, into a generated module together with everything it
references (imports, constants written as exact literals, helper modules) and the launchers veda
wraps around it.  The launchers are where veda's loop structure lives: the serial loop of
``"cpu"``, and for ``"parallel"`` a ``prange`` over workers in which each worker takes chunks of
the flattened domain by one of four schedules:

* ``static``: one contiguous block per worker;
* ``interleaved``: fixed chunks dealt round-robin (worker w takes chunks w, w+T, w+2T, ...);
* ``dynamic``: each worker takes the next chunk from a shared atomic counter;
* ``guided``: like dynamic, over chunks that shrink geometrically down to ``chunk``.

Because the schedule is in the generated loop, it balances load on every Numba threading layer.
Exceptions in a parallel body are caught per piece of a chunk by ``_veda_chunk``, a function
the workers call (a ``try`` directly in a ``prange`` body would stop Numba from parallelising
it); the failing piece is recorded, the other workers stop at their next piece, and the launch
path re-runs that piece serially to find the failing index and raise the original exception.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba

from veda._kernel import cache as _cache
from veda._kernel.base import Helper, Launchable
from veda._kernel.source import (
    FunctionSource,
    importable_path,
    literal,
    referenced_globals,
    source_digest,
)
from veda.errors import KernelDefinitionError

# Flat elements per partial sum in reductions.  Summing in blocks bounds the rounding error by
# about (BLOCK + n/BLOCK) ulps instead of n; the block loop costs nothing measurable.
REDUCE_BLOCK = 2048

MODE_CODES = {"static": 0, "interleaved": 1, "dynamic": 2, "guided": 3}

# Signals (see docs/design.md, "Signals"): loops check between pieces of work, never per index.
# Cycle-counter ticks (rdtsc; 2.1 GHz on the 2-core machine): a piece that took less than
# PIECE_GROW (about 1 ms there) doubles the next one, so that cheap bodies pay for a handful of
# checks per launch and costly ones still reach a check every millisecond or so; the launching
# thread runs Python's pending signal handlers every POLL_TICKS (about 64 ms there).
PIECE_GROW = 1 << 21
POLL_TICKS = 1 << 27
#: First piece of the serial loop, in flat elements: launches up to this size read the cycle
#: counter never, and a saxpy[100] pays one comparison; a body costing 1 ms reaches its first
#: check after a quarter of a second.
SERIAL_PIECE = 256
#: First piece of a parallel chunk, in flat elements.  Reductions start at one REDUCE_BLOCK, so
#: that pieces split a chunk where its partial sums split it anyway: the bits do not change.
PARALLEL_PIECE = 32
#: Where a parallel launcher keeps its chunk counter in its stack scratch of SYNC_WORDS int64:
#: 256 bytes from the start of the error slots (232 past their end), so that they never share a
#: cache line (nor a pair of lines, which Intel's adjacent-line prefetcher fetches together).
COUNTER_WORD = 32
SYNC_WORDS = COUNTER_WORD + 1

_LIBRARIES = frozenset({"numba", "numpy", "math", "cmath", "veda"})

_PRELUDE = """\
import numba as _veda_numba
import numpy as _veda_np
from veda._kernel import language as _veda_lang
from veda._kernel.cache import get_module as _veda_get
"""


_CUDA_PRELUDE = """\
from numba import cuda as _veda_cuda
from veda._kernel.cuda_language import guard as _veda_guard
"""


@dataclass
class Emitted:
    """The module-level lines a function needs, and objects that have no source form."""

    lines: list[str]
    inject: dict[str, Any]
    notes: list[str]


def references(pyfunc: Any) -> dict[str, Any]:
    """The globals and closure variables a function uses, by the names it uses."""
    code = pyfunc.__code__
    values: dict[str, Any] = {}
    for name in sorted(referenced_globals(code)):
        if name in pyfunc.__globals__:
            values[name] = pyfunc.__globals__[name]
    if code.co_freevars and pyfunc.__closure__:
        for name, cell in zip(code.co_freevars, pyfunc.__closure__):
            try:
                values[name] = cell.cell_contents
            except ValueError:  # empty cell
                continue
    return values


def emit_references(
    src: FunctionSource,
    options: tuple[Any, ...],
    what: str,
    target: str = "cpu",
    siblings: dict[str, Any] | None = None,
) -> Emitted:
    """Reproduce the globals and closure variables ``src`` uses in a generated module.

    ``target`` is "cpu" (the CPU targets) or "cuda": ``@veda.func`` helpers are taken from the
    generated module of the same target.  ``siblings``: the helpers defined in the same module
    (recursive helpers, by name), which need no line.
    """
    pyfunc = src.pyfunc
    values = references(pyfunc)
    out = Emitted([], {}, [])
    label = f"{what} {pyfunc.__qualname__!r}"
    for name, value in values.items():
        if name.startswith("_veda_"):
            raise KernelDefinitionError(f"{label}: names starting with '_veda_' are reserved")
        if siblings and name in siblings and siblings[name] is value:
            continue  # defined in this very module
        if isinstance(value, Launchable):
            raise KernelDefinitionError(
                f"{label} calls kernel {name!r}; a kernel cannot launch another kernel. "
                "Decorate the shared code with @veda.func instead."
            )
        if isinstance(value, Helper):
            unit = value.unit(options) if target == "cpu" else value.cuda_unit(options)
            if unit.on_disk:
                out.lines.append(f"{name} = _veda_get({unit.module.__name__!r}).{value.name}")
            else:
                out.inject[name] = getattr(unit.module, value.name)
            continue
        if isinstance(value, types.ModuleType):
            if value.__name__ != "__main__" and getattr(value, "__spec__", None) is not None:
                out.lines.append(f"import {value.__name__} as {name}")
            else:
                out.inject[name] = value
            continue
        lit = literal(value)
        if lit is not None:
            out.lines.append(f"{name} = {lit}")
            continue
        is_jitted = isinstance(value, numba.core.dispatcher.Dispatcher)
        # Python functions of Numba, NumPy, math and veda may carry Numba implementations
        # (numba.get_thread_id, veda.atomic_add); anyone else's must be compiled explicitly.
        library = str(getattr(value, "__module__", "")).split(".")[0] in _LIBRARIES
        if isinstance(value, types.FunctionType) and not is_jitted and not library:
            raise KernelDefinitionError(
                f"{label} calls {name!r}, a plain Python function; decorate it with "
                "@veda.func (or numba.njit) so that it can be compiled"
            )
        path = importable_path(value)
        if path is not None:
            mod, attr = path
            out.lines.append(f"from {mod} import {attr} as {name}")
            if is_jitted:
                # Numba's cache does not follow a callee's changes; the digest makes the
                # generated text, and so the cache entry, change with it.
                out.notes.append(f"# {name}: {mod}.{attr} source {source_digest(value.py_func)}")
            continue
        out.inject[name] = value
    return out


#: Numba's parallel options for the parallel launchers: ``prange`` only.  With
#: ``parallel=True`` Numba also turns each ``np.zeros`` / ``np.full`` of the launcher (those left:
#: the profile's counters, a deterministic reduction's partials) into a parallel loop of its own,
#: each compiled into a separate gufunc: three parallel regions instead of one, 10 MB of memory and
#: 2 s of compile per kernel instead of 3 MB and 0.5 s (bench/bench_memory_per_kernel.py).
PRANGE_ONLY = (
    "{'comprehension': False, 'reduction': False, 'inplace_binop': False, 'setitem': False, "
    "'numpy': False, 'stencil': False, 'fusion': False, 'prange': True}"
)


def fastmath_label(flags: frozenset[str]) -> str:
    """``True`` or ``{'contract', 'reassoc'}``: the flags as the decorator takes them."""
    return "True" if "fast" in flags else "{" + ", ".join(map(repr, sorted(flags))) + "}"


def fastmath_text(flags: frozenset[str] | None) -> str:
    """The ``fastmath=`` option of a decorator for a kernel's flags: nothing when off (the
    generated text, and so every cache entry, of kernels without flags stays as it was), and
    ``fastmath=False`` for ``None``, a helper's: Numba compiles a function that does not set
    the option with its caller's flags, and keeps that build (in memory and in the helper's
    cached module) for every caller, a strict kernel's too."""
    if flags is None:
        return ", fastmath=False"
    return f", fastmath={fastmath_label(flags)}" if flags else ""


def _decorator(
    cache: bool,
    boundscheck: bool,
    parallel: bool = False,
    fastmath: frozenset[str] | None = frozenset(),
    nogil: bool = True,
    internal: bool = False,
) -> str:
    """``internal``: a function only compiled code calls, built without the CPython and cfunc
    wrappers that Python callers need (each is a few hundred lines of IR that every caller's
    library then links in and optimises again: a tenth of a cold parallel launch's compile)."""
    extra = f", parallel={PRANGE_ONLY}" if parallel else ""
    if internal:
        extra += ", no_cpython_wrapper=True, no_cfunc_wrapper=True"
    return (
        f"@_veda_numba.njit(cache={cache}, boundscheck={boundscheck}, nogil={nogil}{extra}"
        f"{fastmath_text(fastmath)})"
    )


#: The name of the inlining dispatcher over a kernel's body in its generated module.
INLINE = "_veda_inline_body"


def _inline_decorator(boundscheck: bool, fastmath: frozenset[str] = frozenset()) -> str:
    # Never compiled alone (Numba types it into each caller), so nothing to cache.
    return (
        f"@_veda_numba.njit(inline='always', boundscheck={boundscheck}, nogil=True"
        f"{fastmath_text(fastmath)})"
    )


def _function_text(src: FunctionSource, decorator: str) -> tuple[list[str], int]:
    assert src.text is not None
    lines = src.text.rstrip("\n").splitlines()
    return [decorator, *lines], 1  # the def starts one line after the decorator


@dataclass
class Unit:
    """A loaded generated module."""

    module: types.ModuleType
    on_disk: bool


def _assemble(
    stem: str,
    header: str,
    functions: list[tuple[FunctionSource, Emitted, str]],
    tail: str,
    cache: bool,
    target: str = "cpu",
    spans: Sequence[tuple[int, int, int]] = (),
) -> Unit:
    """Join prelude, references, user functions and launchers; load the result.  ``spans``:
    where the (first) function's body is written into the tail (its line there, the count of
    lines, and the line of the function's text it starts at), for error messages."""
    prelude = _PRELUDE if target == "cpu" else _PRELUDE + _CUDA_PRELUDE
    lines = [header.rstrip("\n"), prelude.rstrip("\n")]
    inject: dict[str, Any] = {}
    maps: list[_cache.LineMap] = []
    #: Functions compiled from their own code (no source text), whose ``@veda.func`` helpers
    #: are bound to this module's compiled ones once it is loaded: their globals (with the
    #: names to bind there) and closure cells by name.
    helpers: list[tuple[dict[str, Any], list[str], dict[str, Any]]] = []
    for src, emitted, decorator in functions:
        lines.extend(emitted.notes)
        lines.extend(emitted.lines)
        inject.update(emitted.inject)
        if src.text is None:
            fn = _rebindable(src.pyfunc, helpers)
            if target == "cpu":
                inject[src.name] = numba.njit(**_njit_options(decorator))(fn)
            else:
                from numba import cuda

                inject[src.name] = cuda.jit(device=True)(fn)
            continue
        lines.append("")
        fn_lines, offset = _function_text(src, decorator)
        current = sum(entry.count("\n") + 1 for entry in lines)  # entries may span lines
        maps.append(_cache.LineMap(current + offset + 1, len(fn_lines) - offset, src.lines()))
        lines.extend(fn_lines)
    lines.append("")
    start = sum(entry.count("\n") + 1 for entry in lines) + 1  # the tail's first line
    for at, length, first in spans:
        maps.append(_cache.LineMap(start + at, length, functions[0][0].lines(), first))
    lines.append(tail)
    text = "\n".join(lines) + "\n"
    on_disk = cache and not inject
    if not on_disk:  # objects without a source form: Numba cannot cache this module
        text = _cache._uncached(text)
    # Injected objects are part of what the module is: the same text with another array (a
    # notebook cell run again with new data) is another module.  A module keeps what it was
    # given, so an id cannot be reused by another object while the module lives.
    named = text + "".join(f"|{k}:{id(v)}" for k, v in sorted(inject.items()))
    name = _cache.module_name(stem, named)
    module = _cache.load_module(name, text, inject, maps, on_disk)
    for glb, names, cells in helpers:  # Numba reads them at the first compile, after this
        for helper in names:
            glb[helper] = vars(module).get(helper, glb[helper])
        for helper, cell in cells.items():
            cell.cell_contents = vars(module).get(helper, cell.cell_contents)
    return Unit(module, on_disk and name not in _cache._memory_modules)


def _rebindable(pyfunc: Any, out: list[tuple[dict[str, Any], list[str], dict[str, Any]]]) -> Any:
    """``pyfunc`` compiled from its own code: a copy with globals and closure cells of its own
    where it reads ``@veda.func`` helpers (a function sent by value, say), which
    :func:`_assemble` binds to the module's compiled helpers (Numba cannot type the helper
    objects themselves)."""
    code = pyfunc.__code__
    values = references(pyfunc)
    names = [n for n, v in values.items() if isinstance(v, Helper)]
    if not names:
        return pyfunc
    glb = dict(pyfunc.__globals__)
    freevars = code.co_freevars
    cells: dict[str, Any] = {}
    closure = list(pyfunc.__closure__ or ())
    for k, name in enumerate(freevars):
        if name in names:
            closure[k] = cells[name] = types.CellType(values[name])
    out.append((glb, [n for n in names if n not in cells], cells))
    fn = types.FunctionType(code, glb, pyfunc.__name__, pyfunc.__defaults__, tuple(closure) or None)
    fn.__kwdefaults__ = pyfunc.__kwdefaults__
    fn.__qualname__ = pyfunc.__qualname__
    fn.__module__ = pyfunc.__module__
    return fn


def _njit_options(decorator: str) -> dict[str, Any]:
    """The options of ``decorator`` (a :func:`_decorator` text) for a function compiled from
    its own code."""
    options: dict[str, Any] = {"boundscheck": "boundscheck=True" in decorator, "nogil": True}
    flags = _FASTMATH_OPTION.search(decorator)
    if flags:
        options["fastmath"] = ast.literal_eval(flags.group(1))
    return options


_FASTMATH_OPTION = re.compile(r"fastmath=(True|False|\{[^}]*\})")


def function_unit(src: FunctionSource, options: tuple[bool, bool]) -> Unit:
    """The generated module of a ``@veda.func`` helper for the CPU targets."""
    boundscheck, cache = options
    emitted = emit_references(src, options, "helper")
    header = f"# veda helper {src.pyfunc.__module__}.{src.pyfunc.__qualname__} (generated)"
    dec = _decorator(cache, boundscheck, fastmath=None)  # strict whoever calls it
    return _assemble(src.name, header, [(src, emitted, dec)], "", cache)


def recursive_unit(helpers: list[Any], options: tuple[bool, bool], target: str = "cpu") -> Unit:
    """One generated module for helpers that call each other (or themselves), each by its own
    name, so that Numba resolves the calls inside the module.

    Numba's disk cache cannot hold recursive functions (loading them crashes: numba#6061), so
    the module is compiled in each process, and so is every module that calls into it.
    """
    boundscheck, _ = options
    siblings = {h.name: h for h in helpers}
    names = ", ".join(h.qualname for h in helpers)
    seen: dict[str, Any] = {}
    functions: list[tuple[FunctionSource, Emitted, str]] = []
    for h in helpers:
        label = f"helper {h.qualname!r}"
        for name, value in references(h.py_func).items():
            member = next((m for m in helpers if m is value), None)
            if member is not None and name != member.name:
                raise KernelDefinitionError(
                    f"{label} calls the recursive helper {member.qualname!r} as {name!r}; "
                    f"helpers that call each other must do so by their own names "
                    f"({member.name!r})"
                )
            if name in siblings and value is not siblings[name]:
                raise KernelDefinitionError(
                    f"{label} uses the name {name!r} for {value!r}, but the helpers {names} "
                    f"call each other and share one generated module, where {name!r} is the "
                    "helper of that name; rename one of them"
                )
            same = name not in seen or seen[name] is value
            if not same and (literal(value) is None or literal(seen[name]) != literal(value)):
                raise KernelDefinitionError(
                    f"{label} uses the name {name!r} for another object than the helpers it "
                    f"calls recursively ({names}), which share one generated module; "
                    "give one of them another name"
                )
            seen.setdefault(name, value)
        if target == "cpu":
            dec = _decorator(False, boundscheck, fastmath=None)
        else:
            dec = _cuda_decorator(False, boundscheck, device=True)
        functions.append(
            (h.source, emit_references(h.source, options, "helper", target, siblings), dec)
        )
    kind = "" if target == "cpu" else ", CUDA"
    header = f"# veda helpers {names} (generated{kind}; recursive, so not cached on disk)"
    stem = "_".join(h.name for h in helpers) + ("_rec" if target == "cpu" else "_rec_cuda")
    unit = _assemble(stem, header, functions, "", False, target=target)
    # Numba links a recursive call by finding the function's module in sys.modules (without
    # it the call fails at run time with "unresolved symbol"); the name carries the text's hash.
    sys.modules.setdefault(unit.module.__name__, unit.module)
    return unit


# --------------------------------------------------------------------------------------------
# Kernel launchers


def _indent(block: str, n: int) -> str:
    return textwrap.indent(block, " " * n)


def _min(a: str, b: str) -> str:
    """``min(a, b)`` of two integers as a conditional: the builtin compiles an overload of its
    own for each signature (tens of milliseconds of a cold launch each)."""
    return f"({a} if {a} < {b} else {b})"


def _max(a: str, b: str) -> str:
    return f"({a} if {a} > {b} else {b})"


def _segment_loop(ndim: int, lo: str, hi: str, stmt: str) -> str:
    """Visit the flat index range [lo, hi) of the domain in index order, innermost axis
    contiguous: a partial first row, whole rows, a partial last row.

    Whole rows are plain ``range(n_last)`` loops, which LLVM vectorises as it does a
    hand-written loop over rows; one loop with a computed start and end per row ran
    Floyd-Warshall's 200x200 relaxation about 10% slower.
    """
    if ndim == 1:
        return f"for i0 in range({lo}, {hi}):\n{_indent(stmt, 4)}\n"
    last = ndim - 1
    n = f"n{last}"

    def row(r: str) -> str:  # the outer indices of row ``r`` of the (rows, n_last) view
        if ndim == 2:
            return f"i0 = {r}\n"
        return f"i0 = {r} // n1\ni1 = {r} - i0 * n1\n"

    def run(start: str, stop: str) -> str:
        return f"for i{last} in range({start}, {stop}):\n{_indent(stmt, 4)}\n"

    whole = (
        f"for i0 in range(_r0, _r1):\n{_indent(run('0', n), 4)}"
        if ndim == 2
        else f"for _r in range(_r0, _r1):\n{_indent(row('_r') + run('0', n), 4)}"
    )
    split = (
        f"_r0 = {lo} // {n}\n_j = {lo} - _r0 * {n}\n"
        f"_r1 = {hi} // {n}\n_e = {hi} - _r1 * {n}\n"
        "if _r0 == _r1:\n"
        f"{_indent(row('_r0') + run('_j', '_e'), 4)}"
        "else:\n"
        "    if _j > 0:\n"
        f"{_indent(row('_r0') + run('_j', n), 8)}"
        "        _r0 += 1\n"
        f"{_indent(whole, 4)}"
        "    if _e > 0:\n"
        f"{_indent(row('_r1') + run('0', '_e'), 8)}"
    )
    return f"if {lo} < {hi}:\n{_indent(split, 4)}"  # (an empty domain may have n_last == 0)


def _serial_boundary(grow: str) -> str:
    """At a boundary between two pieces of a serial loop: double ``grow`` while pieces are
    cheap, and every POLL_TICKS run Python's pending signal handlers (a raising one ends the
    launch with its exception).  ``_prev`` is 0 before the first boundary."""
    return (
        "_now = _veda_lang.cycles()\n"
        "if _prev == 0:\n"
        "    _tp = _now\n"
        f"    {grow} *= 2\n"
        "else:\n"
        f"    if _now - _prev < {PIECE_GROW}:\n"
        f"        {grow} *= 2\n"
        f"    if _now - _tp >= {POLL_TICKS}:\n"
        "        _tp = _now\n"
        "        _veda_lang.raise_pending(_veda_lang.poll_signals())\n"
        "_prev = _now\n"
    )


def _serial_loop(ndim: int, stmt: str) -> str:
    """The serial loop over the whole domain in pieces of outermost indices, checking for
    signals between pieces; within a piece the loops are the plain nested ranges."""
    inner = " * ".join(f"n{d}" for d in range(1, ndim)) or "1"
    inner_one = _max("1", f"({inner})")
    loops = "for i0 in range(_lo, _hi):\n"
    for d in range(1, ndim):
        loops += " " * (4 * d) + f"for i{d} in range(n{d}):\n"
    loops += " " * (4 * ndim) + f"{stmt}\n"
    return (
        f"_S = {_max('1', f'{SERIAL_PIECE} // {inner_one}')}\n"
        "_lo = 0\n_prev = 0\n_tp = 0\n"
        "while True:\n"
        f"    _hi = {_min('_lo + _S', 'n0')}\n"
        f"{_indent(loops, 4)}"
        "    if _hi >= n0:\n"
        "        break\n"
        "    _lo = _hi\n"
        f"{_indent(_serial_boundary('_S'), 4)}"
    )


#: Where a body cannot be written into a loop as it stands: nodes whose meaning would change
#: (a ``return`` with a value, scopes of their own, generators) or that bind names.
_NOT_INLINED = (
    ast.Yield,
    ast.YieldFrom,
    ast.Await,
    ast.Global,
    ast.Nonlocal,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.Import,
    ast.ImportFrom,
    ast.Match,
    ast.With,
    ast.AsyncWith,
    ast.AsyncFor,
)
#: Statements a bare ``return`` may sit in and still become the loop's ``continue``.
_RETURN_PARENTS = (ast.If,)


#: Names the loops around a written body use, which the body must not bind.
_LOOP_NAMES = frozenset({"range"})
#: Names a body that is written into a loop must not use: what types differently there than in
#: a body inlined by Numba (``literal_unroll`` over a tuple argument types in a plain function,
#: not through the inliner, so the first tier would run a body the serial loop refuses).
_CALLED_ONLY = frozenset({"literal_unroll"})


def _statements(tree: ast.FunctionDef) -> list[ast.stmt]:
    """The body's statements past its docstring."""
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[1:]
    return body


def _returns_as_continue(body: list[ast.stmt], params: set[str]) -> list[ast.Return] | None:
    """The bare ``return`` statements of ``body``, each of which ends one index when the body
    is written into the loop over indices (``continue``); None when it cannot be written there
    as it stands: it returns a value, returns from inside a loop or ``try`` of its own, binds a
    parameter's name (which would carry over to the next index) or a name the loops use, uses
    a name of veda's (``_veda_...``), or holds a node listed in :data:`_NOT_INLINED`."""
    returns: list[ast.Return] = []
    bound = params | _LOOP_NAMES

    def visit(node: ast.AST, plain: bool) -> bool:
        if isinstance(node, _NOT_INLINED):
            return False
        if isinstance(node, ast.Return):
            if node.value is not None or not plain:
                return False
            returns.append(node)
        if isinstance(node, ast.Attribute) and node.attr in _CALLED_ONLY:
            return False
        if isinstance(node, ast.Name):
            if node.id.startswith("_veda_") or node.id in _CALLED_ONLY:
                return False
            if not isinstance(node.ctx, ast.Load) and node.id in bound:
                return False
        if isinstance(node, ast.ExceptHandler) and node.name in bound:
            return False
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (str, bytes))
            and node.lineno != node.end_lineno
        ):
            return False  # (a string over lines would take the new indentation into its text)
        inner = plain and (isinstance(node, _RETURN_PARENTS) or not isinstance(node, ast.stmt))
        return all(visit(child, inner) for child in ast.iter_child_nodes(node))

    if not body or not all(visit(stmt, True) for stmt in body):
        return None
    return returns


def inline_body(src: FunctionSource, ndim: int, depth: int) -> tuple[list[str], int] | None:
    """The kernel body's own lines, indented ``depth`` levels, with each bare ``return`` as
    ``continue``: the statements of a loop over indices that runs the body without a call (so
    that Numba compiles one function, where its inliner took 30-40 ms of a cold launch), and
    the line of ``src.text`` they start at (for :class:`~veda._kernel.cache.LineMap`).  None
    where the body cannot be written into a loop as it stands (:func:`_returns_as_continue`);
    its lines keep their line breaks, so an error points at the user's line."""
    tree, text = src.tree, src.text
    if tree is None or text is None or tree.args.vararg or tree.args.kwarg:
        return None
    params = {a.arg for a in (*tree.args.posonlyargs, *tree.args.args, *tree.args.kwonlyargs)}
    if len(params) < ndim or any(p.startswith("_veda_") or p in _LOOP_NAMES for p in params):
        return None
    body = _statements(tree)
    returns = _returns_as_continue(body, params)
    if returns is None or body[0].lineno <= tree.lineno:  # (nor a body on the ``def``'s line)
        return None
    if body is not tree.body and body[0].lineno <= (tree.body[0].end_lineno or 0):
        return None  # (a statement on the docstring's last line)
    lines = text.splitlines()
    first = body[0].lineno - 1
    last = (tree.end_lineno or len(lines)) - 1
    base = body[0].col_offset
    edits: dict[int, list[int]] = {}
    for ret in returns:
        edits.setdefault(ret.lineno - 1, []).append(ret.col_offset)
    out = []
    pad = " " * (4 * depth)
    for k in range(first, last + 1):
        line = lines[k]
        for col in sorted(edits.get(k, ()), reverse=True):
            raw = line.encode()
            if raw[col : col + 6] != b"return":
                return None
            line = (raw[:col] + b"continue" + raw[col + 6 :]).decode()
        if not line.strip():
            out.append("")
            continue
        lead = line[: len(line) - len(line.lstrip())]
        if "\t" in lead:
            return None  # (spaces before a tab: Python may refuse the mix)
        out.append(pad + line[min(base, len(lead)) :])
    return out, first


def _written_loop(
    src: FunctionSource, ndim: int, nargs: int, decorator: str, name: str
) -> tuple[str, tuple[int, int, int]] | None:
    """``name(lo, hi, n0, ..., args)``: the body's own lines (:func:`inline_body`) in plain
    nested loops over the outermost indices [lo, hi) of the domain.  None where the body cannot
    be written; else the text and where the body's lines are: (line of the text, count, line of
    ``src.text``) for its LineMap."""
    dims = [f"_veda_n{d}" for d in range(ndim)]
    written = inline_body(src, ndim, 1 + ndim)
    params = [a.arg for a in src.tree.args.args] if written is not None and src.tree else []
    if written is None or len(params) != ndim + nargs:
        return None
    index, names = params[:ndim], params[ndim:]
    lines = [decorator, f"def {name}(_veda_lo, _veda_hi, {', '.join(dims + names)}):"]
    for d in range(ndim):
        pad = " " * (4 * (d + 1))
        bounds = "_veda_lo, _veda_hi" if d == 0 else dims[d]
        lines.append(f"{pad}for _veda_i{d} in range({bounds}):")
        lines.append(f"{pad}    {index[d]} = _veda_lang.nonneg(_veda_i{d})")
    body, first = written
    at = len(lines)
    lines += body
    lines.append("    return None")
    text = "\n".join(lines) + "\n"
    try:  # (a safety net: what the checks above missed is called, not written)
        compile(text, "<veda loop>", "exec", dont_inherit=True)
    except SyntaxError:
        return None
    return text, (at, len(body), first)


def span_source(
    src: FunctionSource, ndim: int, nargs: int, decorator: str
) -> tuple[str, tuple[int, int, int] | None]:
    """``_veda_span(lo, hi, n0, ..., args)``: the body over the outermost indices [lo, hi) of
    the domain in plain nested loops, without the serial launcher's signal checks (the launch
    calls it piece by piece from Python, which runs signal handlers between pieces).  A first
    launch on ``"cpu"`` compiles it while ``_veda_cpu`` compiles in the background (see
    :class:`veda.targets.cpu.CPUTarget`): its compile takes about half as long.

    The body is written into the loop where it can be (:func:`_written_loop`), else called
    through Numba's inliner.  Returns the text and, for a written body, where its lines are.
    """
    written = _written_loop(src, ndim, nargs, decorator, "_veda_span")
    if written is not None:
        return written
    dims = [f"_veda_n{d}" for d in range(ndim)]
    names = [f"a{k}" for k in range(nargs)]
    loops = "".join(
        " " * (4 * (d + 1)) + f"for i{d} in range({'_veda_lo, _veda_hi' if d == 0 else dims[d]}):\n"
        for d in range(ndim)
    )
    call = f"{INLINE}({', '.join(f'_veda_lang.nonneg(i{d})' for d in range(ndim))}"
    call += "".join(f", {n}" for n in names) + ")"
    text = (
        f"{decorator}\ndef _veda_span(_veda_lo, _veda_hi, {', '.join(dims + names)}):\n"
        f"{loops}{' ' * (4 * (ndim + 1))}{call}\n    return None\n"
    )
    return text, None


#: The written loop a 1-d kernel's parallel chunk calls (:func:`chunk_loop_source`).
CHUNK_LOOP = "_veda_chunk_loop"


def chunk_loop_source(
    src: FunctionSource, nargs: int, decorator: str
) -> tuple[str, tuple[int, int, int]] | None:
    """``_veda_chunk_loop(lo, hi, n0, args)``: a 1-d kernel's body written into a loop over
    [lo, hi), which its parallel chunk calls inside its ``try`` in place of a loop calling the
    body; None where the body cannot be written (the chunk then calls the body).

    The loop is one function where a called body is two (the body a library of its own, linked
    into the chunk, the worker and the parallel region's three functions and optimised again in
    each): about 40 ms of a 0.9 s cold parallel launch of saxpy.  The body is not written into
    the ``try`` itself: a ``try`` does not catch what code that Numba inlined into it raises
    (``inline='always'`` callees, such as ``veda.random``'s), and a call's failure it does.
    Not for 2-d and 3-d domains, whose chunk visits a flat range in up to four loops."""
    return _written_loop(src, 1, nargs, decorator, CHUNK_LOOP)


def _flat(ndim: int) -> str:
    if ndim == 1:
        return "i0"
    if ndim == 2:
        return "i0 * n1 + i1"
    return "(i0 * n1 + i1) * n2 + i2"


_COMBINE = {
    "sum": "return _a + _b",
    "prod": "return _a * _b",
    # NaN propagates as in np.min / np.max: once the accumulator is NaN it stays NaN.
    "min": "return _b if (_b < _a or _b != _b) else _a",
    "max": "return _b if (_b > _a or _b != _b) else _a",
}


#: Fixed pieces of the domain a deterministic launch of a kernel with ``reduce={name: op}``
#: reduces into copies of their own (the copies cost this many times the array), fewer where
#: the copies would take more than PRIVATE_BYTES (one piece at least).
PRIVATE_PIECES = 64
PRIVATE_BYTES = 256 * 2**20


def private_pieces(nbytes: int) -> int:
    """The pieces (and copies) of a deterministic launch whose reduced arrays take ``nbytes``:
    what the generated ``_P = ...`` computes, for messages."""
    return max(1, min(PRIVATE_PIECES, PRIVATE_BYTES // max(1, nbytes)))


#: Combining a private copy ``_p`` into the argument ``_a``, element by element, per op.
_INTO = {
    "sum": "for _ix in _veda_np.ndindex(_a.shape):\n    _a[_ix] += _p[_ix]\n",
    "prod": "for _ix in _veda_np.ndindex(_a.shape):\n    _a[_ix] *= _p[_ix]\n",
    # As np.minimum / np.maximum: a NaN on either side wins.
    "min": (
        "for _ix in _veda_np.ndindex(_a.shape):\n"
        "    _v = _p[_ix]\n    if _v < _a[_ix] or _v != _v:\n        _a[_ix] = _v\n"
    ),
    "max": (
        "for _ix in _veda_np.ndindex(_a.shape):\n"
        "    _v = _p[_ix]\n    if _v > _a[_ix] or _v != _v:\n        _a[_ix] = _v\n"
    ),
}


def _into_all(count: str, private: Sequence[tuple[int, str]]) -> str:
    """Combine copies 0 .. count-1 of each reduced argument into it, in that order."""
    lines = [f"for _w in range({count}):"]
    for k, op in private:
        lines.append(f"    _veda_into_{op}(a{k}, _pv{k}[_w].reshape(a{k}.shape))")
    return "\n".join(lines) + "\n"


#: Independent accumulators in a 1-d reduction block.  One chain waits for each add (four cycles
#: of latency); four chains keep the adder busier: a dot product of 1e6 float64 went from 874 us
#: to 343 us on one thread.  (Eight overflow Numba's SSA pass on the parallel launcher.)  Their
#: combine order is fixed, so results stay exact for integers and reproducible for floats.
#: Used where the order must not depend on the compiler: min and max, and deterministic mode.
UNROLL = 4

#: Reductions whose blocks add (or multiply) through ``language.reassoc_add`` / ``reassoc_mul``:
#: the op with LLVM's ``reassoc`` flag on floats, so that LLVM may split a block's running value
#: over SIMD lanes (the body's own arithmetic stays strict).  A strict chain of
#: float adds is never vectorised: a sum of squares of 1e5 float64 took 20.8 us with four
#: scalar accumulators and 11.7 us so, on one thread of the 2-core machine.  Blocks are still
#: REDUCE_BLOCK long and combined in order; which lane gets which element is LLVM's choice.
LANES_OPS = ("sum", "prod")


def _unrolled_block(body: str, args: str) -> str:
    """Reduce the 1-d index range [_blo, _bhi) into _b with UNROLL independent accumulators."""
    accs = [f"_a{k}" for k in range(UNROLL)]
    lines = [f"{a} = _ident" for a in accs]
    lines.append("_i = _blo")
    lines.append(f"while _i + {UNROLL} <= _bhi:")
    for k, a in enumerate(accs):
        idx = "_i" if k == 0 else f"_i + {k}"
        lines.append(
            f"    {a} = _veda_combine({a}, _veda_lang.to_accumulator("
            f"{body}(_veda_lang.nonneg({idx}){args}), {a}))"
        )
    lines.append(f"    _i += {UNROLL}")
    lines.append("while _i < _bhi:")
    lines.append(
        f"    _a0 = _veda_combine(_a0, _veda_lang.to_accumulator("
        f"{body}(_veda_lang.nonneg(_i){args}), _a0))"
    )
    lines.append("    _i += 1")
    pairs = accs
    while len(pairs) > 1:  # a fixed pairwise tree
        pairs = [f"_veda_combine({pairs[k]}, {pairs[k + 1]})" for k in range(0, len(pairs), 2)]
    lines.append(f"_b = {pairs[0]}")
    return "\n".join(lines) + "\n"


def kernel_launchers(
    body: str,
    ndim: int,
    nargs: int,
    reduce: str | None,
    cache: bool,
    boundscheck: bool,
    private: Sequence[tuple[int, str]] = (),
    fastmath: frozenset[str] = frozenset(),
    written_chunk: bool = False,
) -> str:
    """Source of the serial and parallel launchers around ``body``.

    ``private`` lists (argument position, op) of the arrays reduced into private copies
    (``reduce={name: op}``): each parallel worker updates a copy of its own, set to the op's
    identity, and the launcher combines the copies into the argument after the region, worker
    by worker.  The serial launcher updates the argument itself.  In deterministic mode both
    run over PRIVATE_PIECES fixed pieces of the domain, each into its own copy, combined in
    piece order: the same bits whatever the thread count, schedule or chunk.

    ``_veda_chunk`` runs one chunk of the flat domain inside a ``try``: per chunk, not per
    index, because a ``try`` around every call keeps the body from being inlined (a 2-d stencil
    ran 20x slower that way).  When a chunk fails, ``_veda_first_failure`` finds the failing
    index in it and ``_veda_at`` raises the body's own exception there.  With ``written_chunk``
    a 1-d chunk calls ``_veda_chunk_loop`` (:func:`chunk_loop_source`), which the caller
    appends to the module, instead of a loop calling the body.
    """
    dims = ", ".join(f"n{d}" for d in range(ndim))
    idx = ", ".join(f"i{d}" for d in range(ndim))
    nn_idx = ", ".join(f"_veda_lang.nonneg(i{d})" for d in range(ndim))
    args = "".join(f", a{k}" for k in range(nargs))
    # What a worker passes for the arguments: its private copies in place of reduced arrays.
    mine = dict(private)
    wargs = "".join(f", _mine{k}" if k in mine else f", a{k}" for k in range(nargs))
    pv_state = "".join(f", _pv{k}" for k, _ in private)
    size = " * ".join(f"n{d}" for d in range(ndim))
    dec = _decorator(cache, boundscheck, fastmath=fastmath)
    pdec = _decorator(cache, boundscheck, parallel=True, fastmath=fastmath)
    idec = _inline_decorator(boundscheck, fastmath)
    xdec = _decorator(cache, boundscheck, fastmath=fastmath, internal=True)
    # The body's argument types, for typing the identity: a tuple even of one item.
    probe = "(" + "".join(["_z, "] * ndim) + "".join(f"a{k}, " for k in range(nargs)) + ")"
    out: list[str] = []

    def fn(signature: str, code: str, decorator: str = dec) -> None:
        out.append(f"{decorator}\ndef {signature}:\n{_indent(code, 4)}")

    out.append(f"{INLINE} = {idec[1:]}({body}.py_func)")
    for op in sorted(set(mine.values())):
        fn(f"_veda_into_{op}(_a, _p)", _INTO[op], idec)

    call = f"{body}({nn_idx}{args})"
    # The serial launcher calls the body through an inlining dispatcher (see INLINE): one
    # compiled library per launch instead of two.  Never inside a ``try``: Numba does not
    # catch an exception raised by inlined code there.
    inline_call = f"{INLINE}({nn_idx}{args})"
    fn(f"_veda_at({idx}{args})", f"{body}({idx}{args})\n")
    fn(
        f"_veda_safe({idx}{args})",
        f"try:\n    {body}({idx}{args})\nexcept Exception:\n    return True\nreturn False\n",
        xdec,
    )
    find_stmt = f"if _veda_safe({nn_idx}{args}):\n    return {_flat(ndim)}"
    fn(
        f"_veda_first_failure(_lo, _hi, {dims}{args})",
        _segment_loop(ndim, "_lo", "_hi", find_stmt) + "return -1\n",
    )

    # Counting blocks of a reduction between two signal checks: the first check comes after
    # the first block (a one-block reduction never reads the clock), and none after the last.
    block_check = (
        "    _nb += 1\n"
        "    if _nb >= _K and {more}:\n"
        "        _nb = 0\n"
        f"{_indent(_serial_boundary('_K'), 8)}"
    )
    block_counters = "_nb = 0\n_K = 1\n_prev = 0\n_tp = 0\n"
    if reduce is None:
        fn(f"_veda_cpu({dims}{args})", _serial_loop(ndim, inline_call) + "return None\n")
        walk = (
            f"{CHUNK_LOOP}(_lo, _hi, {dims}{args})\n"
            if written_chunk
            else _segment_loop(ndim, "_lo", "_hi", call)
        )
        fn(
            f"_veda_chunk(_lo, _hi, {dims}{args})",
            f"try:\n{_indent(walk, 4)}except Exception:\n    return True\nreturn False\n",
            xdec,
        )
        run_chunk = f"_bad = _veda_chunk(_lo, _hi, {dims}{wargs})\n"
        acc_init = result = ""
        ret = "return None, _err[0], _err[1]"
        if private:
            acc_init = "".join(
                f"_pv{k} = _veda_lang.private_copies(_veda_T, a{k}, {op!r})\n" for k, op in private
            )
            result = "if _err[0] < 0:\n" + _indent(_into_all("_veda_T", private), 4)
    else:
        # Inlined everywhere: it cannot raise, and a library of its own costs a megabyte.
        fn("_veda_combine(_a, _b)", _COMBINE[reduce] + "\n", idec)
        ident = f"_veda_lang.reduce_identity({body}, {probe}, {reduce!r})"
        # Typing only: the identity in the accumulator's type, which the CUDA target needs on
        # the host to size its partials (the body is typed, never run).
        fn(
            f"_veda_acc_probe({args[2:]})",
            f"_z = _veda_np.int64(0)\nreturn _veda_np.full(1, {ident})\n",
        )

        lanes = reduce in LANES_OPS

        def block_of(callee: str, strict: bool = False) -> str:
            """One REDUCE_BLOCK [_blo, _bhi) reduced into _b, calling ``callee`` (``strict``:
            in an order the compiler keeps, see UNROLL and LANES_OPS)."""
            if strict or not lanes:
                if ndim == 1:
                    return _unrolled_block(callee, args)
                combine = "_veda_combine"
            else:
                combine = "_veda_lang.reassoc_add" if reduce == "sum" else "_veda_lang.reassoc_mul"

            def stmt(index: str) -> str:
                value = f"_veda_lang.to_accumulator({callee}({index}{args}), _b)"
                return f"_b = {combine}(_b, {value})"

            if ndim == 1:
                return (
                    "_b = _ident\nfor _i in range(_blo, _bhi):\n"
                    f"    {stmt('_veda_lang.nonneg(_i)')}\n"
                )
            return "_b = _ident\n" + _segment_loop(ndim, "_blo", "_bhi", stmt(nn_idx))

        def over_blocks(block: str) -> str:
            """[_lo, _hi) reduced into _acc, block by block."""
            return (
                "_blo = _lo\n"
                "while _blo < _hi:\n"
                f"    _bhi = {_min(f'_blo + {REDUCE_BLOCK}', '_hi')}\n"
                f"{_indent(block, 4)}"
                "    _acc = _veda_combine(_acc, _b)\n"
                "    _blo = _bhi\n"
            )

        inline_blocked = over_blocks(block_of(INLINE))
        blocked = over_blocks(block_of(body))
        block = block_of(body, strict=True)  # deterministic mode's
        fn(
            f"_veda_cpu({dims}{args})",
            f"_z = _veda_np.int64(0)\n_ident = {ident}\n_acc = _ident\n_lo = 0\n_hi = {size}\n"
            f"{block_counters}{inline_blocked}{block_check.format(more='_blo < _hi')}"
            "return _veda_lang.one_element(_acc)\n",
        )
        fn(
            f"_veda_chunk(_acc, _lo, _hi, {dims}{args})",
            f"_z = _veda_np.int64(0)\n_ident = {ident}\n"
            f"try:\n{_indent(blocked, 4)}except Exception:\n    return True, _acc\n"
            "return False, _acc\n",
            xdec,
        )
        run_chunk = f"_bad, _acc = _veda_chunk(_acc, _lo, _hi, {dims}{args})\n"
        acc_init = (
            f"_z = _veda_np.int64(0)\n_ident = {ident}\n"
            "_partials = _veda_lang.scratch(_veda_T, _ident)\n"
        )
        result = (
            "_res = _ident\n"
            "for _w in range(_veda_T):\n"
            "    _res = _veda_combine(_res, _partials[_w])\n"
        )
        ret = "return _veda_lang.one_element(_res), _err[0], _err[1]"

    record = "if _bad:\n    _err[0] = _lo\n    _err[1] = _hi\n    break\n"
    plain_head = f"_N = {size}\n_C = _veda_chunk_size\n"
    # Each variant: (name, head, init, state, chunk_code, rec, combine, returns).  ``state``
    # names the arrays and values the launcher hands its workers besides the common ones; a
    # reduction's worker returns its accumulator, stored in its slot of ``_partials``.
    ident_state = (", _ident" if reduce is not None else "") + pv_state
    variants = [
        ("_veda_parallel", plain_head, acc_init, ident_state, run_chunk, record, result, ret),
        # The profiled variant is a separate function, so profiling costs nothing when off:
        # each worker adds up the cycles it spends in chunks (readcyclecounter), counts them.
        (
            "_veda_parallel_profile",
            plain_head,
            acc_init + "_busy = _veda_np.zeros(_veda_T, _veda_np.int64)\n"
            "_nchunks = _veda_np.zeros(_veda_T, _veda_np.int64)\n",
            ident_state + ", _busy, _nchunks",
            "_t0 = _veda_lang.cycles()\n"
            + run_chunk
            + "_busy[_w] += _veda_lang.cycles() - _t0\n_nchunks[_w] += 1\n",
            record,
            result,
            ret.replace("_err[1]", "_err[1], _busy, _nchunks"),
        ),
    ]
    if reduce is not None:
        # Deterministic mode: the work items are fixed blocks of REDUCE_BLOCK elements (chunk
        # counted in elements, rounded up to whole blocks); each block's partial lands in its
        # own slot and the slots are combined by a fixed pairwise tree, so neither the thread
        # count, the schedule nor the chunk can change a bit, and "cpu" gives the same bits.
        B = REDUCE_BLOCK
        fn(
            "_veda_pairwise(_p, _n, _ident)",
            "if _n == 0:\n    return _ident\n"
            "while _n > 1:\n"
            "    _h = _n // 2\n"
            "    for _i in range(_h):\n"
            "        _p[_i] = _veda_combine(_p[2 * _i], _p[2 * _i + 1])\n"
            "    if _n % 2:\n"
            "        _p[_h] = _p[_n - 1]\n"
            "    _n = _h + _n % 2\n"
            "return _p[0]\n",
            xdec,
        )
        det_blocks = (
            "for _bi in range(_blk_lo, _blk_hi):\n"
            f"    _blo = _bi * {B}\n"
            f"    _bhi = {_min(f'_blo + {B}', '_NE')}\n"
            f"{_indent(block, 4)}"
            "    _p[_bi] = _b\n"
        )
        fn(
            f"_veda_det_blocks(_p, _blk_lo, _blk_hi, {dims}{args})",
            f"_z = _veda_np.int64(0)\n_ident = {ident}\n_NE = {size}\n"
            f"try:\n{_indent(det_blocks, 4)}except Exception:\n    return True\n"
            "return False\n",
            xdec,
        )
        fn(
            f"_veda_det_cpu({dims}{args})",
            f"_z = _veda_np.int64(0)\n_ident = {ident}\n_NE = {size}\n"
            f"_nblk = (_NE + {B - 1}) // {B}\n"
            f"_p = _veda_np.full({_max('_nblk', '1')}, _ident)\n_blk_lo = 0\n_blk_hi = _nblk\n"
            f"{block_counters}{det_blocks}{block_check.format(more='_bi + 1 < _blk_hi')}"
            "return _veda_lang.one_element(_veda_pairwise(_p, _nblk, _ident))\n",
        )
        variants.append(
            (
                "_veda_det_parallel",
                f"_NE = {size}\n_N = (_NE + {B - 1}) // {B}\n"
                f"_C = {_max('1', f'(_veda_chunk_size + {B - 1}) // {B}')}\n",
                f"_z = _veda_np.int64(0)\n_ident = {ident}\n"
                f"_p = _veda_np.full({_max('_N', '1')}, _ident)\n",
                ", _p, _NE",
                f"_bad = _veda_det_blocks(_p, _lo, _hi, {dims}{args})\n",
                f"if _bad:\n    _err[0] = _lo * {B}\n"
                f"    _err[1] = {_min(f'_hi * {B}', '_NE')}\n    break\n",
                "",
                "return _veda_lang.one_element(_veda_pairwise(_p, _N, _ident)), _err[0], _err[1]",
            )
        )
    if private:
        # Deterministic mode: PRIVATE_PIECES fixed pieces of the flat domain, each reduced in
        # index order into a copy of its own, the copies combined in piece order.
        # As many pieces as PRIVATE_BYTES of copies allow (at least one): a count that depends
        # on the arrays' sizes only, so every launch of them cuts the domain alike.
        nbytes = " + ".join(f"a{k}.nbytes" for k, _ in private)
        count = (
            f"_cap = {PRIVATE_BYTES} // {_max('1', f'({nbytes})')}\n"
            f"_P = {_max('1', _min(str(PRIVATE_PIECES), '_cap'))}\n"
        )
        q, r = "(_NE // _P)", "(_NE % _P)"

        def piece_lo(p: str) -> str:
            return f"({q} * {p} + {_min(p, r)})"

        def piece(callee: str, check: str) -> str:
            """Reduce piece ``_p`` into its copies, calling ``callee`` per index, in stretches
            that double while cheap with ``check`` between them (a piece is 1/64 of the domain:
            Ctrl-C must not wait for it)."""
            views = "".join(f"_mine{k} = _pv{k}[_p].reshape(a{k}.shape)\n" for k, _ in private)
            stmt = f"{callee}({nn_idx}{wargs})"
            bounds = f"_lo = {piece_lo('_p')}\n_hi = {piece_lo('(_p + 1)')}\n"
            return (
                # (_ps, _pe: _segment_loop's own names, _r0, _r1, _j, _e, _r, stay its own)
                f"{bounds}{views}_ps = _lo\n_G = {SERIAL_PIECE}\n"
                "while _ps < _hi:\n"
                f"    _pe = {_min('_ps + _G', '_hi')}\n"
                f"{_indent(_segment_loop(ndim, '_ps', '_pe', stmt), 4)}"
                "    _ps = _pe\n"
                "    _now = _veda_lang.cycles()\n"
                f"    if _now - _prev < {PIECE_GROW}:\n"
                "        _G *= 2\n"
                "    _prev = _now\n"
                f"    if _now - _tp >= {POLL_TICKS}:\n"
                "        _tp = _now\n"
                f"{_indent(check, 8)}"
            )

        raise_now = "_veda_lang.raise_pending(_veda_lang.poll_signals())\n"
        # The worker on the launching thread polls and raises the flag that stops the others
        # (inside the try, raising would read as the body's failure); the serial launcher
        # raises the signal handler's exception itself.
        stop = (
            "if _me and _veda_lang.poll_signals():\n"
            "    _veda_lang.atomic_store(_err, 2, 1)\n"
            "if _veda_lang.atomic_load(_err, 2) != 0:\n"
            "    _stop = True\n"
            "    break\n"
        )

        copies = "".join(
            f"_pv{k} = _veda_lang.private_copies(_P, a{k}, {op!r})\n" for k, op in private
        )
        fn(
            f"_veda_det_pieces(_plo, _phi, _NE, _P, _err, _me{pv_state}, {dims}{args})",
            "_prev = _veda_lang.cycles()\n_tp = _prev\n_stop = False\n"
            "try:\n"
            "    for _p in range(_plo, _phi):\n"
            f"{_indent(piece(body, stop), 8)}"
            "        if _stop:\n"
            "            break\n"
            "except Exception:\n    return True\nreturn False\n",
            xdec,
        )
        fn(
            f"_veda_det_cpu({dims}{args})",
            f"_NE = {size}\n{count}{copies}"
            "_prev = _veda_lang.cycles()\n_tp = _prev\n"
            "for _p in range(_P):\n"
            f"{_indent(piece(INLINE, raise_now), 4)}"
            f"{_into_all('_P', private)}"
            "return None\n",
        )
        variants.append(
            (
                "_veda_det_parallel",
                f"_NE = {size}\n{count}_N = _P\n_C = 1\n",
                copies,
                pv_state + ", _NE, _P",
                f"_bad = _veda_det_pieces(_lo, _hi, _NE, _P, _err, _me{pv_state}, {dims}{args})\n",
                f"if _bad:\n    _err[0] = {piece_lo('_lo')}\n"
                f"    _err[1] = {piece_lo('_hi')}\n    break\n",
                "if _err[0] < 0:\n" + _indent(_into_all("_P", private), 4),
                "return None, _err[0], _err[1]",
            )
        )
    for name, head, init, state, chunk_code, rec, combine, returns in variants:
        # Each chunk the schedule hands out, [_clo, _chi), is walked in pieces [_lo, _hi) that
        # double while they are cheap (PIECE_GROW), so that a worker reaches a check often
        # enough whatever the chunk; the worker on the launching thread runs Python's pending
        # signal handlers every POLL_TICKS, and one that raised stops every worker at its next
        # piece (_err[2]) and ends the launch with its exception.
        #
        # The workers' loop is a function of its own, called once per worker from a one-line
        # parallel region: Numba's parfor passes copy and re-analyse the region's body, and
        # a large body made them most of a cold parallel launch's compile.  ``_w`` is cast to
        # int64 because the region's body types it once as int64 and once as uint64: two
        # compiles of the worker otherwise.
        first = 1 if name == "_veda_det_parallel" else REDUCE_BLOCK if reduce else PARALLEL_PIECE
        accumulates = reduce is not None and name != "_veda_det_parallel"
        pieces = bool(private) and name == "_veda_det_parallel"  # work items: fixed pieces
        # ``_err`` is the launcher's whole ``_sync``: its words 0-2 are the error slots, word
        # COUNTER_WORD the chunk counter (an array argument fewer for the region to pass).
        common = "_N, _C, _veda_T, _veda_mode, _err, _bounds, _caller"
        # Each worker's own copies; in deterministic mode each piece's (see _veda_det_pieces).
        prologue = (
            "".join(f"_mine{k} = _pv{k}[_w].reshape(a{k}.shape)\n" for k, _ in private)
            if private and not pieces
            else ""
        )
        fn(
            f"{name}_worker(_w, {common}{state}, {dims}{args})",
            "_k = 0\n"
            "_me = _veda_lang.thread_ident() == _caller\n"
            f"_S = {first}\n"
            "_prev = _veda_lang.cycles()\n"
            "_tp = _prev\n"
            f"{'_acc = _ident' + chr(10) if accumulates else ''}"
            f"{prologue}"
            "while True:\n"
            "    if _veda_mode == 0:\n"
            "        if _k > 0:\n"
            "            break\n"
            "        _clo = _N * _w // _veda_T\n"
            "        _chi = _N * (_w + 1) // _veda_T\n"
            "    elif _veda_mode == 1:\n"
            "        _clo = (_w + _k * _veda_T) * _C\n"
            f"        _chi = {_min('_clo + _C', '_N')}\n"
            "    elif _veda_mode == 2:\n"
            f"        _clo = _veda_lang.fetch_add(_err, {COUNTER_WORD}, 1) * _C\n"
            f"        _chi = {_min('_clo + _C', '_N')}\n"
            "    else:\n"
            f"        _c = _veda_lang.fetch_add(_err, {COUNTER_WORD}, 1)\n"
            "        if _c >= _bounds.shape[0] - 1:\n"
            "            break\n"
            "        _clo = _bounds[_c]\n"
            "        _chi = _bounds[_c + 1]\n"
            "    if _clo >= _chi:\n"
            "        break\n"
            "    _k += 1\n"
            "    _hi = _clo\n"
            "    while _hi < _chi:\n"
            "        if _veda_lang.atomic_load(_err, 0) >= 0:\n"
            "            break\n"
            "        if _veda_lang.atomic_load(_err, 2) != 0:\n"
            "            break\n"
            "        _lo = _hi\n"
            f"        _hi = {_min('_lo + _S', '_chi')}\n"
            f"{_indent(chunk_code, 8)}"
            f"{_indent(rec, 8)}"
            "        _now = _veda_lang.cycles()\n"
            f"        if _now - _prev < {PIECE_GROW} and _S < _N:\n"
            "            _S *= 2\n"
            "        _prev = _now\n"
            f"        if _me and _now - _tp >= {POLL_TICKS}:\n"
            "            _tp = _now\n"
            "            if _veda_lang.poll_signals():\n"
            "                _veda_lang.atomic_store(_err, 2, 1)\n"
            "    if _veda_lang.atomic_load(_err, 0) >= 0:\n"
            "        break\n"
            "    if _veda_lang.atomic_load(_err, 2) != 0:\n"
            "        break\n"
            f"return {'_acc' if accumulates else '0'}\n",
            xdec,
        )
        # Deterministic pieces are handed out one at a time from the counter, whatever the
        # schedule: which worker runs a piece cannot change its copy.
        called = common.replace("_err", "_sync")
        called = called.replace("_veda_mode", "2") if pieces else called
        call = f"{name}_worker(_veda_np.int64(_w), {called}{state}, {dims}{args})"
        fn(
            f"{name}({dims}, _veda_T, _veda_mode, _veda_chunk_size, _bounds{args})",
            f"{head}"
            # The chunk counter, which a dynamic or guided worker bumps for every chunk, 256
            # bytes away from the error slots, which every worker reads for every piece: on one
            # cache line the two cores passed it back and forth at each chunk.
            f"_sync = _veda_lang.scratch({SYNC_WORDS}, _veda_np.int64(-1))\n"
            "_err = _sync[0:3]\n"
            "_err[2] = 0\n"
            f"_sync[{COUNTER_WORD}] = 0\n"
            "_caller = _veda_lang.thread_ident()\n"
            f"{init}"
            "for _w in _veda_numba.prange(_veda_T):\n"
            f"    {'_partials[_w] = ' if accumulates else ''}{call}\n"
            "_veda_lang.raise_pending(_err[2])\n"
            f"{combine}"
            f"{returns}\n",
            pdec,
        )
    return "\n\n".join(out)


def kernel_unit(
    src: FunctionSource,
    ndim: int,
    nargs: int,
    reduce: str | None,
    options: tuple[bool, bool],
    private: Sequence[tuple[int, str]] = (),
    fastmath: frozenset[str] = frozenset(),
) -> Unit:
    """The generated module holding a kernel's body and its CPU launchers (``fastmath``: the
    kernel's flags, given to the body and to every launcher, whose loops the body is inlined
    into)."""
    boundscheck, cache = options
    emitted = emit_references(src, options, "kernel")
    body = src.name
    header = (
        f"# veda kernel {src.pyfunc.__module__}.{src.pyfunc.__qualname__} (generated)\n"
        f"# {ndim}-d domain, {nargs} argument(s), reduce={reduce!r}"
        + (f", private {list(private)!r}" if private else "")
    )
    dec = _decorator(cache, boundscheck, fastmath=fastmath)
    loop = None
    if reduce is None and ndim == 1:
        loop_dec = _decorator(cache, boundscheck, fastmath=fastmath, internal=True)
        loop = chunk_loop_source(src, nargs, loop_dec)
    tail = kernel_launchers(
        body, ndim, nargs, reduce, cache, boundscheck, private, fastmath, loop is not None
    )
    spans: list[tuple[int, int, int]] = []

    def append(text: str, where: tuple[int, int, int] | None) -> None:
        nonlocal tail
        tail = f"{tail.rstrip()}\n\n\n{text}"
        if where is not None:
            at, length, first = where
            spans.append((tail.count("\n") - text.count("\n") + at, length, first))

    if loop is not None:
        append(*loop)
    if reduce is None and not private:  # the first tier of "cpu" (CPUTarget)
        # It keeps the GIL: the background compile of the serial loop holds the GIL for
        # milliseconds at a time, and a piece that gave it up waited that long to go on.
        span_dec = _decorator(cache, boundscheck, fastmath=fastmath, nogil=False)
        append(*span_source(src, ndim, nargs, span_dec))
    return _assemble(f"{src.name}_{ndim}d", header, [(src, emitted, dec)], tail, cache, spans=spans)


# --------------------------------------------------------------------------------------------
# CUDA


def _cuda_decorator(cache: bool, boundscheck: bool, device: bool, fastmath: bool = False) -> str:
    # Numba's CUDA target has no bounds checking, and exceptions raised in a kernel body reach
    # the host through the guarded call of the generated kernel (cuda_launchers), not through
    # Numba's debug mode: boundscheck changes nothing in CUDA code (it names the module apart).
    del boundscheck
    dev = "device=True, " if device else ""
    # Numba's CUDA fastmath is all or nothing: flush-to-zero, approximate division and square
    # root, contraction into FMAs.
    return f"@_veda_cuda.jit({dev}cache={cache}{', fastmath=True' if fastmath else ''})"


def cuda_function_unit(src: FunctionSource, options: tuple[bool, bool]) -> Unit:
    """The generated module of a ``@veda.func`` helper as a CUDA device function."""
    boundscheck, cache = options
    emitted = emit_references(src, options, "helper", target="cuda")
    header = f"# veda helper {src.pyfunc.__module__}.{src.pyfunc.__qualname__} (generated, CUDA)"
    dec = _cuda_decorator(cache, boundscheck, device=True)
    return _assemble(src.name, header, [(src, emitted, dec)], "", cache, target="cuda")


def _cuda_split(ndim: int, indent: int) -> str:
    if ndim == 1:
        code = "i0 = _f\n"
    elif ndim == 2:
        code = "i0 = _f // n1\ni1 = _f - i0 * n1\n"
    else:
        code = "i0 = _f // (n1 * n2)\n_r = _f - i0 * (n1 * n2)\ni1 = _r // n2\ni2 = _r - i1 * n2\n"
    return _indent(code, indent)


def _cuda_tree(indent: int) -> str:
    """Combine a block's values in shared memory by halving strides.

    The first stride is the largest power of two below the block size, and a thread combines
    only with a partner inside the block, so any block size works (a power of two combines in
    the same order as a plain halving tree).
    """
    code = (
        "_sm[_t] = _acc\n"
        "_veda_cuda.syncthreads()\n"
        "_h = 1\n"
        "while _h * 2 < _VEDA_BLOCK:\n"
        "    _h *= 2\n"
        "while _h > 0:\n"
        "    if _t < _h and _t + _h < _VEDA_BLOCK:\n"
        "        _sm[_t] = _veda_combine(_sm[_t], _sm[_t + _h])\n"
        "    _veda_cuda.syncthreads()\n"
        "    _h //= 2\n"
    )
    return _indent(code, indent)


def cuda_launchers(
    body: str,
    ndim: int,
    nargs: int,
    reduce: str | None,
    acc: str | None,
    identity: str | None,
    block: int,
    cache: bool,
    boundscheck: bool,
    fastmath: bool = False,
) -> str:
    """Source of the CUDA kernels around ``body``: a grid-stride loop over the flat domain.

    Reductions accumulate per thread in the grid-stride loop (or, with ``_per_block > 0``, over
    a fixed run of ``_per_block`` elements per block), combine a block's threads by a tree in
    shared memory, write one partial per block, and ``_veda_final`` (one block) combines the
    partials the same way: no atomics, and a fixed order for a fixed grid.

    The body is called through ``_veda_guard`` (:func:`veda._kernel.cuda_language.guard`): a
    thread whose call raised writes its flat index to ``_err[0]`` and stops (a reduction's
    thread stops accumulating but still takes part in the block's tree), and the host raises
    the body's exception after the launch.
    """
    dims = ", ".join(f"n{d}" for d in range(ndim))
    idx = ", ".join(f"i{d}" for d in range(ndim))
    args = "".join(f", a{k}" for k in range(nargs))
    size = " * ".join(f"n{d}" for d in range(ndim))
    kdec = _cuda_decorator(cache, boundscheck, device=False, fastmath=fastmath)
    ddec = _cuda_decorator(cache, boundscheck, device=True, fastmath=fastmath)
    if reduce is None:
        return (
            f"_veda_guarded = _veda_guard({body})\n\n\n"
            f"{kdec}\ndef _veda_kernel({dims}{args}, _err):\n"
            f"    _N = {size}\n"
            "    _f = _veda_cuda.grid(1)\n"
            "    _s = _veda_cuda.gridsize(1)\n"
            "    while _f < _N:\n"
            f"{_cuda_split(ndim, 8)}"
            f"        if _veda_guarded({idx}{args}):\n"
            "            _err[0] = _f\n"
            "            return\n"
            "        _f += _s\n"
        )
    assert acc is not None and identity is not None
    return (
        f"_veda_acc = _veda_np.dtype({acc!r}).type\n"  # np.bool exists from NumPy 2 only
        f"_veda_ident = {identity}\n"
        f"_VEDA_BLOCK = {block}\n"
        f"_veda_guarded = _veda_guard({body}, True)\n\n\n"
        f"{ddec}\ndef _veda_combine(_a, _b):\n    {_COMBINE[reduce]}\n\n\n"
        f"{kdec}\ndef _veda_partials({dims}{args}, _out, _per_block, _err):\n"
        "    _sm = _veda_cuda.shared.array(_VEDA_BLOCK, _veda_acc)\n"
        "    _t = _veda_cuda.threadIdx.x\n"
        f"    _N = {size}\n"
        "    _acc = _veda_acc(_veda_ident)\n"
        "    if _per_block == 0:\n"
        "        _f = _veda_cuda.grid(1)\n"
        "        _s = _veda_cuda.gridsize(1)\n"
        "        _end = _N\n"
        "    else:\n"
        "        _f = _veda_cuda.blockIdx.x * _per_block + _t\n"
        "        _s = _VEDA_BLOCK\n"
        "        _end = min(_veda_cuda.blockIdx.x * _per_block + _per_block, _N)\n"
        "    while _f < _end:\n"
        f"{_cuda_split(ndim, 8)}"
        f"        _bad, _v = _veda_guarded({idx}{args})\n"
        "        if _bad:\n"
        "            _err[0] = _f\n"
        "            break\n"
        "        _acc = _veda_combine(_acc, _veda_acc(_v))\n"
        "        _f += _s\n"
        f"{_cuda_tree(4)}"
        "    if _t == 0:\n"
        "        _out[_veda_cuda.blockIdx.x] = _sm[0]\n\n\n"
        f"{kdec}\ndef _veda_final(_p, _n, _res):\n"
        "    _sm = _veda_cuda.shared.array(_VEDA_BLOCK, _veda_acc)\n"
        "    _t = _veda_cuda.threadIdx.x\n"
        "    _acc = _veda_acc(_veda_ident)\n"
        "    _k = _t\n"
        "    while _k < _n:\n"
        "        _acc = _veda_combine(_acc, _p[_k])\n"
        "        _k += _VEDA_BLOCK\n"
        f"{_cuda_tree(4)}"
        "    if _t == 0:\n"
        "        _res[0] = _sm[0]\n"
    )


def cuda_kernel_unit(
    src: FunctionSource,
    ndim: int,
    nargs: int,
    reduce: str | None,
    acc: str | None,
    identity: str | None,
    block: int,
    options: tuple[bool, bool],
    fastmath: bool = False,
) -> Unit:
    """The generated module holding a kernel's body as a device function and its CUDA kernels."""
    boundscheck, cache = options
    emitted = emit_references(src, options, "kernel", target="cuda")
    header = (
        f"# veda kernel {src.pyfunc.__module__}.{src.pyfunc.__qualname__} (generated, CUDA)\n"
        f"# {ndim}-d domain, {nargs} argument(s), reduce={reduce!r}, accumulator {acc}, "
        f"block {block}"
    )
    tail = cuda_launchers(
        src.name, ndim, nargs, reduce, acc, identity, block, cache, boundscheck, fastmath
    )
    dec = _cuda_decorator(cache, boundscheck, device=True, fastmath=fastmath)
    return _assemble(
        f"{src.name}_{ndim}d_cuda", header, [(src, emitted, dec)], tail, cache, target="cuda"
    )
