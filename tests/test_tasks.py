"""Tasks: veda.submit / spawn / launch_async / scope, priorities, deadlines, backpressure,
retries and fallbacks, nesting, fork, Ctrl-C and bad input.

Every wait has a timeout, so a deadlock fails a test instead of hanging it; nothing here
asserts how fast anything runs (bench/bench_tasks.py does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veda
from veda._tasks import api as _api
from veda._tasks.executor import Executor, Task
from veda._tasks.queue import Item, Priority, TaskQueue

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0  # seconds any single wait may take before the test fails


@veda.kernel
def times(i, x, out, a):
    out[i] = a * x[i]


@veda.kernel(reduce="sum")
def summed(i, x):
    return x[i]


@veda.kernel
def flaky(i, x, out, tries):
    # Fails on its first launch, succeeds on the next (the counter is written before raising).
    if i == 0:
        tries[0] += 1
    if tries[0] == 1:
        raise ValueError("first attempt fails")
    out[i] = 2.0 * x[i]


@veda.kernel
def always_fails(i, out):
    if i >= 0:
        raise ValueError("always")
    out[i] = 1.0


def within(fn: Callable[[], Any], seconds: float = WAIT) -> Any:
    """Run ``fn`` in a daemon thread; fail (rather than hang) if it takes over ``seconds``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds} s (deadlock?)"
    if "error" in box:
        raise box["error"]
    return box.get("result")


@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Executor]]:
    """Swap in a fresh executor of a chosen size (aging off unless asked) for one test."""
    made: list[Executor] = []

    def make(workers: int = 1, age_step: float = 1e9) -> Executor:
        ex = Executor(max_workers=workers, age_step=age_step)
        made.append(ex)
        monkeypatch.setattr(_api, "_current", ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False, cancel_pending=True)


def _wait_all(futures: list[Task]) -> None:
    """Wait for ``futures`` without running them here (as ``Task.result`` would, for queued
    tasks): what the queue's order decides stays visible."""
    assert not concurrent.futures.wait(futures, timeout=WAIT).not_done


