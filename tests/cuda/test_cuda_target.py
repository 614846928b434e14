"""The "cuda" target: every gallery kernel, the reductions, the kernel language, arrays and errors.

Runs under Numba's CUDA simulator in its own process (tests/test_cuda.py starts it with
NUMBA_ENABLE_CUDASIM=1 VEDA_TEST_CUDA=1), or on a real GPU from bench/gpu_check.sh.  Sizes are
tiny: the simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import numpy as np
import pytest
from cudahelpers import delta, fake_gpu_costs, on_cuda
from numba import cuda

import veda
from veda import scheduler
from veda_kernels import GALLERY

SIM = veda.cuda.simulator_enabled()
pytestmark = pytest.mark.skipif(
    veda.cuda.explicit_reason() is not None, reason=str(veda.cuda.explicit_reason())
)


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_gallery_matches_numpy_on_cuda(name):
    case = GALLERY[name]
    domain, args = case.make(1024 if name == "spmv_csr" else 200, np.random.default_rng(42))
    case.poison(args)
    case.check(domain, args, on_cuda(case.kernel, domain, *args))


@veda.kernel(reduce="sum")
def r_sum(i, x):
    return x[i]


@veda.kernel(reduce="prod")
def r_prod(i, x):
    return x[i]


@veda.kernel(reduce="min")
def r_min(i, x):
    return x[i]


@veda.kernel(reduce="max")
def r_max(i, x):
    return x[i]


@veda.kernel(reduce="sum")
def r_sum2(i, j, x):
    return x[i, j]


REDUCERS = {
    "sum": (r_sum, np.sum),
    "prod": (r_prod, np.prod),
    "min": (r_min, np.min),
    "max": (r_max, np.max),
}
# NumPy's rules: booleans and signed integers accumulate in int64, unsigned ones in uint64.
DTYPES = (
    np.float32,
    np.float64,
    np.int32,
    np.int64,
    np.bool_,
    np.uint8,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
)


def _values(op: str, dtype: type, n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    kind = np.dtype(dtype).kind
    if op == "prod":
        x = np.ones(n, dtype)
        if kind != "b":
            x[::29] = 2
        if kind in "if":
            x[5] = -1
        return x
    if kind == "b":
        return rng.random(n) < 0.5
    if kind == "u":
        return rng.integers(0, 100, n).astype(dtype)
    if kind == "i":
        return rng.integers(-100, 100, n).astype(dtype)
    return (rng.standard_normal(n) * 100).astype(dtype)


@pytest.mark.parametrize("op", sorted(REDUCERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_reductions_match_numpy(op, dtype):
    k, ref = REDUCERS[op]
    x = _values(op, dtype, 301)  # not a multiple of any block size
    got = on_cuda(k, x.size, x)
    expected = ref(x)
    assert got.dtype == expected.dtype
    if op in ("sum", "prod") and np.dtype(dtype).kind in "bi":
        assert got.dtype == np.int64
    if op in ("sum", "prod") and np.dtype(dtype).kind == "u":
        assert got.dtype == np.uint64
    if not np.issubdtype(dtype, np.floating):
        assert got == expected
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_reduction_over_a_2d_domain_and_the_empty_domain():
    x = np.arange(17 * 23, dtype=np.float64).reshape(17, 23)
    assert on_cuda(r_sum2, x.shape, x) == x.sum()
    empty = on_cuda(r_sum, 0, np.zeros(0, np.int32))
    assert empty == 0 and empty.dtype == np.int64


def test_min_propagates_nan_like_numpy():
    x = np.arange(100.0)
    x[37] = np.nan
    assert np.isnan(on_cuda(r_min, x.size, x))


def test_deterministic_reductions_repeat_bit_for_bit():
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    with veda.deterministic(seed=1):
        runs = {on_cuda(r_sum, x.size, x).tobytes() for _ in range(3)}
    assert len(runs) == 1
    np.testing.assert_allclose(np.frombuffer(runs.pop(), np.float32)[0], x.sum(), rtol=1e-4)


def _det_sum(i, x):
    return x[i]


@pytest.mark.skipif(not SIM, reason="sets the simulator's grid limit")
def test_deterministic_reductions_do_not_depend_on_the_grid(monkeypatch):
    """The grid of a deterministic reduction follows the domain: launches prepared under other
    grid limits (at most 1, 4 or 16 blocks; 1 forces one block to loop over the whole domain
    in the ordinary mode) give the same bits, where the ordinary reduction's grid follows them."""
    import veda.targets.cuda as cuda_target

    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    det, plain = set(), set()
    for limit in (1, 4, 16):
        monkeypatch.setattr(cuda_target, "SIM_MAX_BLOCKS", limit)
        k = veda.kernel(reduce="sum")(_det_sum)  # a fresh kernel: prepared under this limit
        with veda.deterministic(seed=1):
            det.add(on_cuda(k, x.size, x).tobytes())
        plain.add(on_cuda(veda.kernel(reduce="sum")(_det_sum), x.size, x).tobytes())
    assert len(det) == 1
    assert len(plain) > 1  # the ordinary grid does follow the limit: the check above has teeth


