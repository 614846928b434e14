"""veda.dask on a distributed LocalCluster of two one-thread worker processes."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402

import veda  # noqa: E402
import veda.dask as vd  # noqa: E402


@veda.kernel
def axpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


@veda.kernel
def scale2d(i, j, a, x, out):
    out[i, j] = a * x[i, j] + i - j


@veda.kernel
def smooth(i, j, x, out):
    n, m = x.shape
    if i == 0 or j == 0 or i == n - 1 or j == m - 1:
        out[i, j] = x[i, j]
    else:
        out[i, j] = 0.25 * (x[i - 1, j] + x[i + 1, j] + x[i, j - 1] + x[i, j + 1])


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i] * x[i]


@veda.kernel(reduce="max")
def biggest(i, j, x):
    return x[i, j]


@veda.kernel
def fails_at_seven(i, x, out):
    if x[i] == 7.0:
        raise ValueError("seven")
    out[i] = x[i]


@veda.kernel(reduce="sum")
def sum_unless_seven(i, x):
    if x[i] == 7.0:
        raise ValueError("seven")
    return x[i]


@veda.kernel
def writes_its_input(i, x, out):
    x[i] = 0.0
    out[i] = 1.0


@veda.kernel
def forgets_its_output(i, x, out):
    s = x[i]  # noqa: F841


def _scaled_by(w):
    @veda.kernel
    def scaled(i, x, out):
        out[i] = w[0] * x[i]

    return scaled


@veda.kernel
def slow_copy(i, x, out):
    s = 0.0
    for k in range(5_000_000):  # about 5 ms an index
        s += (k % 3) * 1e-12
    out[i] = x[i] + s * 0.0


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
            env={"VEDA_CACHE_DIR": os.environ["VEDA_CACHE_DIR"]},
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_map_blocks_equals_numpy(client):
    rng = np.random.default_rng(0)
    x, y = rng.random(1000), rng.random(1000)
    got = vd.map_blocks(axpy, 2.0, da.from_array(x, chunks=128), da.from_array(y, chunks=128))
    assert got.chunks == ((128,) * 7 + (104,),)
    np.testing.assert_allclose(client.compute(got).result(), 2.0 * x + y, rtol=0, atol=0)
    a = rng.random((60, 50))
    got2 = vd.map_blocks(scale2d, 3.0, da.from_array(a, chunks=(16, 20))).compute()
    ii, jj = np.indices(a.shape)  # a launch's indices are its block's own
    np.testing.assert_array_equal(got2, 3.0 * a + ii % 16 - jj % 20)


def test_map_overlap_equals_one_launch_over_the_whole_array(client):
    a = np.random.default_rng(1).random((70, 45))
    whole = np.empty_like(a)
    smooth[a.shape](a, whole)
    got = vd.map_overlap(smooth, da.from_array(a, chunks=(20, 16)), depth=1).compute()
    np.testing.assert_array_equal(got, whole)
    periodic = vd.map_overlap(
        smooth, da.from_array(a, chunks=(20, 16)), depth=1, boundary="periodic"
    ).compute()
    padded = np.pad(a, 1, mode="wrap")
    expect = np.empty_like(padded)
    smooth[padded.shape](padded, expect)
    np.testing.assert_array_equal(periodic, expect[1:-1, 1:-1])


def test_reduce_equals_numpy(client):
    x = np.random.default_rng(2).random(10_001)
    got = client.compute(vd.reduce(total, da.from_array(x, chunks=999))).result()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.sum(x * x), rtol=1e-12)
    m = np.random.default_rng(3).integers(-100, 100, (40, 33))
    assert vd.reduce(biggest, da.from_array(m, chunks=(7, 10))).compute() == m.max()


def test_deterministic_reduce_has_the_same_bits_on_any_worker_count(client):
    x = np.random.default_rng(4).standard_normal(200_000) * 1e6
    arr = da.from_array(x, chunks=12_345)
    with veda.config(deterministic=True):
        on_two = client.compute(vd.reduce(total, arr)).result()
        on_one = vd.reduce(total, arr).compute(scheduler="synchronous")  # this process
        threads = vd.reduce(total, arr).compute(scheduler="threads", num_workers=2)
    assert on_two.tobytes() == on_one.tobytes() == threads.tobytes()


def test_one_thread_workers_run_cpu_and_compile_once(client):
    x = da.random.random(4000, chunks=250)
    vd.map_blocks(axpy, 1.5, x, x).compute()
    vd.map_blocks(axpy, 2.5, x, x).compute()  # the kernel again, unpickled again: no compile

    def what_ran():
        snap = veda.metrics().kernel(axpy)
        return vd.compiles(axpy), sorted({c.decision.target for c in snap.configs})

    ran = client.run(what_ran)
    assert len(ran) == 2
    for compiles, targets in ran.values():
        assert compiles == 1, ran  # compiled or loaded once, for 16 blocks in two graphs
        assert targets == ["cpu"], ran


def test_metrics_merge_every_worker(client):
    x = da.random.random(3000, chunks=100)
    vd.map_blocks(axpy, 0.5, x, x).compute()
    m = vd.metrics(client)
    assert len(m.workers) == 2
    per_worker = [s.kernel(axpy).launches for s in m.workers.values()]
    merged = m.kernel(axpy)
    assert merged.launches == sum(per_worker) >= 30
    assert merged.min_time <= merged.p50 <= merged.p99 <= merged.max_time * 1.01
    from prometheus_client.parser import text_string_to_metric_families

    text = m.to_prometheus()
    assert text.count("# TYPE veda_launches_total counter") == 1
    samples = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "veda_launches"
        for s in f.samples
        if s.labels["kernel"].endswith("axpy")
    ]
    assert {s.labels["worker"] for s in samples} == set(m.workers)
    assert sum(s.value for s in samples) == merged.launches
    assert "2 Dask worker(s)" in m._repr_html_()


def test_kernels_sent_by_value_stay_apart_and_arrive_once(client):
    """Two kernels of one source over different arrays (sent by value: a factory's), each once
    per worker however many tasks carry it, and neither confused with the other."""
    one, five = _scaled_by(np.array([1.0])), _scaled_by(np.array([5.0]))
    x = da.ones(400, chunks=50)
    got = (vd.map_blocks(five, x) - vd.map_blocks(one, x)).compute()
    np.testing.assert_array_equal(got, np.full(400, 4.0))
    # Telemetry keeps one record per qualified name, which the two share: at most one
    # specialisation of each kernel per worker, and none more when they come again.
    before = client.run(lambda: vd.compiles(five))
    assert all(1 <= c <= 2 for c in before.values()), before
    (vd.map_blocks(five, x) + vd.map_blocks(one, x)).compute()
    assert client.run(lambda: vd.compiles(five)) == before


def test_warm_compiles_on_every_worker(client):
    counts = vd.warm(client, fails_at_seven, np.zeros(4), np.empty(4))
    assert len(counts) == 2 and all(c == 1 for c in counts.values()), counts
    again = vd.warm(client, fails_at_seven, np.zeros(4), np.empty(4))
    assert again == counts  # warm once: nothing more to compile


def test_a_kernel_error_names_the_worker_and_the_block(client):
    x = da.arange(20.0, chunks=5)
    with pytest.raises(
        veda.KernelError, match=r"at index 7 .*block \(1,\).*dask worker tcp://.*seven"
    ):
        vd.map_blocks(fails_at_seven, x).compute()
    with pytest.raises(veda.KernelError) as info:
        client.compute(vd.reduce(sum_unless_seven, x)).result()
    err = info.value
    assert err.original_type is ValueError and err.original_message == "seven"
    assert err.index == (7,)  # the array's index (the block's own is 2)
    assert "in block (1,) of shape (5,), on dask worker tcp://" in err.context


def test_bad_arguments_are_refused_before_anything_runs():
    x = da.ones(10, chunks=5)
    with pytest.raises(veda.LaunchError, match=r"argument 3 \('y'\) is a ndarray, not a Dask"):
        vd.map_blocks(axpy, 2.0, x, np.ones(10))
    with pytest.raises(veda.LaunchError, match=r"argument 3 \('y'\) has shape \(10,\) in chunks"):
        vd.map_blocks(axpy, 2.0, x, da.ones(10, chunks=4))
    with pytest.raises(veda.LaunchError, match="takes 5 parameters"):
        vd.map_blocks(axpy, x, x)
    with pytest.raises(veda.LaunchError, match="no Dask array"):
        vd.map_blocks(axpy, 2.0, 1.0, 2.0)
    with pytest.raises(veda.LaunchError, match="is a reduction"):
        vd.map_blocks(total, x)
    with pytest.raises(veda.LaunchError, match="is not a reduction"):
        vd.reduce(axpy, 2.0, x, x)
    with pytest.raises(veda.LaunchError, match="expected a @veda.kernel"):
        vd.map_blocks(print, x)
    with pytest.raises(veda.LaunchError, match="unknown chunk sizes"):
        vd.map_blocks(fails_at_seven, x[x > 0])
    with pytest.raises(veda.LaunchError, match="dtype='nope' is not a NumPy dtype"):
        vd.map_blocks(fails_at_seven, x, dtype="nope")
    for bad, match in [
        ({"depth": -1}, "depth=-1: expected a count"),
        ({"depth": (1, 2)}, "has 2 entries for 1-d blocks"),
        ({"depth": {3: 1}}, "names axis 3"),
        ({"depth": 1, "boundary": "bogus"}, "boundary='bogus': expected one of none"),
    ]:
        with pytest.raises(veda.LaunchError, match=match):
            vd.map_overlap(fails_at_seven, x, **bad)
    with pytest.raises(veda.LaunchError, match="writes x, an input"):
        vd.map_blocks(writes_its_input, x)
    with pytest.raises(veda.LaunchError, match="never writes its last parameter 'out'"):
        vd.map_blocks(forgets_its_output, x)
    with pytest.raises(veda.LaunchError, match="a max of no elements has no value"):
        vd.reduce(veda.kernel(reduce="max")(lambda i, x: x[i]), da.ones(0, chunks=5))
    with pytest.raises(veda.LaunchError, match="declares ndim=2"):
        vd.map_blocks(veda.kernel(ndim=2)(lambda i, j, x, out: None), x)


def test_a_killed_worker_is_retried_and_the_result_is_right(client):
    x = np.arange(64.0)
    future = client.compute(vd.map_blocks(slow_copy, da.from_array(x, chunks=4)))
    deadline = time.monotonic() + 60
    while not client.processing() or not any(client.processing().values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim = next(w for w, tasks in client.processing().items() if tasks)
    pid = client.run(os.getpid, workers=[victim])[victim]
    assert not future.done()
    os.kill(pid, signal.SIGKILL)  # mid-computation, with blocks on it
    np.testing.assert_array_equal(future.result(timeout=300), x)
    client.wait_for_workers(2, timeout=120)


def test_local_schedulers_run_it_too():
    x = np.arange(30.0)
    got = vd.map_blocks(axpy, 1.0, da.from_array(x, chunks=7), da.from_array(x, chunks=7))
    np.testing.assert_array_equal(got.compute(scheduler="threads"), 2 * x)
    with dask.config.set(scheduler="synchronous"):
        assert vd.reduce(total, da.from_array(x, chunks=7)).compute() == np.sum(x * x)


def test_empty_blocks_are_left_out_of_a_min():
    x = da.from_array(np.array([4.0, 2.0, 7.0, 1.0, 9.0]), chunks=((2, 0, 3),))
    assert vd.reduce(smallest, x).compute(scheduler="synchronous") == 1.0
    assert vd.reduce(total, x).compute(scheduler="synchronous") == 4 * 4 + 4 + 49 + 1 + 81


@veda.kernel(reduce="min")
def smallest(i, x):
    return x[i]


def test_workers_sharing_one_process_are_counted_once():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        veda.telemetry.reset()
        vd.reduce(smallest, da.ones(1100, chunks=100)).compute()  # 11 blocks
        m = vd.metrics(c)
        assert m.kernel(smallest).launches == 11, m
        assert m.to_prometheus().count('worker="') == m.to_prometheus().count(
            f'worker="{next(iter(m.workers))}"'
        )
