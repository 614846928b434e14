"""Array reductions, ``@veda.kernel(reduce={name: op})``: every worker updates a private copy of
the array, combined into it at the end of the launch."""

from __future__ import annotations

import numpy as np
import pytest

import veda

N = 20_011  # a prime: no schedule divides it evenly

LAUNCHES = [
    {"target": "cpu"},
    {"target": "parallel", "threads": 1},
    {"target": "parallel", "threads": 2, "schedule": "static"},
    {"target": "parallel", "threads": 2, "schedule": "interleaved", "chunk": 97},
    {"target": "parallel", "threads": 2, "schedule": "dynamic", "chunk": 1},
    {"target": "parallel", "threads": 2, "schedule": "guided"},
    {},  # adaptive
]
IDS = ["cpu", "par-t1", "static", "interleaved", "dynamic-1", "guided", "adaptive"]


@veda.kernel(reduce={"counts": "sum"})
def histogram(i, values, counts):
    counts[values[i] % counts.size] += 1


@veda.kernel(reduce={"acc": "sum"})
def weighted_2d(i, values, weights, acc):
    acc[values[i] % 7, values[i] % 3] += weights[i]


@veda.kernel(reduce={"lo": "min", "hi": "max"})
def extremes(i, values, weights, lo, hi, seen):
    b = values[i] % 5
    lo[b] = min(lo[b], weights[i])
    hi[b] = max(hi[b], weights[i])
    seen[i] = b  # an ordinary written argument beside the reduced ones


@veda.kernel(reduce={"p": "prod"})
def products(i, values, p):
    p[values[i] % 4] *= 1 + (values[i] % 2)


@veda.kernel(reduce={"acc": "sum"})
def grid_sum(i, j, u, acc):
    acc[(i + j) % 8] += u[i, j]


@veda.kernel(reduce={"acc": "sum"})
def box_sum(i, j, k, u, acc):
    acc[(i + 2 * j + 3 * k) % 5, k % 2] += u[i, j, k]


def _data(n=N):
    rng = np.random.default_rng(7)
    return rng.integers(0, 1000, n), rng.random(n)


@pytest.mark.parametrize("launch", LAUNCHES, ids=IDS)
def test_histograms_match_numpy_and_add_to_what_the_array_held(launch):
    values, weights = _data()
    counts = np.full(256, 5, np.int64)
    veda.launch(histogram, N, values, counts, **launch)
    np.testing.assert_array_equal(counts, np.bincount(values % 256, minlength=256) + 5)

    acc = np.ones((7, 3))
    veda.launch(weighted_2d, N, values, weights, acc, **launch)
    expected = np.ones((7, 3))
    np.add.at(expected, (values % 7, values % 3), weights)
    np.testing.assert_allclose(acc, expected, rtol=1e-12)


@pytest.mark.parametrize("launch", LAUNCHES, ids=IDS)
def test_min_max_and_prod_with_other_written_arrays(launch):
    values, weights = _data()
    lo, hi = np.full(5, np.inf), np.full(5, -np.inf)
    hi[0] = 2.0  # already above every weight: stays
    seen = np.full(N, -1)
    veda.launch(extremes, N, values, weights, lo, hi, seen, **launch)
    np.testing.assert_array_equal(seen, values % 5)
    for b in range(5):
        assert lo[b] == weights[values % 5 == b].min()
        assert hi[b] == (2.0 if b == 0 else weights[values % 5 == b].max())

    small = values[:40]  # products of 2s that fit in int64
    p = np.ones(4, np.int64)
    veda.launch(products, small.size, small, p, **launch)
    expected = np.ones(4, np.int64)
    np.multiply.at(expected, small % 4, 1 + small % 2)
    np.testing.assert_array_equal(p, expected)


@veda.kernel(reduce={"lo": "min"})
def nan_min(i, weights, lo):
    w = weights[i]
    if w < lo[i % 5] or w != w:  # a NaN, once stored, stays
        lo[i % 5] = w


@pytest.mark.parametrize("launch", LAUNCHES, ids=IDS)
def test_a_nan_in_a_copy_wins_as_in_np_minimum(launch):
    weights = np.linspace(0.0, 1.0, 1000)
    weights[517] = np.nan
    lo = np.full(5, np.inf)
    veda.launch(nan_min, 1000, weights, lo, **launch)
    assert np.isnan(lo[517 % 5])
    np.testing.assert_array_equal(np.delete(lo, 517 % 5), np.delete(weights[:5], 517 % 5))