@veda.kernel
def saxpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


def test_only_written_numpy_arrays_are_copied_back():
    x, y, out = np.arange(100.0), np.ones(100), np.zeros(100)
    before = veda.cuda.transfer_stats()
    on_cuda(saxpy, 100, 2.0, x, y, out)
    moved = delta(before)
    np.testing.assert_array_equal(out, 2 * x + 1)
    assert moved["host_to_device_copies"] == 3
    assert moved["device_to_host_copies"] == 1
    assert moved["device_to_host_bytes"] == out.nbytes
    assert moved["launches"] == 1


def test_non_contiguous_numpy_arrays_are_written_back():
    x = np.arange(40.0)
    out = np.zeros((20, 2))[:, 0]  # a strided view
    on_cuda(saxpy, 20, 1.0, x[::2], x[:20], out)
    np.testing.assert_array_equal(out, x[::2] + x[:20])


def test_device_arrays_are_used_in_place_and_outputs_stay_on_the_device():
    x, y = np.arange(64.0), np.ones(64)
    xd, yd = veda.to_device(x), veda.to_device(y)
    outd = veda.to_device(np.zeros(64))
    before = veda.cuda.transfer_stats()
    on_cuda(saxpy, 64, 3.0, xd, yd, outd)
    moved = delta(before)
    assert moved["host_to_device_bytes"] == 0 and moved["device_to_host_bytes"] == 0
    assert veda.cuda.is_device_array(outd)
    np.testing.assert_array_equal(veda.to_host(outd), 3 * x + 1)
    assert veda.to_device(xd) is xd
    assert veda.to_host(x) is x


def test_the_device_pool_reuses_buffers():
    from veda.targets.cuda import pool

    x, y, out = np.arange(32.0), np.ones(32), np.zeros(32)
    on_cuda(saxpy, 32, 1.0, x, y, out)
    np.testing.assert_array_equal(out, x + 1)
    misses = pool.info()["misses"]
    for a in (2.0, 3.0, 4.0):  # reused buffers hold the last launch's data: results must not
        out[:] = -1
        on_cuda(saxpy, 32, a, x, y, out)
        np.testing.assert_array_equal(out, a * x + 1)
    assert pool.info()["misses"] == misses


@veda.func
def square(v):
    return v * v


@veda.kernel
def language(i, seed, x, out, counts, lo, hi):
    tmp = veda.local_array(3, np.float64)
    for k in range(3):
        tmp[k] = x[i] + k
    z = complex(tmp[0], tmp[2])
    out[i, 0] = square(abs(z))
    out[i, 1] = veda.random.uniform(seed, i)
    out[i, 2] = veda.random.integers(seed, i, 0, 10)
    veda.atomic_add(counts, i % 4, 1)
    veda.atomic_min(lo, 0, x[i])
    veda.atomic_max(hi, 0, x[i])


def test_the_kernel_language_on_cuda():
    n = 64
    x = np.random.default_rng(5).standard_normal(n)
    out = np.zeros((n, 3))
    counts = np.zeros(4, np.int64)
    lo, hi = np.full(1, np.inf), np.full(1, -np.inf)
    on_cuda(language, n, np.uint64(9), x, out, counts, lo, hi)
    np.testing.assert_allclose(out[:, 0], x**2 + (x + 2) ** 2, rtol=1e-12)
    np.testing.assert_array_equal(out[:, 1], [veda.random.uniform(9, i) for i in range(n)])
    np.testing.assert_array_equal(out[:, 2], [veda.random.integers(9, i, 0, 10) for i in range(n)])
    np.testing.assert_array_equal(counts, [16, 16, 16, 16])
    assert lo[0] == x.min() and hi[0] == x.max()


