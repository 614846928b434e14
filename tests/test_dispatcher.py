"""The adaptive dispatcher: decision logic with injected measurements, persistence, integration."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import veda
from veda.scheduler import _dispatch
from veda.scheduler._tuner import (
    DRIFT,
    DRIFT_REVIEWS,
    REVIEW_EVERY,
    WARMUP_LAUNCHES,
    Tuner,
    score,
)
from veda.scheduler._wisdom import TuningCache
from veda.targets import Decision


@pytest.fixture(autouse=True)
def _idle_machine(monkeypatch):
    """Decisions in these tests must not depend on what else the machine runs meanwhile."""
    monkeypatch.setattr(_dispatch.dispatcher.load, "free_cores", lambda: veda.max_threads())


CPU = Decision("cpu")
STATIC = Decision("parallel", 2, "static", 1)
DYNAMIC = Decision("parallel", 2, "dynamic", 64)
GUIDED = Decision("parallel", 2, "guided", 8)
CANDIDATES = [CPU, STATIC, DYNAMIC, GUIDED]


def drive(tuner: Tuner, cost, limit: int = 1000) -> int:
    """Run the tuner against a cost function until it decides; returns the launches it took."""
    launches = 0
    while tuner.exploring:
        d = tuner.next()
        tuner.observe(d, cost(d, launches))
        launches += 1
        assert launches < limit, "the tuner never decided"
    return launches


# --- decision logic ---------------------------------------------------------------------------


@pytest.mark.parametrize("best", CANDIDATES)
def test_converges_to_what_the_measurements_favour(best):
    times = {CPU: 4.0, STATIC: 3.0, DYNAMIC: 2.5, GUIDED: 2.8}
    times[best] = 1.0
    tuner = Tuner(list(CANDIDATES))
    launches = drive(tuner, lambda d, k: times[d])
    assert tuner.choice == best
    assert tuner.baseline == 1.0
    assert launches <= tuner.launches_to_explore()


def test_noisy_measurements_still_pick_the_best():
    rng = np.random.default_rng(0)
    times = {CPU: 4.0, STATIC: 2.2, DYNAMIC: 1.0, GUIDED: 1.5}
    tuner = Tuner(list(CANDIDATES))
    drive(tuner, lambda d, k: times[d] * (1 + 0.1 * rng.standard_normal()))
    assert tuner.choice == DYNAMIC


def test_exploration_budget_is_bounded():
    tuner = Tuner([*CANDIDATES, Decision("parallel", 2, "interleaved", 16)])
    budget = tuner.launches_to_explore()
    n = len(tuner.candidates)
    # at most WARMUP_LAUNCHES warm-ups each, while a candidate keeps getting much faster
    assert budget <= (4 + WARMUP_LAUNCHES - 1) * n
    # steady times: one warm-up each, about 3n launches in all
    assert drive(tuner, lambda d, k: hash(d) % 7 + 1.0) <= 4 * n


def test_a_candidate_warms_up_while_it_keeps_getting_faster():
    """The first parallel launches of a process settle over several launches: the candidate
    that runs them is measured once they stop getting much faster, not at its second launch."""
    settle = [1000.0, 9.0, 3.0]  # STATIC's first launches (then 1.0: its real speed)
    times = {CPU: 4.0, STATIC: 1.0, DYNAMIC: 1.3, GUIDED: 1.6}
    seen = {d: 0 for d in CANDIDATES}

    def measure(d, k):
        seen[d] += 1
        if d == STATIC and seen[d] <= len(settle):
            return settle[seen[d] - 1]
        return times[d]

    tuner = Tuner([STATIC, CPU, DYNAMIC, GUIDED])
    launches = drive(tuner, measure)
    assert tuner.choice == STATIC, tuner.trials
    # 1000.0, 9.0, 3.0 were warm-ups, and so was the first 1.0 (judged against the 3.0 before it)
    assert tuner.trials[STATIC].samples[0] == 1.0
    assert launches <= tuner.launches_to_explore()
    # a candidate that never settles is measured after WARMUP_LAUNCHES launches all the same
    runs = {STATIC: 0}

    def falling_cost(d, k):
        if d != STATIC:
            return 1.0
        runs[STATIC] += 1
        return 10.0 ** -runs[STATIC]

    falling = Tuner([STATIC, CPU])
    drive(falling, falling_cost)
    assert falling.choice is not None
    # its first sample is the launch after WARMUP_LAUNCHES warm-ups
    assert falling.trials[STATIC].samples[0] == 10.0 ** -(WARMUP_LAUNCHES + 1)


def test_single_candidate_needs_no_exploration():
    tuner = Tuner([CPU])
    assert not tuner.exploring and tuner.choice == CPU and tuner.source == "only candidate"


def test_reexplores_on_persistent_drift_only():
    tuner = Tuner(list(CANDIDATES))
    drive(tuner, lambda d, k: 1.0 if d == STATIC else 2.0)
    assert tuner.choice == STATIC
    steady = [1.0 * (1 + DRIFT / 3)] * REVIEW_EVERY
    for _ in range(5):
        assert not tuner.review(steady)
    slow = [2.0] * REVIEW_EVERY
    assert not tuner.review(slow)  # one review is not enough
    assert tuner.review(slow)  # two in a row are
    assert tuner.exploring
    drive(tuner, lambda d, k: 1.0 if d == GUIDED else 3.0)  # the machine changed
    assert tuner.choice == GUIDED and tuner.explorations == 2


def test_pruned_candidates_never_run():
    tuner = Tuner(list(CANDIDATES))
    seen = []

    def cost(d, k):
        seen.append(d)
        return 1.0

    d = tuner.next()
    assert d == CPU
    tuner.observe(d, 1.0)
    for c in (STATIC, DYNAMIC, GUIDED):
        tuner.prune(c, "too small")
    drive(tuner, cost)
    assert tuner.choice == CPU and set(seen) <= {CPU}
    assert tuner.trials[STATIC].pruned == "too small"


@pytest.mark.parametrize(
    "policy, winner",
    [("adaptive", "spiky"), ("throughput", "steady"), ("latency", "steady")],
)
def test_policies_weigh_tails_differently(policy, winner):
    spiky = [1.0, 1.0, 1.0, 10.0]
    steady = [2.0, 2.0, 2.0, 2.0]
    assert (score(spiky, policy) < score(steady, policy)) == (winner == "spiky")


def test_policies_are_a_registry_the_configuration_and_the_tuner_share():
    """A user's policy is a plug-in: veda.config accepts its name and the tuner ranks by it."""
    # Rank by the slowest sample: the candidate with the best worst case wins.
    policy = veda.scheduler.register_policy(
        veda.scheduler.Policy(
            "worst-case", lambda m: max(m.samples) if m.samples else math.inf, "best worst case"
        )
    )
    try:
        assert "worst-case" in veda.scheduler.POLICIES
        with veda.config(policy="worst-case"):
            assert veda.get_config().policy == "worst-case"
        spiky, steady = [1.0, 1.0, 9.0], [2.0, 2.0, 2.0]
        assert score(steady, "worst-case") < score(spiky, "worst-case")
        assert score(spiky, "adaptive") < score(steady, "adaptive")
        tuner = Tuner([STATIC, DYNAMIC], policy=policy.name)
        costs = {STATIC: iter([1.0, 1.0, 1.0, 9.0] * 10), DYNAMIC: iter([2.0] * 40)}
        drive(tuner, lambda d, k: next(costs[d]))
        assert tuner.choice == DYNAMIC
    finally:
        veda.scheduler.unregister_policy("worst-case")
    with pytest.raises(veda.ConfigError, match="worst-case"):
        veda.config(policy="worst-case")
    with pytest.raises(veda.ConfigError, match="built-in"):
        veda.scheduler.unregister_policy("adaptive")
    for bad, word in (
        ("fastest", "Policy"),
        (veda.scheduler.Policy("x", 42), "score must be"),
        (veda.scheduler.Policy(123, None), "name must be"),
        (veda.scheduler.Policy("adaptive", None), "cannot be replaced"),
    ):
        with pytest.raises(veda.ConfigError, match=word):
            veda.scheduler.register_policy(bad)


