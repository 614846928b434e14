"""Compiled helpers shared by every generated launcher."""

from __future__ import annotations

import numba
import numpy as np

from veda._kernel.language import cycles


def guided_bounds(n: int, threads: int, min_chunk: int) -> np.ndarray:
    """Chunk boundaries for the guided schedule over ``range(n)``.

    Each chunk takes half of an even share of what is left (``remaining / (2 * threads)``), never
    less than ``min_chunk``: large chunks first for low overhead, small ones last for balance.
    Plain Python: made once per thread count and launcher, it takes microseconds (about
    ``2 * threads * ln(n / (2 * threads * min_chunk))`` steps), where compiling it took 1-2 s
    of the first launch that met a guided candidate.
    """
    threads = max(1, int(threads))
    min_chunk = max(1, int(min_chunk))
    bounds = [0]
    lo = 0
    while lo < n:
        lo = min(lo + max((n - lo) // (2 * threads), min_chunk), n)
        bounds.append(lo)
    return np.array(bounds, np.int64)


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def read_cycles() -> int:
    """The cycle counter, read from Python (to calibrate it against ``time.perf_counter``)."""
    return int(cycles())
