"""The first tier of "cpu": ``_veda_span`` while ``_veda_cpu`` compiles in the background;
and the same written body in a 1-d kernel's parallel chunk.

With ``background_compile`` on, a new kernel's first "cpu" launches run the body in a plain
loop written into ``_veda_span`` (about half the cold compile of ``_veda_cpu``, whose loop
checks for signals), called piece by piece from Python, and ``_veda_cpu`` compiles in the
background thread; see :class:`veda.targets.cpu.CPUTarget`.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from numba import literal_unroll

import veda
from veda._kernel import background
from veda._kernel.codegen import inline_body
from veda._kernel.source import get_source
from veda.errors import KernelDefinitionError, KernelIndexError

# -- which bodies are written into the loop ---------------------------------------------------


def _early(i, x, out):
    """Doc."""
    if x[i] < 0:
        return
    out[i] = x[i]


def _returns_in_loop(i, x, out):
    for k in range(3):
        if k == x[i]:
            return
    out[i] = x[i]


def _returns_value(i, x, out):
    out[i] = x[i]
    return 1


def _assigns_param(i, x, out):
    x = x * 2
    out[i] = x[i]


def _assigns_index(i, x, out):
    for i in range(3):
        out[0] = x[i]


def _nested_def(i, x, out):
    def f(v):
        return v * 2

    out[i] = f(x[i])


def _long_string(i, x, out):
    s = """two
