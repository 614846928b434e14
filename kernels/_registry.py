"""The gallery's table: kernel, inputs, NumPy reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import veda
from veda_kernels import blas1, dense, finance, loops, montecarlo, physics, sparse, stencils


@dataclass(frozen=True)
class Case:
    """One gallery kernel with what is needed to run and check it.

    ``make(n, rng)`` returns ``(domain, args)`` for a problem of about ``n`` elements;
    ``reference(args)`` computes the expected result with NumPy (``reference(domain, args)``
    when ``reference_takes_domain``); ``result(args, value)`` picks the launch's result (the
    reduction value, or the output array) for comparison.  ``streaming`` marks kernels whose
    speed is bounded by memory bandwidth (the benchmarks report them against the machine's
    measured bandwidth).
    """

    name: str
    kernel: veda.Kernel
    make: Callable[[int, np.random.Generator], tuple[Any, tuple[Any, ...]]]
    reference: Callable[[tuple[Any, ...]], Any]
    result: Callable[[tuple[Any, ...], Any], Any]
    small: int
    large: int
    exact: bool = False
    #: Positions of arguments the kernel adds into; zero them before each run.
    accumulates: tuple[int, ...] = ()
    reference_takes_domain: bool = False
    streaming: bool = False
    #: Relative tolerance against the reference where results are not exact.
    rtol: float = 1e-10

    def reset(self, args: tuple[Any, ...]) -> None:
        """Zero the arguments the kernel accumulates into, so a rerun starts afresh."""
        for pos in self.accumulates:
            args[pos][...] = 0

    def outputs(self, args: tuple[Any, ...]) -> list[int]:
        """Positions in ``args`` of the arrays the kernel writes."""
        first = len(self.kernel.params) - len(args)
        return [self.kernel.params.index(name) - first for name in self.kernel.written]

    def poison(self, args: tuple[Any, ...]) -> None:
        """Fill the outputs with values no correct run leaves behind (NaN, or the smallest
        integer), then :meth:`reset` the accumulators: a run that skips part of its output
        then fails the comparison with the reference."""
        for pos in self.outputs(args):
            out = args[pos]
            out[...] = np.nan if out.dtype.kind in "fc" else np.iinfo(out.dtype).min
        self.reset(args)

    def expected(self, domain: Any, args: tuple[Any, ...]) -> Any:
        """The NumPy reference's result for this launch."""
        if self.reference_takes_domain:
            return self.reference(domain, args)  # type: ignore[call-arg]
        return self.reference(args)

    def check(self, domain: Any, args: tuple[Any, ...], value: Any) -> None:
        """Assert that a launch's result (``value`` and the outputs in ``args``) matches the
        reference, with NumPy's description of any difference."""
        got = self.result(args, value)
        expected = self.expected(domain, args)
        if self.exact:
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=self.rtol, atol=1e-12)
        assert self.agrees(got, expected)

    def agrees(self, got: Any, expected: Any, atol: float = 1e-12) -> bool:
        """Whether a launch's result matches the reference (exactly, or to ``rtol``/``atol``);
        NaN never matches."""
        if self.exact:
            return bool(np.array_equal(got, expected))
        return bool(np.allclose(got, expected, rtol=self.rtol, atol=atol))


def _vec(n, rng):
    return rng.standard_normal(n)


def _saxpy(n, rng):
    return n, (2.5, _vec(n, rng), _vec(n, rng), np.empty(n))


def _triad(n, rng):
    return n, (np.empty(n), _vec(n, rng), 3.0, _vec(n, rng))


def _dot(n, rng):
    return n, (_vec(n, rng), _vec(n, rng))


def _triangular(n, rng):
    return n, (rng.random(n), np.empty(n))