def _block(ex: Executor, workers: int) -> threading.Event:
    """Occupy every worker with a task that waits for the returned event."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        release.wait(WAIT)

    for _ in range(workers):
        veda.spawn(hold, priority=veda.Priority.REALTIME)
    for _ in range(workers):
        assert started.acquire(timeout=WAIT)
    return release


# --------------------------------------------------------------------------------------------
# The API


def test_submit_runs_a_launch_and_returns_its_result():
    x = np.arange(1000.0)
    out = np.zeros_like(x)
    assert veda.submit(times, x.size, x, out, 3.0).result(timeout=WAIT) is None
    np.testing.assert_array_equal(out, 3.0 * x)
    assert veda.submit(summed, x.size, x, target="cpu").result(timeout=WAIT) == x.sum()


def test_spawn_passes_arguments_and_keywords():
    f = veda.spawn(lambda a, b=0: (a, b), 1, b=2)
    assert isinstance(f, veda.Task)
    assert f.result(timeout=WAIT) == (1, 2)


def test_a_task_sees_the_submitters_config_scope():
    with veda.config(target="cpu"):
        f = veda.spawn(lambda: veda.get_config().target)
    assert f.result(timeout=WAIT) == "cpu"


def test_an_exception_fails_only_its_own_future():
    bad = veda.spawn(int, "not a number")
    good = veda.spawn(int, "7")
    with pytest.raises(ValueError):
        bad.result(timeout=WAIT)
    assert good.result(timeout=WAIT) == 7


def test_no_thread_starts_before_the_first_task():
    code = """
        import threading, veda
        before = {t.name for t in threading.enumerate()}
        assert not any(n.startswith("veda-task") for n in before), before
        assert veda.spawn(abs, -3).result(timeout=60) == 3
        after = {t.name for t in threading.enumerate()}
        assert any(n.startswith("veda-task") for n in after), after
        print("ok")
    """
    assert _python(code).stdout.strip().endswith("ok")


# --------------------------------------------------------------------------------------------
# Ordering: priorities, deadlines within a level, aging


def test_priority_order_under_a_saturated_queue(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    order: list[str] = []
    plan = [(p, k) for p in veda.Priority for k in range(3)]
    random.Random(0).shuffle(plan)
    futures = [
        veda.spawn(order.append, f"{p.name}{k}", priority=p, deadline=None if k else 600)
        for p, k in plan
    ]
    release.set()
    _wait_all(futures)
    # By level; within a level the task with a deadline first, then first come first served.
    expected = []
    for p in veda.Priority:
        rest = [f"{p.name}{k}" for q, k in plan if q is p and k]
        expected += [f"{p.name}0", *rest]
    assert order == expected


def test_earliest_deadline_first_within_a_level(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    order: list[int] = []
    futures = [veda.spawn(order.append, d, deadline=d) for d in (300, 100, 200, 50)]
    release.set()
    _wait_all(futures)
    assert order == [50, 100, 200, 300]


def test_aging_lets_an_old_background_task_pass_newer_work():
    q = TaskQueue(age_step=1.0)
    q.push(Item(Priority.BACKGROUND, None, 0.0, "old background"))
    q.push(Item(Priority.REALTIME, None, 4.5, "new realtime"))
    # At t=4.9 the background task has climbed 4 levels: a tie, which the higher level wins.
    assert q.pop(4.9).payload == "new realtime"
    q.push(Item(Priority.REALTIME, None, 5.0, "newer realtime"))
    # At t=5.0 it has climbed 5 levels: above REALTIME.
    assert q.pop(5.0).payload == "old background"
    assert q.pop(5.0).payload == "newer realtime"
    assert q.pop(5.0) is None


def test_without_aging_time_the_levels_keep_strict_order():
    q = TaskQueue(age_step=1.0)
    for level in reversed(Priority):
        q.push(Item(level, None, 0.0, level))
    assert [q.pop(0.5).payload for _ in Priority] == list(Priority)


@pytest.mark.parametrize("level", list(Priority))
def test_no_task_is_passed_by_work_that_came_much_later(level):
    """The documented bound: a task is never passed by work that arrived more than
    (level + 1) * age_step after it, however much REALTIME work keeps arriving."""
    step = 0.1
    q = TaskQueue(age_step=step)
    q.push(Item(level, None, 0.0, ("watched", 0.0)))
    now = 0.0
    popped = None
    for tick in range(1, 10_000):
        now = tick * 0.01
        q.push(Item(Priority.REALTIME, None, now, ("realtime", now)))
        q.push(Item(Priority.REALTIME, None, now, ("realtime", now)))
        got = q.pop(now)  # saturated: two arrive for every one that starts
        assert got is not None
        if got.payload[0] == "watched":
            popped = now
            break
        assert got.payload[1] <= (level + 1) * step + 1e-9, got.payload
    assert popped is not None, "the task starved"


def test_removed_items_are_skipped_and_counted():
    q = TaskQueue()
    items = [Item(Priority.NORMAL, None, 0.0, k) for k in range(200)]
    for it in items:
        q.push(it)
    for it in items[::2]:
        assert q.remove(it)
    assert not q.remove(items[0])
    assert len(q) == 100
    assert [q.pop(0.0).payload for _ in range(100)] == list(range(1, 200, 2))
    assert len(q) == 0 and q.pop(0.0) is None


# --------------------------------------------------------------------------------------------
# Deadlines and backpressure


def test_a_task_whose_deadline_passes_in_the_queue_fails_and_never_runs(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    ran = []
    f = veda.spawn(ran.append, 1, deadline=0.05)
    try:
        # The worker is still blocked: the deadline is enforced in the queue.  (Waiting with
        # result() would run the task in this thread, in time.)
        _wait_all([f])
        with pytest.raises(veda.DeadlineExceeded, match="never ran"):
            f.result(timeout=WAIT)
        assert isinstance(f.exception(), TimeoutError)
    finally:
        release.set()
    assert veda.spawn(ran.append, 2).result(timeout=WAIT) is None
    assert ran == [2]
    assert veda.metrics().tasks.deadline_missed == 1


def test_a_task_that_starts_in_time_is_not_interrupted(executor):
    executor(workers=1)
    gate = threading.Event()

    def slow() -> str:
        gate.wait(0.2)  # runs past its deadline, which only bounds the start
        return "done"

    assert veda.spawn(slow, deadline=30).result(timeout=WAIT) == "done"


def test_backpressure_blocks_then_raises_queue_full(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    try:
        with veda.config(max_pending=2):
            queued = [veda.spawn(abs, -k) for k in range(2)]
            with pytest.raises(veda.QueueFull, match="max_pending=2"):
                veda.spawn(abs, -5, timeout=0.05)
            assert veda.try_spawn(abs, -5) is None
            assert veda.try_submit(times, 4, np.ones(4), np.ones(4), 1.0) is None
            waiting: list[Any] = []

            @veda.config(max_pending=2)  # a scope is per thread: the new thread needs its own
            def submit_one() -> None:
                waiting.append(veda.spawn(abs, -9, timeout=WAIT))

            blocked = threading.Thread(target=submit_one, daemon=True)
            blocked.start()
            blocked.join(0.2)
            assert blocked.is_alive() and not waiting  # a full queue holds the submit back
    finally:
        release.set()
    blocked.join(WAIT)
    assert not blocked.is_alive()
    assert [f.result(timeout=WAIT) for f in queued] == [0, 1]
    assert waiting[0].result(timeout=WAIT) == 9
    assert veda.metrics().tasks.queue_full == 3


def test_cancel_frees_a_place_in_the_queue(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    try:
        with veda.config(max_pending=1):
            first = veda.spawn(abs, -1)
            assert veda.try_spawn(abs, -2) is None
            assert first.cancel() and first.cancelled()
            second = veda.try_spawn(abs, -3)
            assert second is not None
    finally:
        release.set()
    assert second.result(timeout=WAIT) == 3
    assert ex.pending == 0


# --------------------------------------------------------------------------------------------
# Retries and fallbacks


def test_retry_runs_a_failed_launch_again_with_the_same_results():
    x = np.arange(64.0)
    out = np.zeros_like(x)
    tries = np.zeros(1, dtype=np.int64)
    before = veda.metrics().tasks
    f = veda.submit(flaky, x.size, x, out, tries, target="cpu", on_error="retry")
    assert f.result(timeout=WAIT) is None
    np.testing.assert_array_equal(out, 2.0 * x)
    # At least two launches; "cpu" may run the failed loop once more to find the failing index.
    assert tries[0] >= 2
    after = veda.metrics().tasks
    assert after.retries == (before.retries if before else 0) + 1


def test_without_retry_the_failure_reaches_the_future():
    tries = np.zeros(1, dtype=np.int64)
    x = np.ones(4)
    f = veda.submit(flaky, 4, x, np.zeros(4), tries, target="cpu")
    with pytest.raises(veda.KernelError, match="first attempt fails"):
        f.result(timeout=WAIT)


def test_retry_of_a_python_task_stops_after_retries():
    calls = []

    def fails_twice() -> int:
        calls.append(1)
        if len(calls) <= 2:
            raise OSError("transient")
        return len(calls)

    assert veda.spawn(fails_twice, on_error="retry", retries=2).result(timeout=WAIT) == 3
    calls.clear()
    with pytest.raises(OSError):
        veda.spawn(fails_twice, on_error="retry", retries=1).result(timeout=WAIT)
    assert len(calls) == 2


def test_fallback_moves_a_failed_launch_to_the_next_target():
    if veda.cuda.is_available():
        pytest.skip("a GPU is here: target='cuda' does not fail")
    x = np.arange(10_000.0)
    out = np.zeros_like(x)
    expected = np.zeros_like(x)
    veda.launch(times, x.size, x, expected, 1.5, target="cpu")
    before = veda.metrics().tasks
    f = veda.submit(times, x.size, x, out, 1.5, target="cuda", on_error="fallback")
    assert f.result(timeout=WAIT) is None
    np.testing.assert_array_equal(out, expected)  # the same results as on "cpu"
    after = veda.metrics().tasks
    assert after.fallbacks >= (before.fallbacks if before else 0) + 1
    # Without a fallback the same launch fails.
    with pytest.raises(veda.VedaError):
        veda.submit(times, x.size, x, out, 1.5, target="cuda").result(timeout=WAIT)


def test_fallback_order_and_what_is_skipped():
    assert _api.FALLBACK_ORDER == ("cuda", "parallel", "cpu")
    later = _api._fallbacks("parallel")
    assert later == ["cpu"]
    assert _api._fallbacks("cpu") == []
    assert "cpu" in _api._fallbacks(None)


def test_a_fallback_that_fails_everywhere_reports_the_last_failure():
    f = veda.submit(always_fails, 4, np.zeros(4), target="parallel", on_error="fallback")
    with pytest.raises(veda.KernelError, match="always") as info:
        f.result(timeout=WAIT)
    assert info.value.target == "cpu"  # parallel failed, then the fallback to cpu did


# --------------------------------------------------------------------------------------------
# Scopes


def test_scope_waits_for_every_child():
    done: list[int] = []

    def work(k: int) -> None:
        threading.Event().wait(0.01)
        done.append(k)

    def body() -> None:
        with veda.scope() as s:
            for k in range(20):
                s.spawn(work, k)
        assert sorted(done) == list(range(20))

    within(body)


def test_scope_raises_an_exception_group_with_every_failure():
    def body() -> None:
        with pytest.raises(ExceptionGroup) as info:
            with veda.scope(cancel_on_error=False) as s:
                s.spawn(int, "a")
                s.spawn(int, "b")
                ok = s.spawn(int, "3")
        assert sorted(str(e) for e in info.value.exceptions) == [
            "invalid literal for int() with base 10: 'a'",
            "invalid literal for int() with base 10: 'b'",
        ]
        assert ok.result(timeout=0) == 3

    within(body)


def test_the_first_failure_cancels_the_siblings_that_have_not_started(executor):
    ex = executor(workers=1)
    ran: list[int] = []

    def body() -> None:
        release = _block(ex, 1)
        with pytest.raises(ExceptionGroup) as info:
            with veda.scope() as s:
                s.spawn(int, "x", priority=veda.Priority.HIGH)
                later = [s.spawn(ran.append, k) for k in range(5)]
                release.set()
        assert len(info.value.exceptions) == 1
        assert all(f.cancelled() for f in later)
        assert ran == []

    within(body)


def test_cancel_on_error_false_keeps_the_siblings_running(executor):
    ex = executor(workers=1)
    ran: list[int] = []

    def body() -> None:
        release = _block(ex, 1)
        with pytest.raises(ExceptionGroup):
            with veda.scope(cancel_on_error=False) as s:
                s.spawn(int, "x", priority=veda.Priority.HIGH)
                for k in range(5):
                    s.spawn(ran.append, k)
                release.set()
        assert sorted(ran) == list(range(5))

    within(body)


def test_the_blocks_own_exception_comes_first_in_the_group():
    def body() -> None:
        with pytest.raises(ExceptionGroup) as info:
            with veda.scope(cancel_on_error=False) as s:
                s.spawn(int, "x")
                raise KeyError("body")
        assert isinstance(info.value.exceptions[0], KeyError)
        assert isinstance(info.value.exceptions[1], ValueError)

    within(body)


def test_a_scope_takes_no_tasks_after_its_block():
    with veda.scope() as s:
        pass
    with pytest.raises(veda.TaskError, match="has ended"):
        s.spawn(abs, 1)
    with pytest.raises(veda.TaskError, match="inside the with block"):
        veda.scope().spawn(abs, 1)


def _nest(depth: int, width: int, counter: list[int]) -> None:
    with veda.scope() as s:
        if depth > 1:
            s.spawn(_nest, depth - 1, width, counter)
        for _ in range(width - (depth > 1)):
            s.spawn(counter.append, 1)


def test_a_worker_waiting_on_its_child_runs_the_child_itself(executor):
    executor(workers=1)  # no other worker could run the child

    def parent() -> int:
        return veda.spawn(abs, -5).result(timeout=WAIT) + 1

    assert within(lambda: veda.spawn(parent).result(timeout=WAIT)) == 6


def test_waiting_on_a_queued_task_runs_it_in_the_waiting_thread(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)  # the only worker is busy: nobody else could run it
    try:
        f = veda.spawn(threading.get_ident)
        waiters: list[int] = []

        def wait() -> int:
            waiters.append(threading.get_ident())
            return f.result()  # no timeout: it may run the task here

        assert within(wait) == waiters[0]
        late = veda.spawn(threading.get_ident)
        with pytest.raises(concurrent.futures.TimeoutError):
            late.result(timeout=0.01)  # a timeout bounds the wait: it does not run it here
        t = veda.metrics().tasks
        assert (t.completed, t.pending) == (1, 1)
        assert late.cancel()
        with veda.scope() as s:  # a scope's queued children, too
            children = [s.spawn(threading.get_ident) for _ in range(5)]
        assert {c.result() for c in children} == {threading.get_ident()}
    finally:
        release.set()


def test_tasks_work_with_the_concurrent_futures_functions(executor):
    executor(workers=2)
    started, gate = threading.Event(), threading.Event()

    def slow() -> bool:
        started.set()
        return gate.wait(WAIT)

    running = veda.spawn(slow)
    assert started.wait(WAIT)
    with pytest.raises(concurrent.futures.TimeoutError):
        running.result(timeout=0.05)  # running on a worker: waited for, not run here
    fast = [veda.spawn(abs, -k) for k in range(50)]
    finished = concurrent.futures.as_completed(fast, timeout=WAIT)
    assert sorted(f.result() for f in finished) == list(range(50))
    done, not_done = concurrent.futures.wait(
        [running, *fast], timeout=WAIT, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert len(done) == 50 and not_done == {running}
    gate.set()
    assert running.result(timeout=WAIT) is True


def test_a_task_keeps_the_future_contract(executor):
    executor(workers=1)
    seen: list[Any] = []
    f = veda.spawn(abs, -3)
    f.add_done_callback(lambda g: seen.append(("early", g.result())))
    assert f.result(timeout=WAIT) == 3
    f.add_done_callback(lambda g: seen.append(("late", g.result())))  # done: called at once
    assert seen == [("early", 3), ("late", 3)]
    with pytest.raises(concurrent.futures.InvalidStateError):
        f.set_result(4)
    with pytest.raises(concurrent.futures.InvalidStateError):
        f.set_exception(ValueError())
    assert f.result() == 3 and not f.running() and f.done()

    def fails() -> None:
        raise KeyError("k")

    g = veda.spawn(fails)
    assert isinstance(g.exception(timeout=WAIT), KeyError)
    with pytest.raises(KeyError):
        g.result()

    async def awaited() -> int:
        return await asyncio.wrap_future(veda.spawn(abs, -5))

    assert asyncio.run(awaited()) == 5


def test_a_cancelled_task_is_done_for_the_concurrent_futures_functions(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    try:
        queued = [veda.spawn(abs, -k) for k in range(4)]
        assert all(f.cancel() for f in queued)
        # As concurrent.futures' own executors do, a cancelled task is notified: done for wait.
        assert not concurrent.futures.wait(queued, timeout=WAIT).not_done
        assert len(list(concurrent.futures.as_completed(queued, timeout=WAIT))) == 4
        later = [veda.spawn(abs, -k) for k in range(3)]
    finally:
        release.set()
    ex.shutdown(wait=True, cancel_pending=True)
    assert not concurrent.futures.wait(later, timeout=WAIT).not_done


def test_a_worker_waiting_for_room_in_the_queue_is_replaced(executor):
    executor(workers=1)

    @veda.config(max_pending=1)
    def fan_out() -> list[int]:
        children = [veda.spawn(abs, -k) for k in range(20)]  # the queue holds one at a time
        return [c.result(timeout=WAIT) for c in children]

    assert within(lambda: veda.spawn(fan_out).result(timeout=WAIT)) == list(range(20))


def test_a_task_waiting_on_another_task_never_buries_it(executor):
    # B runs on one worker; A, on the other, waits on B; C waits on A.  A waiting worker that
    # ran C on top of A would never get back to A (C waits on it): it must not run C.
    executor(workers=2)
    gate = threading.Event()
    b = veda.spawn(gate.wait, WAIT)
    a = veda.spawn(lambda: b.result() and "A")
    c = veda.spawn(lambda: a.result() + "C")
    gate.set()
    assert not concurrent.futures.wait([a, b, c], timeout=WAIT).not_done
    assert (a.result(), c.result()) == ("A", "AC")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tasks_waiting_on_earlier_tasks_all_finish(executor, seed):
    """A random graph of 200 tasks, each waiting on one or two submitted before it, on two
    workers (as concurrent.futures' pool finishes it)."""
    executor(workers=2)
    rng = random.Random(seed)
    futures: list[Task] = []

    def node(k: int, deps: list[Task]) -> int:
        return k + sum(d.result(timeout=WAIT) for d in deps) % 7

    for k in range(200):
        deps = rng.sample(futures, min(len(futures), rng.randint(1, 2)))
        futures.append(veda.spawn(node, k, deps))
    assert not concurrent.futures.wait(futures, timeout=WAIT).not_done
    assert all(f.exception() is None for f in futures)


def test_shutdown_from_a_task_the_main_thread_runs_does_not_wait(executor):
    executor(workers=1)
    started = threading.Event()
    box: dict[str, Task] = {}

    def a() -> str:
        started.wait(WAIT)
        return box["b"].result(timeout=WAIT)  # on the worker, until b is done

    def b() -> str:
        started.set()
        veda.shutdown(wait=True)  # joining the worker would wait on a, which waits on this
        return "b"

    fa = veda.spawn(a)
    box["b"] = veda.spawn(b)
    assert within(lambda: box["b"].result()) == "b"  # run by the waiting thread itself
    assert fa.result(timeout=WAIT) == "b"


def test_a_name_that_raises_does_not_stop_deadlines(executor):
    ex = executor(workers=1)

    class Proxy:
        def __call__(self) -> str:
            return "ran"

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"not ready ({name})")

    release = _block(ex, 1)
    try:
        f = veda.spawn(Proxy(), deadline=0.05)
        g = veda.spawn(abs, -1, deadline=0.1)
        for t in (f, g):
            assert isinstance(t.exception(timeout=WAIT), veda.DeadlineExceeded)
        assert "Proxy" in repr(f)
    finally:
        release.set()


