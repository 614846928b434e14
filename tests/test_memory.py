"""What a kernel keeps alive: redefining the same source reuses its compiled code, a changed body
compiles anew, deleted kernels are freed, and process-wide registries do not grow with
redefinitions.  (The memory figures themselves come from bench/bench_memory_per_kernel.py.)"""

from __future__ import annotations

import gc
import linecache
import sys
import uuid
import weakref

import numpy as np
import pytest

import veda
from veda import _launch
from veda._kernel import cache as _cache
from veda._kernel import checks
from veda.scheduler import _dispatch
from veda.telemetry import _registry as _telemetry

# Below the parallel floor (2 indices per thread): an adaptive launch runs "cpu" and explores
# nothing, however long it takes on a loaded machine (at 100 elements a slow serial launch kept
# the parallel candidates, whose compile then counted for a redefinition).
N = 3


def _cell(constant: float, tag: str) -> str:
    # ``tag`` makes the kernel's name, and so its generated module, this test's own.
    return (
        "import veda\n\n"
        "@veda.kernel\n"
        f"def scale_{tag}(i, x, out):\n"
        f"    out[i] = {constant!r} * x[i] + 1.0\n"
    )


_runs = 0


def _define(cell: str) -> veda.Kernel:
    """Run a notebook cell: IPython compiles every run under a new file name."""
    global _runs
    _runs += 1
    filename = f"<test-cell-{_runs}>"
    linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(cell, filename, "exec"), namespace)
    (k,) = (v for v in namespace.values() if isinstance(v, veda.Kernel))
    return k


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _module(k: veda.Kernel, nargs: int = 2):
    cfg = veda.get_config()
    return k.program(1, nargs, (cfg.boundscheck, cfg.cache))


def test_redefining_the_same_source_compiles_nothing():
    cell = _cell(2.5, _tag())
    x = np.linspace(0.0, 1.0, N)
    first = _define(cell)
    out = np.full(N, np.nan)
    first[N](x, out)
    veda.launch(first, N, x, out, target="cpu")
    veda.launch(first, N, x, out, target="parallel")
    assert first.compile_stats.compiled + first.compile_stats.cache_hits >= 2
    second = _define(cell)
    assert second is not first
    out = np.full(N, np.nan)
    second[N](x, out)
    np.testing.assert_allclose(out, 2.5 * x + 1.0)
    out[:] = np.nan
    veda.launch(second, N, x, out, target="cpu")
    veda.launch(second, N, x, out, target="parallel")
    np.testing.assert_allclose(out, 2.5 * x + 1.0)
    assert second.compile_stats.compiled == 0
    assert second.compile_stats.cache_hits == 0
    assert _module(second) is _module(first)  # the same generated module, its code compiled


def test_a_changed_constant_compiles_new_code():
    tag = _tag()
    x = np.linspace(0.0, 1.0, N)
    out = np.empty(N)
    old = _define(_cell(2.5, tag))
    veda.launch(old, N, x, out, target="cpu")
    new = _define(_cell(3.5, tag))
    veda.launch(new, N, x, out, target="cpu")
    np.testing.assert_allclose(out, 3.5 * x + 1.0)
    assert new.compile_stats.compiled + new.compile_stats.cache_hits == 1
    assert _module(new) is not _module(old)


def test_compiles_are_counted_for_the_newest_definition_only():
    cell = _cell(1.5, _tag())
    old = _define(cell)
    veda.launch(old, N, np.ones(N), np.empty(N), target="cpu")
    before = old.compile_stats.compiled + old.compile_stats.cache_hits
    new = _define(cell)
    # New argument types: one compile, counted once, for the definition that now owns the code.
    out = np.empty(N, dtype=np.float32)
    veda.launch(new, N, np.ones(N, dtype=np.float32), out, target="cpu")
    np.testing.assert_allclose(out, 2.5)
    assert new.compile_stats.compiled + new.compile_stats.cache_hits == 1
    assert old.compile_stats.compiled + old.compile_stats.cache_hits == before


def test_a_deleted_kernel_is_freed():
    k = _define(_cell(4.5, _tag()))
    x = np.linspace(0.0, 1.0, 5000)
    out = np.empty(5000)
    k[5000](x, out)  # adaptive: a tuner, a recorder, a prepared launch
    veda.launch(k, 5000, x, out, target="parallel")
    veda.metrics()
    module = _module(k)
    ref = weakref.ref(k)
    del k
    gc.collect()
    assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
    # What stays is the compiled code, owned by nobody: its hook counts for no kernel.
    assert module._veda_cpu._veda_owner.get() is None


