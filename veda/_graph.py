"""Launch graphs (``veda.graph``): a sequence of launches captured once, replayed as one call.

Inside ``with veda.graph() as g:`` launches run as usual and are recorded: the kernel, its
domain, the decision it ran with and its arguments.  An array is an *argument slot*: the same
array object in several launches is one slot, so a launch that reads what an earlier one wrote
reads it through the same slot.  A scalar is a constant, unless it was made a parameter with
:meth:`graph.param`; an array made a parameter may be rebound at replay.

``g.replay(steps, **params)`` runs the sequence ``steps`` times in one call of one generated
function, compiled with Numba: each launch calls its kernel's own compiled launcher (the serial
loop, or the parallel one with its schedule), so a replayed launch costs no Python and no
dispatcher.  Launches run in capture order; a parallel launch is one parallel region, whose end
is the barrier before the next launch.  Only launches are replayed: Python code between them ran
once, at capture.

The graph is tuned as a whole: the first replays try the decisions made at capture, every
launch on one thread, and every launch in parallel, and keep the fastest per step.  Telemetry
reports each graph in the ``graphs`` section of :func:`veda.metrics`.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import math
import os
import statistics
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veda._config import get_config
from veda._hardware import cpu as hw
from veda._hardware.signals import from_signal_handler, unwrap_interrupt
from veda._kernel import cache as _cache
from veda._kernel.checks import is_masked
from veda._kernel.codegen import MODE_CODES
from veda._launch import Interceptor, LaunchInfo, add_interceptor, remove_interceptor
from veda._types import Decision
from veda.errors import GraphError, KernelError, KernelIndexError, VedaError
from veda.targets.cpu import _NO_BOUNDS, _guided_table
from veda.telemetry import _snapshot

__all__ = ["GraphMetrics", "graph"]


#: The graphs being captured in this thread or task, outermost first (the innermost records).
_open: contextvars.ContextVar[tuple[graph, ...]] = contextvars.ContextVar("veda_graph", default=())

#: Timed replays of each candidate plan before the fastest is kept.
TRIES = 3
#: Replay times kept per plan for telemetry's median seconds per step (the most recent).
_RECENT = 64
#: A replay's progress array before it starts: (step, launch, failed chunk's bounds).
_PROGRESS = np.full(4, -1, np.int64)
_GUIDED = MODE_CODES["guided"]
#: Seconds of steps a tuning replay runs (a replay of many steps is cut into such blocks while
#: the graph tunes, so a slow candidate costs tens of milliseconds, not the whole replay;
#: blocks of 1 ms woke a parallel plan's threads for each: n-body 200 kept a 2x slower plan).
TUNE_SECONDS = 0.01

_made = itertools.count(1)  # numbers the graphs built in this process


class _IntParam(int):
    """An integer parameter: an ``int`` for the launch at capture, a name for the graph."""

    name: str

    def __repr__(self) -> str:
        return f"veda.graph.param({self.name!r}, {int(self)})"


class _FloatParam(float):
    """A real parameter: a ``float`` for the launch at capture, a name for the graph."""

    name: str

    def __repr__(self) -> str:
        return f"veda.graph.param({self.name!r}, {float(self)})"


@dataclass
class _Slot:
    """An array of the graph: captured, or bound at replay when it is a parameter."""

    array: np.ndarray
    name: str | None  # the parameter's name, or None: always the captured array
    written: bool
    dtype: np.dtype[Any] = field(init=False)
    shape: tuple[int, ...] = field(init=False)
    layout: str = field(init=False)

    def __post_init__(self) -> None:
        self.dtype, self.shape, self.layout = (
            self.array.dtype,
            self.array.shape,
            _layout(self.array),
        )

    def describe(self, index: int) -> str:
        return f"parameter {self.name!r}" if self.name else f"slot {index}"


def _layout(a: np.ndarray) -> str:
    if a.flags.c_contiguous:
        return "C"
    return "F" if a.flags.f_contiguous else "A"


@dataclass
class _Launch:
    kernel: Any
    dims: tuple[int, ...]
    decision: Decision
    deterministic: bool
    module: Any
    form: Any
    #: Each argument: ("slot", i), ("const", i) or ("param", i).
    args: list[tuple[str, int]]
    reduce_dtype: np.dtype[Any] | None
    #: Per axis of the domain: the index of the parameter that sizes it, or None.
    sized_by: tuple[int | None, ...]
    #: Whether the settings left the decision to veda: tuning may change it (pinned, not).
    free: bool

    def dims_at(self, values: list[np.ndarray], step: int) -> tuple[int, ...]:
        """The domain at ``step`` (its parameters' values then)."""
        return tuple(
            d if p is None else int(_at(values[p], step)) for d, p in zip(self.dims, self.sized_by)
        )

    @property
    def size(self) -> int:
        return math.prod(self.dims)


class graph(Interceptor):
    """Capture the launches made in a ``with`` block; replay them with :meth:`replay`.

    Parameters
    ----------
    tune : bool
        Let the first replays choose between the decisions made at capture, one thread for
        every launch and every launch in parallel (the default).  ``False`` replays each launch
        with the decision it ran with at capture.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def step(i, dt, x, v):
    ...     x[i] += dt * v[i]
    >>> x, v = np.zeros(100), np.ones(100)
    >>> with veda.graph() as g:
    ...     step[100](0.5, x, v)
    >>> g.replay(steps=3)
    >>> float(x[0])  # one launch at capture, three replayed
    2.0

    A scalar made a parameter takes a new value at each replay, or one per step:

    >>> with veda.graph() as g:
    ...     step[100](veda.graph.param("dt", 0.5), x, v)
    >>> g.replay(steps=2, dt=np.array([1.0, 2.0]))
    >>> float(x[0])
    5.5
    """

    def __init__(self, tune: bool = True) -> None:
        if not isinstance(tune, bool):
            raise GraphError(f"veda.graph: tune must be True or False, not {tune!r}")
        self.tune = tune
        self._token: contextvars.Token[tuple[graph, ...]] | None = None
        self._captured: list[tuple[LaunchInfo, Any]] = []  # (launch, its configuration)
        self._keep: list[np.ndarray] = []
        self._arrays: dict[int, str] = {}  # id(array) -> parameter name
        self._state = "new"  # -> "capturing" -> "ready" | "failed"
        self._lock = threading.Lock()
        self._launches: list[_Launch] = []
        self._slots: list[_Slot] = []
        self._consts: list[Any] = []
        self._params: list[tuple[str, np.dtype[Any], Any]] = []  # (name, dtype, captured value)
        self._fns: dict[tuple[bool, ...], Any] = {}
        self._tables: dict[tuple[int, int], np.ndarray] = {}
        self._plans: list[tuple[str, np.ndarray]] = []  # (label, plan)
        # per plan, by its index in _plans (made with them, at the capture's end): (which
        # launches run in parallel, whether veda lends its threads, threads, the launches'
        # tables unless a launch is guided, whose tables are made for the threads lent)
        self._facts: dict[int, tuple[tuple[bool, ...], bool, int, list[np.ndarray] | None]] = {}
        self._tried: list[list[float]] = []
        self._warm: set[int] = set()  # plans run once since their compile
        self._choice: int | None = None
        self._stats = _Stats()  # (made again for the launches when the capture ends)
        self._thread = 0  # the capturing thread
        self._problem: str | None = None  # why the capture cannot be replayed
        self.name = "graph"

    # -- capture -------------------------------------------------------------------------------
    def __enter__(self) -> graph:
        if self._state != "new":
            raise GraphError("veda.graph: this graph was captured already; use a new veda.graph()")
        if _open.get():
            raise GraphError(
                "veda.graph: a graph is capturing here already; graphs do not nest (capture "
                "the inner launches in the outer graph)"
            )
        self._state = "capturing"
        self._thread = threading.get_ident()
        self._token = _open.set((*_open.get(), self))
        add_interceptor(self)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        remove_interceptor(self)
        if self._token is not None:
            _open.reset(self._token)
            self._token = None
        if kind is not None:
            self._state = "failed"
            return
        try:
            if self._problem is not None:
                raise GraphError(f"veda.graph: {self._problem}; nothing was captured")
            self._build()
        except BaseException:
            self._state = "failed"
            raise
        self._state = "ready"

    def active(self) -> bool:
        scopes = _open.get()
        return bool(scopes) and scopes[-1] is self

    def end(self, launch: LaunchInfo) -> None:
        if self._problem is not None:
            return
        where = f"launch #{len(self._captured)} (kernel {launch.kernel.name!r})"
        if launch.thread_id != self._thread:
            self._problem = (
                f"{where} was made by another thread (a task, or a thread started in the block): "
                "a graph captures the launches of the thread that opened it, in order"
            )
        elif launch.error is not None:
            self._problem = f"{where} failed ({launch.error}); a graph replays no failed launch"
        else:
            self._captured.append((launch, get_config()))

    @staticmethod
    def param(name: str, value: Any) -> Any:
        """Make ``value`` the parameter ``name`` of the graph being captured here.

        A scalar (int or float) comes back as a number the launch takes as usual, as an
        argument or (an int) as a size of its domain, ``k[veda.graph.param("n", 100)](...)``;
        an array comes back as itself.  At replay, ``g.replay(name=...)`` gives a scalar
        parameter a new value, or one value per step (a 1-d array of ``steps`` values), and
        binds an array parameter to another array of the same dtype, shape and layout.
        """
        scopes = _open.get()
        if not scopes:
            raise GraphError("veda.graph.param: no veda.graph() is capturing in this thread")
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or name in ("steps", "per_step", "self")
        ):
            raise GraphError(
                "veda.graph.param: the name must be an identifier other than replay's own "
                f"'steps', 'per_step' and 'self', not {name!r}"
            )
        g = scopes[-1]
        if name in g._arrays.values() or any(n == name for n, _, _ in g._params):
            raise GraphError(f"veda.graph.param: {name!r} is a parameter of this graph already")
        if isinstance(value, np.ndarray):
            if id(value) in g._arrays:
                raise GraphError(
                    f"veda.graph.param: this array is parameter {g._arrays[id(value)]!r} already"
                )
            g._arrays[id(value)] = name
            g._keep.append(value)  # its id stays its own while capturing
            return value
        if isinstance(value, (bool, np.bool_)):
            raise GraphError(f"veda.graph.param({name!r}): a bool parameter is not supported")
        out: Any
        if isinstance(value, (int, np.integer)):
            out = _IntParam(int(value))
            g._params.append((name, np.dtype(np.int64), int(value)))
        elif isinstance(value, (float, np.floating)):
            out = _FloatParam(float(value))
            g._params.append((name, np.dtype(np.float64), float(value)))
        else:
            raise GraphError(
                f"veda.graph.param({name!r}): expected an int, a float or a NumPy array, not "
                f"{type(value).__name__}"
            )
        out.name = name
        return out

    def _build(self) -> None:
        if not self._captured:
            raise GraphError(
                "veda.graph: no launch was made in the block; there is nothing to replay"
            )
        slots: dict[int, int] = {}
        consts: list[Any] = []
        params = {n: i for i, (n, _, _) in enumerate(self._params)}
        used: set[str] = set()
        for number, (info, cfg) in enumerate(self._captured):
            kernel, decision = info.kernel, info.decision
            where = f"launch #{number} (kernel {kernel.name!r})"
            refusal = getattr(kernel, "_veda_graph_refusal", None)
            if refusal:
                raise GraphError(f"veda.graph: {where} {refusal}")
            if decision.target not in ("cpu", "parallel"):
                raise GraphError(
                    f"veda.graph: {where} ran on target {decision.target!r}; graphs replay "
                    "launches on the CPU targets ('cpu', 'parallel') only"
                )
            form = kernel.form(len(info.dims), len(info.args))
            module = form.program((cfg.boundscheck, cfg.cache))
            written = set(form.maybe_written)
            args: list[tuple[str, int]] = []
            for pos, value in enumerate(info.args):
                name = form.names[pos] if pos < len(form.names) else str(pos)
                if isinstance(value, np.ndarray):
                    at = slots.get(id(value))
                    if at is None:
                        at = slots[id(value)] = len(self._slots)
                        self._slots.append(_Slot(value, self._arrays.get(id(value)), False))
                    self._slots[at].written |= pos in written
                    args.append(("slot", at))
                elif isinstance(value, (_IntParam, _FloatParam)):
                    if value.name not in params:
                        raise GraphError(
                            f"veda.graph: {where}, argument {name!r}: {value!r} is a parameter "
                            "of another graph; make it with veda.graph.param in this one"
                        )
                    args.append(("param", params[value.name]))
                    used.add(value.name)
                elif isinstance(value, (bool, int, float, complex, np.generic)):
                    args.append(("const", len(consts)))
                    consts.append(value)
                else:
                    raise GraphError(
                        f"veda.graph: {where}, argument {name!r}: a graph takes arrays and "
                        f"scalars, not {type(value).__name__}"
                    )
            reduce_dtype = None
            if kernel.reduce is not None:
                reduce_dtype = np.asarray(info.result).dtype
            sized_by = []
            for d in info.domain:
                p = params.get(d.name) if isinstance(d, _IntParam) else None
                sized_by.append(p)
                if p is not None:
                    used.add(d.name)
            self._launches.append(
                _Launch(
                    kernel,
                    tuple(info.dims),
                    decision,
                    bool(cfg.deterministic) and (kernel.reduce is not None or bool(form.private)),
                    module,
                    form,
                    args,
                    reduce_dtype,
                    tuple(sized_by),
                    bool(info.free),
                )
            )
        for i, slot in enumerate(self._slots):  # a parameter's views would stay bound
            for j, other in enumerate(self._slots):
                if slot.name and j != i and not other.name:
                    if np.may_share_memory(slot.array, other.array):
                        raise GraphError(
                            f"veda.graph: parameter {slot.name!r} shares memory with "
                            f"{other.describe(j)} (a view of it, or it of a view): a replay "
                            "binding another array to the parameter would still use the "
                            "captured one there; make it a parameter too, or pass one array"
                        )
        unused = [n for n, _, _ in self._params if n not in used]
        unused += [n for n in self._arrays.values() if n not in {s.name for s in self._slots}]
        if unused:
            raise GraphError(
                f"veda.graph: parameter(s) {', '.join(map(repr, unused))} were made but no "
                "launch in the block took them"
            )
        self._consts = consts
        self._dims = np.zeros((len(self._launches), 3), np.int64)
        for i, L in enumerate(self._launches):
            self._dims[i, : len(L.dims)] = L.dims
        self._captured = []
        self._keep = []
        self._stats = _Stats(len(self._launches))
        self._plans = self._candidates()
        self._facts = {}
        self._tried = [[] for _ in self._plans]
        if not self.tune or len(self._plans) == 1:
            self._choice = 0
        names: list[list[Any]] = []  # runs of one kernel: "graph[pull, kick x4]"
        for L in self._launches:
            if names and names[-1][0] == L.kernel.name:
                names[-1][1] += 1
            else:
                names.append([L.kernel.name, 1])
        self._what = "[" + ", ".join(n if k == 1 else f"{n} x{k}" for n, k in names) + "]"
        # numbered: two graphs of the same kernels are told apart in telemetry
        self.name = f"graph#{next(_made)}{self._what}"
        _registry[id(self)] = self

    def _candidates(self) -> list[tuple[str, np.ndarray]]:
        """(label, plan): a plan has a row per launch, (parallel, mode, chunk, threads).  A
        launch whose settings were set (``veda.config(target=...)``, ``veda.launch(...,
        threads=2)``, a ``veda.replay``) keeps its captured row in every plan."""
        from veda.targets.cpu import default_chunk

        n = len(self._launches)
        captured = np.zeros((n, 4), np.int64)
        captured[:, 3] = 1
        for i, L in enumerate(self._launches):
            d = L.decision
            if d.target == "parallel":
                mode = d.schedule
                if mode == "guided" and any(p is not None for p in L.sized_by):
                    mode = "dynamic"  # a guided table is made for one size, and this one varies
                chunk = max(1, min(d.chunk, max(1, L.size)))
                captured[i] = (1, MODE_CODES[mode], chunk, max(1, d.threads or 1))
        if hw.parallel_unavailable_reason() is not None:
            captured[:, 0], captured[:, 3] = 0, 1
        out = [("as captured", captured)]
        top = hw.max_threads()
        parallel_ok = top > 1 and hw.parallel_unavailable_reason() is None
        if self.tune:
            rows: dict[str, Callable[[_Launch], tuple[int, int, int, int]]] = {
                "one thread": lambda L: (0, 0, 0, 1)
            }
            if parallel_ok:  # static shares, and dynamic chunks for uneven work
                rows["parallel"] = lambda L: (1, MODE_CODES["static"], 1, top)
                rows["parallel, dynamic"] = lambda L: (
                    1,
                    MODE_CODES["dynamic"],
                    default_chunk("dynamic", max(1, L.size), top),
                    top,
                )
            for label, row in rows.items():
                plan = captured.copy()
                for i, L in enumerate(self._launches):
                    if L.free:
                        plan[i] = row(L)
                out.append((label, plan))
        unique: dict[bytes, tuple[str, np.ndarray]] = {}
        for label, plan in out:
            unique.setdefault(plan.tobytes(), (label, plan))
        return list(unique.values())

    # -- code ----------------------------------------------------------------------------------
    def _text(self, pattern: tuple[bool, ...]) -> str:
        """The module of the replay function for one pattern: which launches run in parallel
        (each pattern is compiled on first use: a launcher no plan runs is not compiled)."""
        lines = [
            # (not the numbered name: the same launches are the same module, on disk too)
            f"# veda launch graph {self._what} (generated)",
            "import numba as _veda_numba",
            "from veda._kernel import language as _veda_lang",
            "from veda._kernel.cache import get_module as _veda_get",
            "",
        ]
        for i, L in enumerate(self._launches):
            det = "_det" if L.deterministic else ""
            lines.append(f"_m{i} = _veda_get({L.module.__name__!r})")
            if pattern[i]:
                lines.append(f"_p{i} = _m{i}._veda{det}_parallel")
            else:
                lines.append(f"_s{i} = _m{i}._veda{det}_cpu")
        n = len(self._launches)
        tabs = [f"_t{i}" for i in range(n)]
        slots = [f"a{i}" for i in range(len(self._slots))]
        consts = [f"c{i}" for i in range(len(self._consts))]
        params = [f"q{i}" for i in range(len(self._params))]
        reducing = [i for i, L in enumerate(self._launches) if L.reduce_dtype is not None]
        reds = [f"r{i}" for i in reducing]
        sig = ", ".join(["_steps", "_pr", "_clk", "_plan", "_dims", *tabs, *slots, *consts])
        sig = ", ".join([sig, *params, *reds])
        # A parameter or result array holds one value per step, or one for all (the last
        # step's result, a constant parameter): read and written at min(step, its last).
        lines += [
            "",
            "",
            "@_veda_numba.njit(cache=True, nogil=True, boundscheck=False)",
            f"def _veda_graph({sig}):",
            *(f"    _lq{j} = q{j}.shape[0] - 1" for j in range(len(self._params))),
            *(f"    _lr{i} = r{i}.shape[0] - 1" for i in reducing),
            # domains are arguments, not literals: a constant domain inlined into the call of
            # a launcher changes how LLVM compiles its loop (Floyd-Warshall's ran 2x slower)
            *(
                f"    _n{i}_{k} = _dims[{i}, {k}]"
                for i, L in enumerate(self._launches)
                for k in range(len(L.dims))
                if L.sized_by[k] is None
            ),
            "    _c = _veda_lang.cycles()",
            "    _tp = _c",
            "    for _st in range(_steps):",
            "        _pr[0] = _st",
        ]
        for i, L in enumerate(self._launches):
            names = {"slot": "a", "const": "c"}
            args = [
                f"q{j}[min(_st, _lq{j})]" if k == "param" else f"{names[k]}{j}" for k, j in L.args
            ]
            dims = [f"_n{i}_{k}" for k in range(len(L.dims))]
            lines.append(f"        _pr[1] = {i}")
            lines += [
                f"        _n{i}_{k} = q{p}[min(_st, _lq{p})]"
                for k, p in enumerate(L.sized_by)
                if p is not None
            ]
            result = f"r{i}[min(_st, _lr{i})]"
            if pattern[i]:
                par_args = [*dims, f"_plan[{i}, 3]", f"_plan[{i}, 1]", f"_plan[{i}, 2]", f"_t{i}"]
                lines += [
                    f"        _q{i} = _p{i}({', '.join([*par_args, *args])})",
                    f"        if _q{i}[1] >= 0:",
                    f"            _pr[2] = _q{i}[1]",
                    f"            _pr[3] = _q{i}[2]",
                    "            return",
                ]
                if L.reduce_dtype is not None:
                    lines.append(f"        {result} = _q{i}[0][0]")
            else:
                lines.append(f"        _o{i} = _s{i}({', '.join([*dims, *args])})")
                if L.reduce_dtype is not None:
                    lines.append(f"        {result} = _o{i}[0]")
            # Each launch's cycles, for telemetry (one read of the counter per launch), and
            # Ctrl-C polled about every 0.05 s, between launches as the launchers do inside.
            lines += [
                "        _now = _veda_lang.cycles()",
                f"        _veda_lang.fetch_add(_clk, {i}, _now - _c)",
                "        _c = _now",
                "        if _c - _tp >= 134217728:",
                "            _tp = _c",
                "            _veda_lang.raise_pending(_veda_lang.poll_signals())",
            ]
        lines += ["    _pr[1] = -1", ""]
        return "\n".join(lines)

    def _compiled(self, pattern: tuple[bool, ...]) -> Any:
        """The replay function of ``pattern``: which launches run in parallel."""
        fn = self._fns.get(pattern)
        if fn is None:
            with self._lock:
                fn = self._fns.get(pattern)
                if fn is None:
                    text = self._text(pattern)
                    name = _cache.module_name("graph", text)
                    # Kernels with injected objects live in memory only (their module names
                    # hold ids): so does a graph of them.
                    in_memory = any(
                        str(getattr(L.module, "__file__", "")).startswith("<")
                        for L in self._launches
                    )
                    on_disk = get_config().cache and not in_memory
                    mod = _cache.load_module(name, text, None, [], on_disk)
                    fn = self._fns[pattern] = mod._veda_graph
        return fn

    # -- replay --------------------------------------------------------------------------------
    def __call__(self, steps: int = 1, *, per_step: bool = False, **params: Any) -> Any:
        """The same as :meth:`replay`."""
        return self.replay(steps, per_step=per_step, **params)

    def replay(self, steps: int = 1, *, per_step: bool = False, **params: Any) -> Any:
        """Run the captured launches ``steps`` times, in one compiled call.

        Parameters
        ----------
        steps : int
            How many times the whole sequence runs.
        per_step : bool
            Return each reduction's value at every step (an array of ``steps`` values) rather
            than at the last step.
        **params
            Values for the parameters made with :meth:`param`: a scalar, or for a scalar
            parameter an array of one value per step; an array for an array parameter.

        Returns
        -------
        None when no launch reduces; else the value of the reducing launch (a tuple of them,
        in launch order, when several reduce), at the last step (None after 0 steps) or per
        step.

        While the graph is tuning, a replay runs in blocks of steps of about TUNE_SECONDS,
        each with one candidate plan; then in one call.
        """
        if self._state != "ready":
            why = {
                "new": "was not captured (use it in a with block first)",
                "capturing": "is still capturing",
                "failed": "failed to capture",
            }[self._state]
            raise GraphError(f"veda.graph: this graph {why}; it cannot be replayed")
        if _open.get():
            raise GraphError(
                "veda.graph.replay: a graph is capturing here, and a replay is not a launch it "
                "could record; replay after the with block"
            )
        if (
            isinstance(steps, bool)
            or not isinstance(steps, (int, np.integer))
            or not 0 <= steps < 2**63
        ):
            raise GraphError(
                f"veda.graph.replay: steps must be an int >= 0 (below 2**63), not {steps!r}"
            )
        if not isinstance(per_step, bool):
            raise GraphError(f"veda.graph.replay: per_step must be True or False, not {per_step!r}")
        steps = int(steps)
        slots, values = self._bind(steps, params)
        reds = [
            np.empty(steps if per_step else 1, L.reduce_dtype)
            for L in self._launches
            if L.reduce_dtype is not None
        ]
        with self._stats.lock:
            self._stats.replays += 1
        done = 0
        while done < steps:
            block = steps - done if self._choice is not None else self._block(steps - done)
            self._run(done, block, slots, values, reds)
            done += block
        if not reds:
            return None
        out = [r if per_step else (r[0] if steps else None) for r in reds]
        return out[0] if len(out) == 1 else tuple(out)

    def _block(self, left: int) -> int:
        """Steps for the next tuning replay: about TUNE_SECONDS of them (one at first)."""
        seen = [t for tried in self._tried for t in tried]
        if not seen:
            return 1
        return max(1, min(left, int(TUNE_SECONDS / max(min(seen), 1e-9))))

    def _bind(self, steps: int, params: dict[str, Any]) -> tuple[list[np.ndarray], list[Any]]:
        known = {n for n, _, _ in self._params} | {s.name for s in self._slots if s.name}
        for name in params:
            if name not in known:
                names = ", ".join(sorted(known)) or "none"
                raise GraphError(
                    f"veda.graph.replay: {name!r} is not a parameter of this graph "
                    f"(its parameters: {names})"
                )
        arrays = []
        for i, slot in enumerate(self._slots):
            a = params.get(slot.name, slot.array) if slot.name else slot.array
            what = slot.describe(i)
            if not isinstance(a, np.ndarray) or is_masked(a):
                raise GraphError(
                    f"veda.graph.replay: {what} expects a NumPy array, not {type(a).__name__}"
                )
            if a.dtype != slot.dtype or a.shape != slot.shape or _layout(a) != slot.layout:
                raise GraphError(
                    f"veda.graph.replay: {what} was captured as a {slot.layout}-ordered "
                    f"{slot.dtype} array of shape {slot.shape}, not a {_layout(a)}-ordered "
                    f"{a.dtype} array of shape {a.shape}"
                )
            if slot.written and not a.flags.writeable:
                raise GraphError(
                    f"veda.graph.replay: {what} is written by the graph, but the "
                    "array given is read-only"
                )
            arrays.append(a)
        for i, a in enumerate(arrays):  # a rebound array may not alias another slot
            if self._slots[i].name and self._slots[i].name in params:
                for j, b in enumerate(arrays):
                    if (
                        j != i
                        and np.may_share_memory(a, b)
                        and not np.may_share_memory(self._slots[i].array, self._slots[j].array)
                    ):
                        raise GraphError(
                            f"veda.graph.replay: {self._slots[i].describe(i)} shares memory "
                            f"with {self._slots[j].describe(j)}, which the captured arrays "
                            "did not"
                        )
        values = []
        for name, dtype, captured in self._params:
            v = params.get(name, captured)
            values.append(_per_step(name, v, dtype, steps))
        for number, L in enumerate(self._launches):
            for p in L.sized_by:
                if p is None or not steps:
                    continue
                low = int(values[p].min())
                if low < 0:
                    raise GraphError(
                        f"veda.graph.replay: parameter {self._params[p][0]!r} sizes the domain "
                        f"of launch #{number} (kernel {L.kernel.name!r}); it must be >= 0, "
                        f"not {low}"
                    )
                if low == 0 and L.kernel.reduce in ("min", "max"):
                    raise GraphError(
                        f"veda.graph.replay: parameter {self._params[p][0]!r} makes the domain "
                        f"of launch #{number} empty, and its reduce={L.kernel.reduce!r} has no "
                        "identity"
                    )
        return arrays, values

    def _open_plans(self) -> list[int]:
        """The plans still in the running: a plan with more parallel launches than the
        one-thread plan (every launch veda may move on one thread) is dropped once that plan
        took less per step than two region entries per parallel launch (it cannot win, as with
        a single launch: veda.targets.cpu.REGION_ENTRY)."""
        from veda.targets.cpu import REGION_ENTRY

        serial = [i for i, (label, _) in enumerate(self._plans) if label == "one thread"]
        if not serial:  # "as captured" ran every launch on one thread: it is that plan
            serial = [i for i, (_, plan) in enumerate(self._plans) if not plan[:, 0].any()]
        base = serial[0] if serial else None
        floor = min(self._tried[base]) if base is not None and self._tried[base] else None
        out = []
        for i, (_, plan) in enumerate(self._plans):
            extra = int(plan[:, 0].sum()) - (
                int(self._plans[base][1][:, 0].sum()) if base is not None else 0
            )
            if i != base and extra > 0 and floor is not None and floor < 2 * REGION_ENTRY * extra:
                continue
            out.append(i)
        return out

    def _plan(self) -> int:
        if self._choice is not None:
            return self._choice
        # in order: as captured (its launchers are compiled), one thread, parallel
        return min(self._open_plans(), key=lambda i: len(self._tried[i]))

    def _run(
        self, start: int, steps: int, slots: list[np.ndarray], values: list[Any], reds: list[Any]
    ) -> None:
        """Replay steps [start, start + steps) with one plan."""
        which = self._plan()
        label, plan = self._plans[which]
        facts = self._facts.get(which)
        if facts is None:  # (read once per plan: a replay's own cost matters on short ones)
            pattern = tuple(bool(p) for p in plan[:, 0])
            # veda lends the threads of a plan whose parallel launches it sized itself
            lend = any(pattern) and all(L.free for L, p in zip(self._launches, pattern) if p)
            guided = any(r[0] and r[1] == _GUIDED for r in plan.tolist())
            fixed = None if guided else [_NO_BOUNDS] * len(self._launches)
            facts = self._facts[which] = (pattern, lend, int(plan[:, 3].max()), fixed)
        pattern, lend, wanted, tables = facts
        parallel = any(pattern)
        if parallel and hw.parallel_unavailable_reason() is not None:
            # A fork child of OpenMP: no parallel region can run here; every launch on one
            # thread, the same loops (telemetry shows the plan as "one thread (after fork)").
            which, label = -1, "one thread (after fork)"
            plan = np.zeros_like(plan)
            plan[:, 3] = 1
            pattern = (False,) * len(pattern)
            parallel = lend = False
            wanted = 1
            tables = [_NO_BOUNDS] * len(self._launches)
        fn = self._compiled(pattern)
        here = [v if v.shape[0] == 1 else v[start : start + steps] for v in values]
        out = [r if r.shape[0] == 1 else r[start : start + steps] for r in reds]
        pr = _PROGRESS.copy()
        compiled = len(fn.overloads)  # (not fn.signatures: a list built per call, ~15 us)
        grant = hw.Grant() if lend else None
        previous = threads = 0
        elapsed = 0.0
        try:
            if parallel:
                hw.threading_layer()
                threads = hw.budget.take(grant, wanted) if grant is not None else wanted
                hw.budget.shorted()  # a share smaller than wanted is seen here, not by a launch
                if threads < wanted:  # the machine is shared now: run on what it lends
                    plan = plan.copy()
                    plan[:, 3] = np.minimum(plan[:, 3], threads)
                previous = hw.get_threads()
                if previous != threads:
                    hw.set_threads(threads)
            if tables is None:  # guided launches: their tables for the threads lent
                tables = [self._table(L, plan[i]) for i, L in enumerate(self._launches)]
            head = (steps, pr, self._stats.cycles, plan, self._dims)
            args = (*head, *tables, *slots, *self._consts, *here, *out)
            t0 = time.perf_counter()
            if parallel and hw.serialise:
                with hw.region_lock:
                    fn(*args)
            else:
                fn(*args)
            elapsed = time.perf_counter() - t0
        except VedaError:
            raise
        except Exception as exc:
            interrupt = unwrap_interrupt(exc)
            if interrupt is not exc:
                raise interrupt from None
            if from_signal_handler(exc):
                raise
            raise self._failure(pr, start, slots, here, plan, exc) from exc
        finally:
            try:
                if previous and previous != hw.get_threads():
                    hw.set_threads(previous)
            finally:
                if grant is not None:
                    hw.budget.give(grant)
                    hw.budget.wake()
        if pr[2] >= 0:  # a parallel launch failed in the chunk [pr[2], pr[3])
            raise self._failure(pr, start, slots, here, plan, None)
        compiled = len(fn.overloads) != compiled  # (the first call, or new argument types)
        self._stats.add(steps, elapsed, label, compiled)
        short = parallel and threads < wanted  # its time is not the plan's
        if self._choice is None and not compiled and which >= 0 and not short:
            if which not in self._warm:  # the first run after a compile is slow: not timed
                self._warm.add(which)
                return
            with self._lock:
                self._tried[which].append(elapsed / steps)
                running = self._open_plans()
                if all(len(self._tried[i]) >= TRIES for i in running):
                    self._choice = min(running, key=lambda i: statistics.median(self._tried[i]))
                    self._stats.chosen = self._plans[self._choice][0]

    def _table(self, L: _Launch, row: np.ndarray) -> np.ndarray:
        """The guided schedule's chunk table of a launch for its row's thread count."""
        if row[0] == 0 or row[1] != _GUIDED or (L.deterministic and L.form.private):
            return _NO_BOUNDS
        key = (id(L), int(row[3]))
        table = self._tables.get(key)
        if table is None:
            blocks = L.deterministic and L.form.reduce is not None
            table = _guided_table(L.size, int(row[3]), int(row[2]), blocks)
            self._tables[key] = table
        return table

    def _failure(
        self,
        pr: np.ndarray,
        start: int,
        slots: list[np.ndarray],
        values: list[Any],
        plan: np.ndarray,
        exc: Exception | None,
    ) -> VedaError:
        """The error of a replay that failed at step pr[0] (of the block from ``start``),
        launch pr[1]: the kernel's own exception, found as a plain launch finds it, with the
        step and launch noted.  Before any step: the graph's function did not compile."""
        from veda.targets.cpu import _failing_index, recover_exception

        step, number = int(pr[0]), int(pr[1])
        if step < 0 or not 0 <= number < len(self._launches):
            return GraphError(
                f"veda.graph: the replay of {self.name} could not run: {type(exc).__name__}: {exc}"
            )
        L = self._launches[number]
        dims = L.dims_at(values, step)
        args = []
        for kind, j in L.args:
            if kind == "slot":
                args.append(slots[j])
            elif kind == "const":
                args.append(self._consts[j])
            else:
                args.append(_at(values[j], step))
        target = "parallel" if plan[number, 0] else "cpu"
        err: VedaError
        if exc is None:
            err = recover_exception(
                L.form, L.module, int(pr[2]), int(pr[3]), dims, tuple(args), target
            )
        else:
            index = _failing_index(L.module, math.prod(dims), dims, tuple(args))
            cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
            err = cls(L.kernel.name, type(exc), str(exc), index, target)
        err.add_note(f"in veda.graph {self.name}: step {start + step}, launch #{number}")
        return err

    # -- reports -------------------------------------------------------------------------------
    @property
    def launches(self) -> list[str]:
        """One line per captured launch: the kernel, its domain and decision, its arguments."""
        out = []
        for i, L in enumerate(self._launches):
            args = []
            for pos, (kind, j) in enumerate(L.args):
                name = L.form.names[pos] if pos < len(L.form.names) else str(pos)
                if kind == "slot":
                    args.append(f"{name}={self._slots[j].describe(j)}")
                elif kind == "param":
                    args.append(f"{name}=parameter {self._params[j][0]!r}")
                else:
                    args.append(f"{name}={self._consts[j]!r}")
            out.append(f"#{i} {L.kernel.name}{list(L.dims)} {L.decision}: " + ", ".join(args))
        return out

    def __repr__(self) -> str:
        if self._state != "ready":
            return f"<veda.graph ({self._state})>"
        chosen = self._plans[self._choice][0] if self._choice is not None else "tuning"
        return f"<veda.graph {self.name}: {len(self._launches)} launches, plan {chosen}>"


