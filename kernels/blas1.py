"""BLAS level-1 kernels: saxpy, STREAM triad, dot product, Euclidean norm."""

from __future__ import annotations

import math

import numpy as np

import veda


@veda.kernel
def saxpy(i, a, x, y, out):
    """``out = a * x + y``."""
    out[i] = a * x[i] + y[i]


@veda.kernel
def triad(i, a, b, s, c):
    """STREAM triad: ``a = b + s * c``."""
    a[i] = b[i] + s * c[i]


@veda.kernel(reduce="sum")
def dot(i, x, y):
    """``sum(x * y)``."""
    return x[i] * y[i]


@veda.kernel(reduce="sum")
def sum_squares(i, x):
    """``sum(x ** 2)``; see :func:`norm`."""
    return x[i] * x[i]


def norm(x: np.ndarray, **settings: object) -> float:
    """Euclidean norm of a 1-d array through :data:`sum_squares`."""
    if settings:
        return math.sqrt(veda.launch(sum_squares, x.shape[0], x, **settings))
    return math.sqrt(sum_squares[x.shape[0]](x))
