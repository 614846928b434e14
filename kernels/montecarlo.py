"""Monte Carlo: estimate pi from points drawn with :mod:`veda.random`."""

from __future__ import annotations

import numpy as np

import veda


@veda.kernel(reduce="sum")
def pi_hits(i, seed):
    """1 when the i-th point of the unit square lies inside the quarter circle, else 0.

    Point i is ``veda.random.uniform2(seed, i)`` (both coordinates from one generator block),
    so the count is the same on every target, schedule and thread count; ``4 * hits / n``
    estimates pi.
    """
    x, y = veda.random.uniform2(seed, i)
    return 1 if x * x + y * y < 1.0 else 0


def estimate_pi(n: int, seed: int = 0) -> float:
    """pi from ``n`` points.

    >>> abs(estimate_pi(100_000, seed=1) - 3.14159) < 0.02
    True
    """
    return 4.0 * float(pi_hits[n](seed)) / n


_M32 = np.uint64(0xFFFFFFFF)


def philox_uniform2(seed: int, counters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``veda.random.uniform2(seed, c)`` for every c in ``counters``, written in NumPy alone.

    An independent implementation of the mapping documented in :mod:`veda.random`, used as the
    reference for :data:`pi_hits`.
    """
    c = np.asarray(counters, dtype=np.uint64)
    s = np.uint64(seed % (1 << 64))
    c0, c1 = c & _M32, c >> np.uint64(32)
    c2 = np.zeros_like(c)
    c3 = np.zeros_like(c)
    k0, k1 = s & _M32, s >> np.uint64(32)
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & _M32
            k1 = (k1 + np.uint64(0xBB67AE85)) & _M32
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & _M32,
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & _M32,
        )

    def unit(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        a = (hi >> np.uint64(5)).astype(np.float64)
        b = (lo >> np.uint64(6)).astype(np.float64)
        return (a * 67108864.0 + b) / 9007199254740992.0

    return unit(c0, c1), unit(c2, c3)


def pi_hits_reference(n: int, seed: int) -> np.int64:
    """The number of hits among the same n points, computed in NumPy."""
    x, y = philox_uniform2(seed, np.arange(n, dtype=np.uint64))
    return np.int64(np.count_nonzero(x * x + y * y < 1.0))
