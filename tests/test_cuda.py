"""The CUDA target without a GPU: the simulator suite in its own process, import hygiene, clear
errors, the refusal of GPU arrays on the CPU targets, and the dispatcher's GPU cost model with
injected measurements."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import veda
from veda._hardware import gpu as gpu_hw
from veda._hardware.gpu import GPUCost
from veda.scheduler._dispatch import Dispatcher, candidates
from veda.targets.cuda import CUDA_MIN_SIZE, CUDATarget

#: The GPU's decision on a real device (this process does not run the simulator).
CUDA = CUDATarget().default_decision(CUDA_MIN_SIZE)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_GPU = not veda.cuda.is_available()


@pytest.mark.slow
def test_the_cuda_suite_passes_on_the_simulator(tmp_path):
    pytest.importorskip("numba_cuda", reason="the simulator comes with numba-cuda")
    env = dict(
        os.environ,
        NUMBA_ENABLE_CUDASIM="1",
        VEDA_TEST_CUDA="1",
        VEDA_CACHE_DIR=str(tmp_path / "cache"),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-rs",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            os.path.join("tests", "cuda"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    assert " passed" in out.stdout, out.stdout[-2000:]
    # Only the CuPy tests may skip here: CuPy needs a GPU (bench/gpu_check.sh runs them).
    skips = [ln for ln in out.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert all("CuPy" in ln for ln in skips), "\n".join(skips)


def test_importing_veda_and_a_cpu_launch_load_no_cuda_machinery():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import veda

        def cuda_modules():
            return [m for m in sys.modules if m.startswith(("numba.cuda", "numba_cuda", "cupy"))]

        @veda.kernel
        def inc(i, x):
            x[i] += 1
        veda.launch(inc, 10, np.zeros(10), target="cpu")
        print(cuda_modules())
        inc[10](np.zeros(10))  # the dispatcher asks for a GPU: a driver check first
        print(cuda_modules())
        from veda._hardware import gpu
        print(gpu.gpu_driver_present() and gpu._extra_installed())
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"),
    )
    assert out.returncode == 0, out.stderr
    after_cpu, after_adaptive, can_ask = out.stdout.strip().splitlines()[-3:]
    assert after_cpu == "[]"  # an explicit CPU launch asks nothing of CUDA
    if can_ask == "True":  # a driver and numba-cuda: the adaptive launch asked Numba's driver
        assert "numba.cuda" in after_adaptive and "cupy" not in after_adaptive
    else:  # no driver (or no numba-cuda): the file-system check alone answered
        assert after_adaptive == "[]"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_without_a_gpu_cuda_is_unavailable_with_a_reason():
    reason = veda.cuda.unavailable_reason()
    assert reason
    assert not veda.scheduler.gpu_available()

    @veda.kernel
    def one(i, x):
        x[i] = 1

    if veda.cuda.explicit_reason() is None:
        pytest.skip("the simulator is on in this process")
    with pytest.raises(veda.TargetUnavailableError, match="cuda") as info:
        veda.launch(one, 4, np.zeros(4), target="cuda")
    assert veda.cuda.explicit_reason() in str(info.value)


@pytest.mark.parametrize(
    "missing, words",
    [
        ("extra", "pip install 'veda[cuda]'"),
        ("driver", "no NVIDIA driver"),
    ],
)
def test_the_reason_says_what_is_missing(monkeypatch, missing, words):
    monkeypatch.setattr(gpu_hw, "_probed", None)
    monkeypatch.setattr(gpu_hw, "simulator_enabled", lambda: False)
    if missing == "extra":
        monkeypatch.setattr(gpu_hw, "_extra_installed", lambda: False)
    else:
        monkeypatch.setattr(gpu_hw, "_extra_installed", lambda: True)
        monkeypatch.setattr(gpu_hw, "gpu_driver_present", lambda: False)
    try:
        assert words in (veda.cuda.unavailable_reason() or "")
        assert words in (veda.cuda.explicit_reason() or "")
        assert not veda.cuda.is_available()
    finally:
        gpu_hw._reset_probe()


def test_cuda_launch_settings_are_refused():
    @veda.kernel
    def one(i, x):
        x[i] = 1

    with pytest.raises(veda.LaunchError, match="block and grid"):
        veda.launch(one, 4, np.zeros(4), target="cuda", threads=1)


class FakeGPUArray:
    """Stands for a CuPy array: it exposes __cuda_array_interface__ and nothing NumPy knows."""

    shape = (8,)
    dtype = np.dtype(np.float64)
    nbytes = 64

    @property
    def __cuda_array_interface__(self):
        return {"shape": (8,), "typestr": "<f8", "data": (0, False), "version": 3}


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_gpu_arrays_are_refused_by_the_cpu_targets(target):
    @veda.kernel
    def copy(i, x, out):
        out[i] = x[i]

    with pytest.raises(veda.LaunchError, match="argument 'x'.*GPU array") as info:
        veda.launch(copy, 8, FakeGPUArray(), np.zeros(8), target=target)
    assert "veda.to_host" in str(info.value)


def test_to_host_and_to_device_check_their_input():
    assert veda.to_host(np.ones(2)).sum() == 2
    with pytest.raises(veda.LaunchError, match="device array"):
        veda.to_host([1, 2])


# --------------------------------------------------------------------------------------------
# The dispatcher's GPU cost model, with injected measurements


def _fake_gpu(monkeypatch, cost):
    """Make this process believe it has a real GPU (the probe's answer) with ``cost``."""
    monkeypatch.setattr(gpu_hw, "_probed", (None, None))
    monkeypatch.setattr(gpu_hw, "_gpu_cost", cost)
    monkeypatch.setattr(gpu_hw, "_gpu_cost_error", None)


def test_the_gpu_is_a_candidate_only_when_present_and_the_launch_is_large(monkeypatch):
    if NO_GPU:
        assert CUDA not in candidates(1 << 22, 2)
    _fake_gpu(monkeypatch, GPUCost(10e9, 10e9, 20e-6))
    assert CUDA not in candidates(CUDA_MIN_SIZE - 1, 2)
    assert candidates(CUDA_MIN_SIZE, 2)[-1] == CUDA
    assert CUDA not in candidates(CUDA_MIN_SIZE, 2, deterministic=True)  # other bits
    assert candidates(100, 2, residency="device") == [CUDA]  # only the GPU reads them


@pytest.fixture
def gpu(monkeypatch):
    """A machine with a GPU whose transfers run at 10 GB/s each way and launches cost 20 us."""
    _fake_gpu(monkeypatch, GPUCost(10e9, 10e9, 20e-6))
    return gpu_hw


def _fake_kernel(name):
    return types.SimpleNamespace(
        module_name="tests.gpu", name=name, source=types.SimpleNamespace(text=name), py_func=None
    )


def _explore(entry, dispatcher, size, seconds):
    """Run the tuner to a decision with ``seconds(decision)`` as each launch's time."""
    tuner = entry.tuner
    for _ in range(200):
        if not tuner.exploring:
            break
        d = tuner.next()
        dispatcher.observe(entry, d, seconds(d), size, "/nonexistent-veda-test")
    return tuner


def _cost(cpu_s, gpu_kernel_s, cost, transfer):
    def seconds(d):
        if d[0] == "cuda":
            return cost.transfer_seconds(*transfer) + gpu_kernel_s
        return cpu_s if d[0] == "cpu" else cpu_s / 2

    return seconds


@pytest.mark.parametrize("resident, gpu_wins", [(False, False), (True, True)])
def test_device_resident_arguments_make_the_gpu_cheaper(gpu, monkeypatch, resident, gpu_wins):
    monkeypatch.setattr(
        Dispatcher,
        "wisdom",
        lambda self, d: types.SimpleNamespace(get=lambda k: None, put=lambda k, v: None),
    )
    d = Dispatcher()
    monkeypatch.setattr(d.load, "free_cores", lambda: 2)
    size = 1 << 22  # 32 MiB of float64 per array: 3 arrays in, 1 out
    transfer = (0, 0) if resident else (3 * size * 8, size * 8)
    entry = d.entry(
        _fake_kernel(f"triad{resident}"), 1, size, "adaptive", "/x", (None, None), transfer
    )
    # (device-resident arrays: no copies; the CPU candidates stay in this injected model)
    assert entry is not None and CUDA in entry.tuner.candidates
    # CPU: 4 ms; the GPU kernel alone: 0.3 ms; transfers of 128 MiB at 10 GB/s: 13 ms.
    cost = gpu_hw.gpu_cost()
    tuner = _explore(entry, d, size, _cost(8e-3, 0.3e-3, cost, transfer))
    assert (tuner.choice == CUDA) is gpu_wins
    if not resident:  # dropped by the model before it ever ran
        trial = tuner.trials[CUDA]
        assert trial.samples == [] and "transfers" in trial.pruned


def test_a_small_launch_never_goes_to_the_gpu(gpu, monkeypatch):
    d = Dispatcher()
    monkeypatch.setattr(d.load, "free_cores", lambda: 2)
    entry = d.entry(_fake_kernel("small"), 1, 1000, "adaptive", "/x", (None, None), (0, 0))
    assert entry is not None
    assert all(c[0] != "cuda" for c in entry.tuner.candidates)


def test_gpu_cost_predicts_transfers_and_latency():
    cost = GPUCost(10e9, 5e9, 1e-5)
    assert math.isclose(cost.transfer_seconds(10**9, 10**9), 0.1 + 0.2 + 1e-5)


@veda.func
def _square(v):
    return v * v


@veda.kernel
def language(i, seed, x, out, counts):
    tmp = veda.local_array((2, 2), np.float64)
    tmp[0, 0] = veda.random.uniform(seed, i) + veda.random.normal(seed, i)
    tmp[1, 1] = veda.random.integers(seed, i, 0, 10)
    out[i, 0] = _square(abs(complex(x[i], tmp[0, 0])))
    out[i, 1] = tmp[1, 1]
    veda.atomic_add(counts, i % 4, 1)
    veda.atomic_min(counts, (0,), -1)
    veda.atomic_max(out, (i, 1), 0.0)


@pytest.fixture
def ptx(monkeypatch):
    """Numba's CUDA module, ready to compile to PTX for compute capability 8.0 without a device;
    skips under the simulator and where the CUDA toolkit's NVVM and NVRTC are not installed."""
    if veda.cuda.simulator_enabled():
        pytest.skip("the simulator compiles nothing")
    cuda = pytest.importorskip("numba.cuda")
    import numba
    import numba.cuda.dispatcher as cuda_dispatcher

    def empty(x):
        pass

    try:
        cuda.compile_ptx(empty, (numba.float64[::1],), cc=(8, 0))
    except Exception as exc:
        # The test extra installs the toolkit's wheels where they exist (Linux x86-64): there,
        # and so in CI, a toolkit that does not compile is a failure, not a reason to skip.
        if importlib.util.find_spec("nvidia.cuda_nvcc") is not None:
            raise
        pytest.skip(f"no NVVM/NVRTC here: {type(exc).__name__}")
    # Device functions ask the current device for its compute capability; there is none here.
    monkeypatch.setattr(
        cuda_dispatcher,
        "get_current_device",
        lambda: types.SimpleNamespace(compute_capability=(8, 0)),
    )
    from veda._kernel import cuda_language

    cuda_language.register()
    return cuda


@veda.kernel
def _atomics(i, x, bins):
    veda.atomic_add(bins, x[i] % 4, 1)
    veda.atomic_min(bins, (x[i] % 4,), 0)
    veda.atomic_max(bins, x[i] % 4, 1)


@veda.kernel(reduce="sum")
def _rsum(i, x):
    return x[i]


@veda.kernel(reduce="prod")
def _rprod(i, x):
    return x[i]


@veda.kernel(reduce="min")
def _rmin(i, x):
    return x[i]


@veda.kernel(reduce="max")
def _rmax(i, x):
    return x[i]


_REDUCE_DTYPES = ["bool", "int8", "uint8", "int16", "int32", "uint32", "int64", "uint64"]
_REDUCE_DTYPES += ["float32", "float64", "complex128"]


def _ptx_cases():
    from veda_kernels import GALLERY

    cases = [(case.kernel, *case.make(64, np.random.default_rng(0))) for case in GALLERY.values()]
    cases.append(
        (language, 16, (np.uint64(3), np.ones(16), np.zeros((16, 2)), np.zeros(4, np.int64)))
    )
    for dtype in ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]:
        cases.append((_atomics, 16, (np.arange(16), np.zeros(4, dtype))))
    for dtype in ["float32", "float64"]:
        cases.append((_atomics, 16, (np.arange(16), np.zeros(4, dtype))))
    for k in (_rsum, _rprod, _rmin, _rmax):
        for dtype in _REDUCE_DTYPES:
            if dtype == "complex128" and k in (_rmin, _rmax):
                continue  # complex numbers have no order: refused on every target
            cases.append((k, 16, (np.ones(16, dtype),)))
    return cases