@pytest.mark.parametrize(
    "score, warns",
    [
        (lambda m: 1 / 0, True),
        (lambda m: None, True),
        (lambda m: "fast", True),
        (lambda m: float("nan"), False),
    ],
)
def test_a_policy_whose_score_fails_still_decides(score, warns):
    """A score that raises or is not a number ranks the candidate last, with a warning naming
    the policy once; the tuner still decides (a policy's bug cannot stop exploring)."""
    from veda.scheduler import _tuner

    veda.scheduler.register_policy(veda.scheduler.Policy("faulty", score))
    _tuner._warned.discard("faulty")
    try:
        tuner = Tuner(list(CANDIDATES), policy="faulty")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            drive(tuner, lambda d, k: 1.0)
        assert tuner.choice in CANDIDATES
        named = [w for w in seen if "policy 'faulty'" in str(w.message)]
        assert len(named) == (1 if warns else 0)
    finally:
        veda.scheduler.unregister_policy("faulty")


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(veda.ConfigError, match="adaptive, fixed, latency, throughput"):
        veda.config(policy="fastest")


def test_candidates_never_include_a_parallel_region_that_leaves_a_thread_idle():
    assert _dispatch.candidates(3, 2) == [CPU]  # fewer than two indices per thread
    assert _dispatch.candidates(10**6, 1) == [CPU]  # one free core: parallel cannot help
    many = _dispatch.candidates(10**6, 2)
    if veda.max_threads() >= 2:
        assert CPU in many and any(c.target == "parallel" for c in many)