def _at(values: np.ndarray, step: int) -> Any:
    """A parameter's value at ``step``: one per step, or one for all."""
    return values[min(step, values.shape[0] - 1)]


def _tick() -> float:
    """Seconds per tick of the cycle counter the replay function reads."""
    from veda._kernel.runtime import read_cycles  # compiled (or loaded) on first use

    return hw.seconds_per_tick(read_cycles)


def _per_step(name: str, v: Any, dtype: np.dtype[Any], steps: int) -> np.ndarray:
    """A parameter's values: one for all steps (a scalar), or one per step."""
    kind = "an int" if dtype.kind == "i" else "a real number"
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]  # a 0-d array is its scalar
    if isinstance(v, (bool, np.bool_)):
        raise GraphError(f"veda.graph.replay: parameter {name!r} expects {kind}, not a bool")
    if isinstance(v, (int, float, np.integer, np.floating)):
        if dtype.kind == "i" and not isinstance(v, (int, np.integer)):
            raise GraphError(f"veda.graph.replay: parameter {name!r} expects an int, not {v!r}")
        if dtype.kind == "i" and not -(2**63) <= int(v) < 2**63:
            raise GraphError(
                f"veda.graph.replay: parameter {name!r} is {v}, beyond a 64-bit integer"
            )
        return np.full(1, v, dtype)
    if is_masked(v):
        raise GraphError(
            f"veda.graph.replay: parameter {name!r}: masked arrays are not supported (the mask "
            "would be ignored); pass x.filled(value)"
        )
    a = np.asarray(v) if isinstance(v, (list, tuple, range, np.ndarray)) else None
    if (
        a is None
        or a.ndim != 1
        or a.shape[0] != steps
        or a.dtype.kind not in "iuf"
        or (dtype.kind == "i" and a.dtype.kind == "f")
    ):
        raise GraphError(
            f"veda.graph.replay: parameter {name!r} expects {kind}, or a 1-d array of one such "
            f"value per step ({steps}), not {type(v).__name__}"
            + (f" of shape {a.shape} and dtype {a.dtype}" if a is not None else "")
        )
    if a.dtype.kind == "u" and a.size and int(a.max()) >= 2**63:
        raise GraphError(
            f"veda.graph.replay: parameter {name!r} has values beyond a 64-bit integer"
        )
    return np.ascontiguousarray(a, dtype)


