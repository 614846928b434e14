"""The benchmark suite's peers compute what the gallery computes; its report arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

import veda
from veda_kernels import GALLERY, suite
from veda_kernels.finance import black_scholes_numpy, black_scholes_reference
from veda_kernels.montecarlo import philox_uniform2
from veda_kernels.peers import numpy_agrees, peers_for


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_peers_agree_with_the_reference(name):
    case = GALLERY[name]
    domain, args = case.make(case.small, np.random.default_rng(3))
    expected = case.expected(domain, args)
    for kind, peer in peers_for(name).items():
        case.poison(args)
        value = peer(domain, args)
        if kind == "numpy":
            ok = numpy_agrees(case, args, value, expected)
            if ok is None:  # montecarlo_pi: NumPy's own generator, other points
                p = np.pi / 4
                assert abs(value - domain * p) < 5 * np.sqrt(domain * p * (1 - p))
                continue
            assert ok, f"{name} via numpy"
        else:
            assert case.agrees(case.result(args, value), expected), f"{name} via {kind}"


def test_poisoned_outputs_expose_a_run_that_writes_nothing():
    case = GALLERY["saxpy"]
    domain, args = case.make(100, np.random.default_rng(0))
    case.kernel[domain](*args)
    expected = case.expected(domain, args)
    assert case.agrees(case.result(args, None), expected)
    case.poison(args)  # a launch that did nothing now fails the comparison
    assert not case.agrees(case.result(args, None), expected)
    hist = GALLERY["histogram"]
    _, hargs = hist.make(100, np.random.default_rng(0))
    hist.poison(hargs)  # accumulators are poisoned, then zeroed for the next run
    assert not hargs[3].any()


def test_the_suite_flags_an_implementation_that_differs(monkeypatch, capsys):
    from veda_kernels import peers

    real = peers.peers_for

    def with_a_broken_peer(name, include=None):
        found = real(name, include)
        found["numba"] = lambda domain, args: None  # writes nothing
        return found

    monkeypatch.setattr(suite, "peers_for", with_a_broken_peer)
    report = suite.run(
        ["triad"], sizes=("small",), peers=("numpy", "numba"), repeats=3, budget=0.01
    )
    assert report["rows"][0]["checked"] is False
    assert "triad (small) via numba differs" in capsys.readouterr().err


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
    assert {
        "saxpy",
        "dot",
        "norm",
        "triad",
        "jacobi2d",
        "heat3d",
        "mandelbrot",
        "nbody",
        "histogram",
        "spmv_csr",
        "montecarlo_pi",
        "black_scholes",
        "softmax",
        "matmul",
    } <= set(GALLERY)
    assert len(GALLERY) >= 12


def _report(times: dict[tuple[str, str], dict[str, float]], streaming=(), nbytes=240_000_000):
    rows = [
        {
            "kernel": k,
            "size": s,
            "elements": 10**7,
            "bytes": nbytes,
            "decision": "cpu",
            "seconds": t,
            "streaming": k in streaming,
            "checked": True,
        }
        for (k, s), t in times.items()
    ]
    return {
        "suite": "veda-bench",
        "version": 1,
        "machine": {"veda": "x"},
        "rows": rows,
        "ceiling_gbps": suite._ceiling(rows),
    }


def test_speed_against_the_best_peer_and_the_ceiling():
    report = _report(
        {
            ("triad", "large"): {"veda": 2e-6, "numpy": 4e-6, "numba": 1e-6},
            ("dot", "large"): {"veda": 3e-6, "numpy": 6e-6},
        },
        streaming=("triad", "dot"),
    )
    triad, dot = report["rows"]
    assert suite.best_peer(triad) == "numba"
    assert suite.speed_vs_best_peer(triad) == pytest.approx(0.5)
    assert suite.speed_vs_best_peer(dot) == pytest.approx(2.0)
    # The ceiling is the best triad of any implementation: 240 MB in 1 us.
    assert report["ceiling_gbps"] == pytest.approx(240_000.0)
    text = suite.table(report)
    assert "numba" in text and "0.50x" in text and "2.00x" in text
    assert "50%" in text  # veda's triad reaches half the ceiling
    # A triad that fits in a cache measures the cache, not memory: no ceiling then.
    small = _report({("triad", "small"): {"veda": 1e-6, "numba": 1e-6}}, nbytes=24_000)
    assert small["ceiling_gbps"] is None and "of peak" in suite.table(small)


def test_the_chart_shows_every_row_when_asked():
    pytest.importorskip("matplotlib")
    report = _report(
        {
            ("saxpy", "1000"): {"veda": 1.0, "numpy": 2.0},
            ("dot", "4000"): {"veda": 1.0, "numpy": 3.0},
        }
    )
    fig = suite.plot(report, size=None)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["saxpy", "dot"]
    fig = suite.plot(report, size="1000")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["saxpy"]


def test_compare_flags_changes_beyond_the_threshold():
    a = _report(
        {
            ("saxpy", "large"): {"veda": 1.0},
            ("dot", "large"): {"veda": 1.0},
            ("gone", "small"): {"veda": 1.0},
        }
    )
    b = _report(
        {
            ("saxpy", "large"): {"veda": 2.0},
            ("dot", "large"): {"veda": 0.98},
            ("new", "small"): {"veda": 1.0},
        }
    )
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


def test_numpy_is_timed_in_a_block_of_its_own_after_the_others(monkeypatch):
    monkeypatch.setattr(suite, "SPIN_PAUSE", 0.0)
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("veda", "numpy", "numba")}
    seconds = suite._interleaved(fns, lambda: None, repeats=4, budget=1.0)
    assert set(seconds) == set(fns)
    assert calls[-4:] == ["numpy"] * 4 and "numpy" not in calls[:-4]
    # The others alternate, their order rotated each round.
    assert calls[:8] == ["veda", "numba", "numba", "veda", "veda", "numba", "numba", "veda"]