# --- the tuning cache ---------------------------------------------------------------------------


def test_tuning_cache_round_trip(tmp_path):
    cache = TuningCache(str(tmp_path))
    cache.put("k@abc|1d|2^10|adaptive", {"decision": list(DYNAMIC), "seconds_per_element": 1e-9})
    again = TuningCache(str(tmp_path))
    assert again.get("k@abc|1d|2^10|adaptive")["decision"] == list(DYNAMIC)
    assert again.get("missing") is None


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 99, "entries": {}}'])
def test_corrupt_or_foreign_cache_is_ignored_and_rebuilt(tmp_path, content):
    cache = TuningCache(str(tmp_path))
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring the tuning cache"):
        assert cache.get("anything") is None
    cache.put("k", {"decision": list(CPU), "seconds_per_element": 1.0})
    assert json.loads(cache.path.read_text())["entries"]["k"]["decision"] == list(CPU)


def test_cache_of_another_machine_is_ignored(tmp_path):
    cache = TuningCache(str(tmp_path))
    cache.put("k", {"decision": list(CPU), "seconds_per_element": 1.0})
    doc = json.loads(cache.path.read_text())
    doc["fingerprint"]["cpu"] = "some other processor"
    cache.path.write_text(json.dumps(doc))
    with pytest.warns(RuntimeWarning, match="another machine"):
        assert TuningCache(str(tmp_path)).get("k") is None


DEFERRED = textwrap.dedent(
    """
    import sys, threading, time
    from veda._kernel import background
    from veda.scheduler._wisdom import TuningCache
    cache = TuningCache(sys.argv[1])
    cache.get("anything")  # read once, as the dispatcher does before it decides
    gate = threading.Event()
    background.submit("a compile", gate.wait)  # the compile thread is busy
    for i in range(3):
        cache.put(f"k{i}", {"decision": ["cpu", 1, "static", 1], "seconds_per_element": 1.0})
    print(cache.get("k2") is not None, cache.path.exists())
    if sys.argv[2] == "wait":
        gate.set()
        background.wait(60)
        print(sorted(TuningCache(sys.argv[1]).entries()))
    else:
        # The program ends while the compile runs, with another compile queued: exit drops
        # that one and runs the write.
        marker = sys.argv[1] + "/dropped-job-ran"
        background.submit("queued compile", lambda: open(marker, "w").close())
        def later():
            time.sleep(1.0)
            gate.set()
        threading.Thread(target=later, daemon=True).start()
    """
)


@pytest.mark.parametrize("end", ["wait", "exit"])
def test_a_decision_put_during_a_background_compile_is_written_after_it(tmp_path, end):
    """While the compile thread works, a put keeps the entry at once and leaves the write to
    that thread (each system call of a write from the launching thread waited for the
    compile's GIL): written once the compile ends, and at exit at the latest."""
    out = subprocess.run(
        [sys.executable, "-c", DEFERRED, str(tmp_path), end],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "True False"  # kept, not written yet
    if end == "wait":
        assert lines[1] == "['k0', 'k1', 'k2']"
    else:
        assert not (tmp_path / "dropped-job-ran").exists()
    assert sorted(TuningCache(str(tmp_path)).entries()) == ["k0", "k1", "k2"]


WRITER = textwrap.dedent(
    """
    import sys
    from veda.scheduler._wisdom import TuningCache
    cache = TuningCache(sys.argv[1])
    for i in range(40):
        cache.put(f"{sys.argv[2]}-{i}", {"decision": ["cpu", 1, "static", 1],
                                         "seconds_per_element": float(i)})
    """
)


def test_two_processes_writing_at_once_keep_every_entry(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name]) for name in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    entries = TuningCache(str(tmp_path)).entries()
    assert len(entries) == 80
    assert entries["a-39"]["seconds_per_element"] == 39.0


