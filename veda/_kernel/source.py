"""What veda learns from a kernel's Python source before compiling it.

* the function's own text (decorators stripped) and where it came from, so generated modules can
  carry it and errors can point back to the user's file and line;
* its parameters, the parameters it writes (directly, through atomics, or through ``@veda.func``
  helpers), and the arrays it indexes directly by a launch index (for domain checks);
* the globals and closure variables it uses, and how to reproduce each one in a generated module.
"""

from __future__ import annotations

import ast
import dis
import hashlib
import importlib
import inspect
import linecache
import math
import sys
import textwrap
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veda.errors import KernelDefinitionError

# Callables that write the array passed as their first argument.
_WRITING_CALLS = {"atomic_add", "atomic_min", "atomic_max"}
# Attributes of an array that read nothing of its data and give no view of it.
_META_ATTRS = {"shape", "ndim", "size", "dtype", "itemsize", "nbytes"}
# Builtins that only read their arguments.
_READING_BUILTINS = {
    "len",
    "min",
    "max",
    "abs",
    "float",
    "int",
    "complex",
    "bool",
    "round",
    "range",
    "sum",
    "print",
    "divmod",
    "pow",
    "isinstance",
}
# NumPy functions Numba compiles that write an argument.
_NUMPY_WRITERS = {
    "fill_diagonal",
    "copyto",
    "put",
    "place",
    "putmask",
    "shuffle",
    "permutation",
    "resize",
    "ndarray",
}


def _is_atomic(callee: Any) -> bool:
    """Whether ``callee`` is one of veda's atomics, whatever name the body calls it by."""
    if callee is None or not str(getattr(callee, "__module__", "")).startswith("veda"):
        return False
    return getattr(callee, "__name__", None) in _WRITING_CALLS


def _reads_only(callee: Any, pos: int) -> bool:
    """Whether a call of ``callee`` provably only reads its positional argument ``pos``."""
    import builtins

    if callee is None:
        return False
    maybe = getattr(callee, "maybe_written_positions", None)
    if maybe is not None:  # a @veda.func: its own analysis decides
        return pos not in maybe()
    if _is_atomic(callee):
        return pos != 0  # the array; the index and the value are read
    if isinstance(callee, np.ufunc):
        return pos < callee.nin  # positions from nin on are outputs
    name = getattr(callee, "__name__", None)
    if getattr(builtins, str(name), None) is callee:
        return name in _READING_BUILTINS
    module = str(getattr(callee, "__module__", None) or "")
    if module in ("math", "cmath"):
        return True
    if module == "numpy" or module.startswith("numpy."):
        return name not in _NUMPY_WRITERS and not isinstance(callee, type)
    if module in ("veda.random", "veda._kernel.language"):
        return name not in _WRITING_CALLS
    return False


@dataclass(frozen=True)
class SourceLines:
    """Where a function's text came from: enough to point an error at the user's line.

    Generated modules keep one per function they carry (:class:`veda._kernel.cache.LineMap`),
    for as long as the process lives; unlike :class:`FunctionSource` it holds neither the
    function nor its syntax tree, so a deleted kernel's function and globals can be freed.
    """

    text: str | None
    filename: str
    first_line: int

    def user_line(self, offset: int) -> tuple[str, int, str]:
        """File, line number and stripped text of line ``offset`` (0-based) of ``text``."""
        lineno = self.first_line + offset
        text = linecache.getline(self.filename, lineno).strip()
        if not text and self.text is not None:
            lines = self.text.splitlines()
            if 0 <= offset < len(lines):
                text = lines[offset].strip()
        return self.filename, lineno, text


@dataclass
class FunctionSource:
    """A Python function's text and origin."""

    pyfunc: Any
    text: str | None  # dedented "def ..." text without decorators, or None (no source)
    filename: str
    first_line: int  # line of the ``def`` in ``filename``
    tree: ast.FunctionDef | None

    @property
    def name(self) -> str:
        """The function's name as generated code spells it (a lambda's is ``_veda_lambda``)."""
        return identifier(str(self.pyfunc.__name__))

    def lines(self) -> SourceLines:
        """Its text and origin without the function (what generated modules keep)."""
        return SourceLines(self.text, self.filename, self.first_line)

    def user_line(self, offset: int) -> tuple[str, int, str]:
        """File, line number and stripped text of line ``offset`` (0-based) of ``text``."""
        return self.lines().user_line(offset)


