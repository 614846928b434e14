"""Whether a kernel's loops were vectorised, read from the optimised LLVM IR of its launchers.

Each CPU launcher runs its loop in one generated function: ``"cpu"`` in ``_veda_cpu`` itself,
``"parallel"`` in ``_veda_chunk`` (linked into the launcher's library) or, for a 1-d kernel
whose body is written into a loop, the ``_veda_chunk_loop`` it calls, deterministic
reductions in ``_veda_det_blocks`` or ``_veda_det_pieces`` (or, where LLVM inlined that into
its caller, the worker).  That function's IR is split into basic blocks; a loop is a block that
branches back to itself or to a block before it, and it is vectorised when that block computes
on vectors (``<4 x double>``: LLVM's loop vectoriser leaves one such block, its scalar remainder
another).  The widest vector its arithmetic works on gives the width (its loads and stores,
where it only moves data).

Numba keeps no IR for code it loads from its disk cache, so a report is made when a launcher is
compiled and kept beside the cached code (:func:`veda._kernel.cache.save_record`), under the
CPU it was compiled for as Numba's cache keys code; a launcher loaded from an older cache has
none, and says so.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from veda._kernel import cache as _cache

__all__ = ["analyse", "record", "reports"]

#: Launcher -> (the configuration it runs, the functions that may hold its loop, first found).
LOOPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "_veda_cpu": ("cpu", ("_veda_cpu",)),
    "_veda_span": ("cpu, first tier", ("_veda_span",)),
    "_veda_parallel": ("parallel", ("_veda_chunk_loop", "_veda_chunk", "_veda_parallel_worker")),
    "_veda_parallel_profile": (
        "parallel, profiled",
        ("_veda_chunk_loop", "_veda_chunk", "_veda_parallel_profile_worker"),
    ),
    "_veda_det_cpu": ("cpu, deterministic", ("_veda_det_cpu",)),
    "_veda_det_parallel": (
        "parallel, deterministic",
        ("_veda_det_blocks", "_veda_det_pieces", "_veda_det_parallel_worker"),
    ),
}

_BITS = {"double": 64, "float": 32, "half": 16, "bfloat": 16, "i64": 64, "i32": 32, "i16": 16}
_BITS["i8"] = 8
_VECTOR = re.compile(r"<(\d+) x (double|float|half|bfloat|i64|i32|i16|i8)>")
_DEFINE = re.compile(r'^define [^@]*@"?([^"(\s]+)"?\(', re.M)
_LABEL = re.compile(r"^([-\w.$]+):")
_TARGET = re.compile(r"label %([-\w.$]+)")
#: Instructions that compute (rather than move data): their vectors make a loop's width.
_ARITHMETIC = re.compile(
    r"= (?:fadd|fsub|fmul|fdiv|frem|fneg|add|sub|mul|sdiv|udiv|and|or|xor|shl|lshr|ashr|fcmp|"
    r"icmp|select)\b|@llvm\.(?:fma|fmuladd|minnum|maxnum|minimum|maximum|sqrt|fabs|vector\.reduce)"
)
#: What a kept report must hold, and of which types, to be used.
_FIELDS = {
    "vectorized": (bool,),
    "loops": (int,),
    "vectorized_loops": (int,),
    "lanes": (int,),
    "element": (str,),
    "bits": (int,),
    "function": (str,),
    "signature": (str,),
}

_lock = threading.Lock()
#: (module name, launcher, signature) -> report, for this process.
_known: dict[tuple[str, str, str], dict[str, Any]] = {}


def _after_fork_in_child() -> None:
    """A fork child's lock is free: a parent thread may have held it (``veda.explain`` on
    another thread) at the fork, and nobody would release the child's copy."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _functions(ir: str) -> Iterator[tuple[str, str]]:
    """(symbol, body) of each function defined in ``ir``."""
    for m in _DEFINE.finditer(ir):
        end = ir.find("\n}", m.end())
        yield m.group(1), ir[m.end() : end if end >= 0 else len(ir)]


