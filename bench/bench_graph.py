"""Launch graphs against launching from Python and against Numba's best hand-written loops.

Side by side in one process, results checked (issue 15's targets):

* replay cost: a graph of ten launches of a 100-element kernel, replayed many steps: seconds
  per replayed launch (target under 0.5 us), beside the same launches made one by one from a
  Python loop (adaptive ``k[n](...)``), direct calls of an ``@njit`` function doing one launch's
  loop, and one ``@njit`` function doing the whole time loop (the floor);
* a 200-particle n-body time loop (accelerations, then a kick-drift step): the graph against
  the loop written as one ``@njit`` function and as one with ``prange`` over particles
  (target: at least 1.0x the faster of the two);
* the per-pivot 2-D relaxation of Floyd-Warshall (``d[i, j] = min(d[i, j], d[i, k] + d[k, j])``
  for each pivot ``k``), n = 200, 500 and 1000: a graph with ``k`` as a per-step parameter
  against ``@njit`` and ``prange`` over rows (target: at least 1.0x the faster).

Graphs are timed after their tuning replays (the plan kept), as a time loop that runs long
sees them; medians of interleaved repeats.

    python bench/bench_graph.py [--quick]
"""

from __future__ import annotations

import math

import numba
import numpy as np

import veda

from _util import check_each, compare, parser, report

# -- replay cost -------------------------------------------------------------------------------


@veda.kernel
def bump(i, s, x):
    x[i] = x[i] * 0.5 + s


@numba.njit(cache=True)
def _bump(s, x):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        x[i] = x[i] * 0.5 + s


@numba.njit(cache=True)
def _bump_loop(steps, xs):  # type: ignore[no-untyped-def]
    for _ in range(steps):
        for x in xs:
            _bump(1.0, x)


