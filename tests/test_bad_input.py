"""Bad input, refused by name, and the corner cases of good input that used to fail (issue 18).

The first half pins the fixes one by one; the second is a matrix over every public entry point:
each bad value raises its specific veda error, and the message names the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

import veda


@veda.kernel(reduce="sum")
def count2(i, j):
    return 1


@veda.kernel
def mark(i, j, out):
    if i == 0 and j == 0:
        out[0] = 1.0


@veda.kernel
def fill(i, out, v):
    out[i] = v


# --- domains and integers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, word",
    [
        ((2**33, 2**33), r"\(8589934592, 8589934592\) has 73786976294838206464 elements"),
        ((2**32, 2**32), "fewer than 2\\*\\*63"),
        ((2**21, 2**21, 2**21), "fewer than 2\\*\\*63"),
        ((2**64, 1), "axis 0 is 18446744073709551616"),
        ((1, 2**63), "axis 1 is 9223372036854775808"),
    ],
)
def test_domains_beyond_int64_are_refused_before_anything_runs(domain, word):
    out = np.zeros(1)
    with pytest.raises(veda.LaunchError, match=word):
        mark[domain](out)
    with pytest.raises(veda.LaunchError, match="domain"):
        count2[domain]()
    assert out[0] == 0.0


def test_the_largest_domain_is_accepted_until_it_runs():
    # 2**62 elements fit: the domain is accepted (and refused only for the argument count)
    with pytest.raises(veda.LaunchError, match="takes 1 argument"):
        mark[(2**31, 2**31)]()


@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint64, np.int16])
def test_numpy_integers_work_wherever_ints_do(kind, tmp_path):
    out = np.zeros(6)
    veda.launch(fill, kind(6), out, 1.0, threads=kind(1), chunk=kind(2))
    assert out.sum() == 6.0
    veda.launch(fill, (kind(6),), out, 2.0, target="parallel", threads=kind(1))
    assert out.sum() == 12.0
    assert int(count2[kind(3), kind(4)]()) == 12
    assert int(veda.launch(count2, (kind(3), 4), schedule="dynamic", chunk=kind(5))) == 12
    with veda.config(threads=kind(1), chunk=kind(3)) as cfg:
        assert type(cfg.threads) is int and type(cfg.chunk) is int
        fill[6](out, 3.0)
    path = tmp_path / "run.json"
    with veda.deterministic(seed=kind(7)) as cfg:
        assert cfg.seed == 7 and type(cfg.seed) is int
        with veda.record(path):  # the seed is written to JSON: a plain int
            assert int(count2[3, 3]()) == 9
    with veda.replay(path):
        assert veda.get_config().seed == 7
        count2[3, 3]()
    assert type(veda.Config(threads=kind(1)).threads) is int


@pytest.mark.parametrize("bad", [True, np.bool_(True), 2.0, np.float64(2.0), "2"])
@pytest.mark.parametrize("setting", ["threads", "chunk"])
def test_bools_and_floats_are_not_integers(setting, bad):
    with pytest.raises(veda.LaunchError, match=setting):
        veda.launch(fill, 4, np.zeros(4), 1.0, **{setting: bad})
    with pytest.raises(veda.ConfigError, match=setting):
        veda.config(**{setting: bad})


# --- kernels without arguments -------------------------------------------------------------


@veda.kernel(reduce="sum")
def index_sum(i):
    return i


@veda.kernel(reduce="max")
def index_max(i):
    return i


@veda.kernel
def no_arguments(i):
    pass


def test_a_reduction_without_arguments_on_every_target(settings):
    n = 5000
    expected = n * (n - 1) // 2
    assert int(veda.launch(index_sum, n, **settings)) == expected
    assert int(veda.launch(index_max, n, **settings)) == n - 1
    with veda.deterministic(seed=1):
        assert int(veda.launch(index_sum, n, **settings)) == expected
    veda.launch(no_arguments, n, **settings)


def test_a_reduction_without_arguments_adaptive_and_numpy_domains():
    n = 3000
    for _ in range(3):  # the dispatcher explores, then exploits
        assert int(index_sum[n]()) == n * (n - 1) // 2
    assert int(index_sum[np.int64(n)]()) == n * (n - 1) // 2
    assert no_arguments[np.int32(10)]() is None


# --- recursive helpers and lambdas ---------------------------------------------------------


@veda.func
def factorial(n):
    if n <= 1:
        return 1
    return n * factorial(n - 1)


@veda.func
def is_even(n):
    if n == 0:
        return True
    return is_odd(n - 1)


@veda.func
def is_odd(n):
    if n == 0:
        return False
    return is_even(n - 1)


@veda.kernel
def factorials(i, out):
    out[i] = factorial(i)


@veda.kernel
def parities(i, out):
    out[i] = is_even(i)


def test_self_and_mutually_recursive_helpers_compile(target):
    out = np.zeros(8, np.int64)
    veda.launch(factorials, 8, out, target=target)
    np.testing.assert_array_equal(out, [1, 1, 2, 6, 24, 120, 720, 5040])
    even = np.zeros(7, np.bool_)
    veda.launch(parities, 7, even, target=target)
    np.testing.assert_array_equal(even, np.arange(7) % 2 == 0)
    assert is_odd(9) and factorial(5) == 120  # and called from Python


@veda.func
def first_half(x, n):
    x[0] = 1.0
    if n > 0:
        second_half(x, n - 1)


@veda.func
def second_half(y, n):
    first_half(y, n)


@veda.kernel
def through_first(i, out):
    first_half(out, 3)


@veda.kernel
def through_second(i, out):
    second_half(out, 3)


def test_what_mutually_recursive_helpers_write_does_not_depend_on_the_order_asked():
    # first_half is analysed first; second_half, met while it was unfinished, writes y too
    assert through_first.written == ["out"]
    assert through_second.written == ["out"]
    out = np.zeros(2)
    out.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="'out'.*read-only"):
        through_second[2](out)


def _helpers_from(source, **names):
    """Helpers defined from source text (as if in other modules)."""
    scope = {"veda": veda, **names}
    exec(compile(source, "<test>", "exec"), scope)
    return scope


def test_recursive_helpers_that_cannot_share_a_module_are_refused():
    alias = _helpers_from(
        "@veda.func\ndef down(n):\n    return 0 if n <= 0 else again(n - 1)\nagain = down\n"
    )

    @veda.kernel
    def calls_alias(i, out):
        out[i] = down(i)

    down = alias["down"]
    with pytest.raises(veda.KernelDefinitionError, match="source|own names"):
        calls_alias[2](np.zeros(2))


def test_a_kernel_may_be_a_lambda():
    total = veda.kernel(lambda i, x: x[i] * 2.0, reduce="sum")
    assert float(total[4](np.arange(4.0))) == 12.0
    square = veda.func(lambda v: v * v)
    squares = veda.kernel(lambda i, x: square(x[i]), reduce="sum")
    assert float(squares[3](np.arange(3.0))) == 5.0
    hits = veda.kernel(lambda i, out: veda.atomic_add(out, 0, 1))  # its value is ignored
    out = np.zeros(1)
    hits[5](out)
    assert out[0] == 5.0 and hits.written == ["out"]
    a, b = (
        veda.kernel(lambda i, x: x[i], reduce="sum"),
        veda.kernel(lambda i, x: -x[i], reduce="sum"),
    )
    assert (float(a[2](np.ones(2))), float(b[2](np.ones(2)))) == (2.0, -2.0)
    r = "sum"
    c, d = veda.kernel(lambda i, x: x[i], reduce=r), veda.kernel(lambda i, x: -x[i], reduce=r)
    assert (float(c[2](np.ones(2))), float(d[2](np.ones(2)))) == (2.0, -2.0)
    clip = veda.kernel(lambda i, x: x[i] if x[i] < 2.0 else 2.0, reduce="max")
    assert float(clip[4](np.arange(4.0))) == 2.0 and clip.source.text is not None
    assert "lambda" in repr(total) and total.source.text.startswith("def _veda_lambda(i, x)")


# --- record and replay ---------------------------------------------------------------------


@veda.kernel
def twin(i, x):
    x[i] += 1.0


first_twin = twin


@veda.kernel
def twin(i, x):  # another body under the same name
    x[i] -= 1.0


def test_replaying_with_another_body_of_a_kernel_is_refused(tmp_path):
    import json

    path = tmp_path / "run.json"
    x = np.zeros(10)
    with veda.record(path):
        first_twin[10](x)
    doc = json.loads(path.read_text())
    assert set(doc["sources"]) == {f"{__name__}.twin"}
    with pytest.raises(veda.ReplayError, match=r"launch #1 diverges.*another body of kernel"):
        with veda.replay(path):
            twin[10](x)
    with veda.replay(path):  # the same body replays
        first_twin[10](x)
    # both bodies in one run: the second carries its own hash
    with veda.record(path):
        first_twin[10](x)
        twin[10](x)
    doc = json.loads(path.read_text())
    assert "source" not in doc["launches"][0] and "source" in doc["launches"][1]
    with veda.replay(path):
        first_twin[10](x)
        twin[10](x)
    with pytest.raises(veda.ReplayError, match="launch #2 diverges.*another body"):
        with veda.replay(path):
            first_twin[10](x)
            first_twin[10](x)
    # a record made before the hashes existed still replays
    del doc["sources"]
    del doc["launches"][1]["source"]
    path.write_text(json.dumps(doc))
    with veda.replay(path):
        twin[10](x)
        first_twin[10](x)


@pytest.mark.parametrize(
    "decision, word",
    [
        ("cpu", "not a decision: 'cpu'"),
        ({"target": "cpu", "threads": "2"}, "not a decision"),
        (None, "not a decision: None"),
        ({"threads": 1}, "a decision needs a target"),
        (["cpu", [1], "static", 1], "not a decision"),
    ],
)
def test_a_damaged_decision_names_the_file_and_the_launch(tmp_path, decision, word):
    import json

    path = tmp_path / "run.json"
    x = np.zeros(4)
    with veda.record(path):
        first_twin[4](x)
        first_twin[4](x)
    doc = json.loads(path.read_text())
    doc["launches"][1]["decision"] = decision
    path.write_text(json.dumps(doc))
    with pytest.raises(veda.ReplayError, match=f"'{path}' is damaged: launch #2: {word}"):
        veda.replay(path)


@pytest.mark.parametrize("change", [{"sources": []}, {"sources": {"k": 1}}])
def test_damaged_source_hashes_are_refused(tmp_path, change):
    import json

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"format": "veda-record", "version": 2, "launches": [], **change}))
    with pytest.raises(veda.ReplayError, match="damaged: 'sources'"):
        veda.replay(path)


def test_a_decision_this_machine_cannot_run_names_the_record(tmp_path):
    import json

    path = tmp_path / "run.json"
    decision = {"target": "tpu", "threads": 1, "schedule": "static", "chunk": 1, "block": 0}
    entry = {"kernel": f"{__name__}.twin", "domain": [4], "decision": decision}
    path.write_text(json.dumps({"format": "veda-record", "version": 2, "launches": [entry]}))
    with pytest.raises(veda.LaunchError, match=f"'{path}', launch #1.*unknown target='tpu'"):
        with veda.replay(path):
            twin[4](np.zeros(4))


@pytest.mark.parametrize("where", ["/proc/run.json", "/proc/self/run.json", "/etc/hostname/r.json"])
def test_an_unwritable_record_is_refused_before_the_block_runs(where):
    ran = []
    with pytest.raises(veda.ReplayError, match="cannot write the record"):
        with veda.record(where):
            ran.append(True)
    assert ran == []


def test_a_record_whose_folder_vanished_during_the_block(tmp_path):
    import shutil

    folder = tmp_path / "gone"
    folder.mkdir()
    with pytest.raises(veda.ReplayError, match="cannot write the record") as info:
        with veda.record(folder / "run.json"):
            first_twin[4](np.zeros(4))
            shutil.rmtree(folder)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(veda.ReplayError, match="path is empty"):
        with veda.record(""):
            pass


# --- failing indices -----------------------------------------------------------------------


@veda.kernel
def past_the_end(i, j, x, out):
    out[i, j] = x[i + j + 1]


@veda.kernel(reduce="sum")
def fails_at_seven(i, x):
    if i == 7:
        raise ValueError("seven")
    return x[i]


def test_the_failing_index_is_known_on_every_target(settings):
    x = np.arange(6.0)  # x[i + j + 1] is first out of bounds at (2, 3)
    out = np.zeros((3, 4))
    with veda.config(boundscheck=True):
        with pytest.raises(veda.KernelIndexError) as info:
            veda.launch(past_the_end, (3, 4), x, out, **settings)
    assert info.value.index == (2, 3) and info.value.target == settings["target"]
    assert "at index (2, 3)" in str(info.value)
    for det in (False, True):
        with veda.config(deterministic=det):
            with pytest.raises(veda.KernelError, match="at index 7.*seven") as info:
                veda.launch(fails_at_seven, 20, np.ones(20), **settings)
        assert info.value.index == (7,) and info.value.original_type is ValueError


# --- plug-ins that misbehave ---------------------------------------------------------------


class _Garbage(veda.targets.Target):
    name = "garbage"
    returns: object = "garbage"

    def prepare(self, form, dims, decision, options, profiler=None, shared=False):
        loop = form.program(options.compile)._veda_cpu

        def run(args):
            loop(*dims, *args)
            return self.returns

        return run


@pytest.fixture
def garbage():
    target = veda.targets.register(_Garbage())
    yield target
    veda.targets.unregister("garbage")


@veda.kernel(reduce="sum")
def plain_sum(i, x):
    return x[i]


@pytest.mark.parametrize("returns", ["garbage", 3.5, None, np.array([1.0]), np.str_("1")])
def test_a_reduction_runner_returning_garbage_is_refused_by_target(garbage, returns):
    garbage.returns = returns
    with pytest.raises(veda.LaunchError, match="target 'garbage': its runner returned.*NumPy"):
        veda.launch(plain_sum, 4, np.ones(4), target="garbage")


def test_a_plain_runner_must_return_none(garbage):
    garbage.returns = 0
    with pytest.raises(veda.LaunchError, match="target 'garbage'.*returned 0.*not None"):
        veda.launch(fill, 4, np.zeros(4), 1.0, target="garbage")
    garbage.returns = np.float64(4.0)
    assert veda.launch(plain_sum, 4, np.ones(4), target="garbage") == 4.0


class _Counting(veda._launch.Interceptor):
    def __init__(self):
        self.started = self.ended = 0

    def start(self, launch):
        self.started += 1

    def end(self, launch):
        self.ended += 1


class _Raising(veda._launch.Interceptor):
    def __init__(self, hook):
        self.hook = hook

    def __repr__(self):
        return f"<raising in {self.hook}>"

    def _maybe(self, hook, value=None):
        if hook == self.hook:
            raise ZeroDivisionError(f"bug in {hook}")
        return value

    def active(self):
        return self._maybe("active", True)

    def redirect(self, kernel, dims):
        return self._maybe("redirect")

    def start(self, launch):
        self._maybe("start")

    def end(self, launch):
        self._maybe("end")


@pytest.mark.parametrize("hook", ["active", "redirect", "start", "end"])
def test_an_interceptor_whose_hook_raises_is_named(hook, target):
    from veda._hardware import cpu as hw
    from veda._launch import add_interceptor, remove_interceptor

    counting = add_interceptor(_Counting())
    bad = add_interceptor(_Raising(hook))
    x = np.zeros(100_000)
    try:
        with pytest.raises(veda.LaunchError, match=f"<raising in {hook}>.*{hook}.*bug") as info:
            veda.launch(fill, x.size, x, 1.0, target=target)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert counting.started == counting.ended  # those that saw it start saw it end
        assert hw.in_flight == []
        assert (x == 1.0).all() == (hook == "end")  # it ran only if it got that far
    finally:
        remove_interceptor(bad)
        remove_interceptor(counting)
    veda.launch(fill, x.size, x, 2.0, target=target)  # the launch core carries on
    assert (x == 2.0).all()


def test_a_failing_launch_keeps_its_error_when_an_end_hook_raises_too():
    from veda._launch import add_interceptor, remove_interceptor

    bad = add_interceptor(_Raising("end"))
    try:
        with pytest.warns(RuntimeWarning, match="<raising in end>"):
            with pytest.raises(veda.KernelError, match="seven"):
                veda.launch(fails_at_seven, 10, np.ones(10), target="cpu")
    finally:
        remove_interceptor(bad)