#: The name a lambda gets in generated code.
LAMBDA_NAME = "_veda_lambda"


def identifier(name: str) -> str:
    """``name`` where it is a Python identifier; a lambda's ``<lambda>`` becomes
    :data:`LAMBDA_NAME`."""
    return name if name.isidentifier() else LAMBDA_NAME


def get_source(pyfunc: Any) -> FunctionSource:
    code = pyfunc.__code__
    filename = code.co_filename
    try:
        lines, start = inspect.getsourcelines(pyfunc)
    except (OSError, TypeError):
        return FunctionSource(pyfunc, None, filename, code.co_firstlineno, None)
    if pyfunc.__name__ == "<lambda>":
        return _lambda_source(pyfunc, "".join(lines), start)
    text = textwrap.dedent("".join(lines))
    try:
        module = ast.parse(text)
    except SyntaxError:
        return FunctionSource(pyfunc, None, filename, code.co_firstlineno, None)
    node = module.body[0] if module.body else None
    if not isinstance(node, ast.FunctionDef):
        # a lambda, or source that does not start with the function itself
        return FunctionSource(pyfunc, None, filename, code.co_firstlineno, None)
    def_offset = node.lineno - 1  # decorators come first
    body_lines = text.splitlines(keepends=True)[def_offset : node.end_lineno]
    text = "".join(body_lines)
    tree = ast.parse(text).body[0]
    assert isinstance(tree, ast.FunctionDef)
    return FunctionSource(pyfunc, text, filename, start + def_offset, tree)


#: Instructions that differ between compiles of the same expression (a module's attribute
#: call is ``LOAD_METHOD`` in one compile and ``PUSH_NULL``/``LOAD_ATTR`` in another) or say
#: where a name lives (a closure variable of the real lambda is a global of one compiled alone).
_SAME_OP = {
    "LOAD_METHOD": "LOAD_ATTR",
    "CALL_METHOD": "CALL",
    "CALL_FUNCTION": "CALL",
    "LOAD_DEREF": "LOAD_OUTER",
    "LOAD_CLASSDEREF": "LOAD_OUTER",
    "LOAD_GLOBAL": "LOAD_OUTER",
    "LOAD_NAME": "LOAD_OUTER",
}
_NO_OP = {"RESUME", "CACHE", "PRECALL", "PUSH_NULL", "KW_NAMES", "NOP", "COPY_FREE_VARS"}


def _code_key(code: types.CodeType) -> tuple[Any, ...]:
    """What two compiles of the same lambda have in common."""
    jumps = {*dis.hasjrel, *dis.hasjabs}  # their targets move with the instructions' sizes
    ops = [
        (_SAME_OP.get(ins.opname, ins.opname), "" if ins.opcode in jumps else repr(ins.argval))
        for ins in dis.get_instructions(code)
        if ins.opname not in _NO_OP and not isinstance(ins.argval, types.CodeType)
    ]
    return (code.co_varnames, code.co_argcount, ops)


#: A file's text and its lambdas by line, for the lambdas no shorter piece of it parses around
#: (the last few files read).
_FILE_LAMBDAS: dict[str, tuple[str, dict[int, list[ast.Lambda]]]] = {}
_FILE_LAMBDAS_LOCK = threading.Lock()


def _file_lambdas(
    filename: str, module_globals: dict[str, Any]
) -> tuple[str, dict[int, list[ast.Lambda]]] | None:
    """The text of ``filename`` (through linecache: notebook cells too) and its lambdas by
    the line they start on, or None when it cannot be read or parsed."""
    text = "".join(linecache.getlines(filename, module_globals))
    with _FILE_LAMBDAS_LOCK:
        cached = _FILE_LAMBDAS.get(filename)
    if cached is not None and cached[0] == text:
        return cached
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    by_line: dict[int, list[ast.Lambda]] = {}
    for node in ast.walk(module):
        if isinstance(node, ast.Lambda):
            by_line.setdefault(node.lineno, []).append(node)
    with _FILE_LAMBDAS_LOCK:
        if len(_FILE_LAMBDAS) >= 16:
            _FILE_LAMBDAS.pop(next(iter(_FILE_LAMBDAS)))
        _FILE_LAMBDAS[filename] = (text, by_line)
    return text, by_line