def test_the_generated_cuda_code_compiles_to_ptx(ptx):
    """Type and lower for a real GPU (no device needed: NVVM only) every gallery kernel, the
    kernel language, the atomics on every integer and float width (8- and 16-bit integers
    through a compare-and-swap loop) and every reduction on every dtype."""
    import numba

    cuda = ptx
    from veda.targets.cuda import _identity_source

    for k, domain, args in _ptx_cases():
        dims = domain if isinstance(domain, tuple) else (domain,)
        nd = len(dims)
        argtys = (numba.int64,) * nd + tuple(numba.typeof(a) for a in args)
        flag = numba.int64[::1]  # the error flag: the flat index where the body raised
        if k.reduce is None:
            mod = k.cuda_program(nd, len(args), (False, False), None, None, 256)
            cuda.compile_ptx(mod._veda_kernel.py_func, (*argtys, flag), cc=(8, 0))
        else:
            ident = k.program(nd, len(args), (False, False))._veda_acc_probe(*args)[0]
            mod = k.cuda_program(
                nd, len(args), (False, False), ident.dtype.name, _identity_source(ident), 256
            )
            acc = numba.from_dtype(ident.dtype)[::1]
            cuda.compile_ptx(
                mod._veda_partials.py_func, (*argtys, acc, numba.int64, flag), cc=(8, 0)
            )
            cuda.compile_ptx(mod._veda_final.py_func, (acc, numba.int64, acc), cc=(8, 0))


