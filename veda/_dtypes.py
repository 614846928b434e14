"""NumPy's dtype rules that veda's reductions follow (kept apart from the modules that compile
code, so that whatever needs a rule does not import them)."""

from __future__ import annotations

import numpy as np


def sum_dtype(dtype: np.dtype) -> np.dtype:
    """What ``np.sum`` and ``np.cumsum`` accumulate ``dtype`` in: booleans and signed integers
    in int64, unsigned integers in uint64, floats and complex in their own type.

    >>> sum_dtype(np.dtype(np.int8)), sum_dtype(np.dtype(np.float32))
    (dtype('int64'), dtype('float32'))
    """
    if dtype.kind == "b" or dtype.kind == "i":
        return np.dtype(np.int64)
    if dtype.kind == "u":
        return np.dtype(np.uint64)
    return dtype