# --------------------------------------------------------------------------------------------
# Telemetry: the ``graphs`` section of veda.metrics()


class _Stats:
    def __init__(self, launches: int = 0) -> None:
        self.lock = threading.Lock()
        self.reset(launches)

    def reset(self, launches: int | None = None) -> None:
        if launches is None:
            launches = len(self.cycles)
        self.replays = self.steps = 0
        self.seconds = 0.0
        # Cycles of each launch, all replays together: the replay function adds to them
        # (atomically: replays of one graph may run at once in several threads).  A replay
        # running across a reset adds its cycles to the array it started with.
        self.cycles = np.zeros(launches, np.int64)
        self.by_plan: dict[str, collections.deque[float]] = {}  # recent seconds per step
        self.chosen: str | None = getattr(self, "chosen", None)

    def add(self, steps: int, seconds: float, plan: str, compiled: bool) -> None:
        """A replay; one that ``compiled`` its plan's function counts, but not per step."""
        with self.lock:
            self.steps += steps
            self.seconds += seconds
            if not compiled:
                recent = self.by_plan.get(plan)
                if recent is None:
                    recent = self.by_plan[plan] = collections.deque(maxlen=_RECENT)
                recent.append(seconds / steps)


#: The graphs captured in this process (a graph let go leaves its figures with it).
_registry: weakref.WeakValueDictionary[int, graph] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class GraphMetrics:
    """One graph's figures: replays, steps, seconds, per-step medians by plan."""

    name: str
    launches: tuple[str, ...]
    #: Seconds each launch took over all replays (the cycle counter read between launches).
    launch_seconds: tuple[float, ...]
    replays: int
    steps: int
    seconds: float
    per_step: dict[str, float]
    chosen: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "launches": list(self.launches),
            "launch_seconds": list(self.launch_seconds),
            "replays": self.replays,
            "steps": self.steps,
            "seconds": self.seconds,
            "per_step_seconds": dict(self.per_step),
            "chosen": self.chosen,
        }


