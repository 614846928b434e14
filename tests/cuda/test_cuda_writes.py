"""The "cuda" target copies back what the kernel may write, refuses arguments that share memory,
and the launch path's per-argument rules (residency, the fixed policy, argument checks).

Runs under the simulator with the rest of tests/cuda (see test_cuda_target.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from cudahelpers import delta, fake_gpu_costs, on_cuda

import veda
from veda import atomic_add as add_at

pytestmark = pytest.mark.skipif(
    veda.cuda.explicit_reason() is not None, reason=str(veda.cuda.explicit_reason())
)


# -- writes the "written" analysis cannot see ---------------------------------------------------


@veda.kernel
def through_alias(i, x, out):
    o = out
    o[i] = 2 * x[i]


@veda.kernel
def through_view(i, x, out):
    row = out[i]
    row[0] = x[i]


@veda.kernel
def renamed_atomic(i, x, counts):
    add_at(counts, int(x[i]) % 4, 1)


@veda.func
def _double(v, i):
    return 2.0 * v[i]


@veda.kernel
def reads_x(i, x, out):
    out[i] = _double(x, i) + x.shape[0] + len(x)


def test_writes_through_an_alias_reach_the_host():
    x = np.arange(20.0)
    out = np.zeros(20)
    on_cuda(through_alias, 20, x, out)
    np.testing.assert_array_equal(out, 2 * x)


def test_writes_through_a_view_reach_the_host():
    x = np.arange(10.0)
    out = np.zeros((10, 3))
    on_cuda(through_view, 10, x, out)
    np.testing.assert_array_equal(out[:, 0], x)
    np.testing.assert_array_equal(out[:, 1:], 0)


def test_a_renamed_atomic_writes_reach_the_host():
    x = np.arange(40.0)
    counts = np.zeros(4, np.int64)
    on_cuda(renamed_atomic, 40, x, counts)
    np.testing.assert_array_equal(counts, [10, 10, 10, 10])
    assert renamed_atomic.written == ["counts"]  # the CPU's analysis sees it too


def test_a_provably_read_only_input_is_not_copied_back():
    x = np.arange(16.0)
    out = np.zeros(16)
    before = veda.cuda.transfer_stats()
    on_cuda(reads_x, 16, x, out)
    np.testing.assert_array_equal(out, 2 * x + 32)
    moved = delta(before)
    assert moved["host_to_device_bytes"] == 2 * 128
    assert moved["device_to_host_bytes"] == 128 and moved["device_to_host_copies"] == 1


@veda.kernel
def binds_x(i, x, out):
    v = x[i]  # a name bound to an element (or a view): x may be written
    out[i] = v


def test_a_read_only_numpy_array_is_never_copied_back():
    x = np.arange(20.0)
    x.flags.writeable = False
    out = np.zeros(20)
    assert binds_x.form(1, 2).maybe_written == [0, 1]
    before = veda.cuda.transfer_stats()
    on_cuda(binds_x, 20, x, out)
    np.testing.assert_array_equal(out, x)
    assert delta(before)["device_to_host_copies"] == 1  # out only


# -- arguments that share memory ---------------------------------------------------------------


@veda.kernel
def even_odd(i, a, b):
    if i % 2 == 0:
        a[i] = 1
    else:
        b[i] = 2


def test_the_same_array_twice_is_refused_when_written():
    a = np.zeros(8)
    veda.launch(even_odd, 8, a, a, target="cpu")
    np.testing.assert_array_equal(a, [1, 2] * 4)
    a[:] = 0
    with pytest.raises(veda.LaunchError, match=r"'a' and 'b'.*same memory.*copy"):
        on_cuda(even_odd, 8, a, a)
    np.testing.assert_array_equal(a, 0)


def test_overlapping_views_are_refused_and_disjoint_ones_run():
    base = np.zeros(16)
    with pytest.raises(veda.LaunchError, match="same memory"):
        on_cuda(even_odd, 8, base[:8], base[4:12])
    on_cuda(even_odd, 8, base[:8], base[8:])  # disjoint halves of one array: fine
    np.testing.assert_array_equal(base, [1, 0] * 4 + [0, 2] * 4)


@veda.kernel
def add(i, x, y, out):
    out[i] = x[i] + y[i]


def test_a_read_only_input_passed_twice_runs():
    x = np.arange(8.0)
    out = np.zeros(8)
    on_cuda(add, 8, x, x, out)
    np.testing.assert_array_equal(out, 2 * x)


# -- host and device arguments on the launch path -------------------------------------------------


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend the simulator is a GPU for the dispatcher, with its costs injected."""
    fake_gpu_costs(monkeypatch)


