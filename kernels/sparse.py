"""Irregular kernels: a histogram with atomics and a CSR sparse matrix-vector product."""

from __future__ import annotations

import numpy as np

import veda


@veda.kernel
def histogram(i, values, lo, width, counts):
    """Count ``values`` into ``len(counts)`` equal bins starting at ``lo``."""
    b = int((values[i] - lo) / width)
    if 0 <= b < counts.shape[0]:
        veda.atomic_add(counts, b, 1)


def histogram_reference(values, lo, width, counts):
    b = np.floor((values - lo) / width).astype(np.int64)
    ok = (b >= 0) & (b < counts.shape[0])
    return np.bincount(b[ok], minlength=counts.shape[0]).astype(counts.dtype)


@veda.kernel
def spmv_csr(i, indptr, indices, data, x, y):
    """``y = A @ x`` for A in CSR form, one row per index."""
    acc = 0.0
    for k in range(indptr[i], indptr[i + 1]):
        acc += data[k] * x[indices[k]]
    y[i] = acc


def spmv_reference(indptr, indices, data, x):
    n = indptr.shape[0] - 1
    y = np.zeros(n)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    np.add.at(y, rows, data * x[indices])
    return y


def power_law_csr(n: int, seed: int = 0, mean_nnz: int = 16):
    """A random n x n CSR matrix whose row lengths follow a power law (a few very long rows)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum((rng.pareto(1.5, n) + 1) * mean_nnz / 3, n).astype(np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = rng.integers(0, n, indptr[-1])
    data = rng.standard_normal(indptr[-1])
    return indptr, indices, data
