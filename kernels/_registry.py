"""The gallery's table: kernel, inputs, NumPy reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import veda
from veda_kernels import blas1, loops, sparse, stencils


@dataclass(frozen=True)
class Case:
    """One gallery kernel with what is needed to run and check it.

    ``make(n, rng)`` returns ``(domain, args)`` for a problem of about ``n`` elements;
    ``reference(args)`` computes the expected result with NumPy; ``result(args, value)`` picks
    the launch's result (the reduction value, or the output array) for comparison.
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

    def reset(self, args: tuple[Any, ...]) -> None:
        """Zero the arguments the kernel accumulates into, so a rerun starts afresh."""
        for pos in self.accumulates:
            args[pos][...] = 0


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


def _out(pos: int) -> Callable[[tuple[Any, ...], Any], Any]:
    return lambda args, value: args[pos]


GALLERY: dict[str, Case] = {
    c.name: c
    for c in [
        Case("saxpy", blas1.saxpy, _saxpy, lambda a: a[0] * a[1] + a[2], _out(3), 1000, 10**7),
        Case("triad", blas1.triad, _triad, lambda a: a[1] + a[2] * a[3], _out(0), 1000, 2 * 10**7),
        Case("dot", blas1.dot, _dot, lambda a: np.dot(a[0], a[1]), lambda a, v: v, 1000, 10**7),
        Case(
            "triangular", loops.triangular, _triangular,
            lambda a: loops.triangular_reference(a[0]), _out(1), 500, 20000,
        ),
        Case(
            "mandelbrot", loops.mandelbrot, _mandel,
            lambda a: loops.mandelbrot_reference(*a[:4], np.empty_like(a[4])), _out(4),
            2000, 960000, exact=True,
        ),
        Case(
            "jacobi2d", stencils.jacobi2d, _jacobi,
            lambda a: stencils.jacobi2d_reference(a[0]), _out(1), 1024, 4 * 10**6,
        ),
        Case(
            "heat3d", stencils.heat3d, _heat,
            lambda a: stencils.heat3d_reference(a[0], a[1]), _out(2), 1000, 4 * 10**6,
        ),
        Case(
            "histogram", sparse.histogram, _hist,
            lambda a: sparse.histogram_reference(*a[:3], np.zeros_like(a[3])), _out(3),
            1000, 10**7, exact=True, accumulates=(3,),
        ),
        Case(
            "spmv_csr", sparse.spmv_csr, _spmv,
            lambda a: sparse.spmv_reference(*a[:4]), _out(4), 16000, 16 * 10**6,
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