def test_a_bad_local_array_shape_names_the_construct(ptx):
    import numba

    from veda._kernel.checks import translate_compile_error

    cuda = ptx

    @veda.kernel
    def scratch(i, n, out):
        tmp = veda.local_array(n, np.float64)
        out[i] = tmp.shape[0]

    mod = scratch.cuda_program(1, 2, (False, False), None, None, 256)
    args = (3, np.zeros(4))
    with pytest.raises(Exception) as info:
        cuda.compile_ptx(
            mod._veda_kernel.py_func,
            (numba.int64, numba.int64, numba.float64[::1], numba.int64[::1]),
            cc=(8, 0),
        )
    err = translate_compile_error(info.value, "scratch", ["n", "out"], args)
    assert isinstance(err, veda.KernelDefinitionError)
    text = str(err)
    assert "kernel 'scratch'" in text and "local_array" in text and "compile-time constant" in text


def test_device_resident_arguments_pin_the_gpu_even_when_small(gpu, monkeypatch):
    d = Dispatcher()
    monkeypatch.setattr(d.load, "free_cores", lambda: 2)
    entry = d.entry(
        _fake_kernel("resident"), 1, 100, "adaptive", "/x", (None, None), (0, 0), residency="device"
    )
    assert entry is not None and entry.tuner.candidates == [CUDA]
    assert entry.tuner.choice == CUDA


