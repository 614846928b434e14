"""veda.scan: prefix sums that agree with NumPy and keep their bits across thread counts."""

from __future__ import annotations

import numpy as np
import pytest

import veda
from veda._scan import SCAN_BLOCK


@pytest.mark.parametrize(
    "dtype", ["int32", "int64", "uint8", "bool", "float32", "float64", "complex128"]
)
@pytest.mark.parametrize("n", [0, 1, 7, SCAN_BLOCK, SCAN_BLOCK + 1, 3 * SCAN_BLOCK + 5])
def test_matches_cumsum(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.random(n) * 10).astype(dtype) if dtype != "bool" else rng.random(n) < 0.5
    got = veda.scan(x)
    expected = np.cumsum(x)
    assert got.dtype == expected.dtype
    if np.dtype(dtype).kind in "biu":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-4 if dtype == "float32" else 1e-12)
    ex = veda.scan(x, exclusive=True)
    if n:
        assert ex[0] == 0
        np.testing.assert_allclose(ex[1:], got[:-1], rtol=1e-4 if dtype == "float32" else 1e-12)


def test_same_bits_on_any_thread_count_and_run():
    x = np.random.default_rng(3).standard_normal(5 * SCAN_BLOCK + 123)
    ref = veda.scan(x)
    with veda.config(target="cpu"):
        np.testing.assert_array_equal(veda.scan(x), ref)
    with veda.config(target="parallel", threads=1):
        np.testing.assert_array_equal(veda.scan(x), ref)
    for _ in range(20):
        np.testing.assert_array_equal(veda.scan(x), ref)


def test_out_argument_and_errors():
    x = np.arange(10.0)
    out = np.empty(10)
    assert veda.scan(x, out) is out
    with pytest.raises(veda.LaunchError, match="1-d"):
        veda.scan(np.zeros((2, 2)))
    with pytest.raises(veda.LaunchError, match="out must be"):
        veda.scan(x, np.empty(9))
    ro = np.empty(10)
    ro.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="read-only"):
        veda.scan(x, ro)
    with pytest.raises(veda.LaunchError, match="1-d NumPy array"):
        veda.scan([1, 2, 3])
