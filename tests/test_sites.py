"""Call sites: the launcher ``k[n]`` returns is specialised to the entry it runs once the
dispatcher has decided, and stays right when anything that entry depends on changes."""

from __future__ import annotations

import numpy as np
import pytest

import veda


@veda.kernel
def saxpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]


@veda.kernel(reduce="sum")
def dot(i, x, y):
    return x[i] * y[i]


@veda.kernel
def stencil(i, j, x, out):
    out[i, j] = x[i, j] + x[(i + 1) % x.shape[0], j]


@veda.kernel
def fails_at(i, x, k):
    if i == k:
        raise ValueError("the bad index")
    x[i] = 1.0


N = 64


def _arrays(n=N):
    rng = np.random.default_rng(0)
    return rng.random(n), rng.random(n), np.zeros(n)


def _specialised(k, domain, args=None):
    """Launch until the site's launcher is specialised; that launcher."""
    args = args or _ARGS[k]
    for _ in range(200):
        bound = k[domain]
        go = k._sites[k.domain(domain)].go
        if go is not None and bound is go:
            return go
        bound(*args())
    raise AssertionError(f"{k.name}[{domain}] was never specialised")


_ARGS = {
    saxpy: lambda: (2.0, *_arrays()),
    dot: lambda: _arrays()[:2],
    fails_at: lambda: (np.zeros(N), -1),
}


def test_a_decided_site_gets_a_specialised_launcher_with_the_same_results():
    go = _specialised(saxpy, N)
    x, y, out = _arrays()
    go(3.0, x, y, out)
    np.testing.assert_array_equal(out, 3.0 * x + y)
    assert saxpy[N] is go and saxpy[(N,)] is go  # every spelling of the domain
    gd = _specialised(dot, N)
    np.testing.assert_allclose(gd(x, y), np.dot(x, y), rtol=1e-12)
    assert isinstance(gd(x, y), np.floating)
    assert repr(saxpy[N]).startswith(f"<function {saxpy.name}[{N}]")


def test_a_specialised_launcher_counts_every_launch_in_telemetry():
    go = _specialised(saxpy, N)
    veda.telemetry.reset()
    x, y, out = _arrays()
    for _ in range(25):
        go(2.0, x, y, out)
    assert veda.metrics().kernel(saxpy).launches == 25


