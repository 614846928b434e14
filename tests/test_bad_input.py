"""Bad input, refused by name, and the corner cases of good input that used to fail (issue 18).

The first half pins the fixes one by one; the second is a matrix over every public entry point:
each bad value raises its specific veda error, and the message names the argument.
"""

from __future__ import annotations

import os

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
        assert hw.budget.in_flight() == 0
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


# --- the matrix: every public entry point, refused by name ---------------------------------


@veda.kernel
def saxpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


@veda.kernel(reduce="sum")
def dot(i, x, y):
    return x[i] * y[i]


def _ones(n=10, dtype=np.float64):
    return np.ones(n, dtype)


def _read_only(n=10):
    a = np.ones(n)
    a.flags.writeable = False
    return a


def _launch(**settings):
    return lambda: veda.launch(saxpy, 10, 2.0, _ones(), _ones(), _ones(), **settings)


def _kernel(**options):
    def body(i, x):
        return x[i]

    return lambda: veda.kernel(**options)(body)


def _enter(scope):
    def run():
        with scope():
            pass

    return run


def _serve(port):
    pytest.importorskip("prometheus_client")
    return lambda: veda.telemetry.serve(port)


L, C, K, R, T = (
    veda.LaunchError,
    veda.ConfigError,
    veda.KernelDefinitionError,
    veda.ReplayError,
    veda.TelemetryError,
)

