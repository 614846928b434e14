"""Fixes found in review, each pinned by a test that failed before it."""

from __future__ import annotations

import time

import numpy as np
import pytest

import veda


@veda.kernel
def put(i, x):
    x[i] = 1.0


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


def test_a_refused_scope_leaves_no_scope_behind():
    old = veda.get_config()
    try:
        veda.set_config(target="cpu")
        with pytest.raises(veda.ConfigError):
            with veda.config(threads=1):
                pass
        assert veda.get_config().threads is None  # the failed scope is not in force
    finally:
        veda.set_config(target=old.target)


def test_float_domains_are_refused_even_after_an_int_one():
    put[4](np.zeros(4))
    for bad in (4.0, True, (4.0,)):
        with pytest.raises(veda.LaunchError, match="domain"):
            put[bad](np.zeros(4))


def test_exclusive_scan_in_place():
    x = np.arange(1, 200_001, dtype=np.int64)
    expected = np.concatenate([[0], np.cumsum(x)[:-1]])
    veda.scan(x, out=x, exclusive=True)
    np.testing.assert_array_equal(x, expected)


def test_a_schedule_setting_implies_parallel_for_the_dispatcher():
    veda.telemetry.reset()
    x = np.zeros(200_000)
    with veda.config(schedule="static"):
        for _ in range(20):
            put[x.size](x)
    targets = {c.target for c in veda.metrics().kernel(f"{__name__}.put").configs}
    assert targets == {"parallel"}


@pytest.mark.parametrize("mode", [{"deterministic": True}, {"profile": True}])
def test_special_launchers_check_arguments_too(mode):
    with veda.config(**mode):
        with pytest.raises(veda.LaunchError, match="'x'.*list"):
            veda.launch(total, 3, [1.0, 2.0, 3.0], target="parallel")


def test_read_only_array_subclasses_are_refused(tmp_path):
    path = tmp_path / "data.bin"
    np.zeros(16).tofile(path)
    ro = np.memmap(path, dtype=np.float64, mode="r")
    with pytest.raises(veda.LaunchError, match="read-only"):
        put[16](ro)


def test_a_redefined_kernel_sees_its_new_global_array():
    # A notebook cell run again with new data: the same kernel text, another array.  Numba
    # freezes a global array into the compiled code, so each must get its own module.
    results = []
    for weights in (np.ones(4), np.full(4, 2.0)):
        namespace = {"veda": veda, "W": weights}
        exec(
            "@veda.kernel\ndef scaled(i, x, out):\n    out[i] = W[i] * x[i]\n",
            namespace,
        )
        out = np.zeros(4)
        namespace["scaled"][4](np.ones(4), out)
        results.append(out.tolist())
    assert results == [[1.0] * 4, [2.0] * 4]


@veda.kernel
def _nested_tuple(i, t, out):
    out[i] = t[0][0][i] * t[0][1] + t[1]


def test_a_parallel_loop_numba_cannot_build_is_a_veda_error():
    # Numba's parallel region cannot take a nested tuple holding an array: its raw TypeError
    # ("scalar type ... given for non scalar argument") reached the user (adversarial review).
    x = np.arange(8.0)
    out = np.zeros(8)
    veda.launch(_nested_tuple, 8, ((x, 2.0), 3.0), out, target="cpu")
    np.testing.assert_array_equal(out, x * 2.0 + 3.0)
    with pytest.raises(veda.KernelDefinitionError, match="parallel loop"):
        veda.launch(_nested_tuple, 8, ((x, 2.0), 3.0), out, target="parallel")


@veda.kernel
def _nested_in_launch(i, t, out):
    out[i] = t[0][0][i] * t[0][1] + t[1]


@veda.kernel
def _nested_in_background(i, t, out):
    out[i] = t[0][0][i] * t[0][1] + t[1]


@pytest.fixture
def idle_machine(monkeypatch):
    """Parallel candidates whatever else the machine runs meanwhile (the other test worker)."""
    from veda.scheduler import _dispatch

    if veda.max_threads() < 2:
        pytest.skip("needs 2 threads")
    monkeypatch.setattr(_dispatch.dispatcher.load, "free_cores", lambda: veda.max_threads())