def _body(ir: str, name: str) -> str | None:
    """The body of generated function ``name``: its Numba-mangled symbol carries the name as
    ``<length><name>B``; Numba's CPython and cfunc wrappers around it are left out."""
    key = f"{len(name)}{name}B"
    for symbol, body in _functions(ir):
        if key in symbol and not symbol.startswith(("_ZN7cpython", "cfunc.")):
            return body
    return None


def analyse(ir: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The loops of the first of ``names`` defined in ``ir``: how many, how many vectorised, and
    the widest vector they compute on (lanes, element type, bits).

    >>> ir = '''define i32 @_ZN3gen9_veda_cpuB2v1E(ptr %a) {
    ... entry:
    ...   br label %vector.body
    ... vector.body:
    ...   %w = load <4 x double>, ptr %a, align 8
    ...   %s = fadd <4 x double> %w, %w
    ...   br i1 %c, label %done, label %vector.body, !llvm.loop !0
    ... done:
    ...   ret i32 0
    ... }'''
    >>> analyse(ir, ("_veda_cpu",))["vectorized"], analyse(ir, ("_veda_cpu",))["lanes"]
    (True, 4)

    A loop may also close with a ``switch`` (LLVM folds a chain of compares into one), whose
    targets follow on lines of their own:

    >>> ir = '''define i32 @_ZN3gen9_veda_cpuB2v1E(i64 %n) {
    ... entry:
    ...   br label %loop
    ... loop:
    ...   %i = add i64 %n, 1
    ...   switch i64 %i, label %done [
    ...     i64 0, label %loop
    ...   ]
    ... done:
    ...   ret i32 0
    ... }'''
    >>> analyse(ir, ("_veda_cpu",))["loops"], analyse(ir, ("_veda_cpu",))["vectorized"]
    (1, False)
    """
    for name in names:
        body = _body(ir, name)
        if body is not None:
            break
    else:
        return {"vectorized": None, "reason": f"no function {names[0]} in the compiled code"}
    loops = vectorized = 0
    # (arithmetic, floating point, bits, lanes, element): the data's vectors before the index
    # vectors a vectorised loop also carries (``<4 x i64>`` of positions, for masks), and
    # what it computes on before what it loads (a complex sum loads ``<8 x double>`` and
    # shuffles it into the ``<4 x double>`` it adds).
    best: tuple[bool, bool, int, int, str] = (False, False, 0, 0, "")
    seen: set[str] = set()
    block: list[str] = []
    switch: list[str] | None = None  # a switch's lines, its targets listed until "]"
    for line in body.splitlines():
        label = _LABEL.match(line)
        if label:
            seen.add(label.group(1))
            block = []
            continue
        block.append(line)
        stripped = line.lstrip()
        if switch is not None:
            switch.append(line)
            if not stripped.startswith("]"):
                continue
            terminator, switch = " ".join(switch), None
        elif stripped.startswith("switch "):
            switch = [line]
            if "]" not in stripped:
                continue
            terminator, switch = line, None
        elif stripped.startswith("br "):
            terminator = line
        else:
            continue
        if not seen.intersection(_TARGET.findall(terminator)):
            continue
        loops += 1  # a branch back (br or switch): this block closes a loop
        widths = [
            (bool(_ARITHMETIC.search(b)), not t.startswith("i"), int(n) * _BITS[t], int(n), t)
            for b in block
            for n, t in _VECTOR.findall(b)
            if int(n) > 1
        ]
        if widths:
            vectorized += 1
            best = max(best, max(widths))
    _, _, bits, lanes, element = best
    return {
        "vectorized": vectorized > 0,
        "loops": loops,
        "vectorized_loops": vectorized,
        "lanes": lanes,
        "element": element,
        "bits": bits,
        "function": name,
    }


def _signature(sig: tuple[Any, ...], offset: int) -> str:
    """The kernel's own argument types of a launcher signature (veda's leading ones cut)."""
    return ", ".join(str(t) for t in sig[offset:])


#: Bumped whenever :func:`analyse` reads the IR differently: reports kept by an older
#: version are not reused.
REPORT_VERSION = 3


def _record_name(module: str, launcher: str, signature: str, cres: Any) -> str:
    """The record of one launcher signature compiled for this CPU: Numba keeps code per
    (triple, CPU name, features), and so must its report (a cache shared between machines)."""
    codegen = getattr(getattr(cres, "library", None), "codegen", None)
    machine = repr(codegen.magic_tuple()) if hasattr(codegen, "magic_tuple") else ""
    digest = hashlib.sha256(f"{signature}|{machine}".encode()).hexdigest()[:16]
    return f"{module}.simd{REPORT_VERSION}.{launcher}.{digest}"


def _inspectable(cres: Any) -> bool:
    """Whether Numba still holds this compile's IR (it keeps none for cache-loaded code)."""
    return not getattr(getattr(cres, "library", None), "_disable_inspection", True)