# --- in a running program ---------------------------------------------------------------------


@veda.kernel
def bins(i, values, counts):
    veda.atomic_add(counts, values[i] % 8, 1)


def test_exploration_never_changes_an_integer_result():
    values = np.arange(200_000)
    expected = np.bincount(values % 8, minlength=8)
    for _ in range(30):
        counts = np.zeros(8, np.int64)
        bins[values.size](values, counts)
        np.testing.assert_array_equal(counts, expected)
    (row,) = [r for r in veda.explain(bins).rows if r["size_class"] == "<= 2^18"]
    assert row["decision"] is not None


@veda.kernel
def tiny(i, x):
    x[i] += 1.0


def test_small_launches_never_enter_a_parallel_region():
    veda.telemetry.reset()
    x = np.zeros(100)
    for _ in range(50):
        tiny[100](x)
    configs = veda.metrics().kernel(f"{__name__}.tiny").configs
    assert {c.target for c in configs} == {"cpu"}
    assert "too short to pay" in str(veda.explain(tiny))  # ruled out by the serial launch


def test_fixed_policy_and_explicit_settings_do_not_explore():
    x = np.zeros(70_000)

    @veda.kernel
    def scaled(i, x):
        x[i] = 2.0 * i

    with veda.config(policy="fixed"):
        for _ in range(5):
            scaled[x.size](x)
    for _ in range(5):
        veda.launch(scaled, x.size, x, threads=veda.max_threads())
    assert veda.explain(scaled).rows == []


def test_telemetry_off_learns_nothing():
    x = np.zeros(70_000)

    @veda.kernel
    def quiet(i, x):
        x[i] = 1.0

    with veda.config(telemetry=False):
        for _ in range(5):
            quiet[x.size](x)
    rows = veda.explain(quiet).rows
    assert all(all(not t["samples"] for t in r["trials"]) for r in rows)


