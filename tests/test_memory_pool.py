"""Pooled host arrays (veda.empty, veda.zeros, veda.empty_like) and the host pool behind them."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import veda
from veda._hardware import memory
from veda._hardware.memory import MIN_POOLED_BYTES, HostPool

BIG = (1000, 1000)  # 8 MB of float64: pooled


@pytest.fixture
def fresh_pool():
    """A private pool in place of the process's, so that figures start at zero."""
    saved = memory.pool
    memory.pool = HostPool(limit_bytes=256 << 20)
    import veda._memory as public

    public.pool = memory.pool
    try:
        yield memory.pool
    finally:
        memory.pool = saved
        public.pool = saved


def test_returned_arrays_are_what_was_asked(fresh_pool):
    for make in (veda.empty, veda.zeros):
        for shape, dtype in [
            (BIG, np.float64),
            ((7,), np.int8),
            (300_001, "complex64"),
            ((), "f4"),
        ]:
            a = make(shape, dtype)
            want = shape if isinstance(shape, tuple) else (shape,)
            assert a.shape == want and a.dtype == np.dtype(dtype)
            assert a.flags.c_contiguous and a.flags.writeable
            assert a.ctypes.data % 64 == 0, (shape, dtype, a.ctypes.data)
            a[...] = 1
            assert (a == 1).all()


def test_a_buffer_is_reused_when_its_last_user_goes(fresh_pool):
    a = veda.empty(BIG)
    address = a.ctypes.data
    del a
    gc.collect()
    b = veda.empty(BIG)
    assert b.ctypes.data == address
    info = fresh_pool.info()
    assert (info["hits"], info["misses"]) == (1, 1), info


def test_a_view_outliving_its_array_keeps_the_memory(fresh_pool):
    """The pitfall: NumPy collapses .base chains, so a finalizer on the returned array would
    hand the memory back while a view of it still reads it."""
    a = veda.empty(BIG)
    a[...] = 7.0
    view = a[10:20, ::3].T  # a view of a view
    flat = view.reshape(-1)  # a copy or a view, either keeps its data
    del a
    gc.collect()
    others = [veda.empty(BIG) for _ in range(4)]  # would reuse the buffer if it had been freed
    for o in others:
        o[...] = -1.0
    assert (view == 7.0).all() and (flat == 7.0).all()
    assert fresh_pool.info()["lent"] == 5
    del view, flat
    gc.collect()
    assert fresh_pool.info()["lent"] == 4


def test_zeros_zeroes_reused_memory(fresh_pool):
    a = veda.empty(BIG)
    a[...] = 3.0
    del a
    z = veda.zeros(BIG)
    assert fresh_pool.info()["hits"] == 1
    assert not z.any()


