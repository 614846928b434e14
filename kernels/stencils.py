"""Stencils: one 2-D Jacobi sweep and one 3-D heat-equation step."""

from __future__ import annotations

import numpy as np

import veda


@veda.kernel
def jacobi2d(i, j, u, out):
    """Average of the four neighbours inside the grid; the boundary is copied."""
    n, m = u.shape
    if 0 < i < n - 1 and 0 < j < m - 1:
        out[i, j] = 0.25 * (u[i - 1, j] + u[i + 1, j] + u[i, j - 1] + u[i, j + 1])
    else:
        out[i, j] = u[i, j]


def jacobi2d_reference(u: np.ndarray) -> np.ndarray:
    out = u.copy()
    out[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])
    return out


@veda.kernel
def heat3d(i, j, k, alpha, u, out):
    """Explicit heat step with a 7-point Laplacian inside the box; the boundary is copied."""
    n, m, p = u.shape
    if 0 < i < n - 1 and 0 < j < m - 1 and 0 < k < p - 1:
        lap = (
            u[i - 1, j, k]
            + u[i + 1, j, k]
            + u[i, j - 1, k]
            + u[i, j + 1, k]
            + u[i, j, k - 1]
            + u[i, j, k + 1]
            - 6.0 * u[i, j, k]
        )
        out[i, j, k] = u[i, j, k] + alpha * lap
    else:
        out[i, j, k] = u[i, j, k]


def heat3d_reference(alpha: float, u: np.ndarray) -> np.ndarray:
    out = u.copy()
    c = u[1:-1, 1:-1, 1:-1]
    lap = (
        u[:-2, 1:-1, 1:-1]
        + u[2:, 1:-1, 1:-1]
        + u[1:-1, :-2, 1:-1]
        + u[1:-1, 2:, 1:-1]
        + u[1:-1, 1:-1, :-2]
        + u[1:-1, 1:-1, 2:]
        - 6.0 * c
    )
    out[1:-1, 1:-1, 1:-1] = c + alpha * lap
    return out