@pytest.mark.parametrize("background", [False, True])
def test_an_adaptive_launch_drops_a_target_whose_loop_cannot_be_built(
    tmp_path, background, idle_machine
):
    # The same kernel launched adaptively: once the serial loop ran, the exploration compiled
    # the parallel one, and its error ended the launch of a kernel that runs fine on "cpu".
    # (A kernel per case: definitions of the same source share their dispatcher.)
    scaled = _nested_in_background if background else _nested_in_launch
    n = 1 << 17
    x = np.arange(float(n))
    out = np.zeros(n)
    with (
        veda.config(cache_dir=str(tmp_path), background_compile=background),
        pytest.warns(RuntimeWarning, match="its 'parallel' loop cannot be compiled") as seen,
    ):
        deadline = time.monotonic() + 120
        while True:
            out[:] = 0.0
            scaled[n](((x, 2.0), 3.0), out)
            np.testing.assert_array_equal(out, x * 2.0 + 3.0)
            if veda.explain(scaled).rows[0]["decision"] or time.monotonic() > deadline:
                break
    (row,) = veda.explain(scaled).rows
    assert row["decision"].target == "cpu" and row["source"] == "explored"
    parallel = [t for t in row["trials"] if t["decision"].target == "parallel"]
    assert parallel and all("cannot be compiled" in t["pruned"] for t in parallel)
    assert len([w for w in seen if "cannot be compiled" in str(w.message)]) == 1
    with pytest.raises(veda.KernelDefinitionError, match="parallel loop"):  # asked for: refused
        veda.launch(scaled, n, ((x, 2.0), 3.0), out, target="parallel")


def test_a_serial_loop_that_cannot_be_built_is_raised_at_once(idle_machine):
    # No target is dropped before another ran: a body that does not compile fails the first
    # launch, with the serial loop's error (not after compiling the parallel one too).
    @veda.kernel
    def broken(i, x, out):
        out[i] = x[i].no_such_attribute

    x = np.ones(1 << 17)
    with pytest.raises(veda.KernelDefinitionError, match="no_such_attribute"):
        broken[x.size](x, np.zeros_like(x))
    (row,) = veda.explain(broken).rows
    assert not any(t["pruned"] for t in row["trials"])


@veda.kernel
def _tuple_of_arrays(i, t, out):
    out[i] = t[0][i] + t[1][0]


def test_a_decided_target_that_cannot_compile_new_arguments_is_left_for_another(
    tmp_path, idle_machine
):
    # The tuner is shared by every argument type of a kernel and size: decided on "parallel"
    # for arguments that it compiles for, an adaptive launch with a tuple holding a tuple (no
    # parallel loop for it) failed (adversarial review), in the process and from the cache.
    n = 1 << 17
    x = np.arange(float(n))
    out = np.zeros(n)
    with veda.config(cache_dir=str(tmp_path), background_compile=False):
        _tuple_of_arrays[n]((x, np.array([1.0])), out)
        (entry,) = [e for e in _tuple_of_arrays._fast.values() if e.tuning is not None]
        parallel = next(d for d in entry.tuning.tuner.candidates if d.target == "parallel")
        entry.tuning.tuner.adopt(parallel, float("nan"), "test")
        _tuple_of_arrays[n]((x, np.array([1.0])), out)
        assert veda.explain(_tuple_of_arrays).rows[0]["decision"] == parallel
        with pytest.warns(RuntimeWarning, match="decides without the 'parallel' target"):
            for _ in range(50):
                out[:] = 0.0
                _tuple_of_arrays[n]((x, (1.0,)), out)
                np.testing.assert_array_equal(out, x + 1.0)
        (row,) = veda.explain(_tuple_of_arrays).rows
        assert row["decision"] is None or row["decision"].target == "cpu"
        pruned = [t["pruned"] for t in row["trials"] if t["decision"].target == "parallel"]
        assert pruned and all("cannot be compiled" in p for p in pruned)