def test_a_done_callback_raising_system_exit_does_not_stop_the_worker(executor, caplog):
    ex = executor(workers=1)
    first = veda.spawn(abs, -1)
    gate = threading.Event()
    slow = veda.spawn(gate.wait, WAIT)  # keeps the worker until the callback is in place
    slow.add_done_callback(lambda _: sys.exit("callback exits"))
    later_callbacks: list[bool] = []
    slow.add_done_callback(lambda _: later_callbacks.append(True))  # still called
    gate.set()
    assert first.result(timeout=WAIT) == 1 and slow.result(timeout=WAIT) is True
    later = veda.spawn(abs, -2)
    assert not concurrent.futures.wait([later], timeout=WAIT).not_done  # a worker runs it
    assert later.result() == 2 and ex.workers == 1
    assert "done callback raised" in caplog.text and later_callbacks == [True]


@pytest.mark.parametrize("where", ["worker", "waiting thread", "result raises"])
def test_a_failed_task_is_freed_without_the_garbage_collector(executor, where):
    import gc
    import weakref

    executor(workers=1)

    class Big:
        pass

    def fails(big: Big) -> None:
        raise ValueError("fails")

    gc.collect()
    gc.disable()
    try:
        big = Big()
        held = weakref.ref(big)
        if where == "worker":
            task = veda.spawn(fails, big)
            concurrent.futures.wait([task], timeout=WAIT)
        else:
            release = _block(_api.current(), 1)  # queued: the waiting thread runs it
            task = veda.spawn(fails, big)
            try:
                if where == "result raises":
                    with pytest.raises(ValueError):
                        task.result()
                else:
                    assert isinstance(task.exception(), ValueError)
            finally:
                release.set()
        assert isinstance(task.exception(), ValueError)
        ref = weakref.ref(task)
        del task, big
        assert ref() is None and held() is None  # no cycle kept them: freed by refcounts
    finally:
        gc.enable()