lines"""
    out[i] = len(s)


def _one_line(i, x, out): out[i] = x[i]  # fmt: skip


def _reserved_local(i, x, out):
    _veda_i0 = 1
    out[i] = x[i] + _veda_i0


def _binds_range(i, x, out):
    range = 3  # (the loop around a written body calls range)
    out[i] = x[i] + range


def _unrolls(i, tup, out):
    s = 0.0
    for v in literal_unroll(tup):
        s += v
    out[i] = s


def _param_named_range(i, x, range):
    range[i] = x[i]


def _docstring_shares_a_line(i, x, out):
    """Two
    lines."""; out[i] = x[i]  # noqa: E702  # fmt: skip


@pytest.mark.parametrize(
    "fn",
    [
        _returns_in_loop,
        _returns_value,
        _assigns_param,
        _assigns_index,
        _nested_def,
        _long_string,
        _one_line,
        _reserved_local,
        _binds_range,
        _docstring_shares_a_line,
        _unrolls,
        _param_named_range,
    ],
)
def test_a_body_that_cannot_be_written_into_the_loop_is_called(fn):
    assert inline_body(get_source(fn), 1, 2) is None


def test_a_written_body_ends_an_index_where_it_returns_and_keeps_its_lines():
    src = get_source(_early)
    lines, first = inline_body(src, 1, 2)
    text = src.text.splitlines()
    assert text[first].strip() == "if x[i] < 0:"  # the docstring is left out
    assert [ln.strip() for ln in lines] == ["if x[i] < 0:", "continue", "out[i] = x[i]"]
    assert all(ln.startswith(" " * 8) for ln in lines)
    # one line per line of the body: an error's line maps back
    assert len(lines) == len(text) - first
    ast.parse("for i in range(3):\n    for j in range(3):\n" + "\n".join(lines))


# -- the generated span against the serial launcher -------------------------------------------


@veda.kernel
def early_1d(i, x, out):
    if x[i] < 0.25:
        return
    acc = 0.0
    for k in range(3):
        acc += x[i] * k
    out[i] = acc


@veda.kernel
def stencil_2d(i, j, a, out):
    if i == 0 or j == 0 or i == a.shape[0] - 1 or j == a.shape[1] - 1:
        return
    out[i, j] = 0.25 * (a[i - 1, j] + a[i + 1, j] + a[i, j - 1] + a[i, j + 1])


@veda.kernel
def volume_3d(i, j, k, out):
    out[i, j, k] = i * 100 + j * 10 + k


def _module(kernel, ndim, nargs, cache=False):
    return kernel.program(ndim, nargs, (False, cache))


@pytest.mark.parametrize(
    ("kernel", "dims", "make"),
    [
        (early_1d, (1000,), lambda r: (r.random(1000), np.zeros(1000))),
        (stencil_2d, (37, 29), lambda r: (r.random((37, 29)), np.zeros((37, 29)))),
        (volume_3d, (5, 6, 7), lambda r: (np.zeros((5, 6, 7)),)),
    ],
)
def test_the_span_in_pieces_gives_the_serial_launchers_results(kernel, dims, make):
    args = make(np.random.default_rng(3))
    module = _module(kernel, len(dims), len(args))
    assert "_veda_inline_body" not in module._veda_span.py_func.__code__.co_names
    want = [a.copy() for a in args]
    module._veda_cpu(*dims, *want)
    got = [a.copy() for a in args]
    n0 = dims[0]
    for lo, hi in [(0, 1), (1, n0 // 2), (n0 // 2, n0)]:  # pieces, as the launch calls it
        module._veda_span(lo, hi, *dims, *got)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


def test_a_body_that_is_called_runs_through_the_inliner():
    @veda.kernel
    def returns_in_loop(i, x, out):
        for k in range(3):
            if k == 2:
                return
            out[i] += x[i]

    x = np.arange(10.0)
    module = _module(returns_in_loop, 1, 2)
    assert "_veda_inline_body" in module._veda_span.py_func.__code__.co_names
    out = np.zeros(10)
    module._veda_span(0, 10, 10, x, out)
    np.testing.assert_array_equal(out, 2 * x)


# -- the same written body in a 1-d parallel chunk --------------------------------------------


def _chunk_calls_body(module, name):
    """Whether the chunk calls the body ``name``, else (asserted) the loop it is written into."""
    names = module._veda_chunk.py_func.__code__.co_names
    assert (name in names) != ("_veda_chunk_loop" in names), names
    return name in names


@pytest.mark.parametrize("schedule", ["static", "interleaved", "dynamic", "guided"])
def test_a_1d_parallel_chunk_runs_the_written_body_with_each_schedule(schedule):
    x = np.random.default_rng(5).random(5000)
    module = _module(early_1d, 1, 2)
    assert not _chunk_calls_body(module, "early_1d")
    want = np.zeros(5000)
    module._veda_cpu(5000, x, want)
    out = np.zeros(5000)
    veda.launch(early_1d, 5000, x, out, target="parallel", schedule=schedule, chunk=300)
    np.testing.assert_array_equal(out, want)


def test_a_chunk_calls_a_body_it_cannot_write_and_a_2d_chunk_calls_the_body():
    @veda.kernel
    def chunk_called(i, x, out):
        for k in range(3):
            if k == 2:
                return
            out[i] += x[i]

    assert _chunk_calls_body(_module(chunk_called, 1, 2), "chunk_called")
    assert _chunk_calls_body(_module(stencil_2d, 2, 2), "stencil_2d")
    x = np.arange(10.0)
    out = np.zeros(10)
    veda.launch(chunk_called, 10, x, out, target="parallel")
    np.testing.assert_array_equal(out, 2 * x)


@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_an_exception_in_a_written_parallel_chunk_names_its_index(schedule):
    @veda.kernel
    def chunk_fails(i, x, out):
        if x[i] < 0:
            return
        if i == 3001:
            raise ValueError("three thousand and one")
        out[i] = x[i]

    assert not _chunk_calls_body(_module(chunk_fails, 1, 2), "chunk_fails")
    x = np.ones(5000)
    x[:10] = -1.0
    with pytest.raises(veda.KernelError, match="three thousand and one") as info:
        veda.launch(
            chunk_fails, 5000, x, np.zeros(5000), target="parallel", schedule=schedule, chunk=100
        )
    assert info.value.index == (3001,)


def test_an_exception_an_inlined_callee_raises_in_a_written_chunk_is_not_lost():
    """``veda.random`` is inlined into the code that calls it, and a ``try`` does not catch
    what inlined code raises: the written loop is a call inside the chunk's ``try``."""

    @veda.kernel
    def chunk_draws(i, lo, out):
        out[i] = veda.random.integers(1, i, lo[i], 5)

    assert not _chunk_calls_body(_module(chunk_draws, 1, 2), "chunk_draws")
    lo = np.zeros(1000, np.int64)
    lo[700] = 9  # high <= low
    with pytest.raises(veda.KernelError, match="high must be greater than low") as info:
        veda.launch(
            chunk_draws,
            1000,
            lo,
            np.zeros(1000, np.int64),
            target="parallel",
            schedule="dynamic",
            chunk=100,
        )
    assert info.value.index == (700,)


# -- launches on the first tier ----------------------------------------------------------------