def _on_disk(module: Any) -> bool:
    """Whether ``module`` lives in the kernel cache (not in memory: ``cache=False``, or objects
    without a source form), where a kept report can be found again."""
    return not str(getattr(module, "__file__", "") or "<").startswith("<")


def _valid(report: Any, signature: str) -> bool:
    return (
        isinstance(report, dict)
        and all(isinstance(report.get(k), types) for k, types in _FIELDS.items())
        and report["signature"] == signature
    )


def _fresh(module: Any, launcher: str, sig: tuple[Any, ...], cres: Any) -> dict[str, Any]:
    """The report of a compile Numba still holds the IR of, kept here and, for a module on
    disk, in the kernel cache."""
    signature = _signature(sig, 0)
    report = analyse(cres.library.get_llvm_str(), LOOPS[launcher][1])
    report["signature"] = signature
    _known[(module.__name__, launcher, signature)] = report
    if _on_disk(module):
        _cache.save_record(_record_name(module.__name__, launcher, signature, cres), report)
    return report


def record(module: Any) -> None:
    """Report on each freshly compiled launcher of generated ``module`` (called after a compile
    that was not a cache hit), kept here and in the kernel cache for later processes."""
    with _lock:
        for launcher in LOOPS:
            dispatcher = getattr(module, launcher, None)
            for sig, cres in list(getattr(dispatcher, "overloads", {}).items()):
                if (module.__name__, launcher, _signature(sig, 0)) in _known:
                    continue
                if _inspectable(cres):
                    _fresh(module, launcher, sig, cres)


def reports(module: Any, ndim: int, extra: dict[str, int]) -> list[dict[str, Any]]:
    """One report per compiled launcher signature of generated ``module`` (a form with
    ``ndim`` index parameters; ``extra``: each launcher's parameters of veda's own past the
    domain's): its configuration, the kernel's argument types, and what its loop's IR shows,
    or ``vectorized: None`` with the reason."""
    name = module.__name__
    out = []
    with _lock:
        for launcher, (configuration, _) in LOOPS.items():
            dispatcher = getattr(module, launcher, None)
            for sig, cres in list(getattr(dispatcher, "overloads", {}).items()):
                signature = _signature(sig, 0)
                report = _known.get((name, launcher, signature))
                if report is None and _on_disk(module):
                    kept = _cache.load_record(_record_name(name, launcher, signature, cres))
                    if _valid(kept, signature):
                        report = _known[(name, launcher, signature)] = kept
                if report is None and _inspectable(cres):
                    # (a compile that an interrupt ended before its report was kept, say)
                    report = _fresh(module, launcher, sig, cres)
                if report is None:
                    report = {
                        "vectorized": None,
                        "reason": "loaded from Numba's cache, which keeps no IR, without the "
                        "report veda keeps beside it (compiled by an older veda, or the report "
                        "was damaged); `veda cache clear` and a new compile give one",
                    }
                out.append(
                    {
                        **report,
                        "configuration": configuration,
                        "launcher": launcher,
                        "arguments": _signature(sig, ndim + extra[launcher]),
                    }
                )
    return out