@pytest.mark.parametrize("timeout", [float("nan"), "1", True, [1]])
def test_a_bad_wait_timeout_is_a_task_error(executor, timeout):
    ex = executor(workers=1)
    release = _block(ex, 1)
    try:
        f = veda.spawn(abs, -1)
        for wait in (f.result, f.exception):
            with pytest.raises(veda.TaskError, match="timeout"):
                wait(timeout=timeout)
    finally:
        release.set()
    assert f.result(timeout=WAIT) == 1


def test_tasks_of_a_non_daemon_thread_still_run_after_the_main_thread_ends(tmp_path):
    # The interpreter joins non-daemon threads before veda's exit hook cancels what is queued.
    script = textwrap.dedent(
        """
        import threading, time, veda
        veda.spawn(abs, -1).result()  # the executor exists, and has a worker
        def later():
            time.sleep(0.2)  # the main thread has ended by now
            print(sum(veda.spawn(abs, -k).result(timeout=60) for k in range(100)))
        threading.Thread(target=later).start()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(sum(range(100)))]


def test_a_graph_of_tasks_waiting_without_timeouts_inside_a_task_finishes(executor):
    # Waiting without a timeout, a worker runs queued descendants of its innermost task only:
    # here every node is a child of the root, and one that ran on top of a node it depends
    # on would never finish.
    executor(workers=6)

    def node(k: int, deps: list[Task]) -> int:
        time.sleep(0.001)
        return k + sum(d.result() for d in deps) % 7

    def root(seed: int) -> int:
        rng = random.Random(seed)
        futures: list[Task] = []
        for k in range(200):
            deps = rng.sample(futures, min(len(futures), rng.randint(1, 2)))
            futures.append(veda.spawn(node, k, deps))
        return sum(f.result() for f in reversed(futures))  # the newest first: still queued

    for seed in (1, 2, 3):
        assert isinstance(within(lambda s=seed: veda.spawn(root, s).result(timeout=WAIT)), int)


def test_a_burst_of_tasks_gets_as_many_workers_as_it_needs(executor):
    ex = executor(workers=6)
    first = [veda.spawn(abs, -k) for k in range(2)]  # two workers start, then idle
    assert not concurrent.futures.wait(first, timeout=WAIT).not_done  # (run by workers)
    time.sleep(0.05)
    barrier = threading.Barrier(4)
    together = [veda.spawn(barrier.wait, WAIT / 4) for _ in range(4)]  # all four at once
    assert not concurrent.futures.wait(together, timeout=WAIT).not_done
    assert all(f.exception() is None for f in together)  # a broken barrier: fewer workers
    assert ex.workers >= 4


def test_nested_too_deep_to_help_a_worker_blocks_and_is_replaced(executor, monkeypatch):
    from veda._tasks import executor as _executor

    monkeypatch.setattr(_executor, "MAX_HELP_DEPTH", 2)
    ex = executor(workers=1)
    counter: list[int] = []
    within(lambda: veda.spawn(_nest, 12, 3, counter).result(timeout=WAIT))
    assert len(counter) == 12 * 2 + 1
    assert ex._started > 1  # replacements were started for the blocked workers
    # Every task counted once, by whichever thread ran it: 12 scopes, 25 appends.
    assert veda.metrics().tasks.completed == 12 + 25


@pytest.mark.parametrize("depth", [1000])
def test_nested_scopes_inside_tasks_never_deadlock(executor, depth):
    """1000 scopes nested inside each other's tasks, 10 tasks each, on a pool of 2 workers:
    waiting workers run queued tasks (and, nested too deep, are replaced), so it finishes."""
    ex = executor(workers=2)
    counter: list[int] = []
    within(lambda: veda.spawn(_nest, depth, 10, counter).result(timeout=WAIT), WAIT * 2)
    assert len(counter) == depth * 9 + 1
    assert ex.workers <= ex.max_workers + 256


def test_async_scope_waits_without_blocking_the_loop():
    async def main() -> tuple[list[int], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        gate = threading.Event()
        async with veda.scope() as s:
            futures = [s.spawn(lambda k=k: (gate.wait(0.02), k)[1]) for k in range(4)]
        stop.set()
        await tick_task
        return [f.result() for f in futures], ticks

    results, ticks = within(lambda: asyncio.run(main()))
    assert results == [0, 1, 2, 3]
    assert ticks > 1  # the loop kept running while the scope waited


# --------------------------------------------------------------------------------------------
# asyncio


def test_launch_async_returns_the_launch_result():
    x = np.arange(100.0)
    got = within(lambda: asyncio.run(veda.launch_async(summed, x.size, x, target="cpu")))
    assert got == x.sum()


def test_cancelling_the_awaiting_task_cancels_a_launch_not_started(executor):
    ex = executor(workers=1)
    out = np.zeros(8)

    async def main() -> None:
        release = _block(ex, 1)
        try:
            task = asyncio.create_task(
                veda.launch_async(times, 8, np.ones(8), out, 5.0, target="cpu")
            )
            await asyncio.sleep(0.01)
            assert ex.pending == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ex.pending == 0
        finally:
            release.set()

    within(lambda: asyncio.run(main()))
    veda.spawn(abs, 0).result(timeout=WAIT)  # the worker is free again
    assert not out.any()  # the cancelled launch never ran


def test_eight_threads_and_an_event_loop_submit_at_once():
    n = 256
    xs = [np.arange(n, dtype=np.float64) + k for k in range(9)]
    outs = [np.zeros((40, n)) for _ in range(9)]
    barrier = threading.Barrier(9, timeout=WAIT)

    def submitter(k: int) -> None:
        barrier.wait()
        futures = [veda.submit(times, n, xs[k], outs[k][j], float(j)) for j in range(40)]
        for f in futures:
            f.result(timeout=WAIT)

    async def loop_submitter() -> None:
        barrier.wait()
        await asyncio.gather(
            *(veda.launch_async(times, n, xs[8], outs[8][j], float(j)) for j in range(40))
        )

    def all_at_once() -> None:
        threads = [threading.Thread(target=submitter, args=(k,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        asyncio.run(loop_submitter())
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive()

    within(all_at_once)
    for k in range(9):
        np.testing.assert_array_equal(outs[k], np.arange(40.0)[:, None] * xs[k][None, :])


def test_concurrent_parallel_kernels_share_the_threads_and_give_right_results():
    n = 200_000
    x = np.random.default_rng(1).random(n)
    outs = [np.zeros(n) for _ in range(4)]

    def body() -> None:
        with veda.scope() as s:
            for k in range(4):
                s.submit(times, n, x, outs[k], float(k + 1), target="parallel")

    within(body)
    for k in range(4):
        np.testing.assert_array_equal(outs[k], (k + 1) * x)


def test_parallel_launches_from_tasks_never_borrow_more_than_the_machine(
    executor, monkeypatch, tmp_path
):
    from veda._hardware import cpu as hw

    executor(workers=4)
    lent: list[int] = []
    take = hw.budget.take

    def recording(grant: Any, wanted: int) -> int:
        got = take(grant, wanted)
        lent.append(hw.budget.lent())
        return got

    monkeypatch.setattr(hw.budget, "take", recording)
    n = 100_000
    x = np.random.default_rng(2).random(n)
    outs = [np.zeros(n) for _ in range(4)]

    @veda.config(cache_dir=str(tmp_path))  # no decision tuned by an earlier run
    def body() -> None:
        with veda.scope() as s:
            for _ in range(5):
                for k in range(4):
                    s.submit(times, n, x, outs[k], float(k + 1), target="parallel")

    within(body)
    for k in range(4):
        np.testing.assert_array_equal(outs[k], (k + 1) * x)
    assert len(lent) == 20 and max(lent) <= veda.max_threads()
    assert hw.budget.in_flight() == 0 and hw.budget.lent() == 0


def test_a_launch_waits_for_threads_while_none_is_free():
    from veda._hardware import cpu as hw

    budget = hw.ThreadBudget(total=lambda: 2)
    first = hw.Grant()
    assert budget.take(first, 2) == 2
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(budget.take(hw.Grant(), 2)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # nothing free: it waits
    budget.give(first)
    waiter.join(WAIT)
    assert got == [2]


def test_a_region_thread_runs_a_handed_over_region_and_raises_its_exception():
    from veda._hardware import cpu as hw

    regions = hw.RegionThreads()
    seen: list[tuple[str, int]] = []

    def region(a: int, b: int) -> int:
        seen.append((threading.current_thread().name, hw.get_threads()))
        return a + b

    hw.threading_layer()  # region threads set their thread count with the pool's setter
    assert regions.run(region, (2, 3), 1) == 5
    assert regions.run(region, (4, 5), veda.max_threads()) == 9
    assert regions.started() == 1  # the idle one was used again
    assert [name for name, _ in seen] == ["veda-region-1"] * 2
    assert [threads for _, threads in seen] == [1, veda.max_threads()]
    with pytest.raises(ZeroDivisionError):
        regions.run(lambda: 1 / 0, (), 1)
    assert regions.run(region, (0, 1), 1) == 1 and regions.started() == 1


def test_a_launch_first_region_and_one_thread_regions_are_not_handed_over(executor, tmp_path):
    """The first region of a launch may compile, and its compile time is taken off the launch
    in the launching thread: it runs there; so do regions of one thread (no team to warm)."""
    if veda.max_threads() < 2:
        pytest.skip("regions of one thread are never handed over")
    from veda._hardware import cpu as hw

    executor(workers=2)
    handed: list[int] = []
    run = hw.regions.run

    def recording(fn: Any, params: tuple[Any, ...], threads: int) -> Any:
        handed.append(threads)
        return run(fn, params, threads)

    @veda.kernel
    def fresh_twice(i, x, out):
        out[i] = 2.0 * x[i]

    n = 10_000
    x = np.random.default_rng(4).random(n)
    out = np.zeros(n)
    other = hw.Grant()  # another launch in the budget, holding no thread: every launch crowded
    hw.budget._grants.add(other)
    hw.regions.run = recording  # type: ignore[method-assign]
    try:
        with veda.config(cache_dir=str(tmp_path)):  # compiled here, not loaded
            for threads in (None, None, 1):
                how = {} if threads is None else {"threads": threads}
                f = veda.submit(fresh_twice, n, x, out, target="parallel", schedule="static", **how)
                concurrent.futures.wait([f], timeout=WAIT)  # a worker runs it, not this thread
                f.result(0)
    finally:
        del hw.regions.run
        hw.budget.give(other)
    np.testing.assert_array_equal(out, 2.0 * x)
    assert handed == [veda.max_threads()]  # the second launch only


def test_without_a_region_thread_the_region_runs_in_place(monkeypatch):
    from veda._hardware import cpu as hw

    regions = hw.RegionThreads()

    def refused(*_: Any) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(hw._RegionThread, "__init__", refused)
    assert regions.run(lambda a: (a, threading.current_thread().name), (7,), 2) == (
        7,
        threading.current_thread().name,
    )
    assert regions.started() == 0


def test_parallel_launches_of_tasks_in_flight_together_run_on_region_threads(executor):
    if veda.max_threads() < 2:
        pytest.skip("regions of one thread are never handed over")
    from veda._hardware import cpu as hw

    executor(workers=4)
    n = 2_000_000  # milliseconds a region: the four overlap in the budget
    x = np.random.default_rng(3).random(n)
    outs = [np.zeros(n) for _ in range(4)]
    together = threading.Barrier(4, timeout=WAIT)
    names: list[str] = []
    run = hw.regions.run

    def recording(fn: Any, params: tuple[Any, ...], threads: int) -> Any:
        names.append(threading.current_thread().name)  # the task worker handing it over
        return run(fn, params, threads)

    def task(k: int) -> None:
        together.wait()  # all four launch at once: each finds the others in the budget
        # (the schedule given: an exploring dispatcher runs one launch of a kernel at a time)
        veda.launch(times, n, x, outs[k], float(k + 1), target="parallel", schedule="static")

    # A launch's first region (which may compile) runs where it is launched: one before.
    veda.launch(times, n, x, outs[0], 1.0, target="parallel", schedule="static")
    hw.regions.run = recording  # type: ignore[method-assign]
    try:
        fs = [veda.spawn(task, k) for k in range(4)]
        within(lambda: [f.result(WAIT) for f in fs])
    finally:
        del hw.regions.run
    for k in range(4):
        np.testing.assert_array_equal(outs[k], (k + 1) * x)
    assert len(names) >= 3 and all(name.startswith("veda-task-") for name in names)
    assert hw.budget.in_flight() == 0 and hw.budget.lent() == 0


# --------------------------------------------------------------------------------------------
# No task lost


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("spawn"), st.sampled_from(list(Priority)), st.booleans()),
            st.tuples(st.just("cancel"), st.integers(0, 50)),
            st.tuples(st.just("wait"), st.integers(0, 50)),
            st.tuples(st.just("release")),
        ),
        max_size=40,
    )
)
def test_any_interleaving_of_submit_cancel_and_wait_loses_no_task(executor, ops):
    ex = executor(workers=2, age_step=0.05)
    gate = threading.Event()
    futures: list[Any] = []

    def job(k: int, fail: bool) -> int:
        gate.wait(WAIT)
        if fail:
            raise RuntimeError(k)
        return k

    for op in ops:
        if op[0] == "spawn":
            futures.append(veda.spawn(job, len(futures), op[2], priority=op[1]))
        elif op[0] == "cancel" and futures:
            futures[op[1] % len(futures)].cancel()
        elif op[0] == "wait" and futures:
            f = futures[op[1] % len(futures)]
            if gate.is_set():
                within(lambda f=f: f.cancelled() or f.exception(timeout=WAIT))
        else:
            gate.set()
    gate.set()
    for k, f in enumerate(futures):
        exc = within(lambda f=f: f.cancelled() or f.exception(timeout=WAIT))
        assert f.done()
        if f.cancelled():
            continue
        if exc is None:
            assert f.result() == k
        else:
            assert isinstance(exc, RuntimeError) and exc.args == (k,)
    m = ex.stats.take(ex.pending, ex.workers)
    assert m.submitted == len(futures)
    assert m.completed + m.failed + m.cancelled == len(futures)
    assert ex.pending == 0


# --------------------------------------------------------------------------------------------
# Telemetry


def test_tasks_appear_in_the_metrics_and_in_prometheus(executor):
    executor(workers=2)
    veda.spawn(abs, 1, priority="high").result(timeout=WAIT)
    with pytest.raises(ValueError):
        veda.spawn(int, "x").result(timeout=WAIT)
    m = veda.metrics()
    t = m.tasks
    assert (t.submitted, t.completed, t.failed) == (2, 1, 1)
    assert t.queue_wait["HIGH"]["count"] == 1 and t.queue_wait["LOW"]["count"] == 0
    assert m.to_dict()["tasks"]["failed"] == 1
    text = m.to_prometheus()
    assert "veda_tasks_failed_total{} 1" in text
    assert 'veda_task_queue_wait_seconds_count{priority="HIGH"} 1' in text
    veda.telemetry.reset()
    assert veda.metrics().tasks.submitted == 0


def test_the_prometheus_text_with_tasks_parses():
    prometheus = pytest.importorskip("prometheus_client.parser")
    veda.spawn(abs, 1).result(timeout=WAIT)
    families = {
        f.name for f in prometheus.text_string_to_metric_families(veda.metrics().to_prometheus())
    }
    assert "veda_tasks_submitted" in families and "veda_task_queue_wait_seconds" in families


# --------------------------------------------------------------------------------------------
# Processes: fork, Ctrl-C, shutdown, exit


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_exiting_while_tasks_run_parallel_regions_ends_the_process_cleanly():
    """Worker threads are daemons: at exit the interpreter ends one that takes the GIL.  Inside
    an OpenMP region that took the process down ("terminate called without an active
    exception", exit status 134); only the main thread's launches take the GIL to poll."""
    code = """
        import time
        import veda
        from veda_kernels.montecarlo import pi_hits

        assert veda.launch(pi_hits, 10_000, 1, target="parallel") > 0
        f = veda.submit(pi_hits, 10**11, 1, target="parallel", schedule="static")
        g = veda.submit(pi_hits, 10**11, 2, target="parallel", schedule="static")
        time.sleep(0.5)  # the regions run (polled more than once), then the script ends
        print("exiting", f.running() or g.running(), flush=True)
    """
    proc = _python(code, timeout=120)
    assert proc.stdout.strip() == "exiting True"
    assert "terminate" not in proc.stderr, proc.stderr


def test_ten_thousand_tasks_leave_nothing_behind():
    """RSS grows less than 20 MB over 10,000 tasks of every kind (after 1,000 to warm up), and
    no task, and nothing a task ran, stays alive once the caller drops its futures."""
    code = """
        import gc, psutil, threading
        import numpy as np
        import veda
        from veda._tasks.executor import Task
        from veda_kernels.blas1 import saxpy

        n = 1000
        x, y = np.ones(n), np.ones(n)

        def batch(count):
            out = np.zeros(n)
            gate = threading.Event()
            for k in range(count // 10):
                fs = [veda.spawn(abs, -k), veda.submit(saxpy, n, 2.0, x, y, out)]
                fs.append(veda.spawn(int, "x"))  # fails
                late = veda.spawn(gate.wait, 0)
                late.cancel()
                fs.append(late)
                with veda.scope() as s:
                    fs += [s.spawn(pow, k, 2) for _ in range(3)]
                fs.append(veda.try_spawn(len, [k]))
                fs.append(veda.spawn(sum, [k], priority="low", deadline=600))
                for f in fs:
                    if f is not None and not f.cancelled():
                        f.exception(timeout=60)
                assert fs[0].result() == k and fs[-1].result() == k
            assert (out == 3.0).all()

        batch(1000)
        gc.collect()
        before = psutil.Process().memory_info().rss
        batch(10_000)
        gc.collect()
        grew = psutil.Process().memory_info().rss - before
        alive = sum(isinstance(o, Task) for o in gc.get_objects())
        print(f"grew {grew} alive {alive}")
    """
    out = _python(code).stdout.split()
    grew, alive = int(out[1]), int(out[3])
    assert alive == 0
    assert grew < 20 * 2**20, f"RSS grew {grew / 2**20:.1f} MB over 10,000 tasks"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_with_a_fresh_executor():
    code = """
        import os, threading, veda
        from veda._tasks import api
        assert veda.spawn(abs, -1).result(timeout=60) == 1
        parent = api.current()
        gate = threading.Event()
        stuck = veda.spawn(gate.wait, 60)  # running in the parent when it forks
        pid = os.fork()
        if pid == 0:
            ok = api.current() is not parent and api.current().workers == 0
            ok = ok and veda.spawn(abs, -2).result(timeout=60) == 2
            with veda.scope() as s:
                fs = [s.spawn(abs, -k) for k in range(10)]
            ok = ok and [f.result() for f in fs] == list(range(10))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        gate.set()
        assert stuck.result(timeout=60) is True
        print("child", os.waitstatus_to_exitcode(status))
    """
    assert _python(code).stdout.strip() == "child 0"


def test_ctrl_c_while_waiting_on_a_scope_cancels_the_pending_tasks():
    code = """
        import os, signal, threading, veda
        from veda._tasks import api
        from veda._tasks.executor import Executor
        api._current = Executor(max_workers=1)
        gate = threading.Event()
        ran = []
        ctrl_c = lambda: os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(0.3, ctrl_c).start()
        try:
            with veda.scope() as s:
                # The worker runs one, and the main thread, waiting on the scope, the other.
                gates = [s.spawn(gate.wait, 60) for _ in range(2)]
                later = [s.spawn(ran.append, k) for k in range(5)]
        except KeyboardInterrupt:
            failed = [type(g.exception()).__name__ for g in gates if g.done()]
            print("interrupted", all(f.cancelled() for f in later), ran, failed)
        # A task that the waiting thread runs itself: Ctrl-C fails it and reaches the waiter.
        f = veda.spawn(gate.wait, 60)
        threading.Timer(0.2, ctrl_c).start()
        try:
            f.result()
        except KeyboardInterrupt:
            print("interrupted", type(f.exception()).__name__)
        # A task is still running (gate.wait): exit must not wait for it.
    """
    lines = _python(code, timeout=60).stdout.split("\n")
    assert lines[:2] == [
        "interrupted True [] ['KeyboardInterrupt']",
        "interrupted KeyboardInterrupt",
    ]


def test_a_ctrl_c_storm_while_the_main_thread_submits_and_waits_loses_nothing():
    """Interrupts land anywhere in a loop of spawn / submit / result / scope in the main thread
    (which runs queued tasks itself while it waits): afterwards the executor's lock is free,
    every future ends, new tasks run, and the process exits."""
    code = """
        import concurrent.futures, signal, time
        import numpy as np
        import numpy.ma  # see below
        import veda
        from veda._tasks import api
        from veda_kernels.blas1 import saxpy

        n = 1000
        x, y, out = np.ones(n), np.ones(n), np.zeros(n)
        futures = []

        def ctrl_c(signum, frame):  # a timer's SIGALRM sends SIGINT (Ctrl-C) about every ms
            signal.raise_signal(signal.SIGINT)

        # Ctrl-C raises only inside the storm: one landing in this script's own bookkeeping
        # (an except clause, a loop's jump) escaped it, and the timer, still firing while the
        # interpreter exited, ended the process (-14) now and then, as in the test below.
        inside = [False]

        def on_sigint(signum, frame):
            if inside[0]:
                inside[0] = False  # one per try: none lands in the except clause
                raise KeyboardInterrupt

        def storm(end):
            k = len(futures)
            while time.monotonic() < end:
                k += 1
                f = veda.spawn(abs, -k) if k % 3 else veda.submit(saxpy, n, 1.0, x, y, out)
                futures.append(f)
                f.result()
                if k % 7 == 0:
                    with veda.scope() as s:
                        futures.extend(s.spawn(pow, k, 2) for _ in range(3))

        # Warmed up first, numpy.ma imported first: a second interrupt while an import unwinds
        # from the first can leave Python's module lock held (numba imports numpy.ma on its
        # first typeof of an array), which no library can undo.
        veda.submit(saxpy, n, 1.0, x, y, out).result()
        veda.spawn(abs, -1).result()
        signal.signal(signal.SIGINT, on_sigint)
        signal.signal(signal.SIGALRM, ctrl_c)
        signal.setitimer(signal.ITIMER_REAL, 0.0007, 0.0011)
        hits = 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                inside[0] = True
                storm(end)
                inside[0] = False
            except KeyboardInterrupt:
                inside[0] = False
                hits += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        time.sleep(0.05)  # a signal still pending runs its handler now (it raises no more)
        ex = api.current()
        concurrent.futures.wait(futures, timeout=60)
        stuck = [f for f in futures if not f.done()]
        ok = veda.spawn(abs, -5).result(timeout=60) == 5
        print("hits", hits, "stuck", len(stuck), "locked", ex._lock.locked(), "ok", ok)
    """
    words = _python(code, timeout=180).stdout.split()
    r = dict(zip(words[::2], words[1::2]))
    assert int(r["hits"]) > 50, r
    assert r == {**r, "stuck": "0", "locked": "False", "ok": "True"}, r


def test_ctrl_c_while_the_main_thread_waits_for_room_leaves_the_lock_whole():
    """Interrupts land while the main thread's spawn waits for room in a full queue (four
    other threads keep it full): each is a KeyboardInterrupt, never a RuntimeError from a lock
    released twice, and afterwards the lock is free and tasks run."""
    code = """
        import signal, threading, time
        import veda
        from veda._tasks import api

        def leaf():
            time.sleep(0.0002)

        def producer():
            with veda.config(max_pending=1):
                while True:
                    veda.spawn(leaf)

        for _ in range(4):
            threading.Thread(target=producer, daemon=True).start()
        # Ctrl-C raises only inside the spawns: one landing in this script's own bookkeeping
        # (an except clause, a loop's jump) escaped it, and the timer, still firing while
        # the interpreter exited, ended the process (-14) now and then.
        inside = [False]

        def on_sigint(signum, frame):
            if inside[0]:
                inside[0] = False  # one per try: none lands in the except clause
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)
        signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, 0.0007, 0.0009)
        seen = {}
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                inside[0] = True
                with veda.config(max_pending=1):
                    for _ in range(20):
                        veda.spawn(leaf)
                inside[0] = False
            except BaseException as exc:
                inside[0] = False
                seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        time.sleep(0.05)
        ok = veda.spawn(abs, -5).result(timeout=60) == 5
        print("interrupts", seen.get("KeyboardInterrupt", 0), "other",
              sum(v for k, v in seen.items() if k != "KeyboardInterrupt"), "ok", ok)
    """
    words = _python(code, timeout=180).stdout.split()
    r = dict(zip(words[::2], words[1::2]))
    assert int(r["interrupts"]) > 50, r
    assert r == {**r, "other": "0", "ok": "True"}, r


def test_a_deadline_bounds_the_wait_for_room_in_a_full_queue(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    try:
        veda.spawn(abs, 1)  # the queue is full now (max_pending=1), and nothing drains it

        def late() -> Any:
            with veda.config(max_pending=1):
                return veda.spawn(abs, 2, deadline=0.2)

        start = time.monotonic()
        with pytest.raises(veda.DeadlineExceeded, match="queue was full"):
            within(late)
        assert time.monotonic() - start < WAIT / 2
        assert veda.metrics().tasks.deadline_missed >= 1
    finally:
        release.set()


def _chain(depth: int) -> int:
    return 0 if depth == 0 else veda.spawn(_chain, depth - 1).result() + 1


def test_a_chain_deeper_than_the_pool_fails_instead_of_hanging(executor, monkeypatch):
    """Tasks that each wait on the next: past MAX_HELP_DEPTH levels per worker and
    max_workers + EXTRA_WORKERS workers, every worker waits and none can start the rest; the
    wait fails with a TaskError that says so (it hung for ever before)."""
    from veda._tasks import executor as _executor

    monkeypatch.setattr(_executor, "MAX_HELP_DEPTH", 2)
    monkeypatch.setattr(_executor, "EXTRA_WORKERS", 2)
    executor(workers=1)
    assert within(lambda: veda.spawn(_chain, 3).result(timeout=WAIT)) == 3  # fits: fine
    with pytest.raises(veda.TaskError, match="no worker can start"):
        within(lambda: veda.spawn(_chain, 40).result(timeout=WAIT))


def test_threads_given_back_while_a_launch_looks_wake_it():
    """A launch that finds no thread free and threads given back between its look and its
    wait: the giver sees it waiting and wakes it (it slept until its next look before)."""
    from veda._hardware.cpu import Grant, ThreadBudget

    class Racing(ThreadBudget):
        POLL = 3600.0  # a lost wake-up would sleep this long

        def __init__(self) -> None:
            super().__init__(total=lambda: 2)
            self.giver: threading.Thread | None = None

        def lent(self) -> int:
            n = super().lent()
            giver, self.giver = self.giver, None
            if giver is not None:
                giver.start()  # gives and wakes while the launch holds the lock
                time.sleep(0.05)  # (it waits for the lock to wake the launch)
            return n

    budget = Racing()
    first = Grant()
    budget.take(first, 2)
    budget.giver = threading.Thread(target=lambda: (budget.give(first), budget.wake()))
    assert within(lambda: budget.take(Grant(), 2), 30.0) == 2


def test_a_worker_waiting_with_a_timeout_does_not_count_as_stuck(executor, monkeypatch):
    """A worker that waits with a timeout comes back by itself: a chain that needs it is not
    failed as stuck (the deepest wait counted it as blocked for ever)."""
    from veda._tasks import executor as _executor

    monkeypatch.setattr(_executor, "MAX_HELP_DEPTH", 2)
    monkeypatch.setattr(_executor, "EXTRA_WORKERS", 2)
    executor(workers=1)

    def outer() -> Any:
        inner = veda.spawn(_chain, 6)
        with pytest.raises(TimeoutError):
            inner.result(timeout=0.5)
        return inner

    inner = within(lambda: veda.spawn(outer).result(timeout=WAIT))
    assert within(lambda: inner.result(timeout=WAIT)) == 6


def test_shutdown_waits_then_refuses_new_tasks():
    code = """
        import veda
        fs = [veda.spawn(abs, -k) for k in range(100)]
        veda.shutdown(wait=True)
        assert all(f.done() for f in fs) and [f.result() for f in fs] == list(range(100))
        try:
            veda.spawn(abs, 1)
        except veda.ShutdownError as exc:
            print("refused:", exc)
    """
    out = _python(code).stdout
    assert "refused: cannot queue task abs: veda.shutdown() was called" in out


def test_shutdown_can_cancel_the_pending_tasks(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    pending = [veda.spawn(abs, k) for k in range(3)]
    ex.shutdown(wait=False, cancel_pending=True)
    release.set()
    assert all(f.cancelled() for f in pending)
    with pytest.raises(veda.ShutdownError):
        veda.spawn(abs, 1)
    with pytest.raises(CancelledError):
        pending[0].result(timeout=WAIT)


def test_numpy_numbers_and_an_infinite_timeout_are_accepted():
    f = veda.spawn(abs, -3, priority=np.int64(1), deadline=np.float64(60), timeout=float("inf"))
    assert f.result(timeout=WAIT) == 3 and f.priority is veda.Priority.HIGH
    g = veda.spawn(int, "x", on_error="retry", retries=np.int32(2))
    with pytest.raises(ValueError):
        g.result(timeout=WAIT)


def test_a_worker_waiting_with_a_timeout_does_not_run_queued_tasks(executor):
    executor(workers=1)
    gate = threading.Event()

    def parent() -> str:
        other = veda.spawn(gate.wait, WAIT)  # queued behind this task, on the only worker
        try:
            other.result(timeout=0.2)
        except concurrent.futures.TimeoutError:
            return "timed out"
        finally:
            gate.set()
        return "ran it"

    assert within(lambda: veda.spawn(parent).result(timeout=WAIT)) == "timed out"


def test_fanning_out_under_backpressure_nests_within_the_help_depth(executor):
    executor(workers=2)

    def node(depth: int) -> int:
        if depth == 0:
            return 1
        a = veda.spawn(node, depth - 1)
        b, c = veda.spawn(abs, 1), veda.spawn(abs, 1)
        return a.result() + b.result() + c.result()

    @veda.config(max_pending=1)
    def root() -> int:
        return veda.spawn(node, 300).result()

    assert within(root, WAIT * 2) == 601  # no RecursionError: helping counts its depth


def test_a_finished_scope_keeps_no_result_alive_without_the_garbage_collector():
    import gc
    import weakref

    class Big:
        pass

    gc.disable()
    try:
        with veda.scope() as s:
            children = [s.spawn(Big) for _ in range(5)]
        refs = [weakref.ref(c.result()) for c in children]
        del s, children
        assert all(r() is None for r in refs)  # no reference cycle through the scope
    finally:
        gc.enable()


def test_launch_async_counts_its_deadline_from_the_call(executor):
    ex = executor(workers=1)
    release = _block(ex, 1)
    filler = None

    async def main() -> str:
        with veda.config(max_pending=1):
            try:
                await veda.launch_async(times, 4, np.ones(4), np.zeros(4), 1.0, deadline=0.3)
            except veda.DeadlineExceeded:
                return "missed"
        return "ran"

    try:
        filler = veda.spawn(abs, 1)  # the queue stays full until the worker is released
        threading.Timer(1.0, release.set).start()
        assert asyncio.run(main()) == "missed"
    finally:
        release.set()
    assert filler.result(timeout=WAIT) == 1


def test_shutdown_from_a_task_that_another_task_waits_on_does_not_deadlock():
    code = """
        import time, veda
        def a():
            time.sleep(0.2)
            veda.shutdown(wait=True)
            return "a done"
        fa = veda.spawn(a)
        fb = veda.spawn(lambda: fa.result())
        print(fb.result(timeout=30))
    """
    assert _python(code, timeout=60).stdout.strip() == "a done"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_an_error_for_the_parents_tasks_instead_of_a_hang():
    code = """
        import os, threading, veda
        gate = threading.Event()
        with veda.scope() as s:
            held = s.spawn(gate.wait, 60)
            queued = [s.spawn(abs, -k) for k in range(3)]
            pid = os.fork()
            if pid == 0:
                try:
                    held.result()
                except veda.ShutdownError as exc:
                    ok = "forked" in str(exc)
                queued[0].cancel()  # the parent's lock is not touched
                try:
                    with veda.scope() as inner:
                        inner.spawn(abs, -1)
                    s.__exit__(None, None, None)
                except veda.ShutdownError:
                    os._exit(0 if ok else 3)
                os._exit(4)
            _, status = os.waitpid(pid, 0)
            gate.set()
        print("child", os.waitstatus_to_exitcode(status))
    """
    assert _python(code, timeout=60).stdout.strip() == "child 0"


# --------------------------------------------------------------------------------------------
# Bad input: a veda error that names the argument


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: veda.spawn(abs, 1, priority="urgent"), "priority='urgent'"),
        (lambda: veda.spawn(abs, 1, priority=7), "priority=7"),
        (lambda: veda.spawn(abs, 1, priority=True), "priority=True"),
        (lambda: veda.spawn(abs, 1, deadline=-1.0), r"deadline=-1.0 is in the past"),
        (lambda: veda.spawn(abs, 1, deadline=0), r"deadline=0 is in the past"),
        (lambda: veda.spawn(abs, 1, deadline="soon"), "deadline must be a number"),
        (lambda: veda.spawn(abs, 1, deadline=float("nan")), "deadline must be a number"),
        (lambda: veda.spawn(abs, 1, timeout=-1), "timeout must be"),
        (lambda: veda.spawn(abs, 1, on_error="ignore"), "on_error='ignore'"),
        (lambda: veda.spawn(abs, 1, on_error="fallback"), "on_error='fallback'"),
        (lambda: veda.spawn(abs, 1, on_error="retry", retries=-1), "retries must be"),
        (lambda: veda.spawn(abs, 1, retries=2), "retries=2 needs on_error"),
        (lambda: veda.spawn(42), "fn must be callable"),
        (lambda: veda.spawn(times, 4, np.ones(4), np.ones(4), 1.0), "veda.submit"),
        (lambda: veda.submit(abs, 4), "kernel must be a @veda.kernel"),
        (lambda: veda.scope(cancel_on_error="yes"), "cancel_on_error"),
        (lambda: veda.spawn(abs, 1, deadline=float("inf")), "more than a year away"),
        (lambda: veda.spawn(abs, 1, deadline=1e12), "more than a year away"),
        (lambda: veda.shutdown(wait="x"), "wait must be True or False"),
        (lambda: veda.shutdown(cancel_pending=[]), "cancel_pending must be True or False"),
    ],
)
def test_bad_task_arguments_are_refused(call, match):
    with pytest.raises(veda.TaskError, match=match):
        call()


def test_bad_launch_settings_are_refused_at_submit():
    with pytest.raises(veda.LaunchError, match="threads"):
        veda.submit(times, 4, np.ones(4), np.ones(4), 1.0, threads=0)
    with pytest.raises(veda.LaunchError):
        veda.submit(times, -3, np.ones(4), np.ones(4), 1.0)
    # The domain and the number of arguments must fit the kernel's parameters.
    with pytest.raises(veda.LaunchError, match="index parameter"):
        veda.submit(times, (2, 2), np.ones(4), np.ones(4), 1.0)
    with pytest.raises(veda.LaunchError, match="takes 3 argument"):
        veda.submit(times, 4, np.ones(4), np.ones(4))
    # The types and shapes of the arguments are checked as the launch starts.
    f = veda.submit(times, 4, np.ones(4), np.ones(4, dtype=np.int8)[::2], 1.0)
    assert isinstance(f.exception(timeout=WAIT), veda.LaunchError)


def test_max_pending_takes_numpy_integers():
    with veda.config(max_pending=np.int64(5)):
        assert veda.get_config().max_pending == 5
        assert type(veda.get_config().max_pending) is int


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "10"])
def test_max_pending_must_be_a_positive_integer(value):
    with pytest.raises(veda.ConfigError, match="max_pending"):
        veda.config(max_pending=value)