@pytest.mark.parametrize("launch", LAUNCHES, ids=IDS)
def test_a_2d_domain(launch):
    u = np.random.default_rng(3).random((61, 47))
    acc = np.zeros(8)
    veda.launch(grid_sum, u.shape, u, acc, **launch)
    i, j = np.indices(u.shape)
    expected = np.zeros(8)
    np.add.at(expected, (i + j) % 8, u)
    np.testing.assert_allclose(acc, expected, rtol=1e-12)


def _box_expected(u):
    i, j, k = np.indices(u.shape)
    expected = np.zeros((5, 2))
    np.add.at(expected, ((i + 2 * j + 3 * k) % 5, k % 2), u)
    return expected


@pytest.mark.parametrize("launch", LAUNCHES, ids=IDS)
def test_a_3d_domain(launch):
    u = np.random.default_rng(4).random((13, 11, 9))
    acc = np.zeros((5, 2))
    veda.launch(box_sum, u.shape, u, acc, **launch)
    np.testing.assert_allclose(acc, _box_expected(u), rtol=1e-12)


def test_deterministic_2d_and_3d_domains_agree_everywhere():
    u2 = np.random.default_rng(3).random((61, 47))
    u3 = np.random.default_rng(4).random((13, 11, 9))
    seen2, seen3 = set(), set()
    with veda.deterministic(seed=0):
        for launch in LAUNCHES:
            acc2, acc3 = np.zeros(8), np.zeros((5, 2))
            veda.launch(grid_sum, u2.shape, u2, acc2, **launch)
            veda.launch(box_sum, u3.shape, u3, acc3, **launch)
            seen2.add(acc2.tobytes())
            seen3.add(acc3.tobytes())
    assert len(seen2) == 1 and len(seen3) == 1
    np.testing.assert_allclose(np.frombuffer(seen3.pop()).reshape(5, 2), _box_expected(u3))


def test_empty_domain_leaves_the_array_as_it_was():
    counts = np.arange(4)
    for launch in LAUNCHES:
        veda.launch(histogram, 0, np.zeros(0, np.int64), counts, **launch)
    np.testing.assert_array_equal(counts, np.arange(4))


def test_deterministic_mode_gives_the_same_bits_everywhere():
    values, weights = _data()
    seen = set()
    with veda.deterministic(seed=0):
        for launch in LAUNCHES:
            acc = np.zeros((7, 3))
            veda.launch(weighted_2d, N, values, weights, acc, **launch)
            seen.add(acc.tobytes())
    assert len(seen) == 1
    expected = np.zeros((7, 3))
    np.add.at(expected, (values % 7, values % 3), weights)
    np.testing.assert_allclose(np.frombuffer(seen.pop()).reshape(7, 3), expected, rtol=1e-12)


@veda.kernel(reduce={"acc": "sum"})
def spread(i, weights, acc):
    acc[(i * 7) % acc.size] += weights[i]


def test_deterministic_copies_of_a_large_array_are_fewer_and_still_agree():
    """64 copies of an 8 MiB array would take 512 MiB: the pieces are fewer (32 here), chosen
    from the array's size alone, so every target still cuts the domain alike."""
    from veda._kernel.codegen import PRIVATE_BYTES, PRIVATE_PIECES

    acc = np.zeros(2**20)
    assert PRIVATE_PIECES * acc.nbytes > PRIVATE_BYTES
    weights = np.random.default_rng(1).random(3 * acc.size + 5)
    seen = set()
    with veda.deterministic(seed=0):
        for launch in LAUNCHES[:3] + LAUNCHES[5:6]:
            acc[:] = 0.0
            veda.launch(spread, weights.size, weights, acc, **launch)
            seen.add(acc.tobytes())
    assert len(seen) == 1
    expected = np.zeros(acc.size)
    np.add.at(expected, (np.arange(weights.size) * 7) % acc.size, weights)
    np.testing.assert_allclose(acc, expected, rtol=1e-12)