def _lambda_source(pyfunc: Any, text: str, start: int) -> FunctionSource:
    """A lambda's source as a one-line ``def`` (so that it is generated, analysed and cached
    like any function), found among the lambdas of its source lines by its compiled code."""
    code = pyfunc.__code__
    none = FunctionSource(pyfunc, None, code.co_filename, code.co_firstlineno, None)
    parsed, first = textwrap.dedent(text), start  # ``first``: the file's line of parsed line 1
    nodes: list[ast.Lambda] | None = None
    try:
        module = ast.parse(parsed)
    except SyntaxError:  # lines inside an expression that began earlier: read them in brackets
        parsed, first = f"(\n{text}\n)", start - 1
        try:
            module = ast.parse(parsed)
        except SyntaxError:
            # a continuation line of a longer expression (``.map(lambda v: ...)`` in a chain
            # written one call per line, an item of a dict literal): the whole file's lambdas
            whole = _file_lambdas(code.co_filename, pyfunc.__globals__)
            if whole is None:
                return none
            parsed, by_line = whole
            first, nodes = 1, by_line.get(code.co_firstlineno, [])
    if nodes is None:
        nodes = [n for n in ast.walk(module) if isinstance(n, ast.Lambda)]
    found: tuple[str, int] | None = None
    for node in nodes:
        segment = ast.get_source_segment(parsed, node)
        body = ast.get_source_segment(parsed, node.body)
        if segment is None or body is None:
            continue
        try:
            compiled = compile(f"({segment})", code.co_filename, "eval")
        except SyntaxError:
            continue
        inner = next((c for c in compiled.co_consts if isinstance(c, types.CodeType)), None)
        if (
            inner is None
            or first + node.lineno - 1 != code.co_firstlineno
            or _code_key(inner) != _code_key(code)
        ):
            continue  # another lambda of these lines (bytecode itself differs between
            # compiles: 3.11 writes a module's attribute calls in two ways)
        params = ", ".join(a.arg for a in node.args.args)
        candidate = f"def {LAMBDA_NAME}({params}): return ({body})\n"
        if found is not None and found[0] != candidate:
            return none  # two lambdas that compile alike but read differently: ambiguous
        found = (candidate, first + node.lineno - 1)
    if found is None:
        return none
    tree = ast.parse(found[0]).body[0]
    assert isinstance(tree, ast.FunctionDef)
    return FunctionSource(pyfunc, found[0], code.co_filename, found[1], tree)


def plain_parameters(pyfunc: Any, what: str) -> list[str]:
    """Parameter names, refusing anything but plain positional parameters."""
    name = getattr(pyfunc, "__qualname__", repr(pyfunc))
    if not isinstance(pyfunc, types.FunctionType):
        raise KernelDefinitionError(
            f"@veda.{what} needs a Python function, not {type(pyfunc).__name__}"
        )
    sig = inspect.signature(pyfunc)
    names = []
    for p in sig.parameters.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty:
            raise KernelDefinitionError(
                f"{what} {name!r}: parameter {p.name!r} must be a plain positional parameter "
                "(no defaults, *args, keyword-only or **kwargs)"
            )
        names.append(p.name)
    return names


# --------------------------------------------------------------------------------------------
# Body analysis


@dataclass
class BodyFacts:
    written: set[str] = field(default_factory=set)  # parameter names the body writes
    # (parameter, axis, index parameter) for accesses ``param[..., index, ...]`` that run
    # unconditionally, with index a launch-index parameter that the body never reassigns.
    direct_index: list[tuple[str, int, str]] = field(default_factory=list)
    returns_value: bool = False
    assigned: set[str] = field(default_factory=set)
    # parameters used as arrays: indexed, asked for an attribute, or handed to a call
    arrays: set[str] = field(default_factory=set)
    # parameters the body may write, for copying back from a GPU: every parameter except those
    # the analysis proves are only read (a superset of ``written``)
    maybe_written: set[str] = field(default_factory=set)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def resolve_dotted(pyfunc: Any, parts: list[str]) -> Any:
    """Look a dotted name up the way the function would at run time (closure, globals)."""
    head, rest = parts[0], parts[1:]
    missing = object()
    obj: Any = missing
    code = pyfunc.__code__
    if head in code.co_freevars and pyfunc.__closure__ is not None:
        try:
            obj = pyfunc.__closure__[code.co_freevars.index(head)].cell_contents
        except ValueError:
            obj = missing
    if obj is missing:
        obj = pyfunc.__globals__.get(head, missing)
    if obj is missing:
        import builtins

        obj = getattr(builtins, head, missing)
    if obj is missing:
        return None
    for attr in rest:
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


