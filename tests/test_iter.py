"""veda.par_iter / veda.par_range: every operation against a NumPy reference on every CPU
target and schedule, the same bits everywhere, one launch and no domain-sized temporaries,
stage-naming errors, and the disk cache in a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest
from conftest import CPU_CONFIGS
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import veda
from veda._iter import block_size


def square_plus(v):
    return v * v + 1.0


def above(v):
    return v > 1.25


def half(v):
    return v * 0.5


X = np.random.default_rng(7).random(5003)  # 5003: a partial last block
Y = square_plus(X)
KEEP = Y[above(Y)]


def test_block_size_depends_on_length_only():
    assert block_size(0) == block_size(1) == 1
    assert block_size(1024) == 1 and block_size(1025) == 2
    assert block_size(10**7) == 16384 and block_size(10**9) == 16384
    assert all(block_size(n) & (block_size(n) - 1) == 0 for n in (3, 5000, 10**6))


def test_terminals_match_numpy(settings):
    it = veda.par_iter(X).map(square_plus).filter(above)
    with veda.config(**settings):
        np.testing.assert_allclose(it.sum(), KEEP.sum(), rtol=1e-12)
        np.testing.assert_allclose(it.map(half).prod(), np.prod(KEEP * 0.5), rtol=1e-10)
        assert it.min() == KEEP.min() and it.max() == KEEP.max()
        source_index = np.flatnonzero(above(Y))
        assert it.argmin() == source_index[np.argmin(KEEP)]
        assert it.argmax() == source_index[np.argmax(KEEP)]
        assert it.count() == len(KEEP)
        assert it.any(lambda v: v > 1.9) == bool((KEEP > 1.9).any())
        assert it.all(lambda v: v > 1.25) and not it.all(lambda v: v > 1.5)
        np.testing.assert_array_equal(it.collect(), KEEP)
        folded = it.fold(0.0, lambda acc, v: acc + 2.0 * v, lambda a, b: a + b)
        np.testing.assert_allclose(folded, 2.0 * KEEP.sum(), rtol=1e-12)
        np.testing.assert_allclose(it.reduce(lambda a, b: a + b, 0.0), KEEP.sum(), rtol=1e-12)
        out = np.zeros(len(X))
        veda.par_iter(X).enumerate().filter(lambda i, v: v > 0.5).for_each(_store, out)
        np.testing.assert_array_equal(out, np.where(X > 0.5, 2.0 * X, 0.0))


def _store(i, v, out):
    out[i] = 2.0 * v


def test_same_bits_on_every_target_schedule_thread_count_and_chunk():
    x = np.random.default_rng(1).standard_normal(300_001)
    it = veda.par_iter(x).map(lambda v: v * 1.1).filter(lambda v: v > -0.5)
    results = set()
    for _, s in CPU_CONFIGS:
        with veda.config(**s):
            results.add((it.sum().tobytes(), it.fold(0.0, _add, _add).tobytes()))
    for chunk in (1, 7, 64):
        with veda.config(target="parallel", schedule="dynamic", chunk=chunk):
            results.add((it.sum().tobytes(), it.fold(0.0, _add, _add).tobytes()))
    with veda.deterministic(seed=1):
        results.add((it.sum().tobytes(), it.fold(0.0, _add, _add).tobytes()))
    for _ in range(5):  # adaptive launches, whatever the dispatcher picks
        results.add((it.sum().tobytes(), it.fold(0.0, _add, _add).tobytes()))
    assert len(results) == 1


def _add(a, b):
    return a + b


def test_sources_and_combinators():
    assert veda.par_range(10).sum() == 45
    assert veda.par_range(10, 0, -3).collect().tolist() == [10, 7, 4, 1]
    assert veda.par_range(5, 5).count() == 0
    x, y = np.arange(6.0), np.arange(6.0)[::-1].copy()
    np.testing.assert_array_equal(veda.par_iter(x).zip(y).map(lambda a, b: a * b).collect(), x * y)
    zipped = veda.par_iter(x).zip(veda.par_range(100, 106)).collect()
    np.testing.assert_array_equal(zipped[0], x)
    np.testing.assert_array_equal(zipped[1], np.arange(100, 106))
    pos, val = veda.par_iter(x).enumerate().filter(lambda i, v: i % 2 == 1).collect()
    np.testing.assert_array_equal(pos, [1, 3, 5])
    np.testing.assert_array_equal(val, [1.0, 3.0, 5.0])
    assert veda.par_iter(x).map_with_index(lambda i, v: i * v).sum() == (x * x).sum()
    # a map that returns a tuple: two components for the next stage
    assert (
        veda.par_iter(x).map(lambda v: (v, v + 1.0)).map(lambda a, b: a * b).sum()
        == (x * (x + 1)).sum()
    )
    sums = veda.par_iter(np.arange(10.0)).chunks(4).map(lambda c: c.sum()).collect()
    np.testing.assert_array_equal(sums, [6.0, 22.0, 17.0])
    m = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(veda.par_iter(m).map(lambda r: r.sum()).collect(), m.sum(1))
    np.testing.assert_array_equal(veda.par_iter(m).filter(lambda r: r[0] > 2).collect(), m[1:])
    assert len(veda.par_iter(m)) == 4


@pytest.mark.parametrize(
    "dtype", ["bool", "int32", "int64", "uint8", "float32", "float64", "complex128"]
)
def test_result_dtypes_follow_numpy(dtype):
    rng = np.random.default_rng(2)
    x = (rng.random(3000) * 10).astype(dtype) if dtype != "bool" else rng.random(3000) < 0.5
    got = veda.par_iter(x).sum()
    assert got.dtype == np.sum(x).dtype
    if x.dtype.kind in "biu":
        assert got == np.sum(x)
    else:
        np.testing.assert_allclose(got, np.sum(x), rtol=1e-5)
    if x.dtype.kind != "c":
        assert veda.par_iter(x).max() == x.max() and veda.par_iter(x).max().dtype == x.dtype
        assert veda.par_iter(x).argmin() == np.argmin(x)
    assert veda.par_iter(x).collect().dtype == x.dtype


def test_nan_like_numpy():
    x = np.array([3.0, np.nan, 1.0, np.nan, 0.5] * 700)
    assert np.isnan(veda.par_iter(x).min()) and np.isnan(veda.par_iter(x).max())
    assert veda.par_iter(x).argmin() == np.argmin(x) == 1
    assert veda.par_iter(x).argmax() == np.argmax(x) == 1
    y = x.copy()
    y[:3000] = 2.0  # the first NaN in a later block
    assert veda.par_iter(y).argmin() == np.argmin(y)


def test_empty_sequences():
    e = veda.par_iter(np.empty(0))
    assert e.sum() == 0.0 and e.prod() == 1.0 and e.count() == 0
    assert e.collect().shape == (0,) and e.collect().dtype == np.float64
    assert not e.any() and e.all()
    assert e.fold(5.0, _add, _add) == 5.0
    with pytest.raises(veda.LaunchError, match=r"\.min\(\): the sequence is empty"):
        e.min()
    nothing = veda.par_iter(X).filter(lambda v: v > 2.0)
    with pytest.raises(veda.LaunchError, match="empty after its filters"):
        nothing.argmax()
    assert nothing.count() == 0 and nothing.collect().size == 0


def test_any_stops_each_worker_early():
    # 1e11 elements: evaluating each would take minutes; every block after the first finds
    # the answer already there and returns before its loop.
    assert veda.par_range(10**11).any(lambda i: i == 5)
    assert not veda.par_range(10**11).all(lambda i: i < 5)
    with veda.config(target="parallel"):
        assert veda.par_range(10**11).any(lambda i: i == 5)
    # found in the first window of blocks: nothing of the length's size is allocated or run
    assert veda.par_range(10**17).any(lambda i: i == 5)


def _fails_at_5000(v):
    if v == 5000.0:
        raise ValueError("bad element")
    return v


def test_an_exception_in_a_stage_says_which_elements():
    x = np.arange(100_000.0)
    with pytest.raises(veda.KernelError, match=r"bad element \(at one of elements 4992\.\.5119"):
        veda.par_iter(x).map(_fails_at_5000).sum()
    with pytest.raises(veda.KernelError, match="bad element"):
        veda.par_iter(x).map(_fails_at_5000).any(lambda v: v < 0.0)


def test_one_launch_and_no_array_of_the_domain_size():
    x = np.random.default_rng(3).random(10**6)  # 8 MB
    it = veda.par_iter(x).map(square_plus).filter(above).map(half)
    expected = it.sum()  # compiled
    k = it.kernel("sum")
    launches = veda.metrics().kernel(k).launches
    tracemalloc.start()
    try:
        got = it.sum()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == expected
    assert peak < x.nbytes // 20, peak  # one partial per block: 977 of them
    assert veda.metrics().kernel(k).launches == launches + 1
    tracemalloc.start()
    try:
        v = x * x + 1.0
        _ = (v[v > 1.25] * 0.5).sum()
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert numpy_peak > x.nbytes  # the check would see a temporary of the domain's size


def test_visible_in_explain_and_metrics():
    it = veda.par_iter(X).map(square_plus)
    it.sum()
    k = it.kernel("sum")
    assert k is it.kernel("sum")  # one kernel per chain shape
    assert "par_iter(float64[n]).map(square_plus).sum" in k.name
    # no length in the kernel (or its generated module): one kernel serves every length
    assert veda.par_iter(X[:100]).map(square_plus).kernel("sum") is k
    assert veda.metrics().kernel(k).launches >= 1
    assert veda.explain(k) is not None


@veda.func
def clamp(v):
    return min(max(v, 0.2), 0.8)


@numba.njit
def jitted_double(v):
    return 2.0 * v


def test_helpers_and_jitted_functions_as_stages():
    got = veda.par_iter(X).map(clamp).map(jitted_double).filter(lambda v: clamp(v) > 0.3).sum()
    ref = 2.0 * np.clip(X, 0.2, 0.8)
    np.testing.assert_allclose(got, ref[np.clip(ref, 0.2, 0.8) > 0.3].sum(), rtol=1e-12)


def _bad(v):
    return v.no_such_attribute


def test_errors_name_the_stage():
    x = np.arange(10.0)
    with pytest.raises(veda.KernelDefinitionError, match=r"\.map #2: cannot compile `_bad`"):
        veda.par_iter(x).map(half).map(_bad).sum()
    with pytest.raises(veda.KernelDefinitionError, match=r"\.filter #1: .*expected a bool"):
        veda.par_iter(x).filter(half).sum()
    with pytest.raises(veda.KernelDefinitionError, match=r"\.any\(\): .*expected a bool"):
        veda.par_iter(x).any(half)
    with pytest.raises(veda.LaunchError, match="lengths 10 and 9 differ"):
        veda.par_iter(x).zip(np.arange(9.0))
    with pytest.raises(veda.LaunchError, match="expected a 1-d or 2-d NumPy array, not list"):
        veda.par_iter([1.0, 2.0])
    with pytest.raises(veda.LaunchError, match="not a 3-d array"):
        veda.par_iter(np.zeros((2, 2, 2)))
    with pytest.raises(veda.LaunchError, match="booleans, integers"):
        veda.par_iter(np.array(["a", "b"]))
    with pytest.raises(veda.LaunchError, match="step must not be zero"):
        veda.par_range(0, 10, 0)
    with pytest.raises(veda.LaunchError, match="stop must be an integer"):
        veda.par_range(0, 2.5)
    with pytest.raises(veda.LaunchError, match="positive integer"):
        veda.par_iter(x).chunks(0)
    with pytest.raises(veda.LaunchError, match="enumerate after filter"):
        veda.par_iter(x).filter(above).enumerate()
    with pytest.raises(veda.LaunchError, match="expected a function"):
        veda.par_iter(x).map(3.0)
    with pytest.raises(veda.LaunchError, match="identity must be a number"):
        veda.par_iter(x).fold("zero", _add, _add)
    with pytest.raises(veda.LaunchError, match=r"\.sum\(\): needs one number"):
        veda.par_iter(x).zip(x).sum()
    with pytest.raises(veda.LaunchError, match="unknown terminal"):
        veda.par_iter(x).kernel("median")
    ro = np.zeros(10)
    ro.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="read-only"):
        veda.par_iter(x).enumerate().for_each(_store, ro)


MAPS = [square_plus, half, lambda v: v - 0.5, lambda v: abs(v) * 3.0]
FILTERS = [above, lambda v: v < 0.8, lambda v: v != 1.0]


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stages=st.lists(
        st.tuples(st.sampled_from(["map", "filter"]), st.integers(0, 2)), min_size=1, max_size=4
    ),
    terminal=st.sampled_from(["sum", "count", "max", "collect"]),
    n=st.integers(0, 3000),
)
def test_random_chains_match_numpy(stages, terminal, n):
    x = np.random.default_rng(n).random(n) * 2.0
    it, ref = veda.par_iter(x), x
    for kind, j in stages:
        if kind == "map":
            f = MAPS[j]
            it, ref = it.map(f), np.array([f(v) for v in ref], dtype=np.float64)
        else:
            p = FILTERS[j]
            it, ref = it.filter(p), ref[np.array([bool(p(v)) for v in ref], dtype=bool)]
    with veda.config(target="cpu"):  # the parallel launchers: test_terminals_match_numpy
        if terminal == "max" and ref.size == 0:
            with pytest.raises(veda.LaunchError):
                it.max()
            return
        got = getattr(it, terminal)()
    expected = {"sum": ref.sum, "count": lambda: ref.size, "max": ref.max}.get(
        terminal, lambda: ref
    )()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


CACHE_SCRIPT = textwrap.dedent(
    """
    import json, numpy as np, veda

    def square(v):
        return v * v

    x = np.arange(100_000.0)
    it = veda.par_iter(x).map(square).filter(lambda v: v > 10.0)
    total = it.sum()
    k = it.kernel("sum")
    print(json.dumps({"stats": k.compile_stats.as_dict(), "total": float(total)}))
    """
)


@pytest.mark.slow
def test_the_same_chain_in_a_new_process_loads_from_the_cache(tmp_path):
    script = tmp_path / "chain.py"
    script.write_text(CACHE_SCRIPT)
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path / "cache"))

    def run() -> dict:
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["stats"]["compiled"] > 0
    assert second["stats"]["compiled"] == 0 and second["stats"]["cache_hits"] > 0
    x = np.arange(100_000.0)
    assert first["total"] == second["total"] == (x * x)[x * x > 10.0].sum()


K = 2


def test_what_a_stage_reads_from_outside_is_part_of_the_helper():
    global K
    got = []
    for c in (1, 1.0, True):
        got.append(veda.par_range(5).map(lambda i: i * c).sum())  # noqa: B023
    assert [v.dtype for v in got] == [np.int64, np.float64, np.int64]
    for K in (2, 3):
        assert veda.par_range(5).map(lambda i: i * K).sum() == 10 * K  # noqa: B023
    x = np.arange(5.0)
    with pytest.raises(veda.LaunchError, match="reads the array 'x' from outside"):
        veda.par_range(5).map(lambda i: x[i])


def test_more_errors_are_veda_errors():
    x = np.arange(10.0)
    assert veda.par_iter(x).map(lambda v: (v,)).sum() == x.sum()  # a 1-tuple is one value
    with pytest.raises(veda.KernelDefinitionError, match="empty tuple"):
        veda.par_iter(x).map(lambda v: ()).collect()
    with pytest.raises(veda.LaunchError, match="complex values"):
        veda.par_iter(x.astype(complex)).min()
    with pytest.raises(veda.LaunchError, match="64-bit integers"):
        veda.par_range(0, 2**70)
    with pytest.raises(veda.LaunchError, match="byte order"):
        veda.par_iter(x.astype(">f8"))
    with pytest.raises(veda.KernelDefinitionError, match=r"\.for_each\(\): cannot compile"):
        veda.par_iter(x).for_each(lambda v: None, np.zeros(3))
    with pytest.raises(veda.KernelDefinitionError, match=r"\.reduce\(\)"):
        veda.par_iter(x).reduce(lambda a, b: a.no_attribute, 0.0)
    with pytest.raises(veda.KernelDefinitionError, match="Unknown attribute"):
        veda.par_iter(x).map(_bad).sum()
    with pytest.raises(veda.LaunchError, match="a step needs a stop"):
        veda.par_range(5, None, 2)
    with pytest.raises(veda.LaunchError, match="masked arrays"):
        veda.par_iter(np.ma.masked_array(x, x > 5))
    with pytest.raises(veda.LaunchError, match="float32/64"):
        veda.par_iter(x.astype(np.longdouble))
    with pytest.raises(veda.LaunchError, match="identity"):
        veda.par_iter(x).fold(2**70, _add, _add)


def test_lambdas_of_a_chain_written_one_call_per_line():
    x = np.arange(10.0)
    # fmt: off
    chain = (
        veda.par_iter(x)
        .map(lambda v: v + 1.0)
        .map(lambda v: v * 100.0)
        .filter(lambda v: v > 250.0)
    )
    again = (
        veda.par_iter(x)
        .map(lambda v: v - 1000.0)
    )
    # fmt: on
    y = (x + 1.0) * 100.0
    assert chain.sum() == y[y > 250.0].sum()
    assert again.sum() == (x - 1000.0).sum()
    # read back from the file (a continuation line parses only as part of the whole file),
    # so that the disk cache can keep them
    assert all(st.fn.source.text is not None for st in chain._stages)


def test_a_damaged_type_record_is_discarded(tmp_path):
    from veda._iter import _return_types

    with veda.config(cache_dir=str(tmp_path)):
        it = veda.par_iter(X).map(lambda v: v * 4.0)
        expected = it.sum()
        records = list((tmp_path / "kernels").glob("*.record"))
        assert records
        for path in records:
            path.write_bytes(b"garbage")
        _return_types.clear()
        with pytest.warns(RuntimeWarning, match="discarded"):
            assert veda.par_iter(X).map(lambda v: v * 4.0).sum() == expected
