"""Launches from many Python threads at once never abort, deadlock or mix up results."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import veda


@veda.kernel
def affine(i, a, b, x, out):
    out[i] = a * x[i] + b


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


@veda.kernel
def worker_ids(i, out):
    out[i] = numba.get_thread_id()


def test_eight_threads_hundred_launches_each():
    n = 20_000
    x = np.arange(n, dtype=np.float64)
    schedules = ["static", "interleaved", "dynamic", "guided"]

    def work(t):
        out = np.empty(n)
        bad = 0
        for r in range(100):
            a, b = float(t + 1), float(r)
            veda.launch(
                affine,
                n,
                a,
                b,
                x,
                out,
                target="parallel",
                schedule=schedules[(t + r) % 4],
                chunk=257,
            )
            if not np.array_equal(out, a * x + b):
                bad += 1
            if veda.launch(total, n, out, target="parallel", schedule="dynamic") != np.sum(
                a * x + b
            ):
                bad += 1
        return bad

    with ThreadPoolExecutor(8) as pool:
        failures = list(pool.map(work, range(8), timeout=300))
    assert failures == [0] * 8


def test_threads_setting_holds_in_a_new_python_thread():
    n = 4096
    seen = {}

    def run(threads):
        out = np.full(n, -1, np.int64)
        veda.launch(worker_ids, n, out, threads=threads, schedule="interleaved", chunk=16)
        seen[threads] = set(out.tolist())
        # the launching thread's own Numba setting is restored afterwards
        seen[("after", threads)] = numba.get_num_threads()

    for threads in sorted({1, veda.max_threads()}):
        t = threading.Thread(target=run, args=(threads,))
        t.start()
        t.join(60)
        assert len(seen[threads]) <= threads
        assert -1 not in seen[threads]
        assert seen[("after", threads)] == veda.max_threads()
    if veda.max_threads() > 1:
        assert len(seen[veda.max_threads()]) > 1  # the work really was shared


def test_threading_layer_is_reported():
    layer = veda.threading_layer()
    assert layer in ("tbb", "omp", "workqueue")


WORKQUEUE_SCRIPT = """
import threading
import numpy as np
import veda

@veda.kernel
def inc(i, x):
    x[i] += 1.0

arrays = [np.zeros(100_000) for _ in range(8)]

def work(x):
    for _ in range(25):
        veda.launch(inc, x.size, x, target="parallel", schedule="dynamic")

threads = [threading.Thread(target=work, args=(x,)) for x in arrays]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert all((x == 25).all() for x in arrays)
from veda._hardware.cpu import serialises_parallel_regions
print(veda.threading_layer(), serialises_parallel_regions())
"""


def test_workqueue_layer_is_serialised_not_aborted(tmp_path):
    """Numba's workqueue layer aborts on concurrent parallel regions; veda must not let it."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    proc = subprocess.run(
        [sys.executable, "-c", WORKQUEUE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["workqueue", "True"]


def test_repeated_scopes_reuse_prepared_launches(monkeypatch):
    x = np.zeros(10)
    prepared = []
    original = affine._prepare

    def counting(*args):
        prepared.append(args)
        return original(*args)

    monkeypatch.setattr(affine, "_prepare", counting)
    for _ in range(3):
        with veda.config(target="cpu", chunk=None):
            affine[10](1.0, 1.0, x, x)
    assert len(prepared) <= 1


FORK = """
import multiprocessing, os, sys, warnings
import numpy as np
import veda

def _square(v):
    return v * v

@veda.kernel
def twice(i, x, out):
    out[i] = 2.0 * x[i]

n = 2_000_000
x, out = np.arange(n, dtype=np.float64), np.zeros(n)
for _ in range(30):  # the parent explores and starts the parallel threads
    twice[n](x, out)
veda.launch(twice, n, x, out, target="parallel")
layer = veda.threading_layer()
pid = os.fork()
if pid == 0:  # the child
    out[:] = 0
    for _ in range(3):
        twice[n](x, out)  # adaptive: must not enter a parallel region the layer cannot run
    ok = bool((out == 2 * x).all())
    out[:] = 0
    veda.telemetry.reset()  # the parent's figures came along with the fork
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        veda.launch(twice, n, x, out, target="parallel")
        veda.launch(twice, n, x, out, target="parallel", threads=2, schedule="dynamic")
    ran = veda.metrics().kernel("twice")
    on = sorted({c.target for c in ran.configs if c.launches})
    explicit = "ran" if bool((out == 2 * x).all()) else "wrong"
    said = [str(w.message) for w in caught if "fork" in str(w.message)]
    print("child", layer, ok, explicit, len(said), ",".join(on), flush=True)
    with multiprocessing.get_context("fork").Pool(2) as pool:  # a fork pool returns
        print("pool", pool.map(_square, range(4)), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("status", status)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_never_enters_a_parallel_region_its_layer_cannot_run(tmp_path):
    """OpenMP does not survive fork(): in a child of a process that started its threads, the
    dispatcher keeps to one thread, an explicit "parallel" launch runs on one thread with one
    warning, and a 'fork' pool started from the child returns."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FORK],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, VEDA_CACHE_DIR=str(tmp_path)),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "status 0" in lines, out.stdout + out.stderr[-2000:]
    (child,) = [line for line in lines if line.startswith("child")]
    _, layer, ok, explicit, warned, targets = child.split(" ")
    assert ok == "True" and explicit == "ran"
    if layer == "omp":  # one warning; the launches ran on one thread, and telemetry says so
        assert warned == "1" and "parallel" not in targets.split(",")
    else:  # a layer that survives fork runs them in parallel
        assert warned == "0"
    assert "pool [0, 1, 4, 9]" in lines, out.stdout + out.stderr[-2000:]


EXTERNAL_OPENMP_FORK = """
import os
import numba
import numpy as np
import veda

numba.get_num_threads()  # the user starts Numba's pool, veda has launched nothing yet

@veda.kernel
def twice(i, x, out):
    out[i] = 2.0 * x[i]

pid = os.fork()
if pid == 0:
    x, out = np.arange(1000.0), np.zeros(1000)
    veda.launch(twice, 1000, x, out, target="parallel")
    print("child", bool((out == 2 * x).all()), flush=True)
    os._exit(0)
print("status", os.waitpid(pid, 0)[1])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_fork_after_someone_else_started_the_pool_is_noticed(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", EXTERNAL_OPENMP_FORK],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, VEDA_CACHE_DIR=str(tmp_path)),
    )
    assert "status 0" in out.stdout.splitlines(), out.stdout + out.stderr[-2000:]
    assert "child True" in out.stdout.splitlines()