NEW_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import veda
    from veda.scheduler._dispatch import LoadMonitor
    from veda_kernels.loops import triangular

    # Other processes on a shared machine must not take the parallel candidates away here.
    LoadMonitor.free_cores = lambda self: veda.max_threads()
    x = np.random.default_rng(0).random(20_000)
    out = np.empty_like(x)
    for _ in range(int(sys.argv[1])):
        triangular[x.size](x, out)
    row = veda.explain(triangular).rows[0]
    print(json.dumps({"source": row["source"], "decision": row["decision"]}))
    """
)


@pytest.mark.slow
def test_a_new_process_starts_with_the_learned_choice(tmp_path):
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path))

    def run(launches):
        out = subprocess.run(
            [sys.executable, "-c", NEW_PROCESS, str(launches)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run(40)
    assert first["source"] == "explored"
    second = run(1)
    assert second["source"] == "tuning cache"
    assert second["decision"] == first["decision"]


def test_explain_shows_candidates_times_and_decision():
    x = np.random.default_rng(1).random(30_000)
    out = np.empty_like(x)
    from veda_kernels.loops import triangular

    for _ in range(40):
        triangular[x.size](x, out)
    text = str(veda.explain(triangular))
    assert "ns/element" in text and "cpu" in text
    row = next(r for r in veda.explain(triangular).rows if r["size_class"] == "<= 2^15")
    assert row["decision"] is not None and row["source"] in (
        "explored",
        "only candidate",
        "tuning cache",
    )
    timed = [t for t in row["trials"] if t["samples"]]
    assert timed and all(math.isfinite(s) for t in timed for s in t["samples"])


def test_imbalance_profile_steers_the_schedules():
    from veda.scheduler._dispatch import Dispatcher, Entry

    for imbalance, dropped, kept in ((1.5, "static", "dynamic"), (1.01, "dynamic", "static")):
        tuner = Tuner(list(CANDIDATES))
        entry = Entry("k", "k", tuner, 2)
        d = Dispatcher()
        drive_until = 0
        while tuner.exploring and drive_until < 100:
            c = tuner.next()
            d.observe(entry, c, 1e-3, 1000, "/nonexistent", imbalance if c == STATIC else math.nan)
            drive_until += 1
        pruned = {t.decision.schedule for t in tuner.trials.values() if "imbalance" in t.pruned}
        assert dropped in pruned and kept not in pruned


@veda.kernel
def where(i, out):
    out[i] = numba_thread_id()


from numba import get_thread_id as numba_thread_id  # noqa: E402


@pytest.mark.skipif(veda.max_threads() < 2, reason="needs two threads")
def test_dispatcher_sized_launches_share_cores_with_launches_in_flight():
    from veda._hardware import cpu as hw
    from veda.targets import LaunchOptions, ParallelTarget

    out = np.full(4096, -1, np.int64)
    decision = Decision("parallel", 2, "interleaved", 16)
    options = LaunchOptions(cache=veda.get_config().cache)
    form = where.form(1, 1)
    alone = ParallelTarget().prepare(form, (4096,), decision, options, None, shared=True)
    alone((out,))
    assert len(set(out.tolist())) == 2
    other = hw.Grant()  # another dispatcher-sized launch holds all threads but one
    assert hw.budget.take(other, veda.max_threads() - 1) == veda.max_threads() - 1
    try:
        alone((out,))
        assert len(set(out.tolist())) == 1
        explicit = ParallelTarget().prepare(form, (4096,), decision, options, None)
        explicit((out,))
        assert len(set(out.tolist())) == 2  # an explicit threads= is never lowered
    finally:
        hw.budget.give(other)
    assert hw.budget.in_flight() == 0 and hw.budget.lent() == 0


@pytest.mark.skipif(veda.max_threads() < 2, reason="needs two threads")
def test_an_exploring_launch_on_a_smaller_share_is_not_credited_to_its_candidate(tmp_path):
    from veda._hardware import cpu as hw

    @veda.kernel
    def shared_explore(i, x):
        x[i] += 1.0

    x = np.zeros(300_000)
    other = hw.Grant()  # another launch holds all the machine's threads but one
    hw.budget.take(other, veda.max_threads() - 1)
    try:
        with veda.config(cache_dir=str(tmp_path)):  # no tuning cache of an earlier run
            for _ in range(6):  # fewer than the launches in a row it does not credit
                veda.launch(shared_explore, x.size, x, target="parallel")
            (entry,) = [
                e for e in _dispatch.dispatcher.entries.values() if "shared_explore" in e.key
            ]
            credited = {d: t.samples for d, t in entry.tuner.trials.items() if t.samples}
            assert not any(d.threads > 1 for d in credited), credited
            # A machine that stays shared is what the kernel runs on: exploring still ends.
            for _ in range(200):
                veda.launch(shared_explore, x.size, x, target="parallel")
                if entry.tuner.choice is not None:
                    break
    finally:
        hw.budget.give(other)
    assert entry.tuner.choice is not None
    assert (x == x[0]).all() and x[0] >= 7


def test_snapshot_shows_the_decisions():
    x = np.zeros(50)
    # the serial candidate's warm-up (while its launches still get much faster) and measured
    # launches decide it
    for _ in range(1 + WARMUP_LAUNCHES):
        tiny[50](x)
    decisions = veda.metrics().kernel(f"{__name__}.tiny").decisions
    assert decisions and decisions[0]["decision"] == CPU
    json.loads(veda.metrics().to_json())  # serialisable


@pytest.mark.skipif(veda.max_threads() < 2, reason="needs parallel candidates")
def test_explain_says_exploring_once_while_exploring(monkeypatch):
    from veda.scheduler._dispatch import LoadMonitor

    monkeypatch.setattr(LoadMonitor, "free_cores", lambda self: veda.max_threads())

    @veda.kernel
    def still_exploring(i, x):
        x[i] += 1.0

    x = np.zeros(200_000)
    still_exploring[x.size](x)
    text = str(veda.explain(still_exploring))
    assert "policy adaptive: exploring" in text and "(exploring) (exploring)" not in text
    assert veda.explain(still_exploring).decision_for(x.size) is None


def test_a_pinned_parallel_target_is_not_pruned_by_its_own_first_launch():
    """The parallel candidates are dropped after the *serial* launch took too little time to pay
    for a region, never after one of their own launches (target="parallel" pins them)."""
    cands = [c for c in _dispatch.candidates(4096, 2) if c.target == "parallel"]
    if len(cands) < 2:
        pytest.skip("needs parallel candidates")
    tuner = Tuner(list(cands))
    entry = _dispatch.Entry("k", "k", tuner, 2, ("parallel", None))
    d = _dispatch.Dispatcher()
    first = tuner.next()
    d.observe(entry, first, 8e-6, 4096, "/nonexistent-veda-test")  # the warm-up launch
    d.observe(entry, first, 8e-6, 4096, "/nonexistent-veda-test")
    assert not any(t.pruned for t in tuner.trials.values())
    serial = Tuner([CPU, *cands])
    entry = _dispatch.Entry("k", "k", serial, 2)
    for _ in range(2):
        d.observe(entry, CPU, 8e-6, 4096, "/nonexistent-veda-test")
    assert all("too short" in serial.trials[c].pruned for c in cands[1:])


def test_a_schedule_keeps_an_explicit_third_party_parallel_target():
    class Mine(veda.targets.ParallelTarget):
        name = "mine"

    veda.targets.register(Mine())
    try:
        cfg = veda.get_config()
        assert veda.scheduler.pins(cfg, ("mine", None, "dynamic", None)) == ("mine", "dynamic")
        assert veda.scheduler.pins(cfg, (None, None, "dynamic", None)) == ("parallel", "dynamic")
    finally:
        veda.targets.unregister("mine")


def test_deterministic_mode_tunes_apart_on_disk(tmp_path):
    d = _dispatch.Dispatcher()
    kernel = veda.kernel(lambda i, x: None)
    keys = {
        d.entry(kernel, 1, 10_000, "adaptive", str(tmp_path), deterministic=det).key
        for det in (False, True)
    }
    assert len(keys) == 2


def test_a_policy_unregistered_meanwhile_does_not_break_a_tuner_using_it():
    veda.scheduler.register_policy(veda.scheduler.Policy("gone", lambda m: min(m.samples)))
    tuner = Tuner(list(CANDIDATES), policy="gone")
    veda.scheduler.unregister_policy("gone")
    drive(tuner, lambda d, k: 1.0 if d == GUIDED else 2.0)
    assert tuner.choice == GUIDED


def test_a_small_domain_is_judged_by_its_time_not_its_size():
    """Work-aware dispatch: a domain of a few hundred indices has parallel candidates (with
    small chunks); the serial launch's time then decides whether they stay."""
    threads = veda.max_threads()
    if threads < 2:
        pytest.skip("needs two threads")
    small = _dispatch.candidates(256, threads)
    par = [c for c in small if c.target == "parallel"]
    assert par and small[0] == CPU  # the serial loop is measured first
    assert min(c.chunk for c in par if c.schedule != "static") <= 4
    assert not [c for c in _dispatch.candidates(2 * threads - 1, threads) if c.target != "cpu"]
    d = _dispatch.Dispatcher()
    # a cheap serial launch, one that would pay for a region on a large domain but not on a
    # small one (a noisy sample), and a heavy one
    for seconds, kept in ((3e-6, False), (2e-5, False), (2e-3, True)):
        tuner = Tuner(list(small))
        entry = _dispatch.Entry("k", "k", tuner, 1)
        for _ in range(2):  # the warm-up launch, then the measured one
            d.observe(entry, tuner.next(), seconds, 256, "/nonexistent-veda-test")
        alive = [c for c in par if not tuner.trials[c].pruned]
        assert bool(alive) is kept, (seconds, alive)


