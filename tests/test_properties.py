"""Property tests: random sizes, dtypes, strided views and launch settings against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veda

SIZES = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 31, 97, 1009, 65537]), st.integers(0, 5000))
DTYPES = ["int8", "int32", "int64", "uint16", "uint64", "float32", "float64", "complex128", "bool"]
LAUNCH = st.one_of(
    st.just({"target": "cpu"}),
    st.fixed_dictionaries(
        {
            "target": st.just("parallel"),
            "schedule": st.sampled_from(["static", "interleaved", "dynamic", "guided"]),
            "threads": st.integers(1, veda.max_threads()),
            "chunk": st.one_of(st.none(), st.integers(1, 3000)),
        }
    ),
)
PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@veda.kernel
def scale_add(i, x, y, out):
    out[i] = x[i] * 3 + y[i]


@veda.kernel(reduce="sum")
def vsum(i, x):
    return x[i]


@veda.kernel(reduce="prod")
def vprod(i, x):
    return x[i]


@veda.kernel(reduce="min")
def vmin(i, x):
    return x[i]


@veda.kernel(reduce="max")
def vmax(i, x):
    return x[i]


def _values(rng, dtype, n):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(n) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -50), min(info.max, 50), n, endpoint=True).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt)
    return rng.standard_normal(n).astype(dt)


def _array(rng, dtype, n, step):
    """An n-element array, a strided view when step > 1."""
    base = _values(rng, dtype, n * step)
    return base[::step]


def _launch(k, n, *args, **kw):
    kw = {k_: v for k_, v in kw.items() if v is not None}
    return veda.launch(k, n, *args, **kw)


@PROPERTY
@given(
    n=SIZES,
    dtype=st.sampled_from(["int32", "int64", "float32", "float64", "complex128"]),
    step=st.sampled_from([1, 2]),
    launch=LAUNCH,
    seed=st.integers(0, 2**32 - 1),
)
def test_elementwise_matches_numpy(n, dtype, step, launch, seed):
    rng = np.random.default_rng(seed)
    x = _array(rng, dtype, n, step)
    y = _array(rng, dtype, n, 1)
    out = np.zeros(n * step, dtype)[::step]
    _launch(scale_add, n, x, y, out, **launch)
    # Numba, like Python, computes float32 * 3 in float64 and rounds once when storing.
    wide = {"f": np.float64, "c": np.complex128}.get(np.dtype(dtype).kind, np.int64)
    expected = (x.astype(wide) * 3 + y.astype(wide)).astype(dtype)
    np.testing.assert_array_equal(out, expected)


@PROPERTY
@given(
    n=SIZES,
    dtype=st.sampled_from(DTYPES),
    step=st.sampled_from([1, 3]),
    launch=LAUNCH,
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_matches_numpy(n, dtype, step, launch, seed):
    rng = np.random.default_rng(seed)
    x = _array(rng, dtype, n, step)
    got = _launch(vsum, n, x, **launch)
    expected = np.sum(x)
    assert isinstance(got, np.generic)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    if np.dtype(dtype).kind in "biu":
        assert got == expected
    else:
        tol = 1e-4 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(1, n) ** 0.5)


# Two kernels per example (min and max): fewer examples keep it near the others' cost in CI.
@settings(PROPERTY, max_examples=8)
@given(
    n=SIZES,
    dtype=st.sampled_from(["int8", "int64", "uint64", "float32", "float64", "bool"]),
    launch=LAUNCH,
    seed=st.integers(0, 2**32 - 1),
)
def test_min_max_match_numpy(n, dtype, launch, seed):
    rng = np.random.default_rng(seed)
    x = _values(rng, dtype, n)
    if n == 0:
        for k in (vmin, vmax):
            with pytest.raises(veda.LaunchError, match="empty"):
                _launch(k, n, x, **launch)
        return
    for k, ref in ((vmin, np.min), (vmax, np.max)):
        got = _launch(k, n, x, **launch)
        assert got.dtype == ref(x).dtype
        assert got == ref(x)


@PROPERTY
@given(
    n=st.integers(0, 300),
    dtype=st.sampled_from(["int64", "uint64", "float64"]),
    launch=LAUNCH,
    seed=st.integers(0, 2**32 - 1),
)
def test_prod_matches_numpy(n, dtype, launch, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        x = 1 + rng.standard_normal(n) * 0.01
    else:
        x = rng.choice([1, 1, 1, 2, 3], n).astype(dtype)  # overflow wraps alike in both
    got = _launch(vprod, n, x, **launch)
    expected = np.prod(x)
    assert got.dtype == expected.dtype
    if dtype == "float64":
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    else:
        assert got == expected