class _Analyzer(ast.NodeVisitor):
    def __init__(self, src: FunctionSource, params: list[str], callee_writes: Any) -> None:
        self.src = src
        self.params = set(params)
        self.facts = BodyFacts()
        self.callee_writes = callee_writes
        self.conditional = 0
        self.index_params: set[str] = set()
        self.subscripts: list[tuple[ast.Subscript, bool]] = []

    # writes -----------------------------------------------------------------------------
    def _target(self, node: ast.AST) -> None:
        if isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                self._target(elt)
            return
        if isinstance(node, ast.Starred):
            self._target(node.value)
            return
        if isinstance(node, ast.Name):
            self.facts.assigned.add(node.id)
            return
        root = _root_name(node)
        if root in self.params and isinstance(node, ast.Subscript):
            self.facts.written.add(root)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._target(t)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._target(node.target)
        self.visit(node.iter)
        self.conditional += 1
        for stmt in node.body + node.orelse:
            self.visit(stmt)
        self.conditional -= 1

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        for arg in node.args:
            if isinstance(arg, ast.Name) and arg.id in self.params:
                self.facts.arrays.add(arg.id)
        parts = _dotted(node.func)
        if parts is not None:
            callee = resolve_dotted(self.src.pyfunc, parts)
            positions: set[int] = set()
            if _is_atomic(callee):
                positions = {0}
            else:
                positions = self.callee_writes(callee)
            for pos in positions:
                if pos < len(node.args):
                    root = _root_name(node.args[pos])
                    if root in self.params:
                        self.facts.written.add(root)
        # ``x.fill(v)`` and friends write x
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("fill", "sort", "put"):
            root = _root_name(node.func.value)
            if root in self.params:
                self.facts.written.add(root)
        self.generic_visit(node)

    # conditional regions ------------------------------------------------------------------
    def _conditional(self, node: ast.AST) -> None:
        self.conditional += 1
        self.generic_visit(node)
        self.conditional -= 1

    visit_If = _conditional
    visit_While = _conditional
    visit_Try = _conditional
    visit_IfExp = _conditional
    visit_BoolOp = _conditional
    visit_ListComp = _conditional
    visit_GeneratorExp = _conditional
    visit_SetComp = _conditional
    visit_DictComp = _conditional
    visit_Lambda = _conditional

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            self.facts.returns_value = True
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.subscripts.append((node, self.conditional > 0))
        root = _root_name(node)
        if root in self.params:
            self.facts.arrays.add(root)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.params:
            self.facts.arrays.add(node.value.id)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        # nested functions are analysed as part of the body (Numba inlines closures)
        self.generic_visit(node)


def _maybe_written(src: FunctionSource, params: set[str], helper: bool) -> set[str]:
    """The parameters the body may write: all but those whose every use provably only reads.

    A use reads only when the parameter (or a subscript of it, read) is asked for
    ``.shape``/``.ndim``/``.size``/``.dtype``, indexes something, takes part in arithmetic or a
    comparison, is stored into an element, or is handed to a call that only reads it
    (``len``, ``math``, NumPy functions that write nothing, ufunc inputs, a ``@veda.func`` whose
    own analysis proves it).  Anything else (an alias ``o = out``, a view ``row = out[i]``, an
    unknown call, an atomic under any name, a method call, iteration, a helper's return value)
    counts as a possible write: the GPU copy-back errs on the side of copying.
    """
    assert src.tree is not None
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(src.tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    out: set[str] = set()
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Name) and node.id in params and node.id not in out:
            if not _only_read(src, node, parents, helper):
                out.add(node.id)
        elif isinstance(node, ast.arg) and node.arg in params:
            owner = parents.get(parents.get(node))  # type: ignore[arg-type]
            if owner is not src.tree:  # a nested function's parameter of the same name
                out.add(node.arg)
    return out


