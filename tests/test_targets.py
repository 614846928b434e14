"""The target registry is authoritative: a third-party target registered by name works wherever
a built-in one does (explicit launches, configuration scopes, the dispatcher's candidates), and
the registry's contract refuses what it cannot take."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import veda
from veda.targets import Decision, Target
from veda_kernels import GALLERY


class Counting(Target):
    """A "cpu" clone that counts its launches per kernel: the serial loop of the kernel's own
    generated module, prepared from the kernel's form."""

    name = "counting"

    def __init__(self) -> None:
        self.launches: collections.Counter[str] = collections.Counter()

    def candidates(self, size: int, free_cores: int) -> list[Decision]:
        return [Decision("counting")]

    def prepare(self, form, dims, decision, options, profiler=None, shared=False):
        module = form.program(options.compile)
        reduce = form.reduce is not None
        loop = module._veda_det_cpu if reduce and options.deterministic else module._veda_cpu

        def run(args):
            self.launches[form.name] += 1
            out = loop(*dims, *args)
            return out[0] if reduce else None

        return run


@pytest.fixture
def counting():
    target = veda.targets.register(Counting())
    yield target
    veda.targets.unregister("counting")
    assert "counting" not in veda.targets.names()


def _prepared(case):
    domain, args = case.make(case.small, np.random.default_rng(3))
    case.poison(args)  # a launch that skips part of its output cannot pass
    return domain, args


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_the_gallery_runs_on_a_registered_target_by_name(counting, name):
    case = GALLERY[name]
    domain, args = _prepared(case)
    case.check(domain, args, veda.launch(case.kernel, domain, *args, target="counting"))
    assert counting.launches[case.kernel.name] == 1
    domain, args = _prepared(case)
    with veda.config(target="counting"):
        value = case.kernel[domain](*args)
    case.check(domain, args, value)
    assert counting.launches[case.kernel.name] == 2
    configs = veda.metrics().kernel(case.kernel).configs
    assert any(c.target == "counting" for c in configs)  # telemetry names the target


@pytest.fixture
def prefer_counting():
    """A policy that ranks the counting target first: the dispatcher must then choose it."""
    policy = veda.scheduler.register_policy(
        veda.scheduler.Policy(
            "prefer-counting", lambda m: 0.0 if m.decision.target == "counting" else 1.0
        )
    )
    yield policy
    veda.scheduler.unregister_policy(policy.name)


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_the_dispatcher_takes_a_registered_target_as_a_candidate(counting, prefer_counting, name):
    case = GALLERY[name]
    with veda.config(policy="prefer-counting"):
        for _ in range(80):  # every launch right, while exploring and after
            domain, args = _prepared(case)
            case.check(domain, args, case.kernel[domain](*args))
            (row,) = [r for r in veda.explain(case.kernel).rows if r["policy"] == "prefer-counting"]
            if row["decision"] is not None:
                break
    assert row["decision"] == Decision("counting") and row["source"] == "explored"
    assert {t["decision"].target for t in row["trials"]} >= {"cpu", "counting"}
    assert counting.launches[case.kernel.name] >= 1
    assert "counting" in str(veda.explain(case.kernel))


def test_unregistering_a_target_forgets_it_everywhere(counting):
    @veda.kernel
    def ones(i, x):
        x[i] = 1.0

    x = np.zeros(8)
    veda.launch(ones, 8, x, target="counting")
    veda.targets.unregister("counting")
    with pytest.raises(veda.LaunchError, match="unknown target='counting'.*cpu, parallel"):
        veda.launch(ones, 8, x, target="counting")
    with pytest.raises(veda.ConfigError, match="counting"):
        veda.config(target="counting")
    veda.targets.register(counting)  # back, for the fixture's own clean-up


def test_a_target_that_takes_no_settings_refuses_them(counting):
    with pytest.raises(veda.ConfigError, match="target='counting'.*threads= does not apply"):
        veda.config(target="counting", threads=1)

    @veda.kernel
    def ones(i, x):
        x[i] = 1.0

    with pytest.raises(veda.LaunchError, match="chunk= does not apply"):
        veda.launch(ones, 8, np.zeros(8), target="counting", chunk=4)