def test_bad_input_through_a_specialised_launcher_is_a_veda_error():
    go = _specialised(saxpy, N)
    x, y, out = _arrays()
    frozen = out.copy()
    frozen.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="read-only"):
        go(2.0, x, y, frozen)
    with pytest.raises(veda.LaunchError, match="domain does not match"):
        go(2.0, x[: N // 2], y, out)
    with pytest.raises(veda.LaunchError, match="domain does not match"):
        go(2.0, x, y, np.zeros(N - 1))
    with pytest.raises(veda.VedaError):
        go(2.0, x, y)  # an argument short
    with pytest.raises(veda.VedaError):
        go(2.0, np.float64(1.0).reshape(()), y, out)  # a 0-d array where x[i] is read
    # and it still launches right after all that
    go(2.0, x, y, out)
    np.testing.assert_array_equal(out, 2.0 * x + y)


def test_an_array_whose_shape_or_flags_change_in_place_is_checked_again():
    go = _specialised(saxpy, N)
    x, y, out = _arrays()
    go(2.0, x, y, out)
    out.shape = (N // 2, 2)  # still N elements, but only N // 2 along the indexed axis
    with pytest.raises(veda.LaunchError, match="domain does not match"):
        go(2.0, x, y, out)
    out.shape = (N,)
    out.flags.writeable = False
    with pytest.raises(veda.LaunchError, match="read-only"):
        go(2.0, x, y, out)


def test_a_failing_body_through_a_specialised_launcher_names_its_index():
    go = _specialised(fails_at, N)
    veda.telemetry.reset()
    with pytest.raises(veda.KernelError, match="the bad index") as info:
        go(np.zeros(N), 7)
    assert info.value.index == (7,)
    assert veda.metrics().kernel(fails_at).errors == 1
    x = np.zeros(N)
    go(x, -1)
    assert x.sum() == N


def test_a_launcher_kept_across_a_config_scope_follows_the_scope():
    go = _specialised(saxpy, N)
    x, y, out = _arrays()
    veda.telemetry.reset()
    with veda.config(telemetry=False):
        go(2.0, x, y, out)  # another settings object: not the specialised entry's
        saxpy[N](2.0, x, y, out)
    np.testing.assert_array_equal(out, 2.0 * x + y)
    assert veda.metrics().kernel(saxpy).launches == 0  # telemetry was off for both
    go = _specialised(saxpy, N)
    go(2.0, x, y, out)
    assert veda.metrics().kernel(saxpy).launches >= 1


def test_a_launcher_kept_from_before_specialisation_forwards_to_it():
    @veda.kernel
    def unlaunched(i, a, x, y, out):  # never launched before: its site has no specialised launcher
        out[i] = a * x[i] + y[i]

    held = unlaunched[N]
    go = _specialised(unlaunched, N, _ARGS[saxpy])  # nothing module-level keeps it alive
    assert held is not go  # the site's own launcher, kept from before
    veda.telemetry.reset()
    x, y, out = _arrays()
    held(5.0, x, y, out)
    np.testing.assert_array_equal(out, 5.0 * x + y)
    assert veda.metrics().kernel(unlaunched).launches == 1
    assert unlaunched[N] is go


def test_listeners_added_after_specialisation_see_every_launch():
    go = _specialised(saxpy, N)

    class Seen(veda.telemetry.Listener):
        def __init__(self):
            self.kernels = []

        def on_launch_end(self, event):
            self.kernels.append(event.kernel)

    x, y, out = _arrays()
    seen = veda.telemetry.add_listener(Seen())
    try:
        go(2.0, x, y, out)
        saxpy[N](2.0, x, y, out)
    finally:
        veda.telemetry.remove_listener(seen)
    assert len([k for k in seen.kernels if saxpy.name in k]) == 2
    go(2.0, x, y, out)  # none listening: fine again
    assert len(seen.kernels) == 2


def test_a_new_decision_unbinds_the_specialised_launcher():
    go = _specialised(saxpy, N)
    site = saxpy._sites[(N,)]
    entry = saxpy._fast[((N,), 4, None)]
    entry.tuning.tuner.version += 1  # as when the dispatcher re-decides
    x, y, out = _arrays()
    go(2.0, x, y, out)
    np.testing.assert_array_equal(out, 2.0 * x + y)
    assert site.go is not go  # unbound (and maybe replaced by one for the new version)


def test_registering_a_target_drops_the_specialised_launchers():
    go = _specialised(saxpy, N)

    class Echo(veda.targets.Target):
        name = "echo-sites"

        def prepare(self, form, dims, decision, options, profiler=None, shared=False):
            raise AssertionError("never chosen")

    veda.targets.register(Echo())
    try:
        assert saxpy._sites[(N,)].go is None
        x, y, out = _arrays()
        go(2.0, x, y, out)  # the old one still launches, through the slow path
        np.testing.assert_array_equal(out, 2.0 * x + y)
    finally:
        veda.targets.unregister("echo-sites")


def test_a_compile_inside_a_specialised_launch_is_not_launch_time():
    go = _specialised(saxpy, N)
    veda.telemetry.reset()
    x, y, out = (a.astype(np.float32) for a in _arrays())
    go(np.float32(2.0), x, y, out)  # new types: compiles inside the timed call
    m = veda.metrics().kernel(saxpy)
    assert m.launches == 1
    assert m.compiles + m.cache_hits >= 1 and m.compile_time > 0
    assert 0 <= m.max_time < m.compile_time


def test_two_dimensional_sites_check_every_indexed_axis():
    x = np.random.default_rng(1).random((8, 6))
    out = np.zeros((8, 6))
    for _ in range(60):
        stencil[8, 6](x, out)
    go = stencil[8, 6]
    np.testing.assert_array_equal(out, x + np.roll(x, -1, axis=0))
    with pytest.raises(veda.LaunchError, match="domain does not match"):
        go(x, np.zeros((8, 5)))


@veda.kernel(reduce="sum")
def count(i):
    return 1


def test_a_kernel_without_arguments_gets_a_specialised_launcher_too():
    for _ in range(60):
        assert count[N]() == N
    assert count._sites[(N,)].go is count[N]
    assert count[N]() == N
    with pytest.raises(veda.VedaError):
        count[N](1.0)  # one argument too many
