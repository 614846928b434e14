"""Deterministic mode: reductions give the same bits on every target, schedule, chunk and run."""

from __future__ import annotations

import numpy as np
import pytest

import veda

SCHEDULES = ("static", "interleaved", "dynamic", "guided")


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


@veda.kernel(reduce="sum")
def dot(i, x, y):
    return x[i] * y[i]


@veda.kernel(reduce="sum")
def in_circle(i, seed):
    x = veda.random.uniform(seed, 2 * i)
    y = veda.random.uniform(seed, 2 * i + 1)
    return 1 if x * x + y * y < 1.0 else 0


@veda.kernel(reduce="sum")
def mc_pi(i, seed):
    x = veda.random.uniform(seed, 2 * i)
    y = veda.random.uniform(seed, 2 * i + 1)
    return 4.0 if x * x + y * y < 1.0 else 0.0


def _all_settings():
    yield {"target": "cpu"}
    for threads in sorted({1, veda.max_threads()}):
        for schedule in SCHEDULES:
            for chunk in (1, 777, 4096, 250_000):
                yield {
                    "target": "parallel",
                    "threads": threads,
                    "schedule": schedule,
                    "chunk": chunk,
                }


CASES = {
    "float32 sum": (total, lambda rng, n: (rng.random(n).astype(np.float32),)),
    "float64 sum": (total, lambda rng, n: (rng.standard_normal(n),)),
    "dot": (dot, lambda rng, n: (rng.standard_normal(n), rng.standard_normal(n))),
    "monte carlo": (mc_pi, lambda rng, n: (20261127,)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bits_everywhere_and_every_time(case):
    kernel, make = CASES[case]
    n = 1_000_003
    args = make(np.random.default_rng(5), n)
    with veda.deterministic(seed=11):
        results = {veda.launch(kernel, n, *args, **s).tobytes() for s in _all_settings()}
        repeats = {veda.launch(kernel, n, *args).tobytes() for _ in range(20)}
    assert len(results) == 1, f"{len(results)} different results"
    assert repeats == results


def test_deterministic_results_are_accurate():
    x = np.random.default_rng(1).standard_normal(300_001)
    with veda.deterministic():
        assert veda.launch(total, x.size, x) == pytest.approx(np.sum(x), rel=1e-12, abs=1e-9)
        hits = veda.launch(in_circle, 200_000, 3)
    assert hits.dtype == np.int64 and abs(4 * hits / 200_000 - np.pi) < 0.02


def test_outside_the_mode_bits_may_differ():
    """Documents the difference: without the mode, partials follow the schedule."""
    x = np.random.default_rng(2).random(1_000_003).astype(np.float32)
    results = {
        veda.launch(total, x.size, x, threads=t, schedule=s, chunk=777).tobytes()
        for t in sorted({1, veda.max_threads()})
        for s in SCHEDULES
    }
    # May or may not differ here; every result is still a correct sum.
    for r in results:
        assert np.frombuffer(r, np.float32)[0] == pytest.approx(np.sum(x), rel=1e-4)


def test_empty_domain_and_exceptions_in_the_mode():
    with veda.deterministic():
        assert veda.launch(total, 0, np.zeros(0), target="parallel") == 0.0

        @veda.kernel(reduce="sum")
        def fails(i, x):
            if i == 5000:
                raise ValueError("at 5000")
            return x[i]

        for target in ("cpu", "parallel"):
            with pytest.raises(veda.KernelError, match="at 5000"):
                veda.launch(fails, 10_000, np.ones(10_000), target=target)


def test_deterministic_scope_and_config():
    with veda.deterministic(seed=3) as cfg:
        assert cfg.deterministic and cfg.seed == 3
    assert not veda.get_config().deterministic
    with pytest.raises(veda.ConfigError, match="seed"):
        veda.deterministic(seed=-1)
