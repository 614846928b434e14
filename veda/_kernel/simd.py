"""Whether a kernel's loops were vectorised, read from the optimised LLVM IR of its launchers.

Each CPU launcher runs its loop in one generated function: ``"cpu"`` in ``_veda_cpu`` itself,
``"parallel"`` in ``_veda_chunk`` (linked into the launcher's library), deterministic
reductions in ``_veda_det_blocks`` or ``_veda_det_pieces``.  That function's IR is split into
basic blocks; a loop is a block ending in a branch tagged ``!llvm.loop``, and it is vectorised
when that block computes on vectors (``<4 x double>``: LLVM's loop vectoriser leaves one such
block, its scalar remainder another).  The widest vector of a vectorised loop gives the width.

Numba keeps no IR for code it loads from its disk cache, so a report is made when a launcher is
compiled and kept beside the cached code (:func:`veda._kernel.cache.save_record`); a launcher
loaded from an older cache has none, and says so.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from typing import Any

from veda._kernel import cache as _cache

__all__ = ["analyse", "record", "reports"]

#: Launcher -> (the configuration it runs, the functions that may hold its loop, first found).
LOOPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "_veda_cpu": ("cpu", ("_veda_cpu",)),
    "_veda_parallel": ("parallel", ("_veda_chunk", "_veda_parallel_worker")),
    "_veda_parallel_profile": ("parallel, profiled", ("_veda_chunk",)),
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
_LOOP_TAG = re.compile(r"!llvm\.loop !\d+")

_lock = threading.Lock()
#: (module name, launcher, signature) -> report, for this process.
_known: dict[tuple[str, str, str], dict[str, Any]] = {}


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
    """
    for name in names:
        body = _body(ir, name)
        if body is not None:
            break
    else:
        return {"vectorized": None, "reason": f"no function {names[0]} in the compiled code"}
    loops = vectorized = 0
    # (floating point, bits, lanes, element): the data's vectors before the index vectors
    # that a vectorised loop also carries (``<4 x i64>`` of positions, for masks).
    best: tuple[bool, int, int, str] = (False, 0, 0, "")
    block: list[str] = []
    for line in body.splitlines():
        if _LABEL.match(line):
            block = []
            continue
        block.append(line)
        if _LOOP_TAG.search(line):
            loops += 1
            widths = [
                (not t.startswith("i"), int(n) * _BITS[t], int(n), t)
                for b in block
                for n, t in _VECTOR.findall(b)
                if int(n) > 1
            ]
            if widths:
                vectorized += 1
                best = max(best, max(widths))
    _, bits, lanes, element = best
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
REPORT_VERSION = 1


def _record_name(module: str, launcher: str, signature: str) -> str:
    digest = hashlib.sha256(signature.encode()).hexdigest()[:16]
    return f"{module}.simd{REPORT_VERSION}.{launcher}.{digest}"


def _inspectable(cres: Any) -> bool:
    """Whether Numba still holds this compile's IR (it keeps none for cache-loaded code)."""
    return not getattr(getattr(cres, "library", None), "_disable_inspection", True)


def _report_of(module: str, launcher: str, sig: tuple[Any, ...], cres: Any) -> dict[str, Any]:
    signature = _signature(sig, 0)
    report = analyse(cres.library.get_llvm_str(), LOOPS[launcher][1])
    report["signature"] = signature
    _known[(module, launcher, signature)] = report
    return report


def record(module: Any) -> None:
    """Report on each freshly compiled launcher of generated ``module`` (called after a compile
    that was not a cache hit), kept here and in the kernel cache for later processes."""
    name = module.__name__
    with _lock:
        for launcher in LOOPS:
            dispatcher = getattr(module, launcher, None)
            for sig, cres in list(getattr(dispatcher, "overloads", {}).items()):
                signature = _signature(sig, 0)
                if (name, launcher, signature) in _known or not _inspectable(cres):
                    continue
                report = _report_of(name, launcher, sig, cres)
                _cache.save_record(_record_name(name, launcher, signature), report)


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
                if report is None:
                    kept = _cache.load_record(_record_name(name, launcher, signature))
                    if isinstance(kept, dict) and kept.get("signature") == signature:
                        report = _known[(name, launcher, signature)] = kept
                if report is None and _inspectable(cres):
                    report = _report_of(name, launcher, sig, cres)
                if report is None:
                    report = {
                        "vectorized": None,
                        "reason": "loaded from Numba's cache, which keeps no IR, and compiled "
                        "before veda kept a report; `veda cache clear` and a new compile "
                        "give one",
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