def test_empty_like_keeps_shape_and_dtype_in_c_order(fresh_pool):
    x = np.asfortranarray(np.ones((400, 500), np.float32))
    y = veda.empty_like(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
    assert veda.empty_like([[1, 2, 3]]).shape == (1, 3)


def test_small_requests_bypass_the_pool(fresh_pool):
    a = veda.empty(MIN_POOLED_BYTES // 8 - 1)
    assert a.ctypes.data % 64 == 0
    info = fresh_pool.info()
    assert info["unpooled"] == 1 and info["misses"] == 0 and info["lent"] == 0


def test_the_bound_on_free_bytes_is_kept(fresh_pool):
    fresh_pool.limit_bytes = 16 << 20  # two 8 MB buffers
    arrays = [veda.empty(BIG) for _ in range(4)]
    del arrays
    gc.collect()
    info = fresh_pool.info()
    assert info["free_bytes"] <= 16 << 20 and info["buffers"] == 2, info
    fresh_pool.limit_bytes = 8 << 20
    assert fresh_pool.info()["buffers"] == 1
    fresh_pool.clear()
    assert fresh_pool.info()["free_bytes"] == 0 and fresh_pool.info()["buffers"] == 0


def test_first_touch_arrays_come_from_their_own_buffers(fresh_pool):
    a = veda.empty(BIG, first_touch=True)
    assert not a.any()  # the first touch wrote zeros
    a[...] = 5.0
    del a
    b = veda.empty(BIG)  # not first-touched: does not take a's buffer
    assert fresh_pool.info()["hits"] == 0
    c = veda.zeros(BIG, first_touch=True)  # takes it, and zeroes it
    assert fresh_pool.info()["hits"] == 1 and not c.any()
    del b


def test_memory_stats_reports_both_pools(fresh_pool):
    a = veda.empty(BIG)
    stats = veda.memory_stats()
    assert stats["host"]["lent_bytes"] == 8 << 20
    assert set(stats["host"]) >= {"free_bytes", "lent_bytes", "hits", "misses", "buffers"}
    assert stats["device"] == memory.memory_stats()["device"]
    assert "cached_bytes" in stats["device"]
    assert veda.hardware.memory_pool() is memory.pool
    del a


def test_many_threads_share_the_pool(fresh_pool):
    errors = []

    def work(k):
        try:
            for _ in range(30):
                a = veda.empty(300_000 if k % 2 else BIG)
                a[...] = k
                v = a[::7]
                del a
                assert (v == k).all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert not errors, errors
    info = fresh_pool.info()
    assert info["lent"] == 0 and info["lent_bytes"] == 0, info
    assert info["hits"] + info["misses"] == 8 * 30 and info["hits"] > 0, info


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: veda.empty(-1), ["shape", ">= 0", "-1"]),
        (lambda: veda.empty((3, -2)), ["shape", "entry 1", "-2"]),
        (lambda: veda.empty(2.5), ["shape", "int"]),
        (lambda: veda.zeros((2, 2.0)), ["shape", "entry 1"]),
        (lambda: veda.empty(True), ["shape"]),
        (lambda: veda.empty(3, "no such dtype"), ["dtype", "no such dtype"]),
        (lambda: veda.empty(3, object), ["dtype", "object"]),
        (lambda: veda.empty(3, [("a", "f8"), ("b", "O")]), ["dtype", "Python objects"]),
        (lambda: veda.empty(3, "U"), ["dtype", "size"]),
        (lambda: veda.empty(3, first_touch=1), ["first_touch", "True or False"]),
        (lambda: veda.empty_like(np.ones(3), first_touch="yes"), ["first_touch"]),
    ],
)
def test_bad_requests_are_refused_in_plain_words(call, words):
    with pytest.raises(veda.LaunchError) as info:
        call()
    for word in words:
        assert word in str(info.value), str(info.value)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "owner, name, makers",
    [
        # zeroing reused memory: after the finalizer is attached
        (memory.ctypes, "memset", (veda.zeros,)),
        (memory.np, "frombuffer", (veda.zeros, veda.empty)),
        (memory.weakref, "finalize", (veda.zeros, veda.empty)),  # before it is attached
        (memory, "_new_map", (veda.zeros, veda.empty)),  # a miss: no buffer of the class free
    ],
)
def test_an_interrupted_allocation_gives_its_buffer_back(
    fresh_pool, monkeypatch, owner, name, makers
):
    """A KeyboardInterrupt inside take_store, before the caller has the array, must not leave
    the buffer counted as lent, lose it, or give it back twice (once from the handler, once
    from the finalizer of the memory the interrupted call had wrapped)."""
    a = veda.zeros(1 << 20)
    del a
    gc.collect()
    assert fresh_pool.info()["buffers"] == 1
    if name == "_new_map":
        fresh_pool.clear()
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, _interrupt)
        for make in makers:
            with pytest.raises(KeyboardInterrupt):
                make(1 << 20)
    gc.collect()
    info = fresh_pool.info()
    assert info["lent"] == 0 and info["lent_bytes"] == 0, info
    assert info["buffers"] <= 1 and info["free_bytes"] == info["buffers"] * (8 << 20), info
    b, c = veda.empty(1 << 20), veda.empty(1 << 20)  # two different buffers, never the same
    assert b.ctypes.data != c.ctypes.data
    assert fresh_pool.info()["lent"] == 2
    del b, c
    gc.collect()
    assert fresh_pool.info()["lent"] == 0


