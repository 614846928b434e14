"""veda.graph: captured launch sequences replayed as one compiled call give what the plain
loop gives on every CPU target and schedule (the same bits in deterministic mode), with
parameters, reductions, dependencies between launches, slot checks and the kernels' own
errors; Ctrl-C stops a long replay."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numba
import numpy as np
import pytest

import veda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@veda.kernel
def kick(i, dt, x, v, a):
    v[i] += dt * a[i]
    x[i] += dt * v[i]


@veda.kernel
def pull(i, x, a):
    # reads x everywhere: it depends on the launch that wrote x before it
    n = x.shape[0]
    a[i] = 0.5 * (x[(i + 1) % n] + x[(i + n - 1) % n]) - x[i]


@veda.kernel(reduce="sum")
def energy(i, x, v):
    return 0.5 * v[i] * v[i] + 0.25 * x[i] * x[i]


@veda.kernel
def relax(i, j, k, d):
    s = d[i, k] + d[k, j]
    if s < d[i, j]:
        d[i, j] = s


N = 3001  # a partial last chunk and block


def _state():
    rng = np.random.default_rng(3)
    return rng.random(N), rng.random(N) - 0.5, np.zeros(N)


def _plain(steps, x, v, a, dt=0.01):
    energies = []
    for _ in range(steps):
        pull[N](x, a)
        kick[N](dt, x, v, a)
        energies.append(energy[N](x, v))
    return energies


def _capture(x, v, a, dt=0.01, tune=True):
    with veda.graph(tune=tune) as g:
        pull[N](x, a)
        kick[N](dt, x, v, a)
        energy[N](x, v)
    return g


@pytest.mark.parametrize("deterministic", [False, True])
def test_replay_matches_the_plain_loop_on_every_cpu_target(settings, deterministic):
    steps = 7
    x0, v0, a0 = _state()
    with veda.config(**settings, deterministic=deterministic):
        x, v, a = x0.copy(), v0.copy(), a0.copy()
        want = _plain(steps + 1, x, v, a)
        gx, gv, ga = x0.copy(), v0.copy(), a0.copy()
        g = _capture(gx, gv, ga, tune=False)  # step 1, run as a plain launch sequence
    got = g.replay(steps, per_step=True)
    assert got.shape == (steps,)
    if deterministic:
        assert np.array_equal(gx, x) and np.array_equal(gv, v)
        assert got.tolist() == want[1:]
    else:
        np.testing.assert_allclose(gx, x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, want[1:], rtol=1e-12)


def test_a_tuned_graph_keeps_the_same_bits_in_deterministic_mode():
    x0, v0, a0 = _state()
    with veda.deterministic(seed=1):
        x, v, a = x0.copy(), v0.copy(), a0.copy()
        want = _plain(1 + 20 * 3, x, v, a)
        gx, gv, ga = x0.copy(), v0.copy(), a0.copy()
        g = _capture(gx, gv, ga)
        last = [g.replay(3) for _ in range(20)]  # compiles, tries every plan, keeps one
    assert np.array_equal(gx, x) and np.array_equal(gv, v)
    assert last[-1] == want[-1]
    assert g._choice is not None
    section = veda.metrics().sections["graphs"].to_dict()["graphs"]
    (mine,) = [s for s in section if s["name"] == g.name]
    assert mine["replays"] == 20 and mine["steps"] == 60 and mine["chosen"] is not None


def _floyd_warshall(d):
    d = d.copy()
    for k in range(d.shape[0]):
        d = np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :])
    return d


@pytest.mark.parametrize("how", ["per step", "per call"])
def test_a_pivot_loop_with_a_parameter(how):
    n = 60
    rng = np.random.default_rng(5)
    d0 = rng.random((n, n)) * 10
    np.fill_diagonal(d0, 0.0)
    d = d0.copy()
    with veda.graph() as g:
        relax[n, n](veda.graph.param("k", 0), d)
    if how == "per step":
        g.replay(steps=n - 1, k=np.arange(1, n))
    else:
        for k in range(1, n):
            g(k=k)
    assert np.array_equal(d, _floyd_warshall(d0))


def test_an_array_parameter_is_rebound_and_checked():
    @veda.kernel
    def scale(i, s, x):
        x[i] *= s

    x = np.ones(10)
    with veda.graph() as g:
        scale[10](2.0, veda.graph.param("x", x))
    other = np.full(10, 3.0)
    g.replay(2, x=other)
    assert other.tolist() == [12.0] * 10 and x.tolist() == [2.0] * 10
    bad = {  # each differs in one way, which the message names
        "not a C-ordered float32 array of shape (10,)": np.ones(10, np.float32),
        "not a C-ordered float64 array of shape (11,)": np.ones(11),
        "not a A-ordered float64 array of shape (10,)": np.ones(20)[::2],
    }
    for says, arr in bad.items():
        with pytest.raises(veda.GraphError) as e:
            g.replay(1, x=arr)
        assert "parameter 'x' was captured as a C-ordered float64 array of shape (10,)" in str(
            e.value
        )
        assert says in str(e.value)
    ro = np.ones(10)
    ro.flags.writeable = False
    with pytest.raises(veda.GraphError, match="parameter 'x' is written by the graph"):
        g.replay(1, x=ro)
    with pytest.raises(veda.GraphError, match="expects a NumPy array, not list"):
        g.replay(1, x=[1.0] * 10)
    with pytest.raises(veda.GraphError, match=r"'y' is not a parameter of this graph \(its "):
        g.replay(1, y=other)


def test_scalar_parameter_errors():
    @veda.kernel
    def add(i, s, x):
        x[i] += s

    x = np.zeros(4)
    with veda.graph() as g:
        add[4](veda.graph.param("s", 1.0), x)
    with pytest.raises(veda.GraphError, match=r"'s' expects a real number, or a 1-d array of one"):
        g.replay(3, s=np.ones(2))
    with pytest.raises(veda.GraphError, match="'s' expects a real number, not a bool"):
        g.replay(3, s=True)
    with pytest.raises(veda.GraphError, match="steps must be an int >= 0"):
        g.replay(-1)
    with pytest.raises(veda.GraphError, match="steps must be an int >= 0"):
        g.replay(2.0)
    with pytest.raises(veda.GraphError, match="below 2..63"):
        g.replay(2**63)
    with pytest.raises(veda.GraphError, match="masked arrays are not supported"):
        g.replay(2, s=np.ma.masked_array([1.0, 2.0], mask=[0, 1]))
    g.replay(0)
    assert x.tolist() == [1.0] * 4
    with veda.graph() as h:
        add[4](veda.graph.param("s", 1), x)  # an int parameter keeps its int type
    with pytest.raises(veda.GraphError, match="'s' expects an int, not 0.5"):
        h.replay(1, s=0.5)
    for big in (2**63, np.array([2**63, 1], np.uint64)):
        with pytest.raises(veda.GraphError, match="beyond a 64-bit integer"):
            h.replay(2, s=big)
    h.replay(2, s=np.array([2, 3]))
    assert x.tolist() == [7.0] * 4


def test_capture_refusals():
    x = np.zeros(8)
    with pytest.raises(veda.GraphError, match="no launch was made in the block"):
        with veda.graph():
            pass
    with pytest.raises(veda.GraphError, match="no veda.graph"):
        veda.graph.param("k", 1)
    with pytest.raises(veda.GraphError, match="were made but no launch in the block took them"):
        with veda.graph():
            veda.graph.param("k", 1)
            energy[8](x, x)
    with pytest.raises(veda.GraphError, match="part of a par_iter terminal"):
        with veda.graph():
            veda.par_iter(x).sum()
    for name in ("steps", "per_step", "self", "2x", 3):
        with pytest.raises(veda.GraphError, match="an identifier other than replay's own"):
            with veda.graph():
                veda.graph.param(name, 1)
    g = veda.graph()
    with pytest.raises(veda.GraphError, match="was not captured"):
        g.replay()
    with veda.graph() as ready:
        energy[8](x, x)
    with pytest.raises(veda.GraphError, match="a replay is not a launch it could record"):
        with veda.graph():
            ready.replay()
    with pytest.raises(ZeroDivisionError), veda.graph() as failed:
        energy[8](x, x)
        raise ZeroDivisionError
    with pytest.raises(veda.GraphError, match="failed to capture"):
        failed.replay()
    with pytest.raises(veda.GraphError, match="captured already"), failed:
        pass


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_a_kernel_error_inside_a_replay_names_the_index_and_step(target):
    @veda.kernel
    def checked(i, x, y):
        if x[i] < 0.0:
            raise ValueError("negative")
        y[i] += x[i]

    x, y = np.ones(5000), np.zeros(5000)
    with veda.config(target=target), veda.graph(tune=False) as g:
        checked[5000](x, y)
    g.replay(2)
    x[1234] = -1.0
    with pytest.raises(veda.KernelError, match="negative") as e:
        g.replay(5)
    assert e.value.index == (1234,) and e.value.target == target
    assert any("step 0, launch #0" in note for note in e.value.__notes__)


def test_graphs_compose_with_record_and_replay(tmp_path):
    path = tmp_path / "run.json"
    x0, v0, a0 = _state()
    with veda.record(path):
        g1 = _capture(x0.copy(), v0.copy(), a0.copy(), tune=False)
    with veda.replay(path):
        g2 = _capture(x0.copy(), v0.copy(), a0.copy(), tune=False)
    assert [L.decision for L in g1._launches] == [L.decision for L in g2._launches]
    assert len(json.loads(path.read_text())["launches"]) == 3


def test_telemetry_lists_the_graph_and_its_launches():
    x0, v0, a0 = _state()
    g = _capture(x0, v0, a0)
    for _ in range(3):
        g.replay(2)
    snap = veda.metrics()
    (mine,) = [s for s in snap.sections["graphs"].graphs if s.launches == tuple(g.launches)]
    assert mine.replays == 3 and mine.steps == 6 and len(mine.launches) == 3
    assert len(mine.launch_seconds) == 3 and all(s > 0 for s in mine.launch_seconds)
    assert sum(mine.launch_seconds) <= mine.seconds
    assert "pull[3001]" in mine.launches[0] and "slot 0" in mine.launches[0]
    text = snap.to_prometheus()
    assert f'veda_graph_replays_total{{graph="{g.name}"}} 3' in text
    assert f'veda_graph_launch_seconds_total{{graph="{g.name}",launch="2"}}' in text


def test_replays_from_threads_count_every_step_and_keep_bounded_figures():
    """Replays of one graph at once in several threads: each launch's cycles are added
    atomically in the replay function, and a plan's recent times are kept, not all of them."""
    x, out = np.arange(1000.0), np.zeros(1000)

    @veda.kernel
    def double(i, x, out):
        out[i] = 2.0 * x[i]

    with veda.graph(tune=False) as g:
        double[1000](x, out)
    threads = [threading.Thread(target=lambda: [g.replay(3) for _ in range(100)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = veda.metrics()
    (mine,) = [s for s in snap.sections["graphs"].graphs if s.name == g.name]
    assert mine.replays == 400 and mine.steps == 1200
    assert 0 < mine.launch_seconds[0] <= mine.seconds
    assert all(len(v) <= veda._graph._RECENT for v in g._stats.by_plan.values())
    np.testing.assert_array_equal(out, 2.0 * x)


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(pid, SIGINT) is POSIX")
def test_ctrl_c_stops_a_long_replay_of_short_launches():
    body = textwrap.dedent(
        """
        import json, time, numpy as np, veda
        @veda.kernel
        def inc(i, x):
            x[i] += 1.0
        x = np.zeros(64)
        with veda.graph() as g:
            inc[64](x)
        g.replay(10)
        print("ready", flush=True)
        t = time.perf_counter()
        try:
            g.replay(10**12)  # hours of 64-element launches, each too short to poll itself
        except KeyboardInterrupt:
            print(json.dumps({"seconds": time.perf_counter() - t, "x": float(x[0])}), flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", body],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["seconds"] < 5.0 and report["x"] > 11.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_replays_a_parallel_graph_on_one_thread(tmp_path):
    body = textwrap.dedent(
        """
        import os, numpy as np, veda
        @veda.kernel
        def inc(i, x):
            x[i] += 1.0
        x = np.zeros(200_000)
        with veda.config(target="parallel"), veda.graph(tune=False) as g:
            inc[x.size](x)
        g.replay(5)  # the parallel threads are started
        pid = os.fork()
        if pid == 0:
            g.replay(2)  # compiles the one-thread replay
            g.replay(2)
            plans = veda.metrics().sections["graphs"].graphs[0].per_step
            print("child", float(x.min()), float(x.max()), sorted(plans), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("status", status, float(x[0]), flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", body],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, VEDA_CACHE_DIR=str(tmp_path)),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "status 0 6.0" in out.stdout, out.stdout + out.stderr[-2000:]
    (child,) = [line for line in out.stdout.splitlines() if line.startswith("child")]
    assert child.startswith("child 10.0 10.0") and "one thread (after fork)" in child, child


@pytest.mark.parametrize("how", ["k[n]", "veda.launch"])
def test_a_domain_parameter_changes_the_domain_per_step(how):
    @veda.kernel
    def bump(i, s, x):
        x[i] += s

    @veda.kernel(reduce="max")
    def top(i, x):
        return x[i]

    x, want = np.zeros(4000), np.zeros(4000)
    sizes = [3000, 10, 0, 4000, 1234]
    with veda.config(target="parallel", schedule="guided"), veda.graph() as g:
        n = veda.graph.param("n", sizes[0])
        if how == "k[n]":
            bump[n](1.0, x)
        else:
            veda.launch(bump, n, 1.0, x)
        top[4000](x)
    want[: sizes[0]] += 1.0
    peaks = []
    for m in sizes[1:]:
        want[:m] += 1.0
        peaks.append(want.max())
    got = g.replay(len(sizes) - 1, per_step=True, n=np.array(sizes[1:]))
    assert np.array_equal(x, want) and got.tolist() == peaks
    with pytest.raises(veda.GraphError, match="'n' sizes the domain of launch #0 .* not -1"):
        g.replay(1, n=-1)
    with veda.graph() as h:
        top[veda.graph.param("m", 10)](x)
    with pytest.raises(veda.GraphError, match="makes the domain of launch #0 empty"):
        h.replay(2, m=np.array([3, 0]))
    assert h.replay(1, m=2) == want[:2].max()


def test_launches_whose_settings_were_set_keep_their_decision_in_every_plan():
    @veda.kernel
    def ordered(i, x):  # right only in index order: one thread
        if i > 0:
            x[i] = x[i - 1] + 1.0

    @veda.kernel
    def worker(i, ids):
        ids[i] = numba.get_thread_id()

    x, ids = np.zeros(5000), np.full(5000, -1, np.int64)
    with veda.graph() as g:
        with veda.config(target="cpu"):
            ordered[5000](x)
        veda.launch(worker, 5000, ids, target="parallel", threads=1)
    assert [L.free for L in g._launches] == [False, False]
    for _ in range(12):
        x[:] = 0.0
        ids[:] = -1
        g.replay(2)
        assert x[-1] == 4999.0 and ids.max() == 0  # one thread, in order, whatever the plan
    for _, plan in g._plans:
        assert plan[0].tolist() == [0, 0, 0, 1] and plan[1][0] == 1 and plan[1][3] == 1


def test_a_small_graph_settles_without_compiling_a_parallel_replay():
    @veda.kernel
    def tiny(i, x):
        x[i] += 1.0

    x = np.zeros(100)
    with veda.graph() as g:
        tiny[100](x)
    for _ in range(5):
        g.replay(50)
    assert g._choice is not None and g._plans[g._choice][0] == "as captured"
    assert list(g._fns) == [(False,)]  # only the one-thread replay was compiled


def test_captures_that_cannot_be_replayed_as_recorded_are_refused():
    x = np.zeros(8)

    @veda.kernel
    def fails(i, x):
        raise ValueError("no")

    with pytest.raises(veda.GraphError, match=r"launch #1 \(kernel .*fails.*\) failed"):
        with veda.graph():
            energy[8](x, x)
            with pytest.raises(veda.KernelError):
                fails[8](x)
    with veda.graph():
        mine = veda.graph.param("mine", 1.0)
        energy[8](x, x)
        pull[8](x, veda.graph.param("used", x.copy()))
        kick[8](mine, x, x.copy(), x.copy())
    with pytest.raises(veda.GraphError, match="is a parameter of another graph"), veda.graph():
        kick[8](mine, x, x.copy(), x.copy())
    with pytest.raises(veda.GraphError, match="graphs do not nest"), veda.graph():
        with veda.graph():
            pass
    with pytest.raises(veda.GraphError, match="made by another thread"), veda.graph():
        # as a task's worker does: the capture's context, copied to another thread
        t = threading.Thread(target=contextvars.copy_context().run, args=(energy[8], x, x))
        t.start()
        t.join()
    y = np.zeros(10)
    with pytest.raises(veda.GraphError, match="parameter 'y' shares memory with slot"):
        with veda.graph():
            pull[9](veda.graph.param("y", y), y[1:])


def test_replay_results_and_what_a_replay_allocates():
    @veda.kernel(reduce="sum")
    def total(i, x):
        return x[i]

    @veda.kernel(reduce="max")
    def peak(i, x):
        return x[i]

    x = np.arange(10.0)
    with veda.graph() as g:
        total[10](x)
        peak[10](x)
    assert g.replay(3) == (45.0, 9.0)
    assert g.replay(0) == (None, None)
    got = g.replay(2, per_step=True)
    assert [a.tolist() for a in got] == [[45.0, 45.0], [9.0, 9.0]]
    with pytest.raises(TypeError):
        g.replay(1, True)  # per_step is keyword-only
    g.replay(10)  # tuned
    tracemalloc.start()
    try:
        assert g.replay(200_000) == (45.0, 9.0)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # nothing of the steps' size (200,000 steps: 1.6 MB a result); what the replay's own
    # bookkeeping takes (telemetry, a plan's first block) is far below half of one result
    assert peak_bytes < 800_000


def test_a_rebound_parameter_may_not_alias_the_other_arrays():
    @veda.kernel
    def copy(i, src, dst):
        dst[i] = src[i]

    a, b = np.ones(10), np.zeros(10)
    with veda.graph() as g:
        copy[10](veda.graph.param("src", a), b)
    g.replay(1, src=np.full(10, 2.0))
    assert b.tolist() == [2.0] * 10
    with pytest.raises(veda.GraphError, match="parameter 'src' shares memory with slot 1"):
        g.replay(1, src=b)


def test_replays_are_not_launches_a_record_sees(tmp_path):
    x = np.zeros(8)
    with veda.graph() as g:
        energy[8](x, x)
    path = tmp_path / "run.json"
    with veda.record(path):
        g.replay(5)
        energy[8](x, x)
    assert len(json.loads(path.read_text())["launches"]) == 1


def test_a_thread_replaying_in_a_loop_does_not_starve_other_launches(tmp_path):
    body = textwrap.dedent(
        """
        import threading, numpy as np, veda
        @veda.kernel
        def add(i, s, x):
            x[i] += s
        @veda.kernel
        def copy(i, x, y):
            y[i] = x[i]
        n = 50_000
        a, b = np.zeros(n), np.zeros(n)
        with veda.graph() as g:
            add[n](1.0, a)
        g.replay(1)
        stop = threading.Event()
        def replays():
            while not stop.is_set():
                g.replay(2)  # lends the machine's threads again at once, every time
        t = threading.Thread(target=replays)
        t.start()
        for _ in range(20):  # adaptive launches: they wait for threads from the same budget
            c = np.zeros(n)
            with veda.graph():
                add[n](2.0, c)
                copy[n](c, b)
        stop.set()
        t.join()
        print("done", b[0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", body],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=ROOT, VEDA_CACHE_DIR=str(tmp_path)),
    )
    assert out.returncode == 0 and "done 2.0" in out.stdout, out.stdout + out.stderr[-2000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_replays_while_a_parent_thread_held_the_graphs_locks(reap):
    """A fork while another thread held a graph's locks (crediting a replay, reading its
    metrics, building a replay function): the child's replays must not wait for them."""

    @veda.kernel
    def fork_inc(i, x):
        x[i] += 1.0

    x = np.zeros(1000)
    with veda.config(target="cpu"), veda.graph(tune=False) as g:
        fork_inc[x.size](x)
    g.replay(2)
    from veda._kernel import background

    assert background.wait(60)  # (a fork waits for a background compile)
    with g._lock, g._stats.lock:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                g.replay(3)
                graphs = veda.metrics().sections["graphs"].graphs
                replays = [m.replays for m in graphs if m.name == g.name]
                code = 0 if x.min() == 6.0 and 2 in replays else 4
            finally:
                os._exit(code)
    reap(pid, "the fork child hung on a graph lock a parent thread held")
