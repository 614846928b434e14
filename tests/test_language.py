"""The kernel language: helpers, constants, closures, atomics, scratch arrays, 2-D/3-D domains."""

from __future__ import annotations

import math

import numpy as np
import pytest

import veda

SCALE = 2.5
OFFSETS = (1, 2, 3)
NBINS = 16


@veda.func
def square(v):
    return v * v


@veda.func
def add_square(out, i, v):
    out[i] += square(v)


@veda.kernel
def uses_helpers(i, x, out):
    out[i] = SCALE * square(x[i]) + OFFSETS[i % 3] + math.sqrt(abs(x[i]))
    add_square(out, i, 1.0)


def test_helpers_constants_and_math(settings):
    x = np.linspace(-2, 2, 101)
    out = np.zeros_like(x)
    veda.launch(uses_helpers, x.size, x, out, **settings)
    expected = SCALE * x * x + np.array(OFFSETS)[np.arange(x.size) % 3] + np.sqrt(np.abs(x)) + 1
    np.testing.assert_allclose(out, expected, rtol=1e-14)


def test_helper_writes_are_seen_by_the_analysis():
    assert uses_helpers.written == ["out"]
    assert square(3.0) == 9.0  # a helper is callable from Python too


def test_closure_values_are_constants():
    factor = 3

    @veda.kernel
    def times(i, x):
        x[i] *= factor

    x = np.ones(5)
    times[5](x)
    np.testing.assert_array_equal(x, 3)


@veda.kernel
def hist(i, values, counts):
    veda.atomic_add(counts, int(values[i] * NBINS), 1)


def test_atomic_add_histogram(settings):
    rng = np.random.default_rng(1)
    values = rng.random(50_000)
    counts = np.zeros(NBINS, np.int64)
    veda.launch(hist, values.size, values, counts, **settings)
    expected = np.bincount((values * NBINS).astype(int), minlength=NBINS)
    np.testing.assert_array_equal(counts, expected)


@veda.kernel
def float_scatter(i, idx, w, out):
    veda.atomic_add(out, idx[i], w[i])


def test_atomic_add_float(settings):
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 7, 20_000)
    w = rng.integers(0, 4, 20_000).astype(np.float64)  # integer-valued: exact in any order
    out = np.zeros(7)
    veda.launch(float_scatter, idx.size, idx, w, out, **settings)
    np.testing.assert_array_equal(out, np.bincount(idx, weights=w, minlength=7))


@veda.kernel
def extremes(i, x, lo, hi):
    veda.atomic_min(lo, 0, x[i])
    veda.atomic_max(hi, (0, 0), x[i])


@pytest.mark.parametrize("dtype", [np.int32, np.uint64, np.float32, np.float64])
def test_atomic_min_max(dtype, settings):
    rng = np.random.default_rng(3)
    x = (rng.random(10_000) * 1000).astype(dtype)
    lo = np.array([np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else np.inf], dtype)
    hi = np.zeros((1, 1), dtype)
    veda.launch(extremes, x.size, x, lo, hi, **settings)
    assert lo[0] == x.min() and hi[0, 0] == x.max()


@veda.kernel
def moving_sum(i, x, out):
    window = veda.local_array(4, np.float64)
    for k in range(4):
        window[k] = x[(i + k) % x.shape[0]]
    out[i] = window.sum()


def test_local_array(settings):
    x = np.arange(100.0)
    out = np.empty_like(x)
    veda.launch(moving_sum, 100, x, out, **settings)
    expected = sum(np.roll(x, -k) for k in range(4))
    np.testing.assert_array_equal(out, expected)


@veda.kernel
def local_2d(i, out):
    m = veda.local_array((2, 3), np.int64)
    for a in range(2):
        for b in range(3):
            m[a, b] = i * a + b
    out[i] = m[1, 2]


def test_local_array_2d():
    out = np.zeros(10, np.int64)
    local_2d[10](out)
    np.testing.assert_array_equal(out, np.arange(10) + 2)


def test_local_array_needs_a_constant_shape():
    @veda.kernel
    def bad(i, n, out):
        tmp = veda.local_array(n, np.float64)
        out[i] = tmp.shape[0]

    with pytest.raises(veda.KernelDefinitionError, match="compile-time constant"):
        bad[3](3, np.zeros(3))


@veda.kernel
def outer(i, j, x, y, out):
    out[i, j] = x[i] * y[j]


def test_2d_domain(settings):
    x = np.arange(37.0)
    y = np.arange(53.0)
    out = np.zeros((37, 53))
    veda.launch(outer, (37, 53), x, y, out, **settings)
    np.testing.assert_array_equal(out, np.outer(x, y))


@veda.kernel
def box(i, j, k, out):
    out[i, j, k] = i * 10000 + j * 100 + k


def test_3d_domain(settings):
    out = np.zeros((7, 11, 13), np.int64)
    veda.launch(box, (7, 11, 13), out, **settings)
    i, j, k = np.indices(out.shape)
    np.testing.assert_array_equal(out, i * 10000 + j * 100 + k)


@veda.kernel(reduce="sum")
def sum_and_mark(i, j, a, seen):
    seen[i, j] = 1
    return a[i, j]


