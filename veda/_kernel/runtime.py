"""Compiled helpers of the launch path (the cycle counter read from Python)."""

from __future__ import annotations

import numba

from veda._kernel.language import cycles


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def read_cycles() -> int:
    """The cycle counter, read from Python (to calibrate it against ``time.perf_counter``)."""
    return int(cycles())
