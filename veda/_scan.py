"""Ordered prefix sums: ``veda.scan``.

Two passes over fixed blocks of :data:`SCAN_BLOCK` elements: the first sums each block (in
parallel), the block offsets are an exclusive prefix of those sums (one thread, in order), and the
second pass writes each block's running sum from its offset (in parallel).  The blocks do not
depend on the thread count, so the result has the same bits on any number of threads and from run
to run, in deterministic mode or not.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from veda import _registry
from veda._config import get_config, max_threads
from veda._dtypes import sum_dtype
from veda._hardware import cpu as _hw
from veda._kernel.cache import own_njit
from veda.errors import LaunchError

#: Elements per block: large enough that the per-block overhead vanishes, small enough that two
#: threads get many blocks (2e7 elements make 305).
SCAN_BLOCK = 65536
#: Below this many elements the scan runs on one thread (same blocks, same bits).
PARALLEL_SCAN_MIN = 1 << 18


@own_njit(nogil=True)
def _block_sum(x, lo, hi, acc):  # type: ignore[no-untyped-def]
    a0 = acc
    a1 = acc - acc
    i = lo
    while i + 2 <= hi:
        a0 += x[i]
        a1 += x[i + 1]
        i += 2
    if i < hi:
        a0 += x[i]
    return a0 + a1


@own_njit(nogil=True)
def _block_scan(x, out, lo, hi, offset, exclusive):  # type: ignore[no-untyped-def]
    run = offset
    if exclusive:
        for i in range(lo, hi):
            v = x[i]  # read before writing: out may be x
            out[i] = run
            run += v
    else:
        for i in range(lo, hi):
            run += x[i]
            out[i] = run


@own_njit(nogil=True)
def _offsets(sums, zero):  # type: ignore[no-untyped-def]
    offs = np.empty_like(sums)
    run = zero
    for b in range(sums.shape[0]):
        offs[b] = run
        run += sums[b]
    return offs


@own_njit(nogil=True)
def _scan_serial(x, out, exclusive, zero, block):  # type: ignore[no-untyped-def]
    n = x.shape[0]
    nb = (n + block - 1) // block
    sums = np.empty(nb, out.dtype)
    for b in range(nb):
        sums[b] = _block_sum(x, b * block, min(n, (b + 1) * block), zero)
    offs = _offsets(sums, zero)
    for b in range(nb):
        _block_scan(x, out, b * block, min(n, (b + 1) * block), offs[b], exclusive)


@own_njit(nogil=True, parallel=True)
def _scan_parallel(x, out, exclusive, zero, block):  # type: ignore[no-untyped-def]
    n = x.shape[0]
    nb = (n + block - 1) // block
    sums = np.empty(nb, out.dtype)
    for b in numba.prange(nb):
        sums[b] = _block_sum(x, b * block, min(n, (b + 1) * block), zero)
    offs = _offsets(sums, zero)
    for b in numba.prange(nb):
        _block_scan(x, out, b * block, min(n, (b + 1) * block), offs[b], exclusive)


def scan(x: Any, out: np.ndarray | None = None, exclusive: bool = False) -> np.ndarray:
    """Prefix sums of a 1-d array, in parallel, with the same bits on any number of threads.

    ``exclusive=False`` gives ``out[i] = x[0] + ... + x[i]`` (like :func:`numpy.cumsum`, whose
    result dtype it follows); ``exclusive=True`` gives ``x[0] + ... + x[i-1]``, starting at 0.

    Examples
    --------
    >>> import numpy as np, veda
    >>> veda.scan(np.array([1, 2, 3, 4]))
    array([ 1,  3,  6, 10])
    >>> veda.scan(np.array([1, 2, 3, 4]), exclusive=True)
    array([0, 1, 3, 6])
    """
    if not isinstance(exclusive, (bool, np.bool_)):
        raise LaunchError(f"veda.scan: exclusive must be True or False, not {exclusive!r}")
    if not isinstance(x, np.ndarray) or x.ndim != 1:
        raise LaunchError(
            f"veda.scan: x must be a 1-d NumPy array, not {type(x).__name__}"
            + (f" of {x.ndim} dimensions" if isinstance(x, np.ndarray) else "")
        )
    if x.dtype.kind not in "biufc" or (x.dtype.itemsize == 2 and x.dtype.kind == "f"):
        raise LaunchError(
            f"veda.scan: x must hold booleans or numbers Numba supports, not {x.dtype}"
        )
    acc = sum_dtype(x.dtype)
    if out is None:
        out = np.empty(x.shape[0], acc)
    elif not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != acc:
        raise LaunchError(f"veda.scan: out must be a {acc} array of shape {x.shape}")
    elif not out.flags.writeable:
        raise LaunchError("veda.scan: out is a read-only array")
    src = x.astype(acc) if x.dtype != acc else x
    zero = acc.type(0)
    cfg = get_config()
    # A configured serial CPU target keeps the scan on one thread, a parallel one puts it on
    # several; otherwise (none, or a target elsewhere) the size decides.
    target = _registry.known(cfg.target) if cfg.target is not None else None
    serial = target is not None and not target.parallel and not target.copies_host_arrays
    parallel = (
        max_threads() > 1
        and not serial
        and _hw.parallel_unavailable_reason() is None
        and ((target is not None and target.parallel) or x.shape[0] >= PARALLEL_SCAN_MIN)
    )
    if parallel:
        _hw.threading_layer()
        threads = cfg.threads or max_threads()
        previous = 0  # read inside the try: an interrupt after any call leaves the count as it was
        try:
            previous = _hw.get_threads()
            _hw.set_threads(threads)
            if _hw.serialise:
                with _hw.region_lock:
                    _scan_parallel(src, out, exclusive, zero, SCAN_BLOCK)
            else:
                _scan_parallel(src, out, exclusive, zero, SCAN_BLOCK)
        finally:
            if previous:
                _hw.set_threads(previous)
    else:
        _scan_serial(src, out, exclusive, zero, SCAN_BLOCK)
    return out