def test_sub_array_dtypes_add_their_shape_as_numpy_does(fresh_pool):
    for make in (veda.empty, veda.zeros):
        for shape, dtype in [
            (100_000, np.dtype(("f8", (3,)))),
            ((4, 5), np.dtype(("i2", (2, 3)))),
            (7, np.dtype(("(2,)f4", (3,)))),  # a sub-array of sub-arrays
        ]:
            a = make(shape, dtype)
            want = np.empty(shape, dtype)
            assert a.shape == want.shape and a.dtype == want.dtype, (a.shape, a.dtype)
            assert a.flags.c_contiguous and a.ctypes.data % 64 == 0
    assert veda.empty_like(np.empty(100_000, np.dtype(("f8", (3,))))).shape == (100_000, 3)


@pytest.mark.parametrize("shape", [2**46, (1 << 23, 1 << 23), sys.maxsize // 8])
def test_a_request_too_big_for_the_host_is_a_memory_error(fresh_pool, shape):
    """512 TiB is past the 47-bit user address space of x86-64 whatever the overcommit
    setting; sys.maxsize // 8 float64s round up to a size class past sys.maxsize."""
    with pytest.raises(MemoryError, match="Unable to allocate") as info:
        veda.empty(shape)
    nbytes = np.prod(shape, dtype=object) * 8
    assert f"({nbytes} bytes)" in str(info.value) and "float64" in str(info.value)
    info = fresh_pool.info()
    assert info["lent"] == 0 and info["lent_bytes"] == 0, info


def test_a_failed_map_is_a_memory_error(fresh_pool, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(memory.mmap, "mmap", refuse)
    with pytest.raises(MemoryError, match=r"Unable to allocate 8.00 TiB \(8796093022208 bytes"):
        veda.empty(2**40)
    assert fresh_pool.info()["lent"] == 0


@pytest.mark.parametrize(
    "shape", [(2**62, 2**62, 0), (0, 2**63), (2**61, 2**3), (sys.maxsize // 8 + 1,)]
)
def test_a_shape_whose_bytes_overflow_is_refused_as_numpy_does(shape):
    with pytest.raises(ValueError, match="too big|Maximum allowed dimension"):
        np.empty(shape)  # what NumPy does
    with pytest.raises(veda.LaunchError, match="shape") as info:
        veda.empty(shape)
    assert "too big" in str(info.value)
    assert veda.empty((2**40, 0)).shape == np.empty((2**40, 0)).shape  # fits: allowed


@pytest.mark.parametrize("limit", [-1, 1.5, "1GB", True, None])
def test_a_bad_limit_is_refused(limit):
    p = HostPool()
    with pytest.raises(veda.ConfigError, match="limit_bytes"):
        p.limit_bytes = limit
    with pytest.raises(veda.ConfigError, match="limit_bytes"):
        HostPool(limit_bytes=limit)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork here")
def test_a_forked_child_does_not_deadlock_on_the_pool_lock():
    code = textwrap.dedent(
        """
        import os, sys, threading, time
        import veda
        from veda._hardware import memory
        keep = veda.empty((1000, 1000)); del keep  # one free buffer
        held, release = threading.Event(), threading.Event()
        def inside():  # another thread is inside the pool when the process forks
            with memory.pool._lock:
                held.set()
                release.wait()
        t = threading.Thread(target=inside); t.start(); held.wait()
        pid = os.fork()
        if pid == 0:
            a = veda.empty((1000, 1000))  # would deadlock on an inherited, held lock
            a[...] = 1
            info = memory.pool.info()
            os._exit(0 if info["buffers"] == 0 and info["misses"] >= 1 else 3)
        release.set(); t.join()
        for _ in range(400):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                sys.exit(os.waitstatus_to_exitcode(status))
            time.sleep(0.05)
        os.kill(pid, 9)
        sys.exit(7)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])


def test_the_pools_are_in_telemetry():
    import json

    import veda

    a = veda.zeros(1 << 20)
    del a
    b = veda.zeros(1 << 20)  # a hit, after the first allocation's miss (or earlier tests')
    snap = veda.metrics()
    host = snap.memory.pools["host"]
    assert host == veda.memory_stats()["host"] and host["hits"] >= 1 and host["lent"] >= 1
    text = snap.to_prometheus()
    lent = next(
        ln for ln in text.splitlines() if ln.startswith('veda_pool_bytes{pool="host",state="lent"}')
    )
    assert float(lent.rsplit(" ", 1)[1]) == host["lent_bytes"] > 0
    assert 'veda_pool_hits_total{pool="host"}' in text
    assert "device" in json.loads(snap.to_json())["memory"]["pools"]
    del b
