"""Counter-based random numbers, callable inside kernels: the same number for the same
(seed, counter) on every target, schedule and thread count.

The generator is Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC 2011), checked against the known-answer vectors published with Random123.

How a draw is made, so that anyone can reproduce it:

* ``seed`` and ``counter`` are unsigned 64-bit integers (other integers are taken modulo 2**64);
* the Philox key is ``(seed & 0xffffffff, seed >> 32)``, the Philox counter is
  ``(counter & 0xffffffff, counter >> 32, 0, 0)``, and ten rounds give four 32-bit words
  ``x0, x1, x2, x3``;
* :func:`uniform` is ``((x0 >> 5) * 2**26 + (x1 >> 6)) / 2**53``: 53 random bits in [0, 1);
* :func:`uniform2` returns two: the first is :func:`uniform`'s, the second is made the same way
  from ``x2, x3`` (one block, half the work of two calls);
* :func:`normal` is Box-Muller on the uniforms made the same way from ``(x0, x1)`` and
  ``(x2, x3)``: ``sqrt(-2 log(1 - u1)) * cos(2 pi u2)``;
* :func:`integers` is ``low + floor(u * (high - low))`` with ``u`` the uniform, in
  ``[low, high)`` (its bias is below ``(high - low) / 2**53``).

Examples
--------
>>> import numpy as np, veda
>>> @veda.kernel
... def noise(i, seed, out):
...     out[i] = veda.random.uniform(seed, i)
>>> out = np.empty(4)
>>> noise[4](42, out)
>>> bool(out[2] == veda.random.uniform(42, 2))
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba.extending import overload

from veda._kernel.cache import own_njit
from veda.errors import LaunchError

__all__ = ["integers", "normal", "philox4x32_10", "uniform", "uniform2"]

_M32 = np.uint64(0xFFFFFFFF)
_MUL0 = np.uint64(0xD2511F53)
_MUL1 = np.uint64(0xCD9E8D57)
_WEYL0 = np.uint64(0x9E3779B9)
_WEYL1 = np.uint64(0xBB67AE85)
_S32 = np.uint64(32)


@own_njit(nogil=True, inline="always")
def _round(c0, c1, c2, c3, k0, k1):  # type: ignore[no-untyped-def]
    p0 = _MUL0 * c0
    p1 = _MUL1 * c2
    return (p1 >> _S32) ^ c1 ^ k0, p1 & _M32, (p0 >> _S32) ^ c3 ^ k1, p0 & _M32


@own_njit(nogil=True, inline="always")
def _bump(k0, k1):  # type: ignore[no-untyped-def]
    return (k0 + _WEYL0) & _M32, (k1 + _WEYL1) & _M32


# Written out without a loop: kernels inline the generator where they call it (inline="always",
# here and in the overloads below), which lets LLVM vectorise a loop of draws across indices; a
# loop here, inlined, trips Numba's SSA checks (NumbaIRAssumptionWarning).
@own_njit(nogil=True, inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):  # type: ignore[no-untyped-def]
    """The Philox4x32-10 block function: four counter words and two key words (each below
    2**32) to four output words."""
    c0 = np.uint64(c0) & _M32
    c1 = np.uint64(c1) & _M32
    c2 = np.uint64(c2) & _M32
    c3 = np.uint64(c3) & _M32
    k0 = np.uint64(k0) & _M32
    k1 = np.uint64(k1) & _M32
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump(k0, k1)
    return _round(c0, c1, c2, c3, k0, k1)


@own_njit(nogil=True, inline="always")
def _words(seed, counter):  # type: ignore[no-untyped-def]
    s = np.uint64(seed)
    c = np.uint64(counter)
    return philox4x32_10(c & _M32, c >> _S32, 0, 0, s & _M32, s >> _S32)


_TWO26 = 67108864.0
_TWO53 = 9007199254740992.0


@own_njit(nogil=True, inline="always")
def _unit(a, b):  # type: ignore[no-untyped-def]
    return (float(a >> np.uint64(5)) * _TWO26 + float(b >> np.uint64(6))) / _TWO53


@own_njit(nogil=True, inline="always")
def _uniform(seed, counter):  # type: ignore[no-untyped-def]
    x0, x1, _, _ = _words(seed, counter)
    return _unit(x0, x1)


@own_njit(nogil=True, inline="always")
def _uniform2(seed, counter):  # type: ignore[no-untyped-def]
    x0, x1, x2, x3 = _words(seed, counter)
    return _unit(x0, x1), _unit(x2, x3)


@own_njit(nogil=True, inline="always")
def _normal(seed, counter):  # type: ignore[no-untyped-def]
    x0, x1, x2, x3 = _words(seed, counter)
    u1 = _unit(x0, x1)
    u2 = _unit(x2, x3)
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


@own_njit(nogil=True, inline="always")
def _integers(seed, counter, low, high):  # type: ignore[no-untyped-def]
    if high <= low:
        raise ValueError("veda.random.integers: high must be greater than low")
    u = _uniform(seed, counter)
    return np.int64(low) + np.int64(math.floor(u * float(high - low)))


def _u64(v: int, name: str, fn: str) -> int:
    return _integer(v, name, fn) % (1 << 64)


def _integer(v: Any, name: str, fn: str) -> int:
    """``v`` as a Python int; anything but an integer (a float, a bool, a string) is refused
    rather than truncated."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise LaunchError(f"veda.random.{fn}: {name} must be an integer, not {v!r}")
    return int(v)


