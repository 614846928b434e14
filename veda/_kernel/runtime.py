"""Compiled helpers shared by every generated launcher."""

from __future__ import annotations

import numba
import numpy as np

from veda._kernel.language import cycles


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def guided_bounds(n: int, threads: int, min_chunk: int) -> np.ndarray:
    """Chunk boundaries for the guided schedule over ``range(n)``.

    Each chunk takes half of an even share of what is left (``remaining / (2 * threads)``), never
    less than ``min_chunk``: large chunks first for low overhead, small ones last for balance.
    """
    bounds = np.empty(2 * threads * 64 + 2, np.int64)
    count = 0
    lo = 0
    bounds[0] = 0
    while lo < n:
        size = max((n - lo) // (2 * threads), min_chunk)
        lo = min(lo + size, n)
        count += 1
        if count >= bounds.shape[0]:
            grown = np.empty(bounds.shape[0] * 2, np.int64)
            grown[: bounds.shape[0]] = bounds
            bounds = grown
        bounds[count] = lo
    return bounds[: count + 1]


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def read_cycles() -> int:
    """The cycle counter, read from Python (to calibrate it against ``time.perf_counter``)."""
    return int(cycles())