def _fresh(name):
    """A kernel nobody compiled before in this process (its own source text)."""
    space = {"veda": veda}
    exec(
        textwrap.dedent(
            f"""
            def {name}(i, a, x, y, out):
                out[i] = a * x[i] + y[i] + {len(name)}
            """
        ),
        space,
    )
    return veda.kernel(space[name])


def test_a_first_cpu_launch_runs_the_span_and_compiles_the_loop_in_the_background(tmp_path):
    k = _fresh("tier_saxpy")
    rng = np.random.default_rng(4)
    n = 5000  # several pieces
    x, y = rng.random(n), rng.random(n)
    out = np.zeros(n)
    extra = len("tier_saxpy")
    with veda.config(background_compile=True, cache_dir=str(tmp_path), progress=False):
        veda.launch(k, n, 2.0, x, y, out, target="cpu")
        np.testing.assert_array_equal(out, 2.0 * x + y + extra)
        module = _module(k, 1, 4, cache=True)
        # the first launch compiled the span alone: a program that launches once needs no more
        assert module._veda_span.overloads and not module._veda_cpu.overloads
        assert not background.busy()
        veda.launch(k, n, 3.0, x, y, out, target="cpu")  # the second sends it to the background
        np.testing.assert_array_equal(out, 3.0 * x + y + extra)
        assert background.wait(120)
        assert module._veda_cpu.overloads
        stats = k.compile_stats
        assert stats.compiled == 2 and stats.background == 1, stats.as_dict()
        out[:] = 0
        veda.launch(k, n, 4.0, x, y, out, target="cpu")  # now on the serial loop
        np.testing.assert_array_equal(out, 4.0 * x + y + extra)
    assert k.compile_stats.compiled == 2


WARM = textwrap.dedent(
    """
    import sys
    import numpy as np
    import veda
    from veda_kernels.blas1 import saxpy
    x = np.ones(1000); out = np.zeros(1000)
    with veda.config(background_compile=sys.argv[1] == "1"):
        veda.launch(saxpy, 1000, 2.0, x, x, out, target="cpu")
    module = saxpy.program(1, 4, (False, True))
    print(bool(module._veda_span.overloads), bool(module._veda_cpu.overloads), out[0])
    """
)