def test_a_parallel_third_party_target_takes_the_parallel_settings():
    class Mine(veda.targets.ParallelTarget):
        name = "mine"

        def candidates(self, size, free_cores):
            return []  # explicit launches only

    veda.targets.register(Mine())
    try:

        @veda.kernel
        def twice(i, x):
            x[i] = 2.0 * i

        x = np.zeros(5000)
        veda.launch(twice, x.size, x, target="mine", threads=1, schedule="dynamic", chunk=64)
        np.testing.assert_array_equal(x, 2.0 * np.arange(5000))
        assert veda.metrics().kernel(twice).configs[0].target == "mine"
    finally:
        veda.targets.unregister("mine")


@pytest.mark.parametrize(
    "bad, word",
    [
        ("cpu", "Target"),
        (type("Nameless", (Counting,), {"name": ""})(), "name"),
        (type("Numbered", (Counting,), {"name": 123})(), "name must be a non-empty string"),
        (type("Odd", (Counting,), {"name": "odd", "settings": ("speed",)})(), "speed"),
        (type("Odd", (Counting,), {"name": "odd", "settings": "threads"})(), "tuple of names"),
        (type("Odd", (Counting,), {"name": "odd", "parallel": True})(), "takes threads="),
    ],
)
def test_register_refuses_what_is_not_a_target(bad, word):
    with pytest.raises(veda.ConfigError, match=word):
        veda.targets.register(bad)
    assert "odd" not in veda.targets.names()


class Broken(Counting):
    """A plug-in with a bug in one hook at a time."""

    name = "broken"
    bug = "candidates"

    def candidates(self, size, free_cores):
        if self.bug == "candidates":
            raise RuntimeError("oops in candidates")
        if self.bug == "not decisions":
            return ["broken"]
        if self.bug == "other target":
            return [Decision("cpu")]
        return [Decision("parallel", 2, "dynamic", 0)]  # chunk 0: it would compute nothing

    def prepare(self, form, dims, decision, options, profiler=None, shared=False):
        if self.bug == "prepare raises":
            raise RuntimeError("oops in prepare")
        return (
            None
            if self.bug == "prepare returns None"
            else super().prepare(form, dims, decision, options, profiler, shared)
        )


@pytest.mark.parametrize("bug", ["candidates", "not decisions", "other target", "bad settings"])
def test_a_plug_in_with_bad_candidates_is_left_out_with_a_warning(bug):
    """One plug-in's bug must not break every adaptive launch of every kernel: the dispatcher
    leaves that target out and says so once, naming it."""
    from veda.scheduler import _dispatch

    target = Broken()
    target.bug = bug
    veda.targets.register(target)
    try:

        @veda.kernel(reduce="sum")
        def total(i, x):
            return x[i]

        x = np.ones(400_000)
        _dispatch._warned.clear()
        with pytest.warns(RuntimeWarning, match="target 'broken'.*candidates cannot be used"):
            for _ in range(40):
                assert total[x.size](x) == x.size
        trials = {t["decision"].target for r in veda.explain(total).rows for t in r["trials"]}
        assert "broken" not in trials
    finally:
        veda.targets.unregister("broken")


@pytest.mark.parametrize(
    "bug, word",
    [
        ("prepare raises", "could not prepare.*oops"),
        ("prepare returns None", "returned None, not a callable"),
    ],
)
def test_a_target_that_cannot_prepare_says_so_by_name(bug, word):
    target = Broken()
    target.bug = bug
    veda.targets.register(target)
    try:

        @veda.kernel
        def ones(i, x):
            x[i] = 1.0

        with pytest.raises(veda.LaunchError, match=f"target 'broken'.*{word}"):
            veda.launch(ones, 8, np.zeros(8), target="broken")
    finally:
        veda.targets.unregister("broken")


def test_the_registry_orders_candidates_and_describes_decisions():
    assert veda.targets.names()[:3] == ["cpu", "parallel", "cuda"]
    label = veda.scheduler.Explanation.label
    assert label(Decision("cpu")) == "cpu"
    assert label(Decision("parallel", 2, "static", 1)) == "parallel 2t static"
    assert label(Decision("cuda", 1, "grid", 0, 256)) == "cuda block 256"
    assert label(None) == "(exploring)"