def _mandel(n, rng):
    w = max(int((n * 1.5) ** 0.5), 1)
    h = max(n // w, 1)
    return (h, w), (-2.0, -1.0, 3.0 / w, 2.0 / h, np.empty((h, w), np.int64))


def _jacobi(n, rng):
    s = max(int(n**0.5), 3)
    return (s, s), (rng.random((s, s)), np.empty((s, s)))


def _heat(n, rng):
    s = max(round(n ** (1 / 3)), 3)
    return (s, s, s), (0.1, rng.random((s, s, s)), np.empty((s, s, s)))


def _hist(n, rng):
    return n, (rng.random(n), 0.0, 1.0 / 64, np.zeros(64, np.int64))


def _spmv(n, rng):
    rows = max(n // 16, 1)
    indptr, indices, data = sparse.power_law_csr(rows, seed=int(rng.integers(1 << 30)))
    return rows, (indptr, indices, data, rng.standard_normal(rows), np.empty(rows))


def _norm(n, rng):
    return n, (_vec(n, rng),)


def _nbody(n, rng):
    bodies = max(n, 2)
    pos = rng.standard_normal((bodies, 3))
    vel = 0.1 * rng.standard_normal((bodies, 3))
    mass = rng.uniform(0.5, 1.5, bodies) / bodies
    return bodies, (pos, vel, mass, 1e-3, 1e-4, np.empty((bodies, 3)))


def _pi(n, rng):
    return n, (int(rng.integers(1 << 62)),)


def _black_scholes(n, rng):
    spot = rng.uniform(10.0, 100.0, n)
    strike = spot * rng.uniform(0.6, 1.4, n)
    years = rng.uniform(0.1, 3.0, n)
    return n, (spot, strike, years, 0.02, 0.3, np.empty(n), np.empty(n))


def _softmax(n, rng):
    cols = 256
    rows = max(n // cols, 1)
    return rows, (4.0 * rng.standard_normal((rows, cols)), np.empty((rows, cols)))


def _matmul(n, rng):
    # ``n`` counts multiply-adds: an s x s product does s**3 of them.
    s = max(round(n ** (1 / 3)), 1)
    a = rng.standard_normal((s, s))
    b = rng.standard_normal((s, s))
    return s, (a, b, np.empty((s, s)))


def _out(pos: int) -> Callable[[tuple[Any, ...], Any], Any]:
    return lambda args, value: args[pos]


GALLERY: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "saxpy",
            blas1.saxpy,
            _saxpy,
            lambda a: a[0] * a[1] + a[2],
            _out(3),
            1000,
            10**7,
            streaming=True,
        ),
        Case(
            "triad",
            blas1.triad,
            _triad,
            lambda a: a[1] + a[2] * a[3],
            _out(0),
            1000,
            2 * 10**7,
            streaming=True,
        ),
        Case(
            "dot",
            blas1.dot,
            _dot,
            lambda a: np.dot(a[0], a[1]),
            lambda a, v: v,
            1000,
            10**7,
            streaming=True,
        ),
        Case(
            "norm",
            blas1.sum_squares,
            _norm,
            lambda a: np.linalg.norm(a[0]),
            lambda a, v: np.sqrt(v),
            1000,
            2 * 10**7,
            streaming=True,
        ),
        Case(
            "triangular",
            loops.triangular,
            _triangular,
            lambda a: loops.triangular_reference(a[0]),
            _out(1),
            500,
            20000,
        ),
        Case(
            "mandelbrot",
            loops.mandelbrot,
            _mandel,
            lambda a: loops.mandelbrot_reference(*a[:4], np.empty_like(a[4])),
            _out(4),
            2000,
            960000,
            exact=True,
        ),
        Case(
            "jacobi2d",
            stencils.jacobi2d,
            _jacobi,
            lambda a: stencils.jacobi2d_reference(a[0]),
            _out(1),
            1024,
            4 * 10**6,
        ),
        Case(
            "heat3d",
            stencils.heat3d,
            _heat,
            lambda a: stencils.heat3d_reference(a[0], a[1]),
            _out(2),
            1000,
            4 * 10**6,
        ),
        Case(
            "histogram",
            sparse.histogram,
            _hist,
            lambda a: sparse.histogram_reference(*a[:3], np.zeros_like(a[3])),
            _out(3),
            1000,
            10**7,
            exact=True,
            accumulates=(3,),
        ),
        Case(
            "spmv_csr",
            sparse.spmv_csr,
            _spmv,
            lambda a: sparse.spmv_reference(*a[:4]),
            _out(4),
            16000,
            16 * 10**6,
        ),
        Case(
            "nbody",
            physics.nbody_step,
            _nbody,
            lambda a: physics.nbody_reference(*a[:5]),
            _out(5),
            200,
            8000,
        ),
        Case(
            "montecarlo_pi",
            montecarlo.pi_hits,
            _pi,
            lambda d, a: montecarlo.pi_hits_reference(d, a[0]),
            lambda a, v: v,
            4000,
            2 * 10**7,
            exact=True,
            reference_takes_domain=True,
        ),
        Case(
            "black_scholes",
            finance.black_scholes,
            _black_scholes,
            lambda a: finance.black_scholes_reference(*a[:5]),
            lambda a, v: (a[5], a[6]),
            1000,
            10**7,
        ),
        Case(
            "softmax",
            dense.softmax_rows,
            _softmax,
            lambda a: dense.softmax_reference(a[0]),
            _out(1),
            4096,
            2**23,
        ),
        Case(
            "matmul",
            dense.matmul,
            _matmul,
            lambda a: a[0] @ a[1],
            _out(2),
            10**5,
            2**30,
            rtol=1e-9,
        ),
    ]
}


def get(name: str) -> Case:
    """The gallery case called ``name``."""
    try:
        return GALLERY[name]
    except KeyError:
        raise veda.UnknownKernelError(
            f"no gallery kernel {name!r}; the gallery has {', '.join(sorted(GALLERY))}"
        ) from None
