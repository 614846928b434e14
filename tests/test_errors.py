"""Every refusal names the argument, and every kernel exception reaches the caller intact."""

from __future__ import annotations

import numpy as np
import pytest

import veda


@veda.kernel
def saxpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


def _arrays(n=10):
    return np.ones(n), np.ones(n), np.empty(n)


# --- launches refused before compiling ---------------------------------------------------


@pytest.mark.parametrize("domain", [-1, 2.5, "10", (2, 2, 2, 2), (), (3, -1), True, None])
def test_bad_domain(domain):
    x, y, out = _arrays()
    with pytest.raises(veda.LaunchError, match="domain"):
        saxpy[domain](2.0, x, y, out)


def test_wrong_argument_count_names_the_parameters():
    x, y, out = _arrays()
    with pytest.raises(veda.LaunchError, match=r"takes 4 argument\(s\).*a, x, y, out; got 3"):
        saxpy[10](x, y, out)


def test_read_only_output_is_refused_before_running():
    x, y, out = _arrays()
    out.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="'out'.*read-only"):
        saxpy[10](2.0, x, y, out)
    x.flags.writeable = False  # read-only inputs are fine
    out2 = np.empty(10)
    saxpy[10](2.0, x, y, out2)
    assert out2[0] == 3.0


@veda.func
def store(arr, i, v):
    arr[i] = v


@veda.kernel
def store_through_helper(i, x):
    store(x, i, 1.0)


def test_read_only_output_through_a_helper():
    x = np.zeros(3)
    x.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="'x'.*read-only"):
        store_through_helper[3](x)


@veda.kernel
def hidden_write(i, x):
    row = x[i:]
    row[0] = 1.0


def test_read_only_write_the_analysis_cannot_see():
    x = np.zeros(3)
    x.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="'x'.*read-only"):
        hidden_write[3](x)


def test_domain_that_does_not_match_the_arrays():
    _, y, out = _arrays(11)
    with pytest.raises(veda.LaunchError, match="'x' has 10 element.*range\\(11\\)"):
        saxpy[11](2.0, np.ones(10), y, out)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"target": "gpu"}, "target"),
        ({"schedule": "fastest"}, "schedule"),
        ({"threads": 0}, "threads"),
        ({"threads": 100000}, "threads"),
        ({"chunk": 0}, "chunk"),
        ({"target": "cpu", "chunk": 8}, "chunk"),
        ({"target": "cpu", "schedule": "dynamic"}, "schedule"),
        ({"chunk": 2**64}, "chunk"),
    ],
)
def test_bad_launch_settings_name_the_argument(kwargs, word):
    x, y, out = _arrays()
    with pytest.raises(veda.LaunchError, match=word):
        veda.launch(saxpy, 10, 2.0, x, y, out, **kwargs)


def test_cuda_without_gpu_is_unavailable_not_unknown():
    x, y, out = _arrays()
    with pytest.raises(veda.TargetUnavailableError, match="cuda"):
        veda.launch(saxpy, 10, 2.0, x, y, out, target="cuda")


@pytest.mark.parametrize(
    "bad, word",
    [
        ([1.0] * 10, "list"),
        (np.array(["a"] * 10), "numbers"),
        (np.ones(10, np.float16), "float16"),
        (None, "NoneType"),
        ("x", "str"),
        (np.ones(10, dtype=">f8"), "byte order"),
        (np.array([object()] * 10), "numbers"),
    ],
)
def test_bad_argument_types_name_the_argument(bad, word):
    _, y, out = _arrays()
    with pytest.raises(veda.LaunchError, match=f"'x'.*{word}"):
        saxpy[10](2.0, bad, y, out)


def test_launch_needs_a_kernel_and_a_domain():
    with pytest.raises(veda.LaunchError, match="domain"):
        saxpy(2.0, *_arrays())
    with pytest.raises(veda.LaunchError, match="@veda.kernel"):
        veda.launch(lambda i: None, 10)


# --- definitions ---------------------------------------------------------------------------


def test_untypable_kernel_names_kernel_types_and_line():
    @veda.kernel
    def adds_a_string(i, x, out):
        out[i] = x[i] + "a"

    with pytest.raises(veda.KernelDefinitionError) as info:
        adds_a_string[3](np.zeros(3), np.zeros(3))
    msg = str(info.value)
    assert "adds_a_string" in msg
    assert "x: array(float64, 1d, C)" in msg
    assert 'out[i] = x[i] + "a"' in msg
    assert "test_errors.py:" in msg
    assert "_veda_" not in msg  # no generated code in the message


def test_bad_kernel_signatures():
    with pytest.raises(veda.KernelDefinitionError, match="plain positional"):
        veda.kernel(lambda i, *rest: None)
    with pytest.raises(veda.KernelDefinitionError, match="reduce"):
        veda.kernel(reduce="mean")(lambda i, x: x[i])
    with pytest.raises(veda.KernelDefinitionError, match="index parameter"):
        veda.kernel(lambda: None)
    with pytest.raises(veda.KernelDefinitionError, match="ndim"):
        veda.kernel(ndim=4)(lambda i, x: None)


def test_value_without_reduce_and_reduce_without_value():
    @veda.kernel
    def returns(i, x):
        return x[i]

    @veda.kernel(reduce="sum")
    def no_value(i, x):
        x[i] = 0

    with pytest.raises(veda.KernelDefinitionError, match="reduce="):
        returns[2](np.zeros(2))
    with pytest.raises(veda.KernelDefinitionError, match="returns no value"):
        no_value[2](np.zeros(2))