def test_an_exception_in_the_body_names_its_index_on_every_target():
    @veda.kernel(reduce={"counts": "sum"})
    def fails_at(i, values, counts, bad):
        if i == bad:
            raise ValueError("bad value")
        counts[values[i] % 4] += 1

    values = np.arange(5000)
    for launch in LAUNCHES[:-1]:
        with pytest.raises(veda.KernelError, match="bad value") as info:
            veda.launch(fails_at, 5000, values, np.zeros(4, np.int64), 4321, **launch)
        assert info.value.index == (4321,), launch
    with veda.deterministic(seed=0):
        with pytest.raises(veda.KernelError, match="bad value") as info:
            veda.launch(fails_at, 5000, values, np.zeros(4, np.int64), 4321, target="parallel")
        assert info.value.index == (4321,)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reduce", "match"),
    [
        ({"nope": "sum"}, "'nope'.*not one of its parameters"),
        ({"counts": "mean"}, "unknown reduce=.*'mean'"),
        ({}, "names no array"),
        ({3: "sum"}, "not one of its parameters"),
    ],
)
def test_a_bad_reduce_dict_is_refused_at_definition(reduce, match):
    def body(i, values, counts):
        counts[values[i]] += 1

    with pytest.raises(veda.KernelDefinitionError, match=match):
        veda.kernel(reduce=reduce)(body)


def _assigns(i, idx, c):
    c[idx[i]] = i


def _only_reads(i, x, out):
    out[i] = x[i]


def _never_updates(i, x, out):
    out[i] = 1.0


def _subtracts(i, c):
    c[0] -= 1


def _adds_to_a_min(i, c):
    c[0] += 1


def _reads_its_sum(i, c):
    c[0] += c[1]


def _returns(i, c):
    c[0] += 1
    return 1.0


@pytest.mark.parametrize(
    ("body", "reduce", "match"),
    [
        (_assigns, {"c": "sum"}, "assigns c"),
        (_only_reads, {"x": "sum"}, "reads x"),
        (_never_updates, {"x": "max"}, "never updates x"),
        (_subtracts, {"c": "sum"}, r"augmented assignment; update it with \+="),
        (_adds_to_a_min, {"c": "min"}, "augmented assignment"),
        (_reads_its_sum, {"c": "sum"}, "reads c"),
        (_returns, {"c": "sum"}, "returns a value.*reduces arrays"),
    ],
)
def test_a_body_that_misuses_a_reduced_array_is_refused(body, reduce, match):
    with pytest.raises(veda.KernelDefinitionError, match=match):
        k = veda.kernel(reduce=reduce)(body)
        k[4](*([np.zeros(4)] * (len(k.params) - 1)))


def _adds_long_hand(i, c):
    c[i % 2] = c[i % 2] + 1.0


def _sets_a_max(i, c):
    if i > c[0]:
        c[0] = i


def _adds_atomically(i, c):
    veda.atomic_add(c, 0, 1.0)


@pytest.mark.parametrize(
    ("body", "reduce", "expected"),
    [
        (_adds_long_hand, {"c": "sum"}, [5.0, 5.0]),
        (_sets_a_max, {"c": "max"}, [9.0, 0.0]),
        (_adds_atomically, {"c": "sum"}, [10.0, 0.0]),
    ],
)
def test_updates_the_check_allows(body, reduce, expected):
    c = np.zeros(2)
    veda.launch(veda.kernel(reduce=reduce)(body), 10, c, target="parallel")
    assert c.tolist() == expected


def test_a_reduced_array_that_shares_memory_with_another_argument_is_refused():
    @veda.kernel(reduce={"counts": "sum"})
    def alias(i, idx, src, counts):
        counts[idx[i]] += src[idx[i]] + 1

    c = np.ones(4)
    with pytest.raises(veda.LaunchError, match="'counts'.*'src' shares its memory"):
        alias[10](np.arange(10) % 4, c, c)
    with pytest.raises(veda.LaunchError, match="'counts'.*'src' shares its memory"):
        alias[10](np.arange(10) % 4, c[1:], c[:2])
    alias[10](np.arange(10) % 4, c.copy(), c)  # a copy is fine
    np.testing.assert_array_equal(c, [7.0, 7.0, 5.0, 5.0])