def uniform(seed: int, counter: int) -> float:
    """A float64 in [0, 1) with 53 random bits, fixed by ``(seed, counter)``."""
    return float(
        _uniform(
            np.uint64(_u64(seed, "seed", "uniform")), np.uint64(_u64(counter, "counter", "uniform"))
        )
    )


def uniform2(seed: int, counter: int) -> tuple[float, float]:
    """Two float64 in [0, 1) from one generator block; the first equals ``uniform(seed, counter)``.

    >>> import veda
    >>> u, v = veda.random.uniform2(7, 3)
    >>> u == veda.random.uniform(7, 3) and 0.0 <= v < 1.0
    True
    """
    u, v = _uniform2(
        np.uint64(_u64(seed, "seed", "uniform2")), np.uint64(_u64(counter, "counter", "uniform2"))
    )
    return float(u), float(v)


def normal(seed: int, counter: int) -> float:
    """A standard normal float64, fixed by ``(seed, counter)`` (Box-Muller)."""
    return float(
        _normal(
            np.uint64(_u64(seed, "seed", "normal")), np.uint64(_u64(counter, "counter", "normal"))
        )
    )


def integers(seed: int, counter: int, low: int, high: int) -> int:
    """An integer in ``[low, high)``, fixed by ``(seed, counter)``."""
    low, high = _integer(low, "low", "integers"), _integer(high, "high", "integers")
    if high <= low:
        raise LaunchError(f"veda.random.integers: high={high} must be greater than low={low}")
    return int(
        _integers(
            np.uint64(_u64(seed, "seed", "integers")),
            np.uint64(_u64(counter, "counter", "integers")),
            low,
            high,
        )
    )


# Inside kernels the same functions compile to the jitted implementations, inlined where they
# are called (see philox4x32_10).  numba-cuda may offer a CUDA kernel these CPU overloads too;
# they decline there (its own, veda._kernel.cuda_language, are the device versions).


def _cpu() -> bool:
    from numba.core import target_extension

    try:
        return target_extension.current_target() == "cpu"
    except Exception:  # no target known: the CPU, where these are registered
        return True


@overload(uniform, target="cpu", inline="always")
def _ol_uniform(seed, counter):  # type: ignore[no-untyped-def]
    if not _cpu():
        return None
    return lambda seed, counter: _uniform(seed, counter)


@overload(uniform2, target="cpu", inline="always")
def _ol_uniform2(seed, counter):  # type: ignore[no-untyped-def]
    if not _cpu():
        return None
    return lambda seed, counter: _uniform2(seed, counter)


@overload(normal, target="cpu", inline="always")
def _ol_normal(seed, counter):  # type: ignore[no-untyped-def]
    if not _cpu():
        return None
    return lambda seed, counter: _normal(seed, counter)


@overload(integers, target="cpu", inline="always")
def _ol_integers(seed, counter, low, high):  # type: ignore[no-untyped-def]
    if not _cpu():
        return None
    return lambda seed, counter, low, high: _integers(seed, counter, low, high)
