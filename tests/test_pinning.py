"""Pinning the workers of parallel launches: the placement plans, real masks on this machine
read back from every worker, restoring them, the layers that refuse, settings and fork."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import warnings

import numba
import numpy as np
import pytest

import veda
from veda._hardware import pinning
from veda._hardware.pinning import pinner, plan

LINUX = hasattr(os, "sched_setaffinity")


def test_plans_fill_a_node_or_deal_round_the_nodes():
    two = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan("compact", 6, two) == [0, 1, 2, 3, 4, 5]
    assert plan("scatter", 6, two) == [0, 4, 1, 5, 2, 6]
    four = [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert plan("scatter", 4, four) == [0, 2, 4, 6]
    assert plan("compact", 4, four) == [0, 1, 2, 3]
    assert plan("scatter", 4, [list(range(16))]) == [0, 4, 8, 12]
    assert plan("compact", 3, [[5], [], [9]]) == [5, 9, 5]  # empty nodes skipped
    with pytest.raises(ValueError, match="no CPU"):
        plan("compact", 2, [[], []])


_probe = None


def _worker_masks() -> dict[int, set[int]]:
    """Each worker thread's CPU mask, read from inside a parallel region (by thread id)."""
    global _probe
    if _probe is None:
        libc = ctypes.CDLL(None, use_errno=True)
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t)
        getaff = proto(("sched_getaffinity", libc))

        @numba.njit(parallel=True)
        def probe(out, seen, n):
            for _ in numba.prange(n):
                t = numba.get_thread_id()
                getaff(0, out.shape[1], out[t].ctypes.data)
                seen[t] = 1

        _probe = probe
    n = veda.max_threads()
    out = np.zeros((n, pinning.MASK_BYTES), np.uint8)
    seen = np.zeros(n, np.int64)
    _probe(out, seen, n)
    bits = np.unpackbits(out, axis=1, bitorder="little")
    return {t: set(np.flatnonzero(bits[t]).tolist()) for t in range(n) if seen[t]}


@veda.kernel
def _inc(i, x):
    x[i] += 1.0


@pytest.mark.skipif(not LINUX, reason="no sched_setaffinity on this platform")
@pytest.mark.parametrize("mode", ["compact", "scatter", True])
def test_every_worker_is_pinned_then_restored(mode):
    if veda.threading_layer() == "tbb":
        pytest.skip("TBB refuses pinning (tested below)")
    before = _worker_masks()
    own = os.sched_getaffinity(0)
    x = np.zeros(50_000)
    with veda.config(pin_threads=mode, target="parallel"):
        _inc[x.size](x)
        cpus = pinner.cpus()
        assert pinner.mode() == ("compact" if mode is True else mode)
        masks = _worker_masks()
    want = plan(pinner.mode() or "compact", veda.max_threads(), [sorted(own)])
    assert cpus == want
    for t, mask in masks.items():
        assert mask == {cpus[t]}, (t, mask, cpus)
    with veda.config(target="parallel"):  # the first launch without pin_threads restores
        _inc[x.size](x)
    assert pinner.mode() is None
    assert _worker_masks() == before
    assert os.sched_getaffinity(0) == own
    assert (x == 2.0).all()


def test_layers_and_platforms_that_cannot_pin_say_so(monkeypatch):
    from veda._hardware import cpu

    monkeypatch.setattr(cpu, "threading_layer", lambda: "tbb")
    reason = pinning.unavailable_reason("tbb")
    assert "TBB" in reason
    monkeypatch.setattr(veda._files, "_warned", set())
    x = np.zeros(50_000)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with veda.config(pin_threads="scatter", target="parallel"):
            _inc[x.size](x)
    assert any("pin_threads='scatter' is not applied" in str(w.message) for w in seen)
    assert pinner.mode() is None and (x == 1.0).all()
    assert "every Python thread" in pinning.unavailable_reason("workqueue")
    monkeypatch.delattr(os, "sched_setaffinity")
    assert "sched_setaffinity" in pinning.unavailable_reason("omp")


@pytest.mark.parametrize("value", ["tight", 2, 1.0, "Compact"])
def test_bad_pin_modes_name_the_setting(value):
    with pytest.raises(veda.ConfigError, match=r"unknown pin_threads=.*expected True, False"):
        with veda.config(pin_threads=value):
            pass


def test_pin_threads_from_the_environment():
    assert veda.Config.from_env({"VEDA_PIN_THREADS": "scatter"}).pin_threads == "scatter"
    assert veda.Config.from_env({"VEDA_PIN_THREADS": "1"}).pin_threads == "compact"
    assert veda.Config.from_env({"VEDA_PIN_THREADS": "off"}).pin_threads is False
    with pytest.raises(veda.ConfigError, match="VEDA_PIN_THREADS='wide'.*compact or scatter"):
        veda.Config.from_env({"VEDA_PIN_THREADS": "wide"})


@pytest.mark.skipif(not LINUX or not hasattr(os, "fork"), reason="needs fork and affinity")
def test_a_fork_child_gets_the_mask_its_thread_had_before_pinning():
    code = textwrap.dedent(
        """
        import os, numpy as np, veda
        @veda.kernel
        def inc(i, x):
            x[i] += 1.0
        own = os.sched_getaffinity(0)
        x = np.zeros(50_000)
        with veda.config(pin_threads="compact", target="parallel"):
            inc[x.size](x)
            assert len(os.sched_getaffinity(0)) == 1 or len(own) == 1
            pid = os.fork()
            if pid == 0:
                os._exit(0 if os.sched_getaffinity(0) == own else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "child 0" in out.stdout, out.stdout + out.stderr[-2000:]