@pytest.mark.slow
def test_registries_do_not_grow_with_redefinitions():
    cell = _cell(0.5, _tag())
    x = np.linspace(0.0, 1.0, N)
    out = np.empty(N)

    def counts():
        gc.collect()
        return {
            "modules": len(sys.modules),
            "line_maps": len(_cache.line_maps),
            "linecache": len(linecache.cache),
            "tuners": len(_dispatch.dispatcher.entries),
            "telemetry": len(_telemetry.registry.kernels),
            "recorders": sum(len(r.recorders) for r in _telemetry.registry.kernels.values()),
            "kernels": len(_launch._kernels),
        }

    k = _define(cell)
    k[N](x, out)
    veda.launch(k, N, x, out, target="cpu")
    module = _module(k)
    before = counts()  # one kernel alive, as after the loop
    refs = []
    for _ in range(200):
        k = _define(cell)
        k[N](x, out)
        veda.launch(k, N, x, out, target="cpu")
        assert k.compile_stats.compiled == 0
        refs.append(weakref.ref(k))
    np.testing.assert_allclose(out, 0.5 * x + 1.0)
    after = counts()
    after["linecache"] -= 200  # the cells' own text, which this test puts there
    assert after == before, (before, after)
    assert sum(r() is not None for r in refs) == 1  # only the one still named ``k``
    assert module._veda_cpu._veda_owner.get() is k
    del k


def test_the_fallback_wrapper_is_not_stacked_on_redefinition(monkeypatch):
    monkeypatch.setattr(checks, "hookable", lambda dispatcher: False)
    cell = _cell(5.5, _tag())
    x = np.ones(N)
    out = np.empty(N)
    first = _define(cell)
    veda.launch(first, N, x, out, target="cpu")
    second = _define(cell)
    veda.launch(second, N, x, out, target="cpu")
    np.testing.assert_allclose(out, 6.5)
    wrapper = _module(second)._veda_cpu
    assert not hasattr(wrapper.dispatcher, "dispatcher")  # one wrapper around the dispatcher
    assert wrapper._veda_owner.get() is second
    assert second.compile_stats.compiled == 0


def test_the_parallel_launcher_has_one_parallel_region():
    # parallel=True would also turn the launcher's np.zeros / np.full into parallel loops, each
    # a gufunc of its own (3 MB and a second of compile each); veda asks for prange only.
    k = _define(
        f"import veda\n\n@veda.kernel(reduce='sum')\ndef total_{_tag()}(i, x):\n    return x[i]\n"
    )
    x = np.arange(5000.0)
    with veda.config(profile=True):
        assert veda.launch(k, 5000, x, target="parallel") == x.sum()
    assert veda.launch(k, 5000, x, target="parallel", schedule="guided") == x.sum()
    module = _module(k, nargs=1)
    for name in ("_veda_parallel", "_veda_parallel_profile"):
        (compiled,) = getattr(module, name).overloads.values()
        assert len(compiled.metadata["parfor_diagnostics"].initial_parfors) == 1, name
        # The region's body types the worker index once as int64 and once as uint64: without
        # the cast, the workers' loop compiles twice.
        assert len(getattr(module, f"{name}_worker").overloads) == 1, name


def test_a_serial_launch_compiles_one_function():
    # Each function Numba compiles is a library of its own (about a megabyte): the serial
    # launcher inlines the body instead of calling it, so only the launcher is compiled.
    tag = _tag()
    k = _define(_cell(6.5, tag))
    dot = _define(
        "import veda\n\n@veda.kernel(reduce='sum')\n"
        f"def dot_{tag}(i, x, y):\n    return x[i] * y[i]\n"
    )
    x = np.linspace(0.0, 1.0, N)
    out = np.empty(N)
    k[N](x, out)
    np.testing.assert_allclose(out, 6.5 * x + 1.0)
    np.testing.assert_allclose(veda.launch(dot, N, x, x, target="cpu"), (x * x).sum())
    assert _compiled(_module(k)) == {"_veda_cpu": 1}
    # A reduction's body is compiled alone too, to type its accumulator (reduce_identity), but
    # the combine step is inlined.
    assert _compiled(_module(dot)) == {"_veda_cpu": 1, f"dot_{tag}": 1}


def _compiled(module) -> dict[str, int]:
    """The functions of a generated module that Numba compiled, and how many times each."""
    return {
        name: len(f.signatures)
        for name, f in vars(module).items()
        if hasattr(f, "signatures") and f.signatures
    }
