"""What veda is measured against: each gallery kernel written by hand for NumPy, Numba and
numexpr.

Every peer takes the same ``(domain, args)`` as a gallery case's launch and computes the same
result.  The hand-written Numba versions are written once with ``numba.prange`` and compiled
twice: with ``@njit`` (where ``prange`` is a plain ``range``: "numba") and with
``@njit(parallel=True)`` ("numba_prange", Numba's own static schedule over all threads).  That
is what a careful Numba user writes, so the comparison measures what veda's generated loops,
schedules and dispatcher add or cost.

Where the gallery's NumPy reference is written for exactness rather than speed, the NumPy peer
is the fastest plain NumPy formulation instead (noted on each).

>>> from veda_kernels import GALLERY
>>> from veda_kernels.peers import peers_for
>>> sorted(peers_for("saxpy"))
['numba', 'numba_prange', 'numexpr', 'numpy']
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from functools import cache
from typing import Any

import numba
import numpy as np
from numba import prange

import veda
from veda_kernels import finance, loops, stencils

#: A peer runs one problem: ``peer(domain, args)``.  The Numba and numexpr peers behave like the
#: launch (they write the outputs in ``args`` and return a reduction's raw value), so the case's
#: ``result`` applies to them; NumPy peers may instead return their result.
Peer = Callable[[Any, tuple[Any, ...]], Any]

# --------------------------------------------------------------------------------------------
# Hand-written Numba loops (compiled twice: serial and prange).


def _saxpy(a, x, y, out):
    for i in prange(x.shape[0]):
        out[i] = a * x[i] + y[i]


def _triad(a, b, s, c):
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def _dot(x, y):
    acc = 0.0
    for i in prange(x.shape[0]):
        acc += x[i] * y[i]
    return acc


def _sum_squares(x):
    acc = 0.0
    for i in prange(x.shape[0]):
        acc += x[i] * x[i]
    return acc


def _triangular(x, out):
    for i in prange(x.shape[0]):
        acc = 0.0
        xi = x[i]
        for j in range(i + 1):
            acc += x[j] * xi
        out[i] = acc


def _mandelbrot(xmin, ymin, dx, dy, out):
    h, w = out.shape
    for i in prange(h):
        ci = ymin + i * dy
        for j in range(w):
            cr = xmin + j * dx
            zr = 0.0
            zi = 0.0
            k = 0
            while k < loops.MAX_ITER and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
                k += 1
            out[i, j] = k


def _jacobi2d(u, out):
    n, m = u.shape
    for i in prange(n):
        if i == 0 or i == n - 1:
            for j in range(m):
                out[i, j] = u[i, j]
        else:
            out[i, 0] = u[i, 0]
            for j in range(1, m - 1):
                out[i, j] = 0.25 * (u[i - 1, j] + u[i + 1, j] + u[i, j - 1] + u[i, j + 1])
            out[i, m - 1] = u[i, m - 1]


def _heat3d(alpha, u, out):
    n, m, p = u.shape
    for i in prange(n):
        for j in range(m):
            for k in range(p):
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


def _histogram(values, lo, width, counts, parts):
    # One private histogram per block of the input, summed at the end: the usual way to avoid
    # a race on ``counts`` without atomics.
    n = values.shape[0]
    bins = counts.shape[0]
    local = np.zeros((parts, bins), counts.dtype)
    for p in prange(parts):
        for i in range(p * n // parts, (p + 1) * n // parts):
            b = int((values[i] - lo) / width)
            if 0 <= b < bins:
                local[p, b] += 1
    for p in range(parts):
        for b in range(bins):
            counts[b] += local[p, b]


def _spmv(indptr, indices, data, x, y):
    for i in prange(y.shape[0]):
        acc = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            acc += data[k] * x[indices[k]]
        y[i] = acc


def _nbody(pos, vel, mass, dt, eps2, vel_out):
    n = pos.shape[0]
    for i in prange(n):
        xi = pos[i, 0]
        yi = pos[i, 1]
        zi = pos[i, 2]
        ax = 0.0
        ay = 0.0
        az = 0.0
        for j in range(n):
            dx = pos[j, 0] - xi
            dy = pos[j, 1] - yi
            dz = pos[j, 2] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            s = mass[j] / (r2 * math.sqrt(r2))
            ax += s * dx
            ay += s * dy
            az += s * dz
        vel_out[i, 0] = vel[i, 0] + dt * ax
        vel_out[i, 1] = vel[i, 1] + dt * ay
        vel_out[i, 2] = vel[i, 2] + dt * az


def _pi_hits(n, seed):
    # The same counter-based draws as the gallery kernel, so both do the same work.
    hits = 0
    for i in prange(n):
        x, y = veda.random.uniform2(seed, i)
        if x * x + y * y < 1.0:
            hits += 1
    return hits


_SQRT1_2 = 1.0 / math.sqrt(2.0)


def _black_scholes(spot, strike, years, rate, vol, call, put):
    for i in prange(spot.shape[0]):
        s = spot[i]
        k = strike[i]
        t = years[i]
        root_t = math.sqrt(t)
        d1 = (math.log(s / k) + (rate + 0.5 * vol * vol) * t) / (vol * root_t)
        d2 = d1 - vol * root_t
        discounted = k * math.exp(-rate * t)
        call[i] = s * 0.5 * math.erfc(-d1 * _SQRT1_2) - discounted * 0.5 * math.erfc(-d2 * _SQRT1_2)
        put[i] = discounted * 0.5 * math.erfc(d2 * _SQRT1_2) - s * 0.5 * math.erfc(d1 * _SQRT1_2)


def _softmax(x, out):
    rows, m = x.shape
    for i in prange(rows):
        top = x[i, 0]
        for j in range(1, m):
            top = max(top, x[i, j])
        total = 0.0
        for j in range(m):
            e = math.exp(x[i, j] - top)
            out[i, j] = e
            total += e
        scale = 1.0 / total
        for j in range(m):
            out[i, j] *= scale


def _matmul(a, b, c):
    # The usual hand-written form: rows in parallel, i-k-j order so the inner loop streams.
    n, depth = a.shape
    m = b.shape[1]
    for i in prange(n):
        for j in range(m):
            c[i, j] = 0.0
        for k in range(depth):
            aik = a[i, k]
            for j in range(m):
                c[i, j] += aik * b[k, j]


# How each gallery case calls its loop: (loop, adapter from (domain, args) to the loop's args).
_LOOPS: dict[str, tuple[Callable[..., Any], Callable[[Any, tuple[Any, ...]], tuple[Any, ...]]]] = {
    "saxpy": (_saxpy, lambda d, a: a),
    "triad": (_triad, lambda d, a: a),
    "dot": (_dot, lambda d, a: a),
    "norm": (_sum_squares, lambda d, a: a),
    "triangular": (_triangular, lambda d, a: a),
    "mandelbrot": (_mandelbrot, lambda d, a: a),
    "jacobi2d": (_jacobi2d, lambda d, a: a),
    "heat3d": (_heat3d, lambda d, a: a),
    "histogram": (_histogram, lambda d, a: (*a, numba.get_num_threads())),
    "spmv_csr": (_spmv, lambda d, a: a),
    "nbody": (_nbody, lambda d, a: a),
    "montecarlo_pi": (_pi_hits, lambda d, a: (d, a[0])),
    "black_scholes": (_black_scholes, lambda d, a: a),
    "softmax": (_softmax, lambda d, a: a),
    "matmul": (_matmul, lambda d, a: a),
}


@cache
def _compiled(name: str, parallel: bool) -> Callable[..., Any]:
    loop, _ = _LOOPS[name]
    if parallel:
        # Numba's disk cache keys compiled code by function and signature, not by compiler
        # flags: the serial and the parallel build of one function would load each other's
        # code.  A copy under its own name gets its own cache entry.
        loop = _renamed(loop, "_prange")
    return numba.njit(parallel=parallel, cache=True, nogil=True)(loop)  # type: ignore[no-any-return]


def _renamed(fn: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    return copy


def _numba_peer(name: str, parallel: bool) -> Peer:
    _, adapt = _LOOPS[name]

    def run(domain: Any, args: tuple[Any, ...]) -> Any:
        return _compiled(name, parallel)(*adapt(domain, args))

    return run


# --------------------------------------------------------------------------------------------
# NumPy peers that differ from the gallery's reference.


def _spmv_numpy(domain: Any, args: tuple[Any, ...]) -> None:
    indptr, indices, data, x, y = args
    products = data * x[indices]
    y[...] = np.add.reduceat(products, indptr[:-1]) if products.size else 0.0
    y[indptr[:-1] == indptr[1:]] = 0.0  # reduceat gives the next element for an empty row


def _pi_numpy(domain: Any, args: tuple[Any, ...]) -> Any:
    # NumPy's own generator: what a NumPy program would draw with (a different stream).
    points = np.random.default_rng(args[0]).random((2, domain))
    return np.count_nonzero(points[0] * points[0] + points[1] * points[1] < 1.0)


def _black_scholes_numpy(domain: Any, args: tuple[Any, ...]) -> None:
    finance.black_scholes_numpy(*args)


def _triangular_numpy(domain: Any, args: tuple[Any, ...]) -> None:
    # The same O(n^2) work, a row at a time (the reference uses the closed form instead).
    x, out = args
    for i in range(x.shape[0]):
        out[i] = x[i] * x[: i + 1].sum()


def _mandelbrot_numpy(domain: Any, args: tuple[Any, ...]) -> None:
    loops.mandelbrot_reference(*args)


def _jacobi_numpy(domain: Any, args: tuple[Any, ...]) -> None:
    u, out = args
    out[0], out[-1], out[:, 0], out[:, -1] = u[0], u[-1], u[:, 0], u[:, -1]
    out[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])


def _numpy_default(name: str) -> Peer:
    from veda_kernels import GALLERY

    case = GALLERY[name]

    def run(domain: Any, args: tuple[Any, ...]) -> Any:
        return case.expected(domain, args)

    return run


_NUMPY: dict[str, Peer] = {
    "triangular": _triangular_numpy,
    "spmv_csr": _spmv_numpy,
    "montecarlo_pi": _pi_numpy,
    "black_scholes": _black_scholes_numpy,
    "mandelbrot": _mandelbrot_numpy,
    "jacobi2d": _jacobi_numpy,
    "heat3d": lambda d, a: stencils.heat3d_reference(a[0], a[1]),
    "softmax": lambda d, a: np.divide(*_softmax_parts(a[0]), out=a[1]),
    "matmul": lambda d, a: np.matmul(a[0], a[1], out=a[2]),
}


def _softmax_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e, e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# numexpr peers, where the kernel is an expression numexpr can evaluate.


def _numexpr_peers() -> dict[str, Peer]:
    try:
        import numexpr as ne
    except ImportError:  # pragma: no cover - numexpr is in the test extra
        return {}

    def saxpy(d: Any, a: tuple[Any, ...]) -> None:
        ne.evaluate("s * x + y", local_dict={"s": a[0], "x": a[1], "y": a[2]}, out=a[3])

    def triad(d: Any, a: tuple[Any, ...]) -> None:
        ne.evaluate("b + s * c", local_dict={"b": a[1], "s": a[2], "c": a[3]}, out=a[0])

    def dot(d: Any, a: tuple[Any, ...]) -> Any:
        return ne.evaluate("sum(x * y)", local_dict={"x": a[0], "y": a[1]})[()]

    def norm(d: Any, a: tuple[Any, ...]) -> Any:
        return ne.evaluate("sum(x * x)", local_dict={"x": a[0]})[()]

    def jacobi(d: Any, a: tuple[Any, ...]) -> None:
        u, out = a
        out[0], out[-1], out[:, 0], out[:, -1] = u[0], u[-1], u[:, 0], u[:, -1]
        ne.evaluate(
            "0.25 * (n + s + w + e)",
            local_dict={"n": u[:-2, 1:-1], "s": u[2:, 1:-1], "w": u[1:-1, :-2], "e": u[1:-1, 2:]},
            out=out[1:-1, 1:-1],
        )

    def heat(d: Any, a: tuple[Any, ...]) -> None:
        alpha, u, out = a
        out[...] = u
        c = u[1:-1, 1:-1, 1:-1]
        ne.evaluate(
            "c + alpha * (xm + xp + ym + yp + zm + zp - 6.0 * c)",
            local_dict={
                "c": c,
                "alpha": alpha,
                "xm": u[:-2, 1:-1, 1:-1],
                "xp": u[2:, 1:-1, 1:-1],
                "ym": u[1:-1, :-2, 1:-1],
                "yp": u[1:-1, 2:, 1:-1],
                "zm": u[1:-1, 1:-1, :-2],
                "zp": u[1:-1, 1:-1, 2:],
            },
            out=out[1:-1, 1:-1, 1:-1],
        )

    return {
        "saxpy": saxpy,
        "triad": triad,
        "dot": dot,
        "norm": norm,
        "jacobi2d": jacobi,
        "heat3d": heat,
    }


@cache
def _numexpr_table() -> dict[str, Peer]:
    return _numexpr_peers()


def peers_for(name: str, include: tuple[str, ...] | None = None) -> dict[str, Peer]:
    """The peers of gallery kernel ``name``: ``{"numpy": ..., "numba": ..., ...}``.

    ``include`` limits them to the named kinds ("numpy", "numba", "numba_prange", "numexpr").
    """
    peers: dict[str, Peer] = {"numpy": _NUMPY.get(name) or _numpy_default(name)}
    if name in _LOOPS:
        peers["numba"] = _numba_peer(name, parallel=False)
        peers["numba_prange"] = _numba_peer(name, parallel=True)
    numexpr_peer = _numexpr_table().get(name)
    if numexpr_peer is not None:
        peers["numexpr"] = numexpr_peer
    if include is not None:
        peers = {k: v for k, v in peers.items() if k in include}
    return peers


def numpy_agrees(case: Any, args: tuple[Any, ...], value: Any, expected: Any) -> bool | None:
    """Whether the NumPy peer's result matches the reference; None where it computes something
    else on purpose (``montecarlo_pi`` draws other points with NumPy's own generator).

    A NumPy peer either writes the outputs in ``args`` (and returns None) or returns its result.
    """
    if case.name == "montecarlo_pi":
        return None
    got = case.result(args, None) if value is None else value
    if case.name == "black_scholes":
        # The polynomial CDF's |error| < 7.5e-8 bounds the price error by 7.5e-8 (spot + strike).
        return case.agrees(got, expected, atol=7.5e-8 * float(args[0].max() + args[1].max()))
    return bool(case.agrees(got, expected))


#: Every kind of peer, in the order tables show them.
PEER_KINDS = ("numpy", "numba", "numba_prange", "numexpr")

__all__ = ["PEER_KINDS", "Peer", "numpy_agrees", "peers_for"]
