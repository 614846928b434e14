"""veda.random: Philox4x32-10 known answers, statistics, and the same draws on every target."""

from __future__ import annotations

import math

import numpy as np
import pytest

import veda
from veda.random import philox4x32_10

# Known-answer vectors published with Random123 (kat_vectors): counter[4], key[2] -> output[4].
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(int(w) for w in philox4x32_10(*ctr, *key)) == expected


def test_documented_mapping_of_seed_and_counter():
    seed, counter = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    x0, x1, x2, x3 = (
        int(w)
        for w in philox4x32_10(
            counter & 0xFFFFFFFF, counter >> 32, 0, 0, seed & 0xFFFFFFFF, seed >> 32
        )
    )
    assert veda.random.uniform(seed, counter) == ((x0 >> 5) * 2**26 + (x1 >> 6)) / 2**53
    assert veda.random.uniform2(seed, counter) == (
        ((x0 >> 5) * 2**26 + (x1 >> 6)) / 2**53,
        ((x2 >> 5) * 2**26 + (x3 >> 6)) / 2**53,
    )


@veda.kernel
def draws(i, seed, u, z, k, pair):
    u[i] = veda.random.uniform(seed, i)
    z[i] = veda.random.normal(seed, i)
    k[i] = veda.random.integers(seed, i, -3, 7)
    pair[i, 0], pair[i, 1] = veda.random.uniform2(seed, i)


def _draw(n, seed, **settings):
    u, z, k, pair = np.empty(n), np.empty(n), np.empty(n, np.int64), np.empty((n, 2))
    veda.launch(draws, n, seed, u, z, k, pair, **settings)
    return u, z, k, pair


def test_identical_draws_on_every_target(settings):
    u, z, k, pair = _draw(3000, 12345, **settings)
    assert u[17] == veda.random.uniform(12345, 17)
    assert z[17] == veda.random.normal(12345, 17)
    assert k[17] == veda.random.integers(12345, 17, -3, 7)
    assert tuple(pair[17]) == veda.random.uniform2(12345, 17)
    np.testing.assert_array_equal(pair[:, 0], u)
    ref = _draw(3000, 12345, target="cpu")
    for a, b in zip((u, z, k, pair), ref):
        np.testing.assert_array_equal(a, b)


def test_statistics_of_a_million_draws():
    n = 1_000_000
    u, z, k, pair = _draw(n, 2026, target="parallel")
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 0.002
    counts = np.bincount((u * 100).astype(int), minlength=100)
    chi2 = ((counts - n / 100) ** 2 / (n / 100)).sum()
    assert chi2 < 160  # 99 degrees of freedom: p < 1e-4 beyond this
    assert abs(z.mean()) < 5 / math.sqrt(n) and abs(z.var() - 1) < 0.01
    assert k.min() == -3 and k.max() == 6
    kc = np.bincount(k + 3, minlength=10)
    assert ((kc - n / 10) ** 2 / (n / 10)).sum() < 40  # 9 degrees of freedom
    second = pair[:, 1]  # uniform2's other half: uniform, and uncorrelated with the first
    assert abs(second.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(np.corrcoef(u, second)[0, 1]) < 5 / math.sqrt(n)


def test_different_seeds_differ_and_same_seed_repeats():
    a = _draw(1000, 1, target="cpu")[0]
    b = _draw(1000, 2, target="cpu")[0]
    c = _draw(1000, 1, target="parallel")[0]
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_integers_range_is_checked():
    with pytest.raises(ValueError, match="greater than low"):
        veda.random.integers(1, 2, 5, 5)


def test_kernels_inline_the_generator():
    # A call of the generator per index kept LLVM from vectorising a loop of draws: "cpu" ran
    # 9x slower than a launcher that had it inlined (bench/bench_cached_code.py, 2026-12-02).
    import linecache
    import re
    import uuid

    tag = uuid.uuid4().hex[:10]
    cell = (
        "import veda\n\n@veda.kernel(reduce='sum')\n"
        f"def hits_{tag}(i, seed):\n"
        "    x, y = veda.random.uniform2(seed, i)\n"
        "    return 1 if x * x + y * y < 1.0 else 0\n"
    )
    filename = f"<test-random-{tag}>"
    linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(cell, filename, "exec"), namespace)
    k = namespace[f"hits_{tag}"]
    assert 0 < veda.launch(k, 1000, 3, target="cpu") < 1000
    cfg = veda.get_config()
    module = k.program(1, 1, (cfg.boundscheck, cfg.cache))
    (ir,) = module._veda_cpu.inspect_llvm().values()  # compiled here: it can be inspected
    calls = re.findall(r"call [^@\n]*@\"?([^\"(\s]+)", ir)
    assert calls and not [c for c in calls if "philox" in c or "random" in c], calls
