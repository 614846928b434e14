"""Tasks: submit latency, spawn throughput, priorities under saturation, shared cores.

Targets (issue 13):

* ``veda.submit(k, ...).result()`` of an (almost) empty kernel launch, against the same launch
  through ``concurrent.futures.ThreadPoolExecutor`` and an asyncio ``create_task`` (shown for
  scale: no target).  ``result()`` runs a task that no worker has started in the waiting
  thread; ``veda_submit_worker_wait`` shows the hand-over to a worker and back (waited for
  with ``concurrent.futures.wait``, which never does that);
* trivial ``veda.spawn`` tasks: at least 50,000 per second, submit to last result;
* a saturated queue (tasks arriving 1.5x faster than they drain, half HIGH, half BACKGROUND,
  for 2 s: shorter than the aging horizon of docs/tasks.md, after which BACKGROUND competes):
  HIGH's p99 queue wait at most 1/5 of BACKGROUND's;
* four parallel kernels launched from four concurrent tasks: at most 1.1x the time of the same
  four launched back to back (the tasks share the threads instead of oversubscribing them);
  shown beside it, the same without the region threads (veda._hardware.cpu.RegionThreads) and
  the four launched one after another from four threads.

Rounds are interleaved and medians reported; the four-launch ratio is the median of paired
rounds (the four variants run back to back, in rotating order), with its quartiles.

    python bench/bench_tasks.py [--quick]
"""

from __future__ import annotations

import asyncio
import gc
import math
import queue
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

import veda

from _util import parser, report


@veda.kernel
def touch(i, out):
    out[i] = 1.0


@veda.kernel
def work(i, x, out):
    out[i] = math.sin(x[i]) * math.cos(x[i]) + math.sqrt(x[i])