def _only_read(
    src: FunctionSource, node: ast.AST, parents: dict[ast.AST, ast.AST], helper: bool
) -> bool:
    if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
        return False  # the parameter itself rebound or deleted
    expr = node  # an expression whose value may be the array or a view of it
    while True:
        parent = parents.get(expr)
        if isinstance(parent, ast.Attribute):
            return parent.attr in _META_ATTRS
        if isinstance(parent, ast.Subscript):
            if parent.value is not expr:
                return True  # used as an index
            if not isinstance(parent.ctx, ast.Load):
                return False  # an element stored or deleted
            expr = parent  # an element, or a view: follow it
            continue
        if isinstance(parent, ast.Call):
            if parent.func is expr or expr not in parent.args:
                return False  # called, or a keyword argument
            parts = _dotted(parent.func)
            callee = resolve_dotted(src.pyfunc, parts) if parts is not None else None
            return _reads_only(callee, parent.args.index(expr))
        if isinstance(
            parent,
            (
                ast.BinOp,
                ast.UnaryOp,
                ast.Compare,
                ast.AugAssign,
                ast.Expr,
                ast.If,
                ast.While,
                ast.Assert,
            ),
        ):
            return True  # a value computed from it, or a test
        if isinstance(parent, ast.IfExp):
            if parent.test is expr:
                return True
            expr = parent
            continue
        if isinstance(parent, (ast.BoolOp, ast.Tuple, ast.List)) and isinstance(
            getattr(parent, "ctx", ast.Load()), ast.Load
        ):
            expr = parent
            continue
        if isinstance(parent, (ast.Assign, ast.AnnAssign)):
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            # stored into elements: a copy; bound to a name: an alias that may be written
            return all(isinstance(t, ast.Subscript) for t in targets)
        if isinstance(parent, ast.Return):
            return not helper  # a kernel returns a value to reduce; a helper might return a view
        return False


def analyse(
    src: FunctionSource, params: list[str], index_params: list[str], callee_writes: Any
) -> BodyFacts:
    """Facts about a function body; ``index_params`` may be empty (helpers)."""
    if src.tree is None:
        facts = BodyFacts()
        facts.maybe_written = set(params)  # nothing is proved
        return facts
    an = _Analyzer(src, params, callee_writes)
    for stmt in src.tree.body:
        an.visit(stmt)
    facts = an.facts
    facts.maybe_written = facts.written | _maybe_written(src, an.params, not index_params)
    stable_index = [p for p in index_params if p not in facts.assigned]
    for node, conditional in an.subscripts:
        if conditional:
            continue
        array = node.value.id if isinstance(node.value, ast.Name) else None
        if array not in an.params or array in index_params or array in facts.assigned:
            continue
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for axis, elt in enumerate(elts):
            if isinstance(elt, ast.Name) and elt.id in stable_index:
                item = (array, axis, elt.id)
                if item not in facts.direct_index:
                    facts.direct_index.append(item)
    return facts


# --------------------------------------------------------------------------------------------
# Globals and closure variables


def referenced_globals(code: types.CodeType) -> set[str]:
    names: set[str] = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= referenced_globals(const)
    return names


def _float_literal(v: float) -> str:
    if math.isfinite(v):
        return f"float.fromhex({float(v).hex()!r})"
    return f"float({str(v)!r})"


def literal(value: Any) -> str | None:
    """Python source that rebuilds ``value`` exactly, or None when there is none."""
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, np.generic):
        dt = value.dtype
        if dt.kind in "biu":
            return f"_veda_np.{dt.name}({int(value)!r})"
        if dt.kind == "f" and dt.itemsize in (4, 8):
            return f"_veda_np.{dt.name}({_float_literal(float(value))})"
        if dt.kind == "c":
            z = complex(value)
            return (
                f"_veda_np.{dt.name}(complex({_float_literal(z.real)}, {_float_literal(z.imag)}))"
            )
        return None
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return _float_literal(value)
    if isinstance(value, complex):
        return f"complex({_float_literal(value.real)}, {_float_literal(value.imag)})"
    if type(value) is tuple:
        items = [literal(v) for v in value]
        if any(i is None for i in items):
            return None
        return "(" + "".join(f"{i}, " for i in items) + ")"
    return None


def importable_path(obj: Any) -> tuple[str, str] | None:
    """(module, attribute) such that ``from module import attribute`` gives ``obj``."""
    if isinstance(obj, np.ufunc):
        name = str(obj.__name__)
        return ("numpy", name) if getattr(np, name, None) is obj else None
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not module or not qual or "<" in qual or "." in qual or module == "__main__":
        return None
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except Exception:
            return None
    if getattr(mod, "__file__", None) is None and module not in sys.builtin_module_names:
        if module not in ("math", "cmath", "builtins", "numpy"):
            return None
    if getattr(mod, qual, None) is not obj:
        return None
    return module, qual


def source_digest(obj: Any) -> str:
    """A digest of a Python function's source, or '' when it has none."""
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