@pytest.mark.slow
def test_the_gpu_check_scripts_run_dry(tmp_path):
    """bench/gpu_check.sh is ready for a GPU: its shell parses, and its benchmark runs end to end
    on the simulator with tiny sizes (figures meaningless, JSON complete)."""
    pytest.importorskip("numba_cuda", reason="the simulator comes with numba-cuda")
    parsed = subprocess.run(
        ["bash", "-n", os.path.join(ROOT, "bench", "gpu_check.sh")], capture_output=True, text=True
    )
    assert parsed.returncode == 0, parsed.stderr
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "bench", "bench_gpu.py"),
            "--dry-run",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    import json

    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] is True and result["gpu_available"] is False
    assert {"triad", "reduction", "choice", "checks", "device"} <= set(result)
    assert [row["n"] for row in result["choice"]] == [1 << 10, 1 << 14]
    assert len(result["checks"]) == 4


@pytest.fixture
def failing_gpu(monkeypatch):
    """A machine with a GPU whose measurement fails (a CUDA error at the first question)."""
    from veda.scheduler import _dispatch

    def measure():
        raise OSError("CUDA_ERROR_LAUNCH_FAILED")

    _fake_gpu(monkeypatch, None)
    monkeypatch.setattr(_dispatch, "_warned", set())
    monkeypatch.setattr(gpu_hw, "measure", measure)