def _latency(calls: int, rounds: int) -> dict[str, float]:
    out = np.zeros(1)
    veda.launch(touch, 1, out, target="cpu")
    pool = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.new_event_loop()

    async def inline() -> None:
        veda.launch(touch, 1, out, target="cpu")

    async def via_create_task(n: int) -> None:
        for _ in range(n):
            await asyncio.create_task(inline())

    async def via_launch_async(n: int) -> None:
        for _ in range(n):
            await veda.launch_async(touch, 1, out, target="cpu")

    def handed_over(n: int) -> None:
        # concurrent.futures.wait never runs a task in the waiting thread: this is the hand-over
        # to a worker and back, which .result() skips for a task that has not started.
        for _ in range(n):
            wait([veda.submit(touch, 1, out, target="cpu")])

    fns = {
        "veda_submit_result": lambda n: [
            veda.submit(touch, 1, out, target="cpu").result() for _ in range(n)
        ],
        "veda_submit_worker_wait": handed_over,
        "thread_pool_submit_result": lambda n: [
            pool.submit(veda.launch, touch, 1, out, target="cpu").result() for _ in range(n)
        ],
        "asyncio_create_task": lambda n: loop.run_until_complete(via_create_task(n)),
        "veda_launch_async": lambda n: loop.run_until_complete(via_launch_async(n)),
    }
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(max(10, calls // 10))  # warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(calls)
            samples[name].append((time.perf_counter() - start) / calls)
    pool.shutdown()
    loop.close()
    assert out[0] == 1.0
    return {k: statistics.median(v) for k, v in samples.items()}


def _throughput(tasks: int, rounds: int) -> dict[str, float]:
    def noop() -> None:
        return None

    pool = ThreadPoolExecutor()
    results: dict[str, list[float]] = {"veda_spawn": [], "thread_pool_submit": []}
    with veda.config(max_pending=tasks + 1):
        for _ in range(rounds):
            fs = gs = []  # the previous round's futures go before either side is timed
            gc.collect()
            start = time.perf_counter()
            fs = [veda.spawn(noop) for _ in range(tasks)]
            for f in fs:
                f.result()
            results["veda_spawn"].append(tasks / (time.perf_counter() - start))
            assert all(f.done() and f.result() is None for f in fs)
            fs = []
            gc.collect()
            start = time.perf_counter()
            gs = [pool.submit(noop) for _ in range(tasks)]
            for g in gs:
                g.result()
            results["thread_pool_submit"].append(tasks / (time.perf_counter() - start))
    pool.shutdown()
    return {k: statistics.median(v) for k, v in results.items()}


def _saturation(n: int, seconds: float) -> dict[str, float]:
    x = np.random.default_rng(0).random(n)
    outs = {p: np.zeros(n) for p in ("HIGH", "BACKGROUND")}
    expected = np.sin(x) * np.cos(x) + np.sqrt(x)
    veda.launch(work, n, x, outs["HIGH"], target="cpu")
    # Capacity: how fast the executor drains these tasks when they are all queued at once.
    probe = 400
    start = time.perf_counter()
    fs = [veda.submit(work, n, x, outs["HIGH"], target="cpu") for _ in range(probe)]
    for f in fs:
        f.result()
    per_task = (time.perf_counter() - start) / probe
    veda.telemetry.reset()
    rate = 1.5 / per_task  # tasks per second: half again what the executor drains
    futures = []
    ex = veda._tasks.api.current()
    backlog = 0
    with veda.config(max_pending=10**7):
        start = time.perf_counter()
        end = start + seconds
        while (now := time.perf_counter()) < end:
            # Paced by the clock, not by sleeps (which overshoot on a busy machine).
            for _ in range(int((now - start) * rate) - len(futures)):
                k = len(futures)
                level = veda.Priority.HIGH if k % 2 == 0 else veda.Priority.BACKGROUND
                futures.append(
                    veda.submit(work, n, x, outs[level.name], target="cpu", priority=level)
                )
            backlog = max(backlog, ex.pending)  # how far the queue grew: was it saturated?
            time.sleep(0.001)
        for f in futures:
            f.result()
    for out in outs.values():
        np.testing.assert_allclose(out, expected, rtol=1e-12)
    waits = veda.metrics().tasks.queue_wait
    return {
        "tasks": float(len(futures)),
        "largest_backlog": float(backlog),
        "seconds_per_task": per_task,
        "high_p99": waits["HIGH"]["p99"],
        "background_p99": waits["BACKGROUND"]["p99"],
        "high_p50": waits["HIGH"]["p50"],
        "background_p50": waits["BACKGROUND"]["p50"],
    }


def _shared_cores(n: int, rounds: int) -> dict[str, float]:
    """Four parallel launches: back to back in this thread; from four concurrent tasks; the
    same with the region threads' hand-over off (each region on its task worker's own OpenMP
    team); and one after another, each from another of four threads (what the hand-over
    avoids: a team that idled)."""
    from veda._hardware import cpu as hw

    x = np.random.default_rng(1).random(n)
    outs = [np.zeros(n) for _ in range(4)]
    expected = np.sin(x) * np.cos(x) + np.sqrt(x)
    for out in outs:  # compile, and let the dispatcher settle on the parallel target
        for _ in range(30):
            veda.launch(work, n, x, out, target="parallel")

    def back_to_back() -> None:
        for out in outs:
            veda.launch(work, n, x, out, target="parallel")

    def concurrent() -> None:
        with veda.scope() as s:
            for out in outs:
                s.submit(work, n, x, out, target="parallel")

    def own_teams() -> None:
        hw.regions.run = lambda fn, params, threads: fn(*params)  # type: ignore[method-assign]
        try:
            concurrent()
        finally:
            del hw.regions.run

    jobs: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in outs]
    done: queue.SimpleQueue[None] = queue.SimpleQueue()

    def serve(q: queue.SimpleQueue[Any]) -> None:
        while (out := q.get()) is not None:
            veda.launch(work, n, x, out, target="parallel")
            done.put(None)

    servers = [threading.Thread(target=serve, args=(q,), daemon=True) for q in jobs]
    for t in servers:
        t.start()

    def rotating() -> None:
        for q, out in zip(jobs, outs):
            q.put(out)
            done.get()

    def timed(fn: Any) -> float:
        for out in outs:
            out.fill(np.nan)
        time.sleep(0.05)  # let spinning thread pools settle between the compared runs
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        for out in outs:
            np.testing.assert_allclose(out, expected, rtol=1e-12)
        return elapsed

    # Rounds in rotating order, each ratio taken within its round: the machine's drift (up
    # to 25% over minutes here) cancels.
    fns = {
        "back_to_back": back_to_back,
        "four_tasks": concurrent,
        "four_tasks_own_teams": own_teams,
        "rotating_threads": rotating,
    }
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    ratios: dict[str, list[float]] = {k: [] for k in names[1:]}
    for r in range(rounds):
        order = names[r % 4 :] + names[: r % 4]
        pair = {name: timed(fns[name]) for name in order}
        for name, t in pair.items():
            times[name].append(t)
        for name in ratios:
            ratios[name].append(pair[name] / pair["back_to_back"])
    for q in jobs:
        q.put(None)
    quartiles = statistics.quantiles(ratios["four_tasks"], n=4) if rounds > 1 else [math.nan] * 3
    return {
        **{k: statistics.median(v) for k, v in times.items()},
        "slowdown": statistics.median(ratios["four_tasks"]),
        "slowdown_q1": quartiles[0],
        "slowdown_q3": quartiles[2],
        "own_teams_slowdown": statistics.median(ratios["four_tasks_own_teams"]),
        "rotating_slowdown": statistics.median(ratios["rotating_threads"]),
    }


def main(
    calls: int = 2000,
    rounds: int = 9,
    tasks: int = 50_000,
    sat_n: int = 50_000,
    sat_seconds: float = 2.0,
    par_n: int = 2_000_000,
    par_rounds: int = 31,
    tput_rounds: int = 5,
    quick: bool = False,
) -> dict:
    print(f"workers: {veda._tasks.api.current().max_workers}, threads: {veda.max_threads()}")
    lat = _latency(calls, rounds)
    print(f"submit -> result of a 1-element launch, median of {rounds} rounds of {calls}")
    for k, v in lat.items():
        print(f"  {k:<26} {v * 1e6:8.2f} us")
    thr = _throughput(tasks, tput_rounds)
    print(f"trivial tasks per second ({tasks} queued, then every result), median of {tput_rounds}:")
    for k, v in thr.items():
        print(f"  {k:<26} {v:10.0f} /s")
    print(f"  veda / thread pool: {thr['veda_spawn'] / thr['thread_pool_submit']:.2f}x")
    print(f"  target: veda_spawn >= 50,000 /s: {'met' if thr['veda_spawn'] >= 5e4 else 'MISSED'}")
    sat = _saturation(sat_n, sat_seconds)
    ratio = sat["high_p99"] / sat["background_p99"]
    print(
        f"saturated queue ({int(sat['tasks'])} tasks sent 1.5x faster than they drained alone, "
        f"at most {int(sat['largest_backlog'])} queued at once): "
        f"p99 queue wait HIGH {sat['high_p99'] * 1e3:.2f} ms, "
        f"BACKGROUND {sat['background_p99'] * 1e3:.2f} ms, ratio {ratio:.3f} (target <= 0.2)"
    )
    par = _shared_cores(par_n, par_rounds)
    slowdown = par["slowdown"]
    print(
        f"four parallel launches of {par_n} elements, {par_rounds} paired rounds: back to back "
        f"{par['back_to_back'] * 1e3:.2f} ms, from four tasks {par['four_tasks'] * 1e3:.2f} ms; "
        f"median ratio {slowdown:.3f}x (quartiles {par['slowdown_q1']:.3f}-"
        f"{par['slowdown_q3']:.3f}; target <= 1.1x)"
    )
    print(
        f"  without the region threads' hand-over {par['own_teams_slowdown']:.3f}x; "
        f"one after another from four threads {par['rotating_slowdown']:.3f}x"
    )
    res = {
        "latency_seconds": lat,
        "tasks_per_second": thr,
        "saturation": {**sat, "high_over_background_p99": ratio, "target": 0.2},
        "shared_cores": {**par, "target": 1.1},
    }
    report("tasks", res, quick=quick)
    return res


if __name__ == "__main__":
    if parser(__doc__).parse_args().quick:
        main(
            calls=100,
            rounds=3,
            tasks=2000,
            sat_n=5000,
            sat_seconds=0.3,
            par_n=200_000,
            par_rounds=3,
            tput_rounds=2,
            quick=True,
        )
    else:
        main()