@veda.kernel
def scale_a(i, a, x, out):
    out[i] = a * x[i]


@veda.kernel
def scale_b(i, a, x, out):
    out[i] = a * x[i]


def test_host_then_device_arrays_take_their_own_prepared_launch(fake_gpu):
    x = np.arange(40.0)
    out = np.zeros(40)
    before = veda.cuda.transfer_stats()
    scale_a[40](2.0, x, out)  # small: the CPU
    assert delta(before)["launches"] == 0
    np.testing.assert_array_equal(out, 2 * x)
    xd, outd = veda.to_device(x), veda.to_device(np.zeros(40))
    scale_a[40](3.0, xd, outd)  # device arrays: the GPU, not "GPU array on target 'cpu'"
    assert delta(before)["launches"] == 1
    np.testing.assert_array_equal(veda.to_host(outd), 3 * x)


def test_device_then_host_arrays_do_not_pin_host_launches_to_the_gpu(fake_gpu):
    x = np.arange(40.0)
    xd, outd = veda.to_device(x), veda.to_device(np.zeros(40))
    before = veda.cuda.transfer_stats()
    scale_b[40](2.0, xd, outd)
    assert delta(before)["launches"] == 1
    out = np.zeros(40)
    for _ in range(5):
        scale_b[40](2.0, x, out)
    assert delta(before)["launches"] == 1  # the host launches ran on the CPU
    np.testing.assert_array_equal(out, 2 * x)


@veda.kernel
def scale_c(i, a, x, out):
    out[i] = a * x[i]


def test_device_arrays_under_the_fixed_policy_go_to_the_gpu(fake_gpu):
    x = np.arange(40.0)
    xd, outd = veda.to_device(x), veda.to_device(np.zeros(40))
    before = veda.cuda.transfer_stats()
    with veda.config(policy="fixed"):
        scale_c[40](2.0, xd, outd)
        out = np.zeros(40)
        scale_c[40](2.0, x, out)  # host arrays under the fixed policy: the CPU
    assert delta(before)["launches"] == 1
    np.testing.assert_array_equal(veda.to_host(outd), 2 * x)
    np.testing.assert_array_equal(out, 2 * x)
    with veda.config(policy="fixed"), pytest.raises(veda.LaunchError, match="GPU array"):
        veda.launch(scale_c, 40, 2.0, xd, outd, target="cpu")  # explicit: still refused


# -- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, words",
    [
        ([1.0, 2.0, 3.0, 4.0], "lists are not accepted"),
        (np.zeros(4, np.float16), "float16 arrays are not supported by Numba on the GPU"),
        (np.array([None] * 4, dtype=object), "booleans or numbers, not object"),
        ("text", "NumPy or GPU arrays"),
    ],
)
def test_bad_arguments_are_refused_naming_them(bad, words):
    out = np.zeros(4)
    with pytest.raises(veda.LaunchError, match=rf"argument 'x' is .*{words}"):
        on_cuda(scale_a, 4, 2.0, bad, out)
    on_cuda(scale_a, 4, 2.0, np.ones(4), out)  # good arguments still run after a refusal
    np.testing.assert_array_equal(out, 2.0)


def test_a_bad_gpu_array_is_refused_naming_it():
    out = veda.to_device(np.zeros(4))
    with pytest.raises(veda.LaunchError, match="argument 'x' .*float16"):
        on_cuda(scale_a, 4, 2.0, veda.to_device(np.zeros(4, np.float16)), out)


@veda.kernel
def writes_through_a_view(i, x, out):
    row = x[i:]
    row[0] = 1.0
    out[i] = x[i]


def test_a_read_only_array_the_kernel_writes_is_refused_as_on_the_cpu():
    x = np.arange(20.0)
    x.flags.writeable = False
    out = np.zeros(20)
    messages = []
    for target in ("cpu", "cuda"):
        with pytest.raises(veda.LaunchError, match="read-only") as info:
            veda.launch(writes_through_a_view, 20, x, out, target=target)
        messages.append(str(info.value))
    assert all("'x'" in m for m in messages)
    assert not out.any()  # refused before anything ran