@veda.kernel
def _triad(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


def test_a_gpu_that_fails_to_measure_does_not_fail_the_cpu_launch(failing_gpu):
    n = CUDA_MIN_SIZE
    x, y, out = np.arange(n, dtype=np.float64), np.ones(n), np.zeros(n)
    veda.launch(_triad, n, 2.0, x, y, out, target="cpu")  # compiled outside the tuner
    with pytest.warns(RuntimeWarning, match="no longer considers target 'cuda'.*LAUNCH_FAILED"):
        for _ in range(3):  # the serial CPU launch (the first compiles), then the GPU is weighed
            _triad[n](2.0, x, y, out)
    np.testing.assert_array_equal(out, 2 * x + 1)
    (row,) = [r for r in veda.explain(_triad).rows if r["size_class"] == "<= 2^17"]
    (trial,) = [t for t in row["trials"] if t["decision"][0] == "cuda"]
    assert trial["samples"] == [] and "LAUNCH_FAILED" in trial["pruned"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the next tuner is pruned silently
        d = Dispatcher()
        entry = d.entry(
            _fake_kernel("after"),
            1,
            n,
            "adaptive",
            "/nonexistent-veda-test",
            (None, None),
            (3 * n * 8, n * 8),
        )
        assert entry is not None
        for _ in range(3):
            d.observe(entry, entry.tuner.next(), 1e-3, n, "/nonexistent-veda-test")
        assert entry.tuner.trials[CUDA].pruned and not entry.priced


def test_the_gpu_is_measured_once_by_one_thread(monkeypatch):
    import threading
    import time

    calls = []

    def measure():
        calls.append(threading.get_ident())
        time.sleep(0.05)
        return 10e9, 10e9, 20e-6

    monkeypatch.setattr(gpu_hw, "_gpu_cost", None)
    monkeypatch.setattr(gpu_hw, "_gpu_cost_error", None)
    monkeypatch.setattr(gpu_hw, "measure", measure)
    got = []
    threads = [threading.Thread(target=lambda: got.append(gpu_hw.gpu_cost())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 4 and all(g is got[0] for g in got)


def test_cuda_language_registration_is_flagged_only_after_it_succeeds(monkeypatch):
    from veda._kernel import cuda_language

    monkeypatch.setattr(cuda_language, "_registered", False)

    def broken():
        raise RuntimeError("half-way")

    monkeypatch.setattr(cuda_language, "_register", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        cuda_language.register()
    assert cuda_language._registered is False  # another thread will try again, not skip
    monkeypatch.setattr(cuda_language, "_register", lambda: None)
    cuda_language.register()
    assert cuda_language._registered is True


# -- what the GPU copies back: the "maybe written" analysis ------------------------------------


@veda.func
def _reads(v, i):
    return 2.0 * v[i]


@veda.func
def _writes_through_alias(o, i, v):
    r = o
    r[i] = v


@veda.func
def _row(a, i):
    return a[i]  # a view of a 2-d array: the caller may write it


def _maybe(pyfunc, nargs, ndim=1):
    k = veda.kernel(pyfunc)
    form = k.form(ndim, nargs)
    return [form.names[p] for p in form.maybe_written]


def test_the_copy_back_analysis_proves_reads_and_suspects_the_rest():
    import math as m

    from veda import atomic_max as hi_at

    def reads(i, a, x, y, out):
        out[i] = a * x[i] + m.sqrt(abs(y[i])) + len(x) + x.shape[0] + _reads(y, i) + np.sin(x[i])

    def alias(i, x, out):
        o = out
        o[i] = x[i]

    def view(i, x, out):
        row = out[i]
        row[0] = x[i]

    def atomic(i, x, hi):
        hi_at(hi, 0, x[i])

    def helper(i, x, out):
        _writes_through_alias(out, i, x[i])

    def helper_view(i, x, out):
        _row(out, i)[0] = x[i]

    def method(i, x, out):
        out[i] = x[i]
        x.fill(0.0)

    def unknown(i, x, out):
        out[i] = x[i]
        print(x)

    assert _maybe(reads, 4) == ["out"]
    assert _maybe(alias, 2) == ["out"]
    assert _maybe(view, 2) == ["out"]
    assert _maybe(atomic, 2) == ["hi"]
    assert _maybe(helper, 2) == ["out"]
    assert _maybe(helper_view, 2) == ["out"]
    assert _maybe(method, 2) == ["x", "out"]
    assert _maybe(unknown, 2) == ["out"]  # print only reads
    assert _reads.maybe_written_positions() == set()
    assert _writes_through_alias.maybe_written_positions() == {0}
    assert _row.maybe_written_positions() == {0}
    # the CPU's read-only refusal keeps its own, precise analysis
    assert veda.kernel(alias).written == [] and veda.kernel(atomic).written == ["hi"]