@veda.kernel
def checked(i, x):
    if x[i] < 0:
        raise ValueError("negative input")
    x[i] = 2 * x[i]


@pytest.mark.parametrize("boundscheck", [False, True])
def test_an_exception_in_the_body_reaches_the_caller_with_its_index(boundscheck):
    x = np.ones(50)
    x[17] = -1
    # The generated kernel records the failing index in a flag the host reads after the
    # launch, with or without boundscheck (which a GPU does not check).
    with veda.config(boundscheck=boundscheck), pytest.raises(veda.KernelError) as info:
        on_cuda(checked, x.size, x)
    err = info.value
    assert err.kernel == "checked" and err.target == "cuda" and err.index == (17,)
    assert err.original_type is ValueError and "negative input" in str(err)
    assert (x[:17] == 2).all()  # the writes before the failure are copied back, as on the CPU


@veda.kernel
def checked_2d(i, j, x):
    if x[i, j] < 0:
        raise ValueError("negative input")
    x[i, j] = 2 * x[i, j]


@veda.kernel(reduce="sum")
def checked_sum(i, x):
    if x[i] < 0:
        raise ZeroDivisionError("negative input")
    return x[i]


def test_an_exception_in_a_2d_kernel_and_in_a_reduction_names_the_index():
    x = np.ones((6, 7))
    x[4, 5] = -1
    with pytest.raises(veda.KernelError) as info:
        on_cuda(checked_2d, x.shape, x)
    assert info.value.index == (4, 5) and info.value.original_type is ValueError
    v = np.ones(300)
    v[211] = -1
    with pytest.raises(veda.KernelError) as info:
        on_cuda(checked_sum, v.size, v)
    assert info.value.index == (211,) and info.value.original_type is ZeroDivisionError
    assert on_cuda(checked_sum, v.size, np.abs(v)) == 300.0  # the flag is reset between launches


def test_an_exception_with_device_arguments_still_reaches_the_caller():
    from numba import cuda

    x = np.ones(40)
    x[9] = -1
    d = cuda.to_device(x)
    where = r"at index 9 on target 'cuda'.*stay on the GPU"
    with pytest.raises(veda.KernelError, match=where) as info:
        on_cuda(checked, x.size, d)
    assert info.value.index == (9,)


@pytest.mark.skipif(not SIM, reason="a GPU checks no bounds: only the simulator raises")
def test_an_index_error_in_the_body_is_a_kernel_index_error():
    @veda.kernel
    def beyond(i, x, out):
        out[i] = x[i + 1]

    x, out = np.ones(8), np.zeros(8)
    with veda.config(boundscheck=True), pytest.raises(veda.KernelIndexError) as info:
        on_cuda(beyond, 8, x, out)
    assert info.value.index == (7,)


def test_telemetry_counts_cuda_launches_and_their_transfers():
    veda.telemetry.reset()
    x, y, out = np.arange(10.0), np.ones(10), np.zeros(10)
    for _ in range(2):
        on_cuda(saxpy, 10, 1.0, x, y, out)
    snap = veda.metrics()
    m = snap.kernel(f"{__name__}.saxpy")
    assert {c.target: c.launches for c in m.configs} == {"cuda": 2}
    assert m.bytes == 2 * 3 * 80  # x, y, out at their nbytes
    moved = snap.transfers[f"{__name__}.saxpy"]
    assert moved == {"host_to_device_bytes": 2 * 3 * 80, "device_to_host_bytes": 2 * 80}
    text = snap.to_prometheus()
    assert (
        f'veda_transfer_bytes_total{{kernel="{__name__}.saxpy",direction="device_to_host"}}' in text
    )


def test_device_arrays_on_the_cpu_targets_are_refused():
    xd = cuda.to_device(np.arange(8.0))
    out = np.zeros(8)
    for target in ("cpu", "parallel"):
        with pytest.raises(veda.LaunchError, match="GPU array"):
            veda.launch(saxpy, 8, 1.0, xd, np.ones(8), out, target=target)