@pytest.mark.parametrize(
    ("target", "det", "advice"),
    [
        ("cpu", True, "deterministic mode makes up to 64"),
        ("parallel", True, "deterministic mode makes up to 64"),
        ("parallel", False, "fewer threads"),
    ],
)
def test_no_memory_for_the_copies_is_a_clear_error(target, det, advice, tmp_path):
    """Under an address-space limit two copies of a 128 MiB array cannot be made (two pieces
    in deterministic mode, two workers outside it)."""
    script = tmp_path / "copies.py"
    launch = f"veda.launch(scat, 1000, w, acc, target={target!r}, **kw)"
    kw = "{}" if target == "cpu" else "{'threads': 2}"
    script.write_text(
        "import contextlib, resource, numpy as np, psutil, veda\n"
        "@veda.kernel(reduce={'acc': 'sum'})\n"
        "def scat(i, w, acc):\n    acc[i % acc.size] += w[i]\n"
        f"w = np.ones(1000)\nkw = {kw}\n"
        f"mode = veda.deterministic(0) if {det} else contextlib.nullcontext()\n"
        "with mode:\n"
        f"    veda.launch(scat, 10, w, np.zeros(4), target={target!r}, **kw)\n"
        "acc = np.zeros(2**24)\n"
        "limit = psutil.Process().memory_info().vms + 200 * 2**20\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))\n"
        "with mode:\n"
        "    try:\n"
        f"        {launch}\n"
        "    except veda.LaunchError as exc:\n"
        "        print(exc)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ran out of memory; its private copies of 'acc' take 2 copies of 134,217,728" in (
        out.stdout
    )
    assert advice in out.stdout


def test_an_index_parameter_cannot_be_reduced():
    @veda.kernel(reduce={"j": "sum"})
    def odd(i, j, out):
        j[i] += 1.0  # an array on a 1-d domain, an index on a 2-d one

    odd[2](np.zeros(2), np.zeros(2))
    with pytest.raises(veda.KernelDefinitionError, match="'j'.*index parameter"):
        odd[2, 2](np.zeros(2))


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        (3.0, "must be a NumPy array of numbers.*not float"),
        (np.zeros(4, bool), "must be a NumPy array of numbers.*bool"),
        (np.zeros((), np.int64), "at least one axis.*0-d"),
    ],
)
def test_a_reduced_argument_must_be_an_array_of_numbers(counts, match):
    with pytest.raises(veda.LaunchError, match=match):
        histogram[4](np.arange(4), counts)


def test_min_max_refuse_complex_and_a_read_only_array_is_refused():
    with pytest.raises(veda.LaunchError, match="integers or floats.*complex128"):
        extremes[4](np.arange(4), np.ones(4), np.zeros(5, complex), np.zeros(5), np.empty(4, int))
    counts = np.zeros(4, np.int64)
    counts.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="read-only"):
        histogram[4](np.arange(4), counts)


def test_the_cuda_target_refuses_array_reductions():
    from veda.targets.cuda import CUDATarget

    form = histogram.form(1, 2)
    with pytest.raises(veda.LaunchError, match="'counts'.*'cuda' target does not"):
        CUDATarget().prepare(form, (4,), None, None)


def test_repr_shows_the_reduced_arrays():
    assert "reduce={'counts': 'sum'}" in repr(histogram)


def test_the_dispatcher_and_the_rule_skip_targets_that_do_not_reduce_arrays():
    """A dispatchable plug-in target (like "cuda" on a GPU machine) that does not declare
    ``reduces_arrays`` is never tried for such a kernel, adaptive or under the fixed rule."""
    from veda.scheduler._rules import rule_target
    from veda.targets import Decision, Target

    class Refusing(Target):
        name = "refusing"
        launches = 0

        def candidates(self, size, free_cores):
            return [Decision("refusing")]

        def rule_min_size(self):
            return 1  # the fixed rule's choice from 1 element on, were it allowed

        def prepare(self, form, dims, decision, options, profiler=None, shared=False):
            Refusing.launches += 1
            raise AssertionError("a kernel with reduce={...} was given to 'refusing'")

    veda.targets.register(Refusing())
    try:

        @veda.kernel(reduce={"counts": "sum"})
        def counted(i, values, counts):
            counts[values[i] % 4] += 1

        values = np.arange(5000)
        for policy in ("adaptive", "fixed"):
            with veda.config(policy=policy):
                for _ in range(40):
                    counts = np.zeros(4, np.int64)
                    counted[5000](values, counts)
                    assert counts.tolist() == [1250] * 4
        assert Refusing.launches == 0
        assert rule_target(10, arrays=True) in ("cpu", "parallel")
        assert rule_target(10) == "refusing"  # the test target is live
    finally:
        veda.targets.unregister("refusing")


def test_a_specialised_call_site_still_refuses_bad_reduced_arrays():
    """Once a call site runs a specialised launcher, the reduced array's checks still apply."""

    @veda.kernel(reduce={"counts": "sum"})
    def alias(i, idx, src, counts):
        counts[idx[i]] += src[idx[i]] + 1

    idx = np.arange(10) % 4
    for _ in range(60):  # decided, then specialised
        alias[10](idx, np.ones(4), np.zeros(4))
    c = np.ones(4)
    with pytest.raises(veda.LaunchError, match="shares its memory"):
        alias[10](idx, c, c)
    with pytest.raises(veda.LaunchError, match="array of numbers"):
        alias[10](idx, np.ones(4), np.zeros(4, bool))