def test_a_serial_loop_in_numbas_disk_cache_is_loaded_not_tiered(tmp_path):
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path), NUMBA_CACHE_DIR=str(tmp_path))

    def child(background):
        out = subprocess.run(
            [sys.executable, "-c", WARM, background], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert child("0") == ["False", "True", "3.0"]  # compiles and caches the serial loop
    assert child("1") == ["False", "True", "3.0"]  # loads it: no span compiled
    # (an empty cache, for contrast: the span)
    env["NUMBA_CACHE_DIR"] = env["VEDA_CACHE_DIR"] = str(tmp_path / "empty")
    assert child("1") == ["True", "False", "3.0"]


def test_without_background_compiles_there_is_no_first_tier(tmp_path):
    k = _fresh("untiered_saxpy")
    x = np.ones(10)
    out = np.zeros(10)
    with veda.config(background_compile=False, cache_dir=str(tmp_path)):
        veda.launch(k, 10, 1.0, x, x, out, target="cpu")
    module = _module(k, 1, 4, cache=True)
    assert not module._veda_span.overloads and module._veda_cpu.overloads


def test_an_adaptive_kernel_learns_on_the_first_tier(tmp_path):
    k = _fresh("tier_adaptive")
    x = np.random.default_rng(5).random(1000)
    out = np.zeros(1000)
    with veda.config(background_compile=True, cache_dir=str(tmp_path), progress=False):
        for _ in range(50):
            k[1000](2.0, x, x, out)
        np.testing.assert_array_equal(out, 3.0 * x + len("tier_adaptive"))
        assert background.wait(120)
        for _ in range(5):
            k[1000](1.0, x, x, out)
        np.testing.assert_array_equal(out, 2.0 * x + len("tier_adaptive"))
    # 1000 cheap indices: the first tier's samples kept it serial (its first is taken before
    # the serial loop's compile starts, which shares the machine)
    assert veda.explain(k).rows[0]["decision"].target == "cpu"


def test_errors_on_the_first_tier_name_the_index_and_the_users_line(tmp_path):
    @veda.kernel
    def tier_fails(i, x, out):
        out[i] = x[i + 1]  # the last index reads past the end

    @veda.kernel
    def tier_mistyped(i, x, out):
        out[i] = x[i] + "text"

    x = np.arange(8.0)
    out = np.zeros(8)
    with veda.config(background_compile=True, boundscheck=True, cache_dir=str(tmp_path)):
        with pytest.raises(KernelIndexError) as info:
            veda.launch(tier_fails, 8, x, out, target="cpu")
        assert info.value.index == (7,)
        with pytest.raises(KernelDefinitionError) as bad:
            veda.launch(tier_mistyped, 8, x, out, target="cpu")
        assert background.wait(120)
    with open(__file__) as f:
        line = next(n for n, t in enumerate(f, 1) if 'x[i] + "text"' in t and "out[i]" in t)
    message = str(bad.value)
    assert f"{os.path.basename(__file__)}:{line}:" in message, message


@veda.func
def _tier_helper_raises(v, i):
    if i == 300:
        raise ValueError("the helper refuses 300")
    return v


def test_a_bodys_own_exception_on_the_first_tier_is_a_kernel_error(tmp_path):
    """Numba gives an exception raised in compiled code a frame at the raising line: not to be
    taken for a signal handler's frame, which is raised as it is."""

    @veda.kernel
    def tier_raises(i, x, out):
        if i == 300:
            raise ValueError("the body refuses 300")
        out[i] = x[i]

    @veda.kernel
    def tier_helper(i, x, out):
        out[i] = _tier_helper_raises(x[i], i)

    x, out = np.arange(1000.0), np.zeros(1000)
    with veda.config(background_compile=True, cache_dir=str(tmp_path)):
        for kernel, text in ((tier_raises, "the body"), (tier_helper, "the helper")):
            for _ in range(2):  # the first launch and the second, both on the first tier
                with pytest.raises(veda.KernelError, match=f"{text} refuses 300") as info:
                    veda.launch(kernel, 1000, x, out, target="cpu")
                assert info.value.index == (300,)
                assert isinstance(info.value.__cause__, ValueError)
        assert background.wait(120)


CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import numpy as np
    import veda
    from veda._kernel import background

    @veda.kernel
    def slow(i, x, out):
        acc = 0.0
        for k in range(200000):
            acc += x[i] * 1e-9 + k * 1e-12
        out[i] = acc

    x = np.ones(4000)
    out = np.zeros(4000)
    gate = threading.Event()
    background.submit("hold", gate.wait)  # the serial loop's compile waits behind it
    with veda.config(background_compile=True, cache_dir=sys.argv[1]):
        veda.launch(slow, 2, x, out, target="cpu")  # compiles the span
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        try:
            veda.launch(slow, 4000, x, out, target="cpu")  # 1-2 s on the first tier
        except KeyboardInterrupt:
            print("interrupted after", round(time.perf_counter() - start, 2))
        print("compiled", slow.compile_stats.compiled)
        gate.set()
        if hasattr(os, "fork"):
            pid = os.fork()  # (waits for the serial loop's compile)
            if pid == 0:
                x2 = np.ones(10); o2 = np.zeros(10)
                veda.launch(slow, 10, x2, o2, target="cpu")
                os._exit(0 if o2[0] > 0 else 3)
            print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGINT and fork")
def test_ctrl_c_ends_a_long_first_tier_launch_between_pieces(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0].startswith("interrupted after"), out.stdout
    assert float(lines[0].split()[-1]) < 1.0, out.stdout  # the launch alone takes 1-2 s
    assert lines[1] == "compiled 1", out.stdout  # it ran on the span
    assert lines[2] == "child 0", out.stdout


@veda.kernel
def slow_tier(i, x, out):
    acc = 0.0
    for k in range(200000):
        acc += x[i] * 1e-9 + k * 1e-12
    out[i] = acc


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_a_signal_handlers_exception_between_pieces_is_raised_as_it_is(tmp_path):
    """A handler that raises something other than KeyboardInterrupt (a SIGALRM timeout) ends
    the launch with its own exception, not as the body's failure."""

    def on_alarm(signum, frame):
        raise TimeoutError("the alarm rang")

    x, out = np.ones(4000), np.zeros(4000)
    before = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with veda.config(background_compile=True, cache_dir=str(tmp_path)):
            veda.launch(slow_tier, 2, x, out, target="cpu")  # compiles the span
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            start = time.perf_counter()
            with pytest.raises(TimeoutError, match="the alarm rang"):
                veda.launch(slow_tier, 4000, x, out, target="cpu")  # 1-2 s on the first tier
            assert time.perf_counter() - start < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