@pytest.mark.skipif(not SIM, reason="simulator contract")
def test_the_simulator_runs_explicit_launches_but_is_never_picked():
    assert not veda.cuda.is_available()
    assert "simulator" in (veda.cuda.unavailable_reason() or "")
    assert veda.cuda.explicit_reason() is None
    assert not scheduler.gpu_available()
    n = 1 << 18
    x, y, out = np.ones(n), np.ones(n), np.zeros(n)
    before = veda.cuda.transfer_stats()
    for _ in range(30):
        saxpy[n](1.0, x, y, out)
    assert delta(before)["launches"] == 0
    for row in veda.explain(saxpy).rows:
        assert all(t["decision"][0] != "cuda" for t in row["trials"])


@veda.kernel
def scale(i, a, x, out):
    out[i] = a * x[i]


def test_an_adaptive_launch_with_device_arrays_goes_to_the_gpu(monkeypatch):
    # Pretend the simulator is a GPU for the dispatcher, with measured costs injected.
    fake_gpu_costs(monkeypatch)
    x = np.arange(40.0)
    xd, outd = veda.to_device(x), veda.to_device(np.zeros(40))
    before = veda.cuda.transfer_stats()
    scale[40](2.0, xd, outd)
    assert delta(before)["launches"] == 1
    np.testing.assert_array_equal(veda.to_host(outd), 2 * x)
    (row,) = veda.explain(scale).rows
    assert row["decision"][0] == "cuda" and row["source"] == "only candidate"


def test_a_scoped_cuda_target_and_record_replay(tmp_path):
    x, y = np.arange(16.0), np.ones(16)
    out = np.zeros(16)
    path = tmp_path / "launches.json"
    with veda.config(target="cuda"), veda.record(path):
        saxpy[16](2.0, x, y, out)
    np.testing.assert_array_equal(out, 2 * x + 1)
    out[:] = 0
    before = veda.cuda.transfer_stats()
    with veda.replay(path):
        saxpy[16](2.0, x, y, out)  # no scope: the record sends it to the GPU
    assert delta(before)["launches"] == 1
    np.testing.assert_array_equal(out, 2 * x + 1)


def _cupy():
    if SIM:
        pytest.skip("CuPy needs a GPU (runs from bench/gpu_check.sh)")
    return pytest.importorskip("cupy", reason="CuPy is not installed")


def test_cupy_arrays_are_used_in_place():
    cp = _cupy()
    x = cp.arange(1000, dtype=cp.float64)
    y = cp.ones(1000)
    out = cp.zeros(1000)
    before = veda.cuda.transfer_stats()
    on_cuda(saxpy, 1000, 2.0, x, y, out)
    assert delta(before)["host_to_device_bytes"] == 0
    assert isinstance(out, cp.ndarray)
    np.testing.assert_array_equal(veda.to_host(out), 2 * np.arange(1000.0) + 1)
    assert veda.to_device(out) is out


def test_reductions_over_cupy_arrays():
    cp = _cupy()
    x = cp.asarray(np.random.default_rng(0).standard_normal(5000).astype(np.float32))
    np.testing.assert_allclose(on_cuda(r_sum, x.size, x), float(cp.sum(x)), rtol=1e-4)
    assert on_cuda(r_max, x.size, x) == float(cp.max(x))


@pytest.mark.parametrize("block", [32, 48, 96, 160])
@pytest.mark.parametrize("kernel", [r_sum, r_min, r_max], ids=["sum", "min", "max"])
def test_reductions_combine_right_with_any_block_size(kernel, block):
    """The shared-memory tree works for blocks that are not a power of two (a decision from a
    record or tuning file may carry one)."""
    from veda import _registry
    from veda._types import Decision, LaunchOptions

    x = np.random.default_rng(block).permutation(np.arange(1, 1001, dtype=np.int64))
    form = kernel.form(1, 1)
    run = _registry.get("cuda").prepare(
        form, (x.size,), Decision("cuda", block=block), LaunchOptions(False, False, False)
    )
    expected = {r_sum: x.sum(), r_min: x.min(), r_max: x.max()}[kernel]
    assert run((x,)) == expected
