"""The benchmark suite's peers compute what the gallery computes; its report arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

import veda
from veda_kernels import GALLERY, suite
from veda_kernels.finance import black_scholes_numpy, black_scholes_reference
from veda_kernels.montecarlo import philox_uniform2
from veda_kernels.peers import peers_for


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_peers_agree_with_the_reference(name):
    case = GALLERY[name]
    domain, args = case.make(case.small, np.random.default_rng(3))
    expected = case.expected(domain, args)
    for kind, peer in peers_for(name).items():
        case.reset(args)
        value = peer(domain, args)
        if kind == "numpy" and value is not None:
            got = value  # NumPy peers may return their result instead of writing it
        else:
            got = case.result(args, value)
        if name == "montecarlo_pi" and kind == "numpy":
            # NumPy's own generator draws other points: agreement is statistical.
            n = domain
            p = np.pi / 4
            assert abs(got - n * p) < 5 * np.sqrt(n * p * (1 - p))
        elif name == "black_scholes" and kind == "numpy":
            # A polynomial CDF with |error| < 7.5e-8 (NumPy has no erf): the price error is
            # below 7.5e-8 * (spot + strike).
            bound = 7.5e-8 * (args[0].max() + args[1].max())
            np.testing.assert_allclose(np.array(got), np.array(expected), rtol=0, atol=bound)
        elif name == "norm" and kind == "numpy":
            np.testing.assert_allclose(got, expected, rtol=1e-12)
        else:
            assert case.agrees(got, expected), f"{name} via {kind}"


def test_numpy_black_scholes_is_close_to_exact():
    rng = np.random.default_rng(0)
    _, args = GALLERY["black_scholes"].make(5000, rng)
    call, put = black_scholes_reference(*args[:5])
    black_scholes_numpy(*args)
    bound = 7.5e-8 * (args[0].max() + args[1].max())
    assert np.max(np.abs(args[5] - call)) < bound
    assert np.max(np.abs(args[6] - put)) < bound


def test_numpy_philox_matches_veda_random():
    counters = np.array([0, 1, 2, 12345, 2**32 - 1, 2**32, 2**63 + 7], dtype=np.uint64)
    for seed in (0, 1, 2**40 + 3):
        first, second = philox_uniform2(seed, counters)
        want = [veda.random.uniform2(seed, int(c)) for c in counters]
        assert list(zip(first.tolist(), second.tolist())) == want
        assert first.tolist() == [veda.random.uniform(seed, int(c)) for c in counters]


def test_the_gallery_has_every_kernel_the_product_promises():
    assert {"saxpy", "dot", "norm", "triad", "jacobi2d", "heat3d", "mandelbrot", "nbody",
            "histogram", "spmv_csr", "montecarlo_pi", "black_scholes", "softmax",
            "matmul"} <= set(GALLERY)
    assert len(GALLERY) >= 12


def _report(times: dict[tuple[str, str], dict[str, float]], streaming=()) -> dict:
    rows = [{"kernel": k, "size": s, "elements": 1000, "bytes": 24000, "decision": "cpu",
             "seconds": t, "streaming": k in streaming, "checked": True}
            for (k, s), t in times.items()]
    return {"suite": "veda-bench", "version": 1, "machine": {"veda": "x"}, "rows": rows,
            "ceiling_gbps": suite._ceiling(rows)}


def test_speed_against_the_best_peer_and_the_ceiling():
    report = _report({
        ("triad", "large"): {"veda": 2e-6, "numpy": 4e-6, "numba": 1e-6},
        ("dot", "large"): {"veda": 3e-6, "numpy": 6e-6},
    }, streaming=("triad", "dot"))
    triad, dot = report["rows"]
    assert suite.best_peer(triad) == "numba"
    assert suite.speed_vs_best_peer(triad) == pytest.approx(0.5)
    assert suite.speed_vs_best_peer(dot) == pytest.approx(2.0)
    # The ceiling is the best triad of any implementation: 24000 bytes in 1 us.
    assert report["ceiling_gbps"] == pytest.approx(24.0)
    text = suite.table(report)
    assert "numba" in text and "0.50x" in text and "2.00x" in text
    assert "50%" in text  # veda's triad reaches half the ceiling


def test_compare_flags_changes_beyond_the_threshold():
    a = _report({("saxpy", "large"): {"veda": 1.0}, ("dot", "large"): {"veda": 1.0},
                 ("gone", "small"): {"veda": 1.0}})
    b = _report({("saxpy", "large"): {"veda": 2.0}, ("dot", "large"): {"veda": 0.98},
                 ("new", "small"): {"veda": 1.0}})
    text = suite.compare(a, b)
    saxpy = next(line for line in text.splitlines() if line.startswith("saxpy"))
    dot = next(line for line in text.splitlines() if line.startswith("dot"))
    assert "2.000" in saxpy and "slower" in saxpy
    assert "0.980" in dot and "slower" not in dot and "faster" not in dot
    assert "only in A" in text and "only in B" in text
    assert f"geometric mean B / A: {np.sqrt(2 * 0.98):.3f}" in text


def test_run_refuses_unknown_names():
    with pytest.raises(veda.UnknownKernelError, match="nope"):
        suite.run(["nope"])
    with pytest.raises(ValueError, match="cupyx"):
        suite.run(["saxpy"], peers=("cupyx",))


def test_serial_and_parallel_peers_are_cached_apart():
    # Numba's disk cache ignores compiler flags: one function compiled both ways would load
    # the other's code, and the "prange" peer would silently run serially.
    from veda_kernels import peers

    serial, parallel = peers._compiled("saxpy", False), peers._compiled("saxpy", True)
    assert serial.py_func.__qualname__ != parallel.py_func.__qualname__
    assert parallel.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