def test_2d_reduction_with_writes(settings):
    a = np.arange(12 * 17, dtype=np.int32).reshape(12, 17)
    seen = np.zeros_like(a)
    total = veda.launch(sum_and_mark, a.shape, a, seen, **settings)
    assert total == a.sum() and total.dtype == np.int64
    assert seen.all()


@veda.kernel
def cplx(i, z, out):
    out[i] = z[i] * 1j + abs(z[i])


def test_complex_numbers(settings):
    z = np.array([1 + 2j, -3j, 4.0], dtype=np.complex128)
    out = np.zeros_like(z)
    veda.launch(cplx, 3, z, out, **settings)
    np.testing.assert_allclose(out, z * 1j + np.abs(z))


@veda.kernel(ndim=2)
def declared(i, j, out):
    out[i, j] = 1


def test_declared_ndim_refuses_other_ranks():
    out = np.zeros((2, 2))
    declared[(2, 2)](out)
    assert out.sum() == 4
    with pytest.raises(veda.LaunchError, match="ndim=2"):
        declared[4](out, out)


def test_scalar_argument_types():
    @veda.kernel
    def combine(i, b, n, f, c, out):
        out[i] = (n + f + c.real) if b else 0.0

    out = np.zeros(2)
    combine[2](True, 2, 0.5, 1 + 1j, out)
    np.testing.assert_array_equal(out, 3.5)
    combine[2](np.bool_(False), np.int16(2), np.float32(0.5), np.complex64(1), out)
    np.testing.assert_array_equal(out, 0.0)


# The GPU's atomics take 32- and 64-bit operands, so 8- and 16-bit atomics on "cuda" are a
# compare-and-swap loop on the containing 32-bit word.  The loop is plain LLVM IR, so it is
# checked here on the CPU, under contention from every worker, against NumPy.
_SUBWORD = {}


def _subword_kernels():
    if not _SUBWORD:
        import numba

        from veda._kernel import language as lang

        for op in ("add", "min", "max"):
            rmw = lang._make_atomic_intrinsic(op, subword=True)

            @numba.njit(parallel=True)
            def run(target, index, values, rmw=rmw):
                for k in numba.prange(values.size):
                    rmw(target, index[k], values[k])

            _SUBWORD[op] = run
    return _SUBWORD


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("op", ["add", "min", "max"])
def test_subword_atomics_as_a_cas_loop_match_numpy(op, dtype):
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    # 7 elements: odd, so words straddle both ends; offset views put elements at every byte.
    base = rng.integers(info.min, info.max, size=9, endpoint=True).astype(dtype)
    target = base[1:8]
    index = rng.integers(0, target.size, size=20_000)
    values = rng.integers(info.min, info.max, size=index.size, endpoint=True).astype(dtype)
    expected = base.copy()
    view = expected[1:8]
    if op == "add":
        np.add.at(view, index, values)
    else:
        getattr(np, f"{'minimum' if op == 'min' else 'maximum'}").at(view, index, values)
    _subword_kernels()[op](target, index, values)
    assert np.array_equal(base, expected)  # the neighbours base[0] and base[8] are untouched


@veda.kernel
def _nan_min(i, v, out):
    veda.atomic_min(out, i % 2, v[i])


@veda.kernel
def _nan_max(i, v, out):
    veda.atomic_max(out, i % 2, v[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_atomic_min_max_keep_a_stored_nan_and_ignore_a_nan_value(settings, dtype):
    """One NaN rule on every target: ``value if value < old else old`` (as the pure-Python
    fallback the CUDA simulator runs, and as on the GPU)."""
    v = np.array([1.0, np.nan, 3.0, 2.0], dtype)
    for kernel, expected in ((_nan_min, 2.0), (_nan_max, 5.0)):
        out = np.array([np.nan, 5.0], dtype)
        veda.launch(kernel, 4, v, out, **settings)
        assert np.isnan(out[0]) and out[1] == expected
        ref = np.array([np.nan, 5.0], dtype)
        python = veda.atomic_min if kernel is _nan_min else veda.atomic_max
        for i in range(4):  # the pure-Python fallback, run as plain Python
            python(ref, i % 2, v[i])
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_atomic_min_max_under_contention_match_numpy(dtype):
    rng = np.random.default_rng(11)
    v = rng.standard_normal(50_000).astype(dtype)
    for kernel, ufunc in ((_nan_min, np.minimum), (_nan_max, np.maximum)):
        out = np.zeros(2, dtype)
        veda.launch(kernel, v.size, v, out, target="parallel", schedule="dynamic", chunk=64)
        ref = np.zeros(2, dtype)
        ufunc.at(ref, np.arange(v.size) % 2, v)
        np.testing.assert_array_equal(out, ref)


def test_the_launchers_scratch_and_result_arrays():
    """``scratch`` (stack arrays of a launcher) and ``one_element`` (a reduction's result) keep
    the value's dtype and fill every slot; a count of 0 is an empty array."""
    import numba

    from veda._kernel import language

    @numba.njit
    def filled(n, v):
        a = language.scratch(n, v)
        total = a.sum()
        return a.size, total, language.one_element(v)

    for n, v in ((0, np.float32(1.5)), (1, np.int8(-3)), (7, np.complex128(1 - 2j))):
        size, total, one = filled(n, v)
        assert size == n
        assert total == n * v
        assert one.shape == (1,) and one.dtype == np.asarray(v).dtype and one[0] == v
