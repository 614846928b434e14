"""Kernels pickle: by name where their module holds them, else by value (cloudpickle, as Dask
sends tasks); a process keeps one kernel per function received, so it compiles once."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import veda
from veda_kernels.blas1 import saxpy

cloudpickle = pytest.importorskip("cloudpickle")


def test_a_module_level_kernel_pickles_by_name():
    assert pickle.loads(pickle.dumps(saxpy)) is saxpy


def _local_kernel(scale):
    @veda.kernel
    def times(i, x, out):
        out[i] = scale * x[i]

    return times


def test_a_local_kernel_travels_by_value_and_arrives_once_per_process():
    k = _local_kernel(3.0)
    blob = cloudpickle.dumps(k)
    a, b = cloudpickle.loads(blob), cloudpickle.loads(blob)
    assert a is b and a is not k
    x, out = np.arange(5.0), np.empty(5)
    a[5](x, out)
    np.testing.assert_array_equal(out, 3.0 * x)
    other = cloudpickle.loads(cloudpickle.dumps(_local_kernel(4.0)))  # same code, new constant
    assert other is not a
    other[5](x, out)
    np.testing.assert_array_equal(out, 4.0 * x)


def test_options_travel_with_the_kernel():
    @veda.kernel(reduce={"hist": "sum"}, ndim=1)
    def count(i, x, hist):
        hist[int(x[i])] += 1

    back = cloudpickle.loads(cloudpickle.dumps(count))
    assert back.private == {"hist": "sum"} and back.ndim == 1
    hist = np.zeros(3, np.int64)
    back[6](np.array([0.0, 1, 1, 2, 2, 2]), hist)
    assert hist.tolist() == [1, 2, 3]


def test_a_kernel_sent_to_a_new_process_runs_there(tmp_path):
    k = _local_kernel(2.0)
    path = tmp_path / "k.pkl"
    path.write_bytes(cloudpickle.dumps(k))
    code = textwrap.dedent(f"""
        import pickle, numpy as np
        k = pickle.loads(open({str(path)!r}, "rb").read())
        out = np.empty(3); k[3](np.arange(3.0), out); print(out.tolist())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0.0, 2.0, 4.0]"