@dataclass(frozen=True)
class GraphsSection:
    graphs: tuple[GraphMetrics, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"graphs": [g.to_dict() for g in self.graphs]}

    def families(self) -> list[tuple[str, str, str, list[tuple[str, str, float]]]]:
        def samples(attr: str) -> list[tuple[str, str, float]]:
            return [("", f'graph="{g.name}"', float(getattr(g, attr))) for g in self.graphs]

        return [
            (
                "veda_graph_replays_total",
                "counter",
                "Replays of each launch graph.",
                samples("replays"),
            ),
            (
                "veda_graph_steps_total",
                "counter",
                "Steps replayed by each launch graph.",
                samples("steps"),
            ),
            (
                "veda_graph_seconds_total",
                "counter",
                "Seconds spent replaying each launch graph.",
                samples("seconds"),
            ),
            (
                "veda_graph_launch_seconds_total",
                "counter",
                "Seconds each launch of a launch graph took in its replays.",
                [
                    ("", f'graph="{g.name}",launch="{i}"', s)
                    for g in self.graphs
                    for i, s in enumerate(g.launch_seconds)
                ],
            ),
        ]


class _Source:
    def take(self) -> GraphsSection | None:
        out = []
        for g in list(_registry.values()):
            s = g._stats
            with s.lock:
                if not s.replays:
                    continue
                out.append(
                    GraphMetrics(
                        g.name,
                        tuple(g.launches),
                        tuple(float(c) * _tick() for c in s.cycles),
                        s.replays,
                        s.steps,
                        s.seconds,
                        {k: statistics.median(v) for k, v in s.by_plan.items()},
                        s.chosen,
                    )
                )
        return GraphsSection(tuple(out)) if out else None

    def reset(self) -> None:
        for g in list(_registry.values()):
            with g._stats.lock:
                g._stats.reset()


_snapshot.sections["graphs"] = _Source()


def _after_fork_in_child() -> None:
    """Each graph's locks anew in a fork child: another thread of the parent may have held one
    at the fork (building a replay function, crediting a tuning replay, reading metrics)."""
    for g in list(_registry.values()):
        g._lock = threading.Lock()
        g._stats.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