MATRIX = [
    # kernel launches: arguments
    ("list argument", lambda: saxpy[10](2.0, [1.0] * 10, _ones(), _ones()), L, "'x'.*list"),
    ("dict argument", lambda: saxpy[10](2.0, {}, _ones(), _ones()), L, "'x'.*dict"),
    ("None argument", lambda: saxpy[10](None, _ones(), _ones(), _ones()), L, "'a'.*NoneType"),
    ("string argument", lambda: dot[10]("x", _ones()), L, "'x'.*str"),
    ("object array", lambda: dot[2](np.array([object()] * 2), _ones(2)), L, "'x'.*numbers"),
    ("string array", lambda: dot[2](np.array(["a", "b"]), _ones(2)), L, "'x'.*numbers"),
    ("float16 array", lambda: dot[10](_ones(10, np.float16), _ones()), L, "'x'.*float16"),
    ("byte-swapped array", lambda: dot[10](_ones(10, ">f8"), _ones()), L, "'x'.*byte order"),
    ("read-only output", lambda: saxpy[10](2.0, _ones(), _ones(), _read_only()), L, "'out'"),
    ("short array", lambda: saxpy[10](2.0, _ones(9), _ones(), _ones()), L, "'x' has 9"),
    ("short output", lambda: saxpy[10](2.0, _ones(), _ones(), _ones(3)), L, "'out' has 3"),
    ("2-d where 1-d", lambda: dot[10](np.ones((10, 2)), _ones()), K, "x: array\\(float64, 2d"),
    ("array for a scalar", lambda: saxpy[10](_ones(), _ones(), _ones(), _ones()), K, "a: array"),
    ("scalar for an output", lambda: saxpy[10](2.0, _ones(), _ones(), 1.0), K, "out: float64"),
    ("tuple of strings", lambda: dot[1](("a",), _ones(1)), L, "'x'.*tuples"),
    ("too few arguments", lambda: saxpy[10](2.0, _ones()), L, "a, x, y, out; got 2"),
    ("too many arguments", lambda: dot[10](_ones(), _ones(), _ones()), L, "x, y; got 3"),
    ("no arguments", lambda: dot[10](), L, "x, y; got 0"),
    ("called without a domain", lambda: saxpy(2.0, _ones(), _ones(), _ones()), L, "domain"),
    # kernel launches: domains
    ("negative extent", lambda: dot[-1](_ones(), _ones()), L, "domain axis 0 is -1"),
    ("negative second extent", lambda: count2[3, -2](), L, "domain axis 1 is -2"),
    ("float extent", lambda: dot[10.0](_ones(), _ones()), L, "domain axis 0.*10.0"),
    ("NumPy float extent", lambda: dot[np.float64(3)](_ones(), _ones()), L, "domain axis 0"),
    ("bool extent", lambda: dot[True](_ones(), _ones()), L, "domain axis 0.*True"),
    ("string extent", lambda: dot["10"](_ones(), _ones()), L, "domain axis 0.*'10'"),
    ("four dimensions", lambda: dot[1, 1, 1, 1](_ones(), _ones()), L, "1, 2 or 3 dimensions"),
    ("empty domain tuple", lambda: dot[()](_ones(), _ones()), L, "1, 2 or 3 dimensions"),
    ("extent of 2**64", lambda: dot[2**64](_ones(), _ones()), L, "axis 0 is 18446744073709551616"),
    ("product beyond int64", lambda: count2[2**40, 2**40](), L, "domain.*fewer than 2"),
    ("min over nothing", lambda: index_max[0](), L, "reduce='max' over an empty domain"),
    # veda.launch
    ("not a kernel", lambda: veda.launch(len, 10), L, "first argument must be a @veda.kernel"),
    ("unknown target", _launch(target="tpu"), L, "unknown target='tpu'"),
    ("target not a name", _launch(target=["cpu"]), L, "target must be a name"),
    ("schedule not a name", _launch(schedule=["static"]), L, "schedule must be a name"),
    ("unknown schedule", _launch(schedule="fastest"), L, "unknown schedule='fastest'"),
    ("threads zero", _launch(threads=0), L, "threads=0 is out of range"),
    ("threads negative", _launch(threads=-1), L, "threads=-1 is out of range"),
    ("threads too many", _launch(threads=10**6), L, "threads=1000000 is out of range"),
    ("threads a string", _launch(threads="2"), L, "threads must be an integer, not str"),
    ("threads a float", _launch(threads=1.0), L, "threads must be an integer, not float"),
    ("threads a bool", _launch(threads=True), L, "threads must be an integer, not bool"),
    ("chunk zero", _launch(chunk=0), L, "chunk=0 must be at least 1"),
    ("chunk negative", _launch(chunk=-5), L, "chunk=-5 must be at least 1"),
    ("chunk of 2**64", _launch(chunk=2**64), L, "chunk=18446744073709551616 is too large"),
    ("chunk a float", _launch(chunk=4.0), L, "chunk must be an integer, not float"),
    ("settings on cpu", _launch(target="cpu", chunk=8), L, "chunk= does not apply"),
    ("schedule on cpu", _launch(target="cpu", schedule="dynamic"), L, "schedule= does not"),
    ("cuda without a GPU", _launch(target="cuda"), veda.TargetUnavailableError, "'cuda'"),
    # veda.config, veda.set_config, veda.Config, veda.deterministic
    ("unknown setting", lambda: veda.config(colour=1), C, "unknown setting\\(s\\) colour"),
    ("set_config unknown", lambda: veda.set_config(nope=1), C, "unknown setting\\(s\\) nope"),
    ("config target list", lambda: veda.config(target=[]), C, "target must be a name"),
    ("config unknown target", lambda: veda.config(target="tpu"), C, "unknown target='tpu'"),
    ("config policy", lambda: veda.config(policy="fast"), C, "unknown policy='fast'"),
    ("config policy int", lambda: veda.config(policy=3), C, "policy must be a name"),
    ("config schedule", lambda: veda.config(schedule="x"), C, "unknown schedule='x'"),
    ("config threads", lambda: veda.config(threads=0), C, "threads=0 is out of range"),
    ("config chunk", lambda: veda.config(chunk=0.5), C, "chunk must be an integer"),
    ("config flag", lambda: veda.config(boundscheck="yes"), C, "boundscheck must be True"),
    ("config flag int", lambda: veda.config(telemetry=1), C, "telemetry must be True"),
    ("config profile", lambda: veda.config(profile=None), C, "profile must be True"),
    ("config cpu + threads", lambda: veda.config(target="cpu", threads=1), C, "threads="),
    ("config seed", lambda: veda.config(seed=-1), C, "seed must be an integer.*-1"),
    ("set_config threads", lambda: veda.set_config(threads=0), C, "threads=0"),
    ("set_config policy", lambda: veda.set_config(policy="x"), C, "unknown policy='x'"),
    ("Config chunk", lambda: veda.Config(chunk=0), C, "chunk=0 must be at least 1"),
    ("Config target", lambda: veda.Config(target="tpu"), C, "unknown target='tpu'"),
    ("seed a string", lambda: veda.deterministic(seed="1"), C, "seed must be an integer.*'1'"),
    ("seed negative", lambda: veda.deterministic(seed=-3), C, "seed must be an integer.*-3"),
    ("seed 2**64", lambda: veda.deterministic(seed=2**64), C, "seed must be an integer"),
    ("seed a bool", lambda: veda.deterministic(seed=True), C, "seed must be an integer.*True"),
    ("seed a float", lambda: veda.deterministic(seed=1.5), C, "seed must be an integer.*1.5"),
    # veda.kernel, veda.func
    ("unknown reduce", _kernel(reduce="avg"), K, "unknown reduce='avg'"),
    ("reduce not a name", _kernel(reduce=["sum"]), K, "unknown reduce=\\['sum'\\]"),
    ("ndim 4", _kernel(ndim=4), K, "ndim=4"),
    ("ndim 0", _kernel(ndim=0), K, "ndim=0"),
    ("ndim a float", _kernel(ndim=1.0), K, "ndim=1.0"),
    ("ndim a bool", _kernel(ndim=True), K, "ndim=True"),
    ("ndim a string", _kernel(ndim="2"), K, "ndim='2'"),
    ("ndim beyond parameters", _kernel(ndim=3), K, "ndim=3 but has only 2"),
    ("kernel of an int", lambda: veda.kernel(5), K, "needs a Python function, not int"),
    ("kernel of a builtin", lambda: veda.kernel(len), K, "not builtin_function_or_method"),
    ("kernel of a class", lambda: veda.kernel(int), K, "needs a Python function, not type"),
    ("kernel of a kernel", lambda: veda.kernel(saxpy), K, "not Kernel"),
    ("kernel without index", lambda: veda.kernel(lambda: 0), K, "at least one index"),
    ("kernel with a default", lambda: veda.kernel(lambda i, a=1: 0), K, "parameter 'a'"),
    ("kernel with **kwargs", lambda: veda.kernel(lambda i, **kw: 0), K, "parameter 'kw'"),
    ("func of an int", lambda: veda.func(3), K, "@veda.func needs a Python function"),
    ("func of a kernel", lambda: veda.func(saxpy), K, "not Kernel"),
    ("func with *args", lambda: veda.func(lambda *a: 0), K, "parameter 'a'"),
    # veda.scan
    ("scan a list", lambda: veda.scan([1, 2]), L, "x must be a 1-d NumPy array, not list"),
    ("scan 2-d", lambda: veda.scan(np.ones((2, 2))), L, "x must be a 1-d.*2 dimensions"),
    ("scan strings", lambda: veda.scan(np.array(["a"])), L, "x must hold booleans or numbers"),
    ("scan float16", lambda: veda.scan(_ones(3, np.float16)), L, "x must hold.*float16"),
    ("scan out shape", lambda: veda.scan(_ones(3), out=_ones(4)), L, "out must be a float64"),
    ("scan out dtype", lambda: veda.scan(_ones(3), out=_ones(3, np.int64)), L, "out must be"),
    ("scan out read-only", lambda: veda.scan(_ones(3), out=_read_only(3)), L, "out is a read"),
    ("scan exclusive", lambda: veda.scan(_ones(3), exclusive="yes"), L, "exclusive must be"),
    # veda.random
    ("uniform seed str", lambda: veda.random.uniform("a", 1), L, "uniform: seed must be"),
    ("uniform seed float", lambda: veda.random.uniform(1.5, 1), L, "uniform: seed must be"),
    ("uniform counter float", lambda: veda.random.uniform(1, 2.5), L, "counter must be"),
    ("uniform2 seed bool", lambda: veda.random.uniform2(True, 1), L, "uniform2: seed must"),
    ("normal seed None", lambda: veda.random.normal(None, 1), L, "normal: seed must be"),
    ("integers empty range", lambda: veda.random.integers(1, 2, 5, 3), L, "high=3 must be"),
    ("integers float low", lambda: veda.random.integers(1, 2, 0.5, 3), L, "low must be"),
    ("integers str high", lambda: veda.random.integers(1, 2, 0, "9"), L, "high must be"),
    # veda.record, veda.replay
    ("record an int path", lambda: veda.record(5), R, "record: the path must be a str"),
    ("record an empty path", _enter(lambda: veda.record("")), R, "the path is empty"),
    ("record into /proc", _enter(lambda: veda.record("/proc/r.json")), R, "'/proc/r.json'"),
    ("record into a file", _enter(lambda: veda.record("/etc/hostname/r")), R, "not a directory"),
    ("record a folder", _enter(lambda: veda.record("/tmp")), R, "'/tmp': it is a directory"),
    ("replay None", lambda: veda.replay(None), R, "replay: the path must be a str"),
    ("replay missing", lambda: veda.replay("/nonexistent-veda/r.json"), R, "cannot read the"),
    ("replay a folder", lambda: veda.replay("/tmp"), R, "cannot read the record '/tmp'"),
    ("replay not a record", lambda: veda.replay("/etc/hostname"), R, "'/etc/hostname'"),
    # veda.explain, veda.metrics().kernel
    ("explain a name", lambda: veda.explain("saxpy"), veda.UnknownKernelError, "'saxpy'"),
    ("explain None", lambda: veda.explain(None), veda.UnknownKernelError, "explain.*None"),
    ("metrics unknown", lambda: veda.metrics().kernel("nope"), veda.UnknownKernelError, "nope"),
    ("metrics an int", lambda: veda.metrics().kernel(5), veda.UnknownKernelError, "not 5"),
    # GPU arrays without a GPU, telemetry
    ("to_device, no GPU", lambda: veda.to_device(_ones()), veda.TargetUnavailableError, "cuda"),
    ("serve a string port", lambda: _serve("80")(), T, "port must be an integer.*'80'"),
    ("serve a negative port", lambda: _serve(-1)(), T, "port must be.*-1"),
    ("serve port 70000", lambda: _serve(70000)(), T, "port must be.*70000"),
    ("serve a bool port", lambda: _serve(True)(), T, "port must be.*True"),
    ("serve a float port", lambda: _serve(80.0)(), T, "port must be.*80.0"),
    ("trace to /proc", _enter(lambda: veda.telemetry.trace("/proc/t.json")), T, "/proc/t.json"),
    ("listener with no hooks", lambda: veda.telemetry.add_listener(5), T, "int has none"),
    ("register not a target", lambda: veda.targets.register(5), C, "not 5"),
    ("register not a policy", lambda: veda.scheduler.register_policy(5), C, "not 5"),
]


