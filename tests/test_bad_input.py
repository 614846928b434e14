"""Bad input, refused by name, and the corner cases of good input that used to fail (issue 18).

The first half pins the fixes one by one; the second is a matrix over every public entry point:
each bad value raises its specific veda error, and the message names the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

import veda


@veda.kernel(reduce="sum")
def count2(i, j):
    return 1


@veda.kernel
def mark(i, j, out):
    if i == 0 and j == 0:
        out[0] = 1.0


@veda.kernel
def fill(i, out, v):
    out[i] = v


# --- domains and integers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, word",
    [
        ((2**33, 2**33), r"\(8589934592, 8589934592\) has 73786976294838206464 elements"),
        ((2**32, 2**32), "fewer than 2\\*\\*63"),
        ((2**21, 2**21, 2**21), "fewer than 2\\*\\*63"),
        ((2**64, 1), "axis 0 is 18446744073709551616"),
        ((1, 2**63), "axis 1 is 9223372036854775808"),
    ],
)
def test_domains_beyond_int64_are_refused_before_anything_runs(domain, word):
    out = np.zeros(1)
    with pytest.raises(veda.LaunchError, match=word):
        mark[domain](out)
    with pytest.raises(veda.LaunchError, match="domain"):
        count2[domain]()
    assert out[0] == 0.0


def test_the_largest_domain_is_accepted_until_it_runs():
    # 2**62 elements fit: the domain is accepted (and refused only for the argument count)
    with pytest.raises(veda.LaunchError, match="takes 1 argument"):
        mark[(2**31, 2**31)]()


@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint64, np.int16])
def test_numpy_integers_work_wherever_ints_do(kind, tmp_path):
    out = np.zeros(6)
    veda.launch(fill, kind(6), out, 1.0, threads=kind(1), chunk=kind(2))
    assert out.sum() == 6.0
    veda.launch(fill, (kind(6),), out, 2.0, target="parallel", threads=kind(1))
    assert out.sum() == 12.0
    assert int(count2[kind(3), kind(4)]()) == 12
    assert int(veda.launch(count2, (kind(3), 4), schedule="dynamic", chunk=kind(5))) == 12
    with veda.config(threads=kind(1), chunk=kind(3)) as cfg:
        assert type(cfg.threads) is int and type(cfg.chunk) is int
        fill[6](out, 3.0)
    path = tmp_path / "run.json"
    with veda.deterministic(seed=kind(7)) as cfg:
        assert cfg.seed == 7 and type(cfg.seed) is int
        with veda.record(path):  # the seed is written to JSON: a plain int
            assert int(count2[3, 3]()) == 9
    with veda.replay(path):
        assert veda.get_config().seed == 7
        count2[3, 3]()
    assert type(veda.Config(threads=kind(1)).threads) is int


@pytest.mark.parametrize("bad", [True, np.bool_(True), 2.0, np.float64(2.0), "2"])
@pytest.mark.parametrize("setting", ["threads", "chunk"])
def test_bools_and_floats_are_not_integers(setting, bad):
    with pytest.raises(veda.LaunchError, match=setting):
        veda.launch(fill, 4, np.zeros(4), 1.0, **{setting: bad})
    with pytest.raises(veda.ConfigError, match=setting):
        veda.config(**{setting: bad})


# --- kernels without arguments -------------------------------------------------------------


@veda.kernel(reduce="sum")
def index_sum(i):
    return i


@veda.kernel(reduce="max")
def index_max(i):
    return i


@veda.kernel
def no_arguments(i):
    pass


def test_a_reduction_without_arguments_on_every_target(settings):
    n = 5000
    expected = n * (n - 1) // 2
    assert int(veda.launch(index_sum, n, **settings)) == expected
    assert int(veda.launch(index_max, n, **settings)) == n - 1
    with veda.deterministic(seed=1):
        assert int(veda.launch(index_sum, n, **settings)) == expected
    veda.launch(no_arguments, n, **settings)


def test_a_reduction_without_arguments_adaptive_and_numpy_domains():
    n = 3000
    for _ in range(3):  # the dispatcher explores, then exploits
        assert int(index_sum[n]()) == n * (n - 1) // 2
    assert int(index_sum[np.int64(n)]()) == n * (n - 1) // 2
    assert no_arguments[np.int32(10)]() is None