def test_a_cheap_small_kernel_that_drifts_keeps_the_serial_loop_without_exploring():
    """A restart (drift on noise, or a change of free cores) of a small domain decided on the
    serial loop rules the parallel candidates out again at once while its launches stay too
    short to pay for a region; a kernel that became heavy explores them again."""
    threads = veda.max_threads()
    if threads < 2:
        pytest.skip("needs two threads")
    d = _dispatch.Dispatcher()
    for recent, explores in ((5e-6, False), (3e-3, True)):
        tuner = Tuner(list(_dispatch.candidates(256, threads)))
        entry = _dispatch.Entry("k", "k", tuner, threads)
        for _ in range(2):  # the serial warm-up and measured launches: 2 us, too short
            d.observe(entry, tuner.next(), 2e-6, 256, "/nonexistent-veda-test")
        assert tuner.choice == CPU
        version = tuner.version
        for _ in range(DRIFT_REVIEWS):  # drifted (or got heavy): a restart
            d.review(entry, [recent] * REVIEW_EVERY, 256)
        assert tuner.version > version
        assert tuner.exploring is explores, recent
        if not explores:
            assert tuner.choice == CPU


def test_each_candidate_is_proposed_once():
    for size in (4, 64, 256, 1000, 10**6):
        cands = _dispatch.candidates(size, veda.max_threads())
        assert len(cands) == len(set(cands)), size


