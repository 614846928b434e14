"""Kernels whose cost varies with the index: the load-balance test cases."""

from __future__ import annotations

import numpy as np

import veda


@veda.kernel
def triangular(i, x, out):
    """``out[i] = sum(x[:i+1] * x[i])``-like work: index i costs i + 1 steps."""
    acc = 0.0
    xi = x[i]
    for j in range(i + 1):
        acc += x[j] * xi
    out[i] = acc


def triangular_reference(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x) * x


MAX_ITER = 200


@veda.kernel
def mandelbrot(i, j, xmin, ymin, dx, dy, out):
    """Escape iteration count of c = (xmin + j dx) + (ymin + i dy) j, capped at MAX_ITER."""
    cr = xmin + j * dx
    ci = ymin + i * dy
    zr = 0.0
    zi = 0.0
    k = 0
    while k < MAX_ITER and zr * zr + zi * zi <= 4.0:
        zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
        k += 1
    out[i, j] = k


def mandelbrot_reference(xmin, ymin, dx, dy, out):
    h, w = out.shape
    c = (xmin + np.arange(w) * dx)[None, :] + 1j * (ymin + np.arange(h) * dy)[:, None]
    z = np.zeros_like(c)
    count = np.zeros(out.shape, np.int64)
    alive = np.ones(out.shape, bool)
    for _ in range(MAX_ITER):
        alive &= (z.real * z.real + z.imag * z.imag) <= 4.0
        if not alive.any():
            break
        z[alive] = z[alive] * z[alive] + c[alive]
        count += alive
    out[...] = count
    return out