def test_max_pending_is_read_from_the_environment():
    assert veda.Config.from_env({"VEDA_MAX_PENDING": "17"}).max_pending == 17
    with pytest.raises(veda.ConfigError, match="VEDA_MAX_PENDING"):
        veda.Config.from_env({"VEDA_MAX_PENDING": "many"})
    with pytest.raises(veda.ConfigError, match="max_pending=0"):
        veda.Config.from_env({"VEDA_MAX_PENDING": "0"})


def test_the_new_errors_are_veda_errors():
    assert issubclass(veda.DeadlineExceeded, veda.VedaError)
    assert issubclass(veda.DeadlineExceeded, TimeoutError)
    assert issubclass(veda.QueueFull, veda.VedaError)
    assert issubclass(veda.TaskError, ValueError)
    assert issubclass(veda.ShutdownError, RuntimeError)


def test_launch_async_waits_for_room_without_blocking_the_loop(executor):
    ex = executor(workers=1)
    out = np.zeros(4)

    async def main() -> int:
        release = _block(ex, 1)
        with veda.config(max_pending=1):
            veda.spawn(abs, 0)  # the queue is full now
            waiter = asyncio.create_task(veda.launch_async(times, 4, np.ones(4), out, 2.0))
            ticks = 0
            while ticks < 20:  # the loop runs while the launch waits for room
                await asyncio.sleep(0.001)
                ticks += 1
            assert not waiter.done()
            release.set()
            await waiter
        return ticks

    assert within(lambda: asyncio.run(main())) == 20
    np.testing.assert_array_equal(out, 2.0)
    assert ex.stats.take(ex.pending, ex.workers).queue_full == 1