@veda.kernel
def _sums_of_residues(i, out):
    s = 0.0
    for j in range(1000):
        s += ((i + j) % 7) * 0.5
    out[i] = s


def _explore(progress, size, monkeypatch, tmp_path):
    """A new exploration (a size class of its own, an empty tuning cache) of a kernel heavy
    enough to keep its parallel candidates."""
    monkeypatch.setattr(_dispatch, "PROGRESS_AFTER", 0.0)  # a bar from the first launch
    out = np.empty(size)
    with veda.config(progress=progress, cache_dir=str(tmp_path)):
        for _ in range(300):
            _sums_of_residues[out.size](out)
            decision = veda.explain(_sums_of_residues).decision_for(out.size)
            if decision is not None:
                return decision
    raise AssertionError(f"still exploring after 300 launches: {veda.explain(_sums_of_residues)}")


def test_a_slow_exploration_shows_a_progress_bar_that_ends_with_the_decision(
    monkeypatch, tmp_path, capsys
):
    decision = _explore(True, 2048, monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert "exploring _sums_of_residues" in err, err
    last = err.rstrip().split("\r")[-1]
    assert "100%" in last and veda.scheduler.Explanation.label(decision) in last, last


@pytest.mark.parametrize(("progress", "size"), [(False, 4096), (None, 8192)])
def test_no_progress_bar_when_not_wanted(progress, size, monkeypatch, tmp_path, capsys):
    """False: never; None (auto): in a notebook only, and a test runs outside one."""
    _explore(progress, size, monkeypatch, tmp_path)
    assert "exploring" not in capsys.readouterr().err


def test_a_failing_progress_bar_never_fails_a_launch(monkeypatch, tmp_path):
    """A bar whose updates raise (a broken widget, a closed stderr): a warning, and the
    exploration goes on to its decision."""

    class Broken:
        total, n = 100, 0

        def update(self, n=1):
            raise ValueError("I/O operation on closed file.")

        set_postfix_str = close = update

    monkeypatch.setattr(_dispatch._progress, "bar", lambda *a, **k: Broken())
    with pytest.warns(RuntimeWarning, match="no progress bar for exploring"):
        decision = _explore(True, 16384, monkeypatch, tmp_path)
    assert decision is not None


def test_the_thread_budget_never_lends_more_than_the_machine_under_contention():
    """Eight threads take and give a budget of 3 threads at once, through the path without the
    lock and the locked one: the threads lent never add up to more than 3, every launch gets
    at least one, and nothing stays lent."""
    import threading
    import time

    from veda._hardware import cpu as hw

    budget = hw.ThreadBudget(total=lambda: 3)
    over, got, errors = [], [], []
    held, count = [0], threading.Lock()  # the threads of the launches between take and give
    start = threading.Barrier(8)

    def launches(wanted: int) -> None:
        try:
            start.wait()
            for _ in range(2000):
                grant = hw.Grant()
                try:
                    threads = budget.take(grant, wanted)
                    with count:
                        held[0] += threads
                        if held[0] > 3:
                            over.append(held[0])
                    got.append(threads)
                    time.sleep(0)  # held: let the others ask meanwhile
                    with count:
                        held[0] -= threads
                finally:
                    budget.give(grant)
                    budget.wake()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=launches, args=(1 + k % 3,)) for k in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch between bytecodes often, inside take too
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors and not any(w.is_alive() for w in workers)
    assert not over, over[:5]
    assert len(got) == 8 * 2000 and min(got) >= 1 and max(got) <= 3
    assert budget.in_flight() == 0 and budget.lent() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_launches_while_a_parent_thread_held_the_dispatcher_locks(tmp_path, reap):
    """A fork while another thread held the tuning cache's lock (a put writes the file under
    it) or the dispatcher's: the child's adaptive launch must not wait for locks nobody will
    release (the child hung in TuningCache.entries, 3-9 of 60 forks of a launching program)."""

    @veda.kernel
    def fork_locks(i, x):
        x[i] += 1.0

    from veda._kernel import background

    x = np.zeros(50_000)
    with veda.config(cache_dir=str(tmp_path)):
        fork_locks[x.size](x)
        cache = _dispatch.dispatcher.wisdom(str(tmp_path))  # the child's, not another test's
        # (a fork waits for a background compile, which may need a lock held below)
        assert background.wait(60)
        with _dispatch.dispatcher.lock, cache._lock:  # as a parent thread would hold them
            pid = os.fork()
            if pid == 0:  # the child: an adaptive launch of a new size class, then out
                code = 3
                try:
                    x[:] = 0.0
                    fork_locks[1000](x)  # (a new decision: the dispatcher and the cache)
                    code = 0 if np.all(x[:1000] == 1.0) and not x[1000:].any() else 4
                finally:
                    os._exit(code)
    reap(pid, "the fork child hung on a lock a parent thread held")