def replay_cost(steps: int, repeats: int, launches: int = 10, n: int = 100) -> dict:
    xs = [np.zeros(n) for _ in range(launches)]
    typed = numba.typed.List(xs)
    with veda.graph() as g:
        for x in xs:
            bump[n](1.0, x)
    for _ in range(veda._graph.TRIES * 3 + 1):  # compile and tune
        g.replay(steps)

    def python_loop() -> None:
        for _ in range(steps // 10):  # a tenth of the steps: it is slow
            for x in xs:
                bump[n](1.0, x)

    def njit_calls() -> None:
        for _ in range(steps // 10):
            for x in xs:
                _bump(1.0, x)

    def one_step_replays() -> None:  # a replay's own cost, over its 10 launches
        for _ in range(steps // 10):
            g.replay(1)

    fns = {
        "graph": lambda: g.replay(steps),
        "graph, one step a replay": one_step_replays,
        "veda launches from Python": python_loop,
        "njit calls from Python": njit_calls,
        "one njit time loop": lambda: _bump_loop(steps, typed),
    }
    check_each(fns, lambda _: np.testing.assert_allclose(xs[0], 2.0))  # the fixed point
    t = compare(fns, repeats=repeats, warmup=1)
    total = {"graph": steps, "one njit time loop": steps}
    per = {k: v / (total.get(k, steps // 10) * launches) for k, v in t.items()}
    return {"seconds_per_launch": per, "plan": repr(g)}


# -- n-body ----------------------------------------------------------------------------------

EPS = 1e-3


@veda.kernel
def accelerate(i, pos, mass, acc):
    ax = 0.0
    ay = 0.0
    az = 0.0
    for j in range(pos.shape[0]):
        dx = pos[j, 0] - pos[i, 0]
        dy = pos[j, 1] - pos[i, 1]
        dz = pos[j, 2] - pos[i, 2]
        r2 = dx * dx + dy * dy + dz * dz + EPS
        w = mass[j] / (r2 * math.sqrt(r2))
        ax += w * dx
        ay += w * dy
        az += w * dz
    acc[i, 0] = ax
    acc[i, 1] = ay
    acc[i, 2] = az


@veda.kernel
def kick_drift(i, dt, pos, vel, acc):
    for c in range(3):
        vel[i, c] += dt * acc[i, c]
        pos[i, c] += dt * vel[i, c]


def _nbody_source(parallel: bool):  # type: ignore[no-untyped-def]
    loop = numba.prange if parallel else range

    def nbody(steps, dt, pos, vel, mass, acc):  # type: ignore[no-untyped-def]
        n = pos.shape[0]
        for _ in range(steps):
            for i in loop(n):
                ax = 0.0
                ay = 0.0
                az = 0.0
                for j in range(n):
                    dx = pos[j, 0] - pos[i, 0]
                    dy = pos[j, 1] - pos[i, 1]
                    dz = pos[j, 2] - pos[i, 2]
                    r2 = dx * dx + dy * dy + dz * dz + EPS
                    w = mass[j] / (r2 * math.sqrt(r2))
                    ax += w * dx
                    ay += w * dy
                    az += w * dz
                acc[i, 0] = ax
                acc[i, 1] = ay
                acc[i, 2] = az
            for i in loop(n):
                for c in range(3):
                    vel[i, c] += dt * acc[i, c]
                    pos[i, c] += dt * vel[i, c]

    return numba.njit(parallel=parallel, cache=True)(nbody)


_nbody_njit = _nbody_source(False)
_nbody_prange = _nbody_source(True)


def nbody(n: int, steps: int, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    pos0, vel0, mass = rng.random((n, 3)), np.zeros((n, 3)), rng.random(n) / n
    dt = 1e-3
    state = {k: (pos0.copy(), vel0.copy(), np.zeros((n, 3))) for k in ("graph", "njit", "prange")}
    pos, vel, acc = state["graph"]
    with veda.graph() as g:
        accelerate[n](pos, mass, acc)
        kick_drift[n](dt, pos, vel, acc)

    def reset() -> None:
        for p, v, a in state.values():
            p[:], v[:], a[:] = pos0, vel0, 0.0

    for _ in range(veda._graph.TRIES * 3 + 1):  # compile and tune
        g.replay(steps)
    fns = {
        "graph": lambda: g.replay(steps),
        "njit": lambda: _nbody_njit(steps, dt, *state["njit"][:2], mass, state["njit"][2]),
        "prange": lambda: _nbody_prange(steps, dt, *state["prange"][:2], mass, state["prange"][2]),
    }
    reset()
    fns["njit"]()
    want = state["njit"][0].copy()
    check_each(
        {k: (lambda f=f, k=k: (f(), state[k][0])[1]) for k, f in fns.items()},
        lambda got: np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12),
        setup=reset,
    )
    t = compare(fns, repeats=repeats, warmup=1, setup=reset)
    best = min(t["njit"], t["prange"])
    return {
        "seconds_per_step": {k: v / steps for k, v in t.items()},
        "over_best": best / t["graph"],
        "plan": repr(g),
    }


# -- Floyd-Warshall --------------------------------------------------------------------------


@veda.kernel
def relax(i, j, k, d):
    d[i, j] = min(d[i, j], d[i, k] + d[k, j])


@numba.njit(cache=True)
def _fw_njit(d):  # type: ignore[no-untyped-def]
    n = d.shape[0]
    for k in range(n):
        for i in range(n):
            for j in range(n):
                d[i, j] = min(d[i, j], d[i, k] + d[k, j])


@numba.njit(parallel=True, cache=True)
def _fw_prange(d):  # type: ignore[no-untyped-def]
    n = d.shape[0]
    for k in range(n):
        for i in numba.prange(n):
            for j in range(n):
                d[i, j] = min(d[i, j], d[i, k] + d[k, j])


def floyd_warshall(n: int, repeats: int) -> dict:
    rng = np.random.default_rng(2)
    d0 = rng.random((n, n)) * 10
    np.fill_diagonal(d0, 0.0)
    d = {k: d0.copy() for k in ("graph", "njit", "prange")}
    with veda.graph() as g:
        relax[n, n](veda.graph.param("k", 0), d["graph"])
    pivots = np.arange(n)

    def reset() -> None:
        for a in d.values():
            a[:] = d0

    for _ in range(veda._graph.TRIES * 3 + 1):  # compile and tune
        g.replay(n, k=pivots)
    fns = {
        "graph": lambda: g.replay(n, k=pivots),
        "njit": lambda: _fw_njit(d["njit"]),
        "prange": lambda: _fw_prange(d["prange"]),
    }
    reset()
    fns["njit"]()
    want = d["njit"].copy()
    check_each(
        {k: (lambda f=f, k=k: (f(), d[k])[1]) for k, f in fns.items()},
        lambda got: np.testing.assert_array_equal(got, want),
        setup=reset,
    )
    t = compare(fns, repeats=repeats, warmup=1, setup=reset)
    best = min(t["njit"], t["prange"])
    return {"seconds": t, "over_best": best / t["graph"], "plan": repr(g)}


def main(
    steps: int = 20_000,
    nbody_steps: int = 200,
    sizes: tuple[int, ...] = (200, 500, 1000),
    repeats: int = 7,
    quick: bool = False,
) -> dict:
    threads = veda.max_threads()
    res: dict = {"threads": threads}
    cost = res["replay"] = replay_cost(steps, repeats)
    print(f"{threads} threads, medians of {repeats} interleaved repeats, after tuning")
    print("replayed launches of a 100-element kernel (10 per step), seconds per launch:")
    for k, v in cost["seconds_per_launch"].items():
        print(f"  {k:<28} {v * 1e6:8.3f} us")
    print(f"  target: graph under 0.5 us ({cost['plan']})")
    nb = res["nbody"] = nbody(200, nbody_steps, repeats)
    per = nb["seconds_per_step"]
    print(
        f"n-body, 200 particles, {nbody_steps} steps: graph {per['graph'] * 1e6:.1f} us/step, "
        f"njit {per['njit'] * 1e6:.1f}, prange {per['prange'] * 1e6:.1f} -> "
        f"{nb['over_best']:.2f}x the best (target >= 1.0; {nb['plan']})"
    )
    res["floyd_warshall"] = {}
    for n in sizes:
        fw = res["floyd_warshall"][n] = floyd_warshall(n, max(3, repeats // (1 + n // 400)))
        s = fw["seconds"]
        print(
            f"Floyd-Warshall {n}^2: graph {s['graph'] * 1e3:.1f} ms, njit {s['njit'] * 1e3:.1f},"
            f" prange {s['prange'] * 1e3:.1f} -> {fw['over_best']:.2f}x the best (target >= 1.0;"
            f" {fw['plan']})"
        )
    report("graph", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(steps=200, nbody_steps=5, sizes=(20,), repeats=2, quick=True)
    else:
        main()
