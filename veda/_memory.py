"""Pooled host arrays: ``veda.empty``, ``veda.zeros``, ``veda.empty_like``.

The memory comes from the host pool of :mod:`veda._hardware.memory`; this module adds the first
touch, which launches a kernel (a layer the hardware layer may not import).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veda._config import config, get_config
from veda._hardware import cpu as _hw
from veda._hardware.memory import check_request, memory_stats, pool
from veda._launch import kernel, launch
from veda.errors import LaunchError

__all__ = ["empty", "empty_like", "memory_stats", "zeros"]


@kernel
def _first_touch(i, out):  # type: ignore[no-untyped-def]
    out[i] = 0


def _touch(array: np.ndarray) -> None:
    """Write zeros over ``array``'s bytes with veda's static schedule, so that each page is
    first written, and so placed, by the worker a static launch gives it to."""
    flat = array.reshape(-1).view(np.uint8)
    if flat.size % 8 == 0:
        flat = flat.view(np.uint64)
    if _hw.parallel_unavailable_reason() is not None:
        flat[:] = 0  # no parallel region can run in this process: touched here
        return
    threads = get_config().threads or _hw.max_threads()
    with config(telemetry=False):  # veda's own housekeeping: not in the user's metrics
        launch(_first_touch, flat.size, flat, target="parallel", schedule="static", threads=threads)


def _check_flag(first_touch: Any, where: str) -> None:
    if not isinstance(first_touch, bool):
        raise LaunchError(f"{where}: first_touch must be True or False, not {first_touch!r}")


def _new(shape: Any, dtype: Any, first_touch: bool, zero: bool, where: str) -> np.ndarray:
    _check_flag(first_touch, where)
    dims, dt = check_request(shape, dtype, where)
    array, fresh = pool.take_store(dims, dt, zero=zero, touched=first_touch)
    if first_touch and fresh:
        _touch(array)
    return array


def empty(shape: Any, dtype: Any = np.float64, *, first_touch: bool = False) -> np.ndarray:
    """A new array whose memory may come from veda's host pool; its values are arbitrary.

    Like ``np.empty(shape, dtype)`` (C order), for the large temporaries a program makes again
    and again: an array of 128 KiB or more (``veda._hardware.memory.MIN_POOLED_BYTES``) lives
    in a page-aligned buffer that goes back to the pool when the last array or view using it
    is gone, and the next request of its size class (the next power of two) reuses it without
    the page faults of fresh memory.  Smaller arrays come from ``np.empty``, aligned to 64 bytes.
    ``veda.memory_stats()`` shows the pool; ``veda.hardware.memory_pool()`` bounds and clears it.

    Parameters
    ----------
    shape : int or tuple of ints
        Entries >= 0.
    dtype : data-type, optional
        Any NumPy dtype that holds no Python objects; float64 by default.  A sub-array dtype
        adds its shape to ``shape``, as in NumPy: ``empty(5, ("f8", (3,)))`` has shape (5, 3).
    first_touch : bool, optional
        Write the pages first in parallel, with veda's static schedule and the configured
        number of threads (``veda.config(threads=...)``, else all), so that on a NUMA machine
        each page lies on the node of the worker a static launch over the array gives it to.
        The pool keeps first-touched buffers apart and lends them only to ``first_touch``
        requests; a reused buffer keeps its pages where its first touch put them (on the right
        nodes for the same size and thread count).  Arrays below 128 KiB are not touched: their
        memory comes from what ``malloc`` holds already, with its pages placed.

    Returns
    -------
    numpy.ndarray
        C-contiguous and writable, its data aligned to at least 64 bytes.

    Raises
    ------
    veda.LaunchError
        For a negative or non-integer shape entry, an unknown or object dtype, a ``first_touch``
        that is not a bool, or a shape whose byte count (its nonzero entries times the itemsize,
        as NumPy counts it) is more than ``sys.maxsize``.
    MemoryError
        When the host cannot map the memory ("Unable to allocate ..." with the bytes asked for).

    Examples
    --------
    >>> import numpy as np, veda
    >>> a = veda.empty((512, 512))
    >>> a.shape, a.dtype, a.flags.c_contiguous, a.ctypes.data % 64
    ((512, 512), dtype('float64'), True, 0)
    >>> b = veda.empty(100_000, np.float32, first_touch=True)
    >>> float(b.sum())  # first touch wrote zeros, but do not count on that
    0.0
    """
    return _new(shape, dtype, first_touch, False, "veda.empty")


def zeros(shape: Any, dtype: Any = np.float64, *, first_touch: bool = False) -> np.ndarray:
    """:func:`empty`, filled with zeros (reused memory is zeroed too).

    Examples
    --------
    >>> import veda
    >>> z = veda.zeros((3, 100_000), "int32")
    >>> int(z.sum()), z.dtype.name
    (0, 'int32')
    """
    return _new(shape, dtype, first_touch, True, "veda.zeros")


def empty_like(a: Any, *, first_touch: bool = False) -> np.ndarray:
    """:func:`empty` with the shape and dtype of ``a`` (always in C order).

    Examples
    --------
    >>> import numpy as np, veda
    >>> x = np.ones((200, 300), np.float32)
    >>> y = veda.empty_like(x.T)
    >>> y.shape, y.dtype.name, y.flags.c_contiguous
    ((300, 200), 'float32', True)
    """
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None or dtype is None:
        try:
            a = np.asarray(a)
        except Exception as exc:
            raise LaunchError(
                f"veda.empty_like: expected an array, not {type(a).__name__}"
            ) from exc
        shape, dtype = a.shape, a.dtype
    return _new(tuple(shape), dtype, first_touch, False, "veda.empty_like")
