"""Host memory: a pool of page-aligned buffers kept between uses, so that a program that makes
the same large temporary again and again does not pay the kernel's page faults every time.

How the pool lends memory
-------------------------
A pooled buffer is an anonymous, private memory map (``mmap``), rounded up to a power of two
(its *size class*).  The part lent out is wrapped in a ``ctypes`` array, and the NumPy array
the caller receives is made from that ``ctypes`` array.  NumPy collapses ``.base`` chains, so
every view of the returned array (slices, reshapes, ``a.T``) keeps the ``ctypes`` array alive
directly; a finalizer on the ``ctypes`` array returns the map to the pool only when the last
array or view using the memory is gone.  (A finalizer on the returned ndarray would be wrong:
a view outliving it would keep only the map alive, and the pool would lend the memory again
while the view still reads it.)

Requests below :data:`MIN_POOLED_BYTES` are served by ``np.empty``: glibc's ``malloc`` serves
them from memory it already holds, so they cost no page faults, and the pool's bookkeeping
(about 5 us a call) would be most of their cost.

The pool keeps at most :attr:`HostPool.limit_bytes` bytes free; a buffer given back beyond
that is unmapped.  It is safe to use from many threads, and a child process made by
``os.fork()`` starts with a fresh lock and no free buffers.
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import operator
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from veda.errors import ConfigError, LaunchError

__all__ = [
    "ALIGNMENT",
    "MIN_POOLED_BYTES",
    "HostPool",
    "check_request",
    "memory_stats",
    "pool",
    "size_class",
]

#: Every buffer veda lends starts on a multiple of this many bytes (a cache line on x86 and
#: most ARM cores; AVX-512 loads).  Pooled buffers start on a page.
ALIGNMENT = 64

#: Requests of fewer bytes are served by ``np.empty`` (aligned): 128 KiB is glibc's default
#: mmap threshold; below it ``malloc`` reuses memory it holds, with no page faults, and
#: ``np.empty`` took 0.2 us at 64 B, 4 KiB and 64 KiB where a pool hit took 4.8 us
#: (``bench/bench_memory.py``; veda's checks and alignment cost 3.2 us of that alone).
MIN_POOLED_BYTES = 1 << 17

#: The default bound on the bytes the pool keeps free.
DEFAULT_LIMIT_BYTES = 512 << 20

_PRIVATE = getattr(mmap, "MAP_PRIVATE", None)  # not on Windows, where a map is private anyway

#: Maps of this many bytes or more ask for transparent huge pages, as NumPy does for its own
#: allocations of 4 MiB or more (unless ``np._core.multiarray._set_madvise_hugepage(False)``):
#: with 4 KiB pages a pooled 8 MB buffer was written at 13 GB/s, NumPy's at 23 GB/s.
HUGEPAGE_BYTES = 4 << 20
_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _numpy_uses_hugepages() -> bool:
    try:
        from numpy._core.multiarray import _get_madvise_hugepage
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core.multiarray import _get_madvise_hugepage
        except ImportError:
            return False
    return bool(_get_madvise_hugepage())


def _unable(nbytes: int, shape: tuple[int, ...], dtype: np.dtype[Any], why: str) -> MemoryError:
    """The MemoryError for a request the host cannot hold, worded as NumPy's is."""
    size, unit = float(nbytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    return MemoryError(
        f"Unable to allocate {size:.2f} {unit} ({nbytes} bytes) for an array with shape "
        f"{tuple(shape)} and data type {dtype} ({why})"
    )


def _new_map(nbytes: int, asked: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> mmap.mmap:
    """A fresh anonymous private map of ``nbytes``: zero, page-aligned, its pages not touched
    yet; a MemoryError naming the ``asked`` bytes, ``shape`` and ``dtype`` if the kernel has no
    room for it."""
    try:
        store = mmap.mmap(-1, nbytes) if _PRIVATE is None else mmap.mmap(-1, nbytes, _PRIVATE)
    except OverflowError as exc:
        raise _unable(asked, shape, dtype, f"a map of {nbytes} bytes: {exc}") from exc
    except OSError as exc:
        if exc.errno not in (errno.ENOMEM, errno.EOVERFLOW):
            raise
        raise _unable(asked, shape, dtype, f"a map of {nbytes} bytes: {exc}") from exc
    if _HUGEPAGE is not None and nbytes >= HUGEPAGE_BYTES and _numpy_uses_hugepages():
        try:
            store.madvise(_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages
            pass
    return store


def size_class(nbytes: int) -> int:
    """The size of the pooled buffer that holds ``nbytes``: the next power of two, at least
    :data:`MIN_POOLED_BYTES`.

    >>> size_class(200_000), size_class(1 << 20), size_class((1 << 20) + 1)
    (262144, 1048576, 2097152)
    """
    return max(MIN_POOLED_BYTES, 1 << max(0, nbytes - 1).bit_length())


def _is_int(value: Any) -> bool:
    return hasattr(type(value), "__index__") and not isinstance(value, (bool, np.bool_))


def check_request(shape: Any, dtype: Any, where: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """``shape`` as a tuple of ints and ``dtype`` as a NumPy dtype, or a
    :class:`~veda.errors.LaunchError` naming the argument and what was expected."""
    if type(shape) is int and shape >= 0:  # the common cases, quickly
        dims: Any = (shape,)
    elif type(shape) is tuple and all(type(d) is int and d >= 0 for d in shape):
        dims = shape
    else:
        dims = _check_shape(shape, where)
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise LaunchError(f"{where}: dtype must be a NumPy dtype, not {dtype!r} ({exc})") from None
    while dt.subdtype is not None:  # a sub-array dtype: its shape joins the array's, as in NumPy
        dims = (*dims, *dt.shape)
        dt = dt.base
    if dt.hasobject:
        raise LaunchError(
            f"{where}: dtype {dt} holds Python objects; pooled memory holds numbers only "
            "(use np.empty for object arrays)"
        )
    if dt.itemsize == 0 and dt.kind in "SUV":
        raise LaunchError(f"{where}: dtype {dt.str!r} has no size; give one, e.g. 'U8'")
    # NumPy's rule: the product of the nonzero entries times the itemsize must fit in intp,
    # even when an entry of 0 makes the array empty (np.empty((2**62, 2**62, 0)) is refused).
    if math.prod(d for d in dims if d) * max(dt.itemsize, 1) > sys.maxsize:
        raise LaunchError(
            f"{where}: shape {tuple(dims)} with dtype {dt} is too big: its size times the "
            f"itemsize is more than sys.maxsize ({sys.maxsize}) bytes (NumPy: array is too big)"
        )
    return tuple(dims), dt


def _check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if _is_int(shape):
        entries: Sequence[Any] = (shape,)
    elif isinstance(shape, (tuple, list)):
        entries = shape
    else:
        raise LaunchError(
            f"{where}: shape must be an int or a tuple of ints, not {type(shape).__name__}"
        )
    dims = []
    for k, entry in enumerate(entries):
        if not _is_int(entry):
            raise LaunchError(
                f"{where}: shape must hold ints; entry {k} is {entry!r} ({type(entry).__name__})"
            )
        dim = operator.index(entry)
        if dim < 0:
            raise LaunchError(f"{where}: shape entries must be >= 0; entry {k} is {dim}")
        dims.append(dim)
    return tuple(dims)


def _aligned(nbytes: int, zero: bool) -> np.ndarray:
    """``nbytes`` of NumPy's own memory starting on :data:`ALIGNMENT`, as uint8."""
    raw = (np.zeros if zero else np.empty)(nbytes + ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % ALIGNMENT
    return raw[skip : skip + nbytes]


class HostPool:
    """Page-aligned host buffers kept between uses, by size class.

    Use the process's pool, :data:`pool` (``veda.hardware.memory_pool()``); the arrays come
    from ``veda.empty``, ``veda.zeros`` and ``veda.empty_like``.

    Parameters
    ----------
    limit_bytes : int
        The most bytes kept free (buffers lent out do not count); 0 keeps none.

    Examples
    --------
    >>> p = HostPool(limit_bytes=8 << 20)
    >>> a = p.take((1000, 100), np.float64)
    >>> a.shape, a.dtype, a.ctypes.data % 4096
    ((1000, 100), dtype('float64'), 0)
    >>> del a  # the last user is gone: the buffer goes back to the pool
    >>> b = p.take((1000, 100), np.float64)
    >>> p.info()["hits"], p.info()["misses"]
    (1, 1)
    """

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self._limit = self._check_limit(limit_bytes)
        # Re-entrant: a finalizer may run, and give a buffer back, wherever the garbage
        # collector runs, including inside this pool's own critical sections.
        self._lock = threading.RLock()
        self._free: dict[tuple[int, bool], list[mmap.mmap]] = {}
        self._free_bytes = 0
        self._lent_bytes = 0
        self._lent = 0
        self.hits = 0
        self.misses = 0
        self.unpooled = 0

    @staticmethod
    def _check_limit(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(
                f"memory pool: limit_bytes must be an int number of bytes, not {value!r}"
            )
        if value < 0:
            raise ConfigError(f"memory pool: limit_bytes must be >= 0, not {value}")
        return int(value)

    @property
    def limit_bytes(self) -> int:
        """The most bytes the pool keeps free; setting it lower unmaps free buffers beyond it.

        Raises :class:`~veda.errors.ConfigError` for a negative value or one that is not an int.
        """
        return self._limit

    @limit_bytes.setter
    def limit_bytes(self, value: int) -> None:
        limit = self._check_limit(value)
        with self._lock:
            self._limit = limit
            for free in self._free.values():
                while free and self._free_bytes > limit:
                    self._free_bytes -= len(free.pop())

    def take(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        zero: bool = False,
        touched: bool = False,
    ) -> np.ndarray:
        """A C-contiguous, writable array of ``shape`` and ``dtype`` (checked already, as
        :func:`check_request` does).

        ``zero``: its bytes are zero.  ``touched``: the caller first-touches fresh memory
        (``veda.empty(..., first_touch=True)``); such buffers are kept apart from the others
        and reused only for requests with ``touched`` again, so that a buffer whose pages were
        placed by a first touch is not lent as if its pages were unplaced, nor the reverse.
        """
        return self.take_store(shape, dtype, zero=zero, touched=touched)[0]

    def take_store(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        zero: bool = False,
        touched: bool = False,
    ) -> tuple[np.ndarray, bool]:
        """:meth:`take`, and whether the memory is a fresh map (its pages never touched)."""
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes < MIN_POOLED_BYTES:
            with self._lock:
                self.unpooled += 1
            raw = _aligned(nbytes, zero)
            return raw.view(dtype).reshape(shape), False
        cls = size_class(nbytes)
        if cls > sys.maxsize:  # no size class holds it: more than the address space anyway
            raise _unable(nbytes, shape, dtype, "its size class is past sys.maxsize bytes")
        key = (cls, touched)
        # The lease: [the buffer, whether it is counted as lent].  Whoever ends it first (the
        # finalizer of the lent memory, or the handler below for an allocation interrupted
        # before it returned, e.g. by a KeyboardInterrupt) undoes the bookkeeping and gives
        # the buffer back; the other finds it ended and does nothing.  Only subscripts, no
        # calls, move a buffer between the free list and the lease: CPython raises a pending
        # KeyboardInterrupt right after a call returns, and a buffer then held only on the
        # evaluation stack (``free.pop()``) would be lost with its bytes still counted.
        lease: list[Any] = [None, False]
        try:
            with self._lock:
                free = self._free.get(key)
                if free:
                    lease[0] = free[-1]
                    del free[-1]
                    self._free_bytes -= cls
                    self.hits += 1
                else:
                    self.misses += 1
                self._lent_bytes += cls
                self._lent += 1
                lease[1] = True
            fresh = lease[0] is None
            if fresh:
                lease[0] = _new_map(cls, nbytes, shape, dtype)
            carr = (ctypes.c_char * nbytes).from_buffer(lease[0])
            done = weakref.finalize(carr, self._give_back, lease, key)
            done.atexit = False
            if zero and not fresh:  # a fresh anonymous map is zero already
                ctypes.memset(carr, 0, nbytes)
            array = np.frombuffer(carr, dtype, count).reshape(shape)
        except BaseException:
            self._give_back(lease, key)
            raise
        return array, fresh

    def _give_back(self, lease: list[Any], key: tuple[int, bool]) -> None:
        cls = key[0]
        with self._lock:
            store, counted = lease
            if not counted:  # never counted, or given back already
                return
            lease[0] = None
            lease[1] = False
            self._lent_bytes -= cls
            self._lent -= 1
            if store is not None and self._free_bytes + cls <= self._limit:
                self._free.setdefault(key, []).append(store)
                self._free_bytes += cls
            # else: dropped, and unmapped when the last reference goes

    def clear(self) -> None:
        """Unmap every free buffer (buffers lent out stay valid and come back later)."""
        with self._lock:
            self._free.clear()
            self._free_bytes = 0

    def info(self) -> dict[str, int]:
        """The pool's figures: ``free_bytes`` (held free), ``lent_bytes`` and ``lent`` (lent
        out, in size classes), ``buffers`` (free buffers), ``hits``, ``misses``, ``unpooled``
        (small requests served by ``np.empty``) and ``limit_bytes``."""
        with self._lock:
            return {
                "free_bytes": self._free_bytes,
                "lent_bytes": self._lent_bytes,
                "lent": self._lent,
                "buffers": sum(len(v) for v in self._free.values()),
                "hits": self.hits,
                "misses": self.misses,
                "unpooled": self.unpooled,
                "limit_bytes": self._limit,
            }

    def __repr__(self) -> str:
        i = self.info()
        return (
            f"<HostPool free {i['free_bytes']} B in {i['buffers']} buffers, lent "
            f"{i['lent_bytes']} B, hits {i['hits']}, misses {i['misses']}, limit "
            f"{i['limit_bytes']} B>"
        )

    def _after_fork_in_child(self) -> None:
        # The lock may have been held by a thread that does not exist in the child.
        self._lock = threading.RLock()
        self._free = {}
        self._free_bytes = 0


#: The process's host buffers.
pool = HostPool()


def _after_fork_in_child() -> None:
    pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def memory_stats() -> dict[str, dict[str, int]]:
    """The host pool's figures (:meth:`HostPool.info`) under ``"host"`` and the device buffer
    pool's (``veda._hardware.gpu.pool.info()``) under ``"device"``.

    >>> sorted(memory_stats())
    ['device', 'host']
    """
    from veda._hardware import gpu

    return {"host": pool.info(), "device": gpu.pool.info()}