def plain_helper(v):
    return v + 1


def test_calling_a_plain_python_function():
    @veda.kernel
    def calls_plain(i, x):
        x[i] = plain_helper(x[i])

    with pytest.raises(veda.KernelDefinitionError, match="plain_helper.*@veda.func"):
        calls_plain[2](np.zeros(2))


def test_kernel_calling_a_kernel():
    @veda.kernel
    def calls_kernel(i, x):
        saxpy(i, 1.0, x, x, x)

    with pytest.raises(veda.KernelDefinitionError, match="kernel"):
        calls_kernel[2](np.zeros(2))


# --- exceptions inside kernels ---------------------------------------------------------------


@veda.kernel
def fails_at(i, bad, out):
    if i == bad:
        raise ValueError("bad index reached")
    out[i] = i


@veda.kernel(reduce="sum")
def fails_in_reduce(i, bad):
    if i == bad:
        raise ZeroDivisionError("reduce failed")
    return i


def test_exception_reaches_caller_on_every_target(settings):
    out = np.zeros(1000)
    with pytest.raises(veda.KernelError) as info:
        veda.launch(fails_at, 1000, 637, out, **settings)
    err = info.value
    assert err.original_type is ValueError
    assert "bad index reached" in str(err) and "fails_at" in str(err)
    if settings["target"] == "parallel":
        assert err.index == (637,)
    # the pool stays usable
    veda.launch(fails_at, 1000, -1, out, **settings)
    np.testing.assert_array_equal(out, np.arange(1000))


def test_exception_in_reduction(settings):
    with pytest.raises(veda.KernelError, match="ZeroDivisionError.*reduce failed"):
        veda.launch(fails_in_reduce, 5000, 4321, **settings)
    assert veda.launch(fails_in_reduce, 100, -1, **settings) == sum(range(100))


@veda.kernel
def reads_past_end(i, x, out):
    out[i] = x[i + 1]


def test_boundscheck_gives_index_error(settings):
    x = np.arange(50.0)
    out = np.zeros(50)
    with veda.config(boundscheck=True):
        with pytest.raises(veda.KernelIndexError) as info:
            veda.launch(reads_past_end, 50, x, out, **settings)
    assert isinstance(info.value, IndexError)
    assert "reads_past_end" in str(info.value)
    veda.launch(reads_past_end, 49, x, out, **settings)  # in bounds: fine
    np.testing.assert_array_equal(out[:49], x[1:])


def test_integer_division_by_zero_is_a_kernel_error():
    @veda.kernel
    def divide(i, x, out):
        out[i] = 10 // x[i]

    x = np.array([1, 2, 0, 5])
    with pytest.raises(veda.KernelError) as info:
        veda.launch(divide, 4, x, np.zeros(4, np.int64), target="parallel", threads=2)
    assert info.value.original_type is ZeroDivisionError
    assert info.value.index == (2,)


def test_kernel_error_pickles():
    import pickle

    err = veda.KernelError("k", ValueError, "boom", (3,), "parallel")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.index == (3,)


def test_without_numbas_private_compile_step_errors_are_still_veda_errors(monkeypatch):
    """veda hooks Numba's private Dispatcher._compile_for_args; where a Numba release lacks it,
    a Python wrapper translates compile errors and counts compiles instead."""
    from veda._kernel import checks

    monkeypatch.setattr(checks, "hookable", lambda dispatcher: False)

    @veda.func
    def plus_one(v):
        return v + 1

    @veda.kernel
    def unhooked(i, x, out):
        out[i] = plus_one(x[i])  # a helper: called from compiled code, never wrapped

    module = unhooked.program(1, 2, (False, veda.get_config().cache))
    assert not hasattr(module._veda_cpu, "_compile_for_args")  # the wrapper, not the dispatcher
    for target in ("cpu", "parallel"):
        out = np.zeros(4)
        veda.launch(unhooked, 4, np.arange(4.0), out, target=target)
        np.testing.assert_array_equal(out, np.arange(4.0) + 1)
        with pytest.raises(veda.LaunchError, match="argument 'x'.*list"):
            veda.launch(unhooked, 4, [1.0, 2.0, 3.0, 4.0], out, target=target)
        with pytest.raises(veda.KernelDefinitionError, match="cannot be compiled.*x: array"):
            veda.launch(unhooked, 4, np.ones((4, 2)), out, target=target)  # a row into out[i]
    assert unhooked.compile_stats.compiled + unhooked.compile_stats.cache_hits >= 2


@pytest.mark.parametrize("schedule", ["static", "interleaved", "dynamic", "guided"])
@pytest.mark.parametrize("chunk", [2**40, 2**62, 2**63 - 1])
def test_a_chunk_larger_than_the_domain_is_the_whole_domain(schedule, chunk):
    """Chunk arithmetic in the generated loop (chunk index x chunk) must not overflow: a chunk
    beyond the domain counts as the whole domain."""

    @veda.kernel(reduce="sum")
    def count(i, x):
        return x[i]

    x = np.ones(5000)
    assert (
        veda.launch(
            count,
            5000,
            x,
            target="parallel",
            threads=veda.max_threads(),
            schedule=schedule,
            chunk=chunk,
        )
        == 5000.0
    )
