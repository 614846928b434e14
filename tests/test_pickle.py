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
    assert cloudpickle.loads(blob) is k  # in the process that made it: the kernel itself
    from veda._kernel import base

    base._originals.pop(k.token)  # as in another process
    a, b = cloudpickle.loads(blob), cloudpickle.loads(blob)
    assert a is b and a is not k and a.token == k.token
    x, out = np.arange(5.0), np.empty(5)
    a[5](x, out)
    np.testing.assert_array_equal(out, 3.0 * x)
    other = cloudpickle.loads(cloudpickle.dumps(_local_kernel(4.0)))  # same code, new constant
    assert other is not a
    other[5](x, out)
    np.testing.assert_array_equal(out, 4.0 * x)


def _helper_and_kernel(c):
    @veda.func
    def times_c(v):
        return c * v

    @veda.kernel
    def apply(i, x, out):
        out[i] = times_c(x[i])

    return apply


def test_a_kernel_calling_a_helper_travels_by_value():
    from veda._kernel import base

    k = _helper_and_kernel(3.0)
    blob = cloudpickle.dumps(k)
    base._originals.pop(k.token)
    back = cloudpickle.loads(blob)
    x, out = np.arange(4.0), np.empty(4)
    back[4](x, out)
    np.testing.assert_array_equal(out, 3.0 * x)


def test_a_kernel_copies_to_itself():
    import copy

    k = _local_kernel(2.0)
    assert copy.copy(k) is k and copy.deepcopy(k) is k and copy.deepcopy([k])[0] is k


def test_a_kernel_sent_by_name_that_is_not_there_is_a_veda_error():
    from veda._kernel.base import _named

    with pytest.raises(veda.LaunchError, match="sent by name.*register_pickle_by_value"):
        _named(veda.Kernel, "veda_kernels.blas1", "no_such_kernel")


def test_veda_dask_is_absent_not_broken_without_dask():
    code = (
        "import sys; sys.modules['dask'] = None\n"
        "import veda\n"
        "assert not hasattr(veda, 'dask') and 'dask' not in dir(veda)\n"
        "try:\n    veda.dask\nexcept AttributeError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'veda[dask]'" in proc.stdout


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