def test_ctrl_c_inside_a_wake_up_leaves_no_released_waiter_listed():
    """SIGINT right after ``Waiters.notify`` released a waiter: the interrupt reaches the
    program once notify is done, and the next wake-up does not release that waiter again
    (it raised ``RuntimeError: release unlocked lock`` in a later launch)."""
    import signal
    import threading
    import time

    from veda._hardware import cpu as hw

    budget = hw.ThreadBudget(total=lambda: 1)
    held = hw.Grant()
    assert budget.take(held, 1) == 1
    got = []

    def waiter() -> None:
        g = hw.Grant()
        try:
            got.append(budget.take(g, 1))  # waits: the only thread is lent
        finally:
            budget.give(g)
            budget.wake()

    w = threading.Thread(target=waiter, daemon=True)
    w.start()
    deadline = time.monotonic() + 30
    while len(budget._returned) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(budget._returned) == 1

    def sigint_after_release(frame, event, arg):  # a Ctrl-C right after release() returned
        if event == "c_return" and getattr(arg, "__name__", "") == "release":
            if frame.f_code.co_name == "notify":
                sys.setprofile(None)
                signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # the waiter stays off the GIL until this thread blocks
    left = None
    try:
        budget.give(held)
        with pytest.raises(KeyboardInterrupt):
            sys.setprofile(sigint_after_release)
            try:
                budget.wake()
            finally:
                sys.setprofile(None)
                left = len(budget._returned)
        budget.wake()  # the next launch's wake-up: raised RuntimeError before
    finally:
        sys.setswitchinterval(interval)
        signal.signal(signal.SIGINT, previous)
    w.join(30)
    assert left == 0
    assert got == [1] and budget.in_flight() == 0 and budget.lent() == 0


FORK_ENTRY_SCRIPT = """
import os, sys, time
import numpy as np
import veda

@veda.kernel
def fork_entry(i, x):
    x[i] += 1.0

x = np.zeros(50_000)
fork_entry[x.size](x)  # the first exploring launch (serial: no parallel region yet)
(entry,) = fork_entry._fast.values()
assert entry.tuning is not None and entry.tuning.tuner.choice is None
exploring = entry.tuning.exploring
assert exploring is not None
# as a parent thread inside an exploring launch holds them (its entry's for the whole launch)
with fork_entry._lock, entry.lock, exploring.lock:
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            x[:] = 0.0
            fork_entry[x.size](x)  # exploring: takes the entry's lock
            code = 0 if np.all(x == 1.0) else 4
        finally:
            os._exit(code)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child", os.waitstatus_to_exitcode(status))
        sys.exit(0)
    time.sleep(0.05)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("child hung")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_explores_while_a_parent_thread_held_the_launch_locks(tmp_path):
    """A fork while another thread was inside an exploring launch (which holds its prepared
    launch's lock for the whole launch, its exploration's to credit it) or held the kernel's
    lock: the child's exploring
    launch must not wait for them.  In a process of its own, which entered no parallel region
    before the fork (so the child keeps its prepared launches)."""
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", FORK_ENTRY_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["child", "0"], proc.stdout + proc.stderr
