"""SIMD hints and the vectorisation report: ``@veda.kernel(fastmath=...)`` and the compiled loops
``veda.explain(k).code`` reads from the optimised LLVM IR."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import veda
from veda._kernel import codegen, simd

N = 5000


@veda.kernel
def saxpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


@veda.kernel(reduce="sum")
def strict_dot(i, x, y):
    return x[i] * y[i]


@veda.kernel(reduce="sum", fastmath={"reassoc"})
def reassoc_dot(i, x, y):
    return x[i] * y[i]


@veda.kernel(fastmath=True)
def fast_scale(i, x, out):
    out[i] = 3.0 * x[i]


def _data(n=N):
    rng = np.random.default_rng(0)
    return rng.random(n), rng.random(n)


def _code(k, configuration):
    rows = [c for c in veda.explain(k).code if c["configuration"] == configuration]
    assert rows, veda.explain(k).code
    return rows


# -- fastmath= ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("reassoc", "fastmath={'reassoc'}"),  # a bare string: the set was meant
        ({"reassoc", "bogus"}, "unknown fastmath flag(s) 'bogus'"),
        (3, "expected True, False or a set of flags"),
        ({"reassoc": 1}, "expected True, False or a set of flags"),
    ],
)
def test_bad_fastmath_is_refused_at_definition(value, words):
    with pytest.raises(veda.KernelDefinitionError, match="fastmath") as info:

        @veda.kernel(fastmath=value)
        def k(i, x):
            x[i] = 1.0

    assert words in str(info.value)


def test_fastmath_flags_are_normalised():
    def body(i, x):
        x[i] = 1.0

    assert veda.kernel(fastmath=False)(body).fastmath == frozenset()
    assert veda.kernel(fastmath=True)(body).fastmath == {"fast"}
    assert veda.kernel(fastmath=["contract", "reassoc"])(body).fastmath == {"contract", "reassoc"}
    every = ("nnan", "ninf", "nsz", "arcp", "contract", "afn", "reassoc")
    assert veda.kernel(fastmath=every)(body).fastmath == {"fast"}
    assert "fastmath={'reassoc'}" in repr(reassoc_dot)
    # what pickling by value rebuilds the kernel from
    again = veda.kernel(**reassoc_dot._options())(reassoc_dot.py_func)
    assert again.fastmath == reassoc_dot.fastmath


def _decorated(text):
    """(decorator, function name) of each function in generated launcher text."""
    lines = text.splitlines()
    return [(d, lines[k + 1].split("(")[0]) for k, d in enumerate(lines[:-1]) if d.startswith("@")]


def test_fastmath_reaches_the_body_and_every_launcher():
    flagged = _decorated(
        codegen.kernel_launchers("body", 1, 2, "sum", True, False, (), frozenset({"contract"}))
    )
    assert flagged and all("'contract'" in d and "reassoc" not in d for d, _ in flagged)
    plain = codegen.kernel_launchers("body", 1, 2, "sum", True, False)
    assert not [f for d, f in _decorated(plain) if "fastmath" in d]
    # the running sum reassociates through an intrinsic (see codegen.LANES_OPS), flags or not
    assert "_veda_lang.reassoc_add(_b, " in plain
    assert "_veda_lang.reassoc_mul(_b, " in codegen.kernel_launchers("b", 1, 2, "prod", True, False)
    assert "reassoc" not in codegen.kernel_launchers("b", 1, 2, "min", True, False)
    cuda = codegen.cuda_launchers("body", 1, 2, "sum", "float64", "0.0", 128, True, False, True)
    assert all("fastmath=True" in d for d in cuda.splitlines() if d.startswith("@_veda_cuda"))


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_fastmath_results_match_strict_ones(target):
    x, y = _data()
    strict = veda.launch(strict_dot, N, x, y, target=target)
    fast = veda.launch(reassoc_dot, N, x, y, target=target)
    assert fast == pytest.approx(np.dot(x, y), rel=1e-12)
    assert fast == pytest.approx(strict, rel=1e-12)
    out = np.empty(N)
    veda.launch(fast_scale, N, x, out, target=target)
    np.testing.assert_array_equal(out, 3.0 * x)


def test_deterministic_mode_refuses_fastmath_kernels():
    x, y = _data()
    with veda.deterministic(seed=1), pytest.raises(veda.LaunchError) as info:
        reassoc_dot[N](x, y)
    message = str(info.value)
    assert "reassoc_dot" in message and "fastmath={'reassoc'}" in message
    assert "deterministic" in message
    with veda.deterministic(seed=1):  # a strict kernel still runs there
        assert strict_dot[N](x, y) == pytest.approx(np.dot(x, y))


# -- the vectorisation report ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_an_elementwise_loop_is_reported_vectorised(target):
    x, y = _data()
    veda.launch(saxpy, N, 2.0, x, y, np.empty(N), target=target)
    (row,) = _code(saxpy, target)
    assert row["vectorized"] is True, row
    assert row["lanes"] >= 2 and row["element"] == "double"
    assert row["bits"] == 64 * row["lanes"]
    assert 1 <= row["vectorized_loops"] <= row["loops"]
    assert row["arguments"].startswith("float64, array(float64, 1d, C)")
    text = str(veda.explain(saxpy))
    assert f"vectorised, {row['lanes']} x double" in text


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_a_float_sum_is_vectorised_and_reported_in_each_mode(target):
    """veda's blocks add through a reassociating combine, so LLVM splits a float sum over
    lanes; deterministic mode's blocks add in a fixed order, reported as a configuration of
    its own."""
    x, y = _data()
    expected = np.dot(x, y)
    assert veda.launch(strict_dot, N, x, y, target=target) == pytest.approx(expected)
    assert veda.launch(reassoc_dot, N, x, y, target=target) == pytest.approx(expected)
    with veda.deterministic(seed=1):
        assert veda.launch(strict_dot, N, x, y, target=target) == pytest.approx(expected)
    (plain,) = _code(strict_dot, target)
    (fixed,) = _code(strict_dot, f"{target}, deterministic")
    (fast,) = _code(reassoc_dot, target)
    assert plain["vectorized"] is True and plain["element"] == "double", plain
    # (whether LLVM's SLP pass packs the fixed order's four chains depends on the CPU)
    assert fixed["vectorized"] is not None and fixed["loops"] >= 1, fixed
    assert fast["vectorized"] is True and fast["options"]["fastmath"] == "{'reassoc'}", fast
    assert "fastmath={'reassoc'}" in str(veda.explain(reassoc_dot))


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("op", ["sum", "prod"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_vectorised_sums_and_products_are_accurate(target, op, ndim):
    rng = np.random.default_rng(1)
    shape = (12_345,) if ndim == 1 else (111, 123)
    x = 1.0 + 1e-4 * rng.random(shape) if op == "prod" else rng.random(shape)
    k = _REDUCERS[(op, ndim)]
    got = veda.launch(k, shape if ndim > 1 else shape[0], x, target=target)
    expected = math.fsum(x.ravel()) if op == "sum" else np.prod(x.astype(np.longdouble))
    assert got == pytest.approx(float(expected), rel=1e-13)
    ints = rng.integers(-5, 5, shape)
    if op == "sum":  # integers add exactly in any order
        assert veda.launch(k, shape if ndim > 1 else shape[0], ints, target=target) == ints.sum()


@veda.kernel(reduce="sum")
def _sum1(i, x):
    return x[i]


@veda.kernel(reduce="sum")
def _sum2(i, j, x):
    return x[i, j]


@veda.kernel(reduce="prod")
def _prod1(i, x):
    return x[i]


@veda.kernel(reduce="prod")
def _prod2(i, j, x):
    return x[i, j]


_REDUCERS = {("sum", 1): _sum1, ("sum", 2): _sum2, ("prod", 1): _prod1, ("prod", 2): _prod2}


def test_report_is_json_and_html():
    x, y = _data()
    veda.launch(saxpy, N, 2.0, x, y, np.empty(N), target="cpu")
    ex = veda.explain(saxpy)
    data = json.loads(json.dumps(ex.to_dict()))
    assert data["code"] and data["code"][0]["launcher"] in simd.LOOPS
    assert "compiled loops" in ex._repr_html_()


def test_analyse_reads_vectors_in_loops_only():
    slp_only = textwrap.dedent(
        """\
        define i32 @_ZN3gen9_veda_cpuB2v1E(ptr %a) {
        entry:
          %v = load <2 x double>, ptr %a, align 8
          br label %loop
        loop:
          %x = fadd double %y, 1.0
          br i1 %c, label %done, label %loop, !llvm.loop !0
        done:
          ret i32 0
        }"""
    )
    report = simd.analyse(slp_only, ("_veda_cpu",))
    assert report["vectorized"] is False and report["loops"] == 1
    # index vectors (i64) do not make the data's width
    both = slp_only.replace(
        "%x = fadd double %y, 1.0",
        "%i = add <8 x i64> %j, %k\n  %x = fadd <4 x double> %y, %y",
    )
    report = simd.analyse(both, ("_veda_cpu",))
    assert report["vectorized"] is True and (report["lanes"], report["element"]) == (4, "double")
    missing = simd.analyse(slp_only, ("_veda_chunk",))
    assert missing["vectorized"] is None and "_veda_chunk" in missing["reason"]


_CHILD = textwrap.dedent(
    """\
    import json, numpy as np, veda

    @veda.kernel
    def twice(i, x, out):
        out[i] = 2.0 * x[i]

    x = np.arange(5000.0)
    veda.launch(twice, 5000, x, np.empty(5000), target="cpu")
    ex = veda.explain(twice)
    str(ex), ex._repr_html_()  # renders whatever the report holds
    print(json.dumps(ex.code))
    """
)


def _child(tmp_path, cache):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, VEDA_CACHE_DIR=str(cache))
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_a_cache_loaded_launcher_keeps_its_report(tmp_path):
    cache = tmp_path / "cache"
    first, _ = _child(tmp_path, cache)
    second, _ = _child(tmp_path, cache)  # Numba's cache serves the code, without IR
    assert first[0]["vectorized"] is True
    assert second == first
    # a damaged report is discarded with a warning, and said to be missing: no crash
    records = list((cache / "kernels").glob("*.simd*.record"))
    assert records
    for r in records:
        r.write_bytes(r.read_bytes()[:-3] + b"xyz")
    third, err = _child(tmp_path, cache)
    assert third[0]["vectorized"] is None and "cache" in third[0]["reason"]
    assert "damaged" in err
    # a whole record (its checksum right) that lacks what a report holds: discarded too
    from veda._kernel import cache as kernel_cache

    for r in records:
        payload = pickle.dumps({"signature": first[0]["signature"]})
        r.write_bytes(kernel_cache._MAGIC + hashlib.sha256(payload).digest() + payload)
    fourth, _ = _child(tmp_path, cache)
    assert fourth[0]["vectorized"] is None


# -- found by an adversarial review ---------------------------------------------------------


def test_flags_that_only_equal_a_flag_name_become_plain_strings():
    class Shout(str):
        def __repr__(self):
            return "Shout()"

    @veda.kernel(fastmath=set(np.array(["nnan", "contract"])) | {Shout("reassoc")})
    def k(i, x):
        x[i] = x[i] * 2.0

    assert all(type(f) is str for f in k.fastmath)
    assert repr(k).endswith("fastmath={'contract', 'nnan', 'reassoc'}>")
    x = np.ones(10)
    veda.launch(k, 10, x, target="cpu")
    np.testing.assert_array_equal(x, 2.0)
    with pytest.raises(veda.KernelDefinitionError, match="unknown fastmath flag"):
        veda.kernel(fastmath={b"nnan"})(k.py_func)


def _records(k):
    module = k.program(1, len(k.params) - 1, (False, True))
    return module, sorted((_kept_dir() / ".").glob(f"{module.__name__}.simd*.record"))


def _kept_dir():
    from veda._kernel import cache

    return cache._kernels_dir()


@veda.kernel(reduce="sum")
def _kept(i, x):
    return 5.0 * x[i]


def test_a_report_lost_at_compile_is_made_and_kept_by_explain():
    """An interrupt at the end of a first compile skips the report kept for later processes;
    explain makes it, and keeps it, while this process still holds the IR."""
    veda.launch(_kept, N, np.ones(N), target="cpu")
    module, kept = _records(_kept)
    assert kept, "the compile kept no report"
    for path in kept:
        path.unlink()
    for key in [key for key in simd._known if key[0] == module.__name__]:
        del simd._known[key]
    (row,) = _code(_kept, "cpu")
    assert row["vectorized"] is True
    assert [p.name for p in _records(_kept)[1]] == [p.name for p in kept]


def test_the_profiled_parallel_loop_has_a_report():
    x, y = _data()
    with veda.config(profile=True):
        veda.launch(saxpy, N, 2.0, x, y, np.empty(N), target="parallel", threads=2)
    (row,) = _code(saxpy, "parallel, profiled")
    assert row["vectorized"] is True, row


def test_reports_are_kept_per_cpu():
    """Numba keeps code per CPU (name and features), so a cache shared by machines holds one
    report per CPU."""

    class Codegen:
        def __init__(self, cpu):
            self.cpu = cpu

        def magic_tuple(self):
            return ("x86_64-unknown-linux-gnu", self.cpu, "+avx2")

    class Compiled:
        def __init__(self, cpu):
            self.library = type("Library", (), {"codegen": Codegen(cpu)})()

    names = {simd._record_name("m", "_veda_cpu", "float64", Compiled(c)) for c in ("a", "b")}
    assert len(names) == 2
    same = simd._record_name("m", "_veda_cpu", "float64", Compiled("a"))
    assert same in names


@veda.kernel(reduce="sum")
def _complex_sum(i, z):
    return z[i]


def test_the_width_is_the_arithmetic_s_not_the_loads():
    """A complex sum loads twice the vector it adds (real and imaginary parts, shuffled)."""
    z = np.arange(N) * (1 + 2j)
    assert veda.launch(_complex_sum, N, z, target="cpu") == z.sum()
    veda.launch(saxpy, N, 2.0, *_data(), np.empty(N), target="cpu")
    (plain,) = _code(saxpy, "cpu")
    (row,) = _code(_complex_sum, "cpu")
    assert row["vectorized"] is True and row["element"] == "double"
    assert row["bits"] == plain["bits"], (row, plain)


_TABLE = np.arange(N, dtype=np.float64)


@veda.kernel
def _reads_a_global(i, out):
    out[i] = _TABLE[i] + 1.0


@veda.kernel
def _scatter(i, idx, x, out):
    out[idx[i]] = x[i]


def test_modules_in_memory_keep_no_report_on_disk():
    out = np.empty(N)
    veda.launch(_reads_a_global, N, out, target="cpu")
    np.testing.assert_array_equal(out, _TABLE + 1.0)
    with veda.config(cache=False):
        veda.launch(_scatter, N, np.arange(N)[::-1].copy(), _TABLE, np.empty(N), target="cpu")
    for k in (_reads_a_global, _scatter):
        (row,) = _code(k, "cpu")
        assert row["vectorized"] is not None  # this process holds the IR
    for k, options in ((_reads_a_global, (False, True)), (_scatter, (False, False))):
        module = k.program(1, len(k.params) - 1, options)
        assert not simd._on_disk(module)
        assert not list(_kept_dir().glob(f"{module.__name__}.simd*"))


def test_a_scalar_loop_is_counted():
    idx = np.arange(N)[::-1].copy()
    out = np.empty(N)
    veda.launch(_scatter, N, idx, _TABLE, out, target="cpu")
    np.testing.assert_array_equal(out, _TABLE[::-1])
    rows = _code(_scatter, "cpu")
    assert all(row["loops"] >= 1 for row in rows), rows


def test_the_report_covers_every_cpu_launcher():
    from veda._kernel.definition import LAUNCHERS

    assert set(simd.LOOPS) == set(LAUNCHERS)


_HELPER_CHILD = textwrap.dedent(
    """\
    import sys, numpy as np, veda

    @veda.func
    def is_nan(v):
        return v != v

    @veda.kernel(reduce="sum", fastmath={"nnan"})
    def fast_count(i, x):
        return 1.0 if is_nan(x[i]) else 0.0

    @veda.kernel(reduce="sum")
    def strict_count(i, x):
        return 1.0 if is_nan(x[i]) else 0.0

    x = np.full(500, np.nan)
    order = sys.argv[1]
    if order in ("fast", "both"):
        veda.launch(fast_count, 500, x, target="cpu")
    if order in ("strict", "both"):
        print(veda.launch(strict_count, 500, x, target="cpu"))
    """
)


@pytest.mark.slow
def test_helpers_stay_strict_whatever_fastmath_kernel_compiled_them_first(tmp_path):
    """Numba compiles a callee without flags of its own with its caller's, and keeps that build
    for every later caller: a strict kernel sharing a helper with a fastmath kernel compiled
    first (in this process, or into the disk cache by another) would lose the NaN test."""
    script = tmp_path / "helper.py"
    script.write_text(_HELPER_CHILD)
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path / "cache"))

    def run(order):
        proc = subprocess.run(
            [sys.executable, str(script), order],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run("both") == "500.0"  # the fastmath kernel first, in this process
    run("fast")  # another process fills the cache from the fastmath kernel only
    assert run("strict") == "500.0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_explains_while_a_parent_thread_held_the_report_lock(reap):
    x, y = _data()
    veda.launch(saxpy, N, 2.0, x, y, np.empty(N), target="cpu")
    from veda._kernel import background

    assert background.wait(60)  # (a fork waits for a background compile, which may report)
    with simd._lock:  # as a parent thread inside veda.explain at the fork
        pid = os.fork()
        if pid == 0:  # the child: explain must not wait for a lock nobody will release
            try:
                ok = _code(saxpy, "cpu")[0]["vectorized"] is True
            finally:
                os._exit(0 if ok else 3)
    reap(pid, "the fork child hung on the report lock")