@pytest.mark.parametrize("call, error, word", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_bad_input_is_refused_by_name(call, error, word):
    if error is veda.TargetUnavailableError and veda.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(error, match=word) as info:
        call()
    assert isinstance(info.value, veda.VedaError) and type(info.value) is error


def test_the_matrix_is_large():
    assert len(MATRIX) >= 60
    assert len({m[0] for m in MATRIX}) == len(MATRIX)


# -- found by an adversarial review ------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_record_never_replaces_a_device_file():
    with pytest.raises(veda.ReplayError, match="not a regular file"):
        with veda.record("/dev/null"):
            pass
    assert not os.path.isfile("/dev/null")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_replay_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(veda.ReplayError, match="not a regular file"):
        veda.replay(fifo)  # a reader would block: never opened for a blocking read


def test_replay_of_json_nested_too_deep_is_a_replay_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(veda.ReplayError, match="not valid JSON"):
        veda.replay(path)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_a_masked_array_is_refused_naming_the_argument(target):
    @veda.kernel
    def copy_in(i, x, out):
        out[i] = x[i]

    with pytest.raises(veda.LaunchError, match="argument 'x'.*masked"):
        veda.launch(copy_in, 3, np.ma.array([1.0, 2.0, 3.0]), np.zeros(3), target=target)
