"""Ctrl-C during launches (issue 18): a long launch is interrupted promptly, an interrupt never
surfaces as SystemError, and an interrupted launch leaves nothing behind.

Each scenario runs in a child process that prints ``ready <case>`` just before the launch the
parent interrupts with ``os.kill(pid, SIGINT)``; the child reports what it saw as one JSON line.
The bounds are wide on purpose: a launch that would take about a minute must stop within 5 s.
"""

from __future__ import annotations

import dis
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import veda
from veda._hardware import cpu as hw
from veda._hardware import signals as _signals

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="os.kill(pid, SIGINT) is POSIX (Windows has CTRL_C_EVENT)"
)

ROOT = Path(__file__).resolve().parent.parent

#: What every child defines: a kernel whose launch over N = 2**19 indices with m = LONG = 2**17
#: would take a minute or more on two cores (each index about 0.3 ms: veda checks between
#: pieces of work, so the bound on the delay depends on what one index costs), a reduction like
#: it, a saxpy, and a kernel that records which Numba worker ran each index.
PRELUDE = """
import json, math, os, signal, sys, time
import numpy as np, numba, veda
from veda._hardware import cpu as hw

@veda.kernel
def slow(i, m, out):
    s = 0.0
    for k in range(m):
        s += math.sqrt(k + i)
    out[i] = s

@veda.kernel(reduce="sum")
def slow_sum(i, m):
    s = 0.0
    for k in range(m):
        s += math.sqrt(k + i)
    return s

@veda.kernel(reduce={"bins": "sum"})
def slow_hist(i, m, bins):
    s = 0.0
    for k in range(m):
        s += math.sqrt(k + i)
    bins[i % 4] += s

@veda.kernel
def saxpy(i, a, x, y, out):
    out[i] = a * x[i] + y[i]

@veda.kernel
def worker_of(i, out):
    out[i] = numba.get_thread_id()

N, LONG = 1 << 19, 1 << 17
out = np.zeros(N)

def report(**kw):
    print(json.dumps(kw), flush=True)

def ready(case):
    print("ready", case, flush=True)

def workers_used():
    ids = np.full(1 << 16, -1, np.int64)
    veda.launch(worker_of, ids.size, ids, target="parallel", schedule="static",
                threads=veda.max_threads())
    return sorted(set(ids.tolist()))
"""


def _child(body: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(ROOT),
    )


def _drive(proc: subprocess.Popen[str], delay: float = 0.5, timeout: float = 240.0) -> list[dict]:
    """Interrupt the child ``delay`` s after each ``ready`` line; its JSON reports."""
    reports = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if time.monotonic() > deadline:
                raise AssertionError("the child ran past its time")
            if line.startswith("ready"):
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGINT)
            elif line.startswith("{"):
                reports.append(json.loads(line))
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr is not None else ""
    assert proc.returncode == 0, err
    return reports


LONG_CASES = """
CASES = [
    ("parallel-static", lambda: veda.launch(slow, N, LONG, out, target="parallel",
                                            schedule="static")),
    ("parallel-interleaved", lambda: veda.launch(slow, N, LONG, out, target="parallel",
                                                 schedule="interleaved")),
    ("parallel-dynamic", lambda: veda.launch(slow, N, LONG, out, target="parallel",
                                             schedule="dynamic")),
    ("parallel-guided", lambda: veda.launch(slow, N, LONG, out, target="parallel",
                                            schedule="guided")),
    ("cpu", lambda: veda.launch(slow, N, LONG, out, target="cpu")),
    ("adaptive", lambda: slow[N](LONG, out)),
    ("reduce-parallel", lambda: veda.launch(slow_sum, N, LONG, target="parallel")),
    ("reduce-cpu", lambda: veda.launch(slow_sum, N, LONG, target="cpu")),
    ("private-parallel", lambda: veda.launch(slow_hist, N, LONG, bins, target="parallel")),
    # Deterministic: 64 pieces of 8192 heavy indices each, far longer than the 0.5 s.
    ("private-det-cpu", lambda: det(lambda: veda.launch(slow_hist, N, LONG, bins, target="cpu"))),
    ("private-det-parallel",
     lambda: det(lambda: veda.launch(slow_hist, N, LONG, bins, target="parallel"))),
]
# Compile every launcher first (a short launch of the same types), so that the launch the
# parent interrupts runs machine code from its first instant.
veda.launch(slow, N, 1, out, target="cpu")
veda.launch(slow, N, 1, out, target="parallel")
veda.launch(slow_sum, N, 1, target="cpu")
veda.launch(slow_sum, N, 1, target="parallel")
bins = np.zeros(4)

def det(run):
    with veda.deterministic(seed=0):
        return run()

for target in ("cpu", "parallel"):
    veda.launch(slow_hist, N, 1, bins, target=target)
    det(lambda: veda.launch(slow_hist, N, 1, bins, target=target))
threads = numba.get_num_threads()
for case, run in CASES:
    ready(case)
    t0 = time.perf_counter()
    try:
        run()
        kind = "none"
    except BaseException as exc:
        kind = type(exc).__name__
    report(case=case, kind=kind, seconds=time.perf_counter() - t0,
           threads=numba.get_num_threads(), before=threads, in_flight=hw.budget.in_flight())
x = np.arange(1e6); y = np.ones(x.size); o = np.empty_like(x)
saxpy[x.size](2.0, x, y, o)
report(case="after", right=bool(np.array_equal(o, 2.0 * x + y)), workers=workers_used())
"""


def test_ctrl_c_interrupts_long_launches_promptly_on_every_target_and_schedule():
    reports = _drive(_child(LONG_CASES))
    by_case = {r["case"]: r for r in reports}
    assert len(by_case) == 12, reports
    for case, r in by_case.items():
        if case == "after":
            continue
        assert r["kind"] == "KeyboardInterrupt", r
        # Each launch would take a minute or more; SIGINT came 0.5 s in.
        assert r["seconds"] < 5.0, r
        assert r["threads"] == r["before"] and r["in_flight"] == 0, r
    assert by_case["after"]["right"]
    assert by_case["after"]["workers"] == list(range(veda.max_threads()))


STORM = """
import threading
n = 200_000
x = np.random.rand(n); y = np.random.rand(n); o = np.empty(n)
LAUNCHES = [
    lambda: saxpy[n](2.0, x, y, o),
    lambda: veda.launch(saxpy, n, 2.0, x, y, o, target="parallel", schedule="dynamic"),
    lambda: veda.launch(saxpy, n, 2.0, x, y, o, target="parallel", schedule="guided"),
    lambda: veda.launch(slow_sum, 4096, 64, target="parallel", threads=veda.max_threads()),
    lambda: veda.launch(slow_sum, 4096, 64, target="cpu"),
    lambda: slow_sum[4096](64),
]
for run in LAUNCHES:
    for _ in range(50):
        run()
threads = numba.get_num_threads()
kinds = {}

def note(exc):
    kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1

def storm(seconds):
    # Interrupts land anywhere, also in this loop; only those raised by launches count.
    end = time.monotonic() + seconds
    k = 0
    while True:
        try:
            if time.monotonic() > end:
                return
            LAUNCHES[k % len(LAUNCHES)]()
            k += 1
        except BaseException as exc:
            note(exc)

ready("storm")
for _ in range(1000):
    try:
        for _ in range(1000):
            try:
                storm(4.0)
                break
            except KeyboardInterrupt:
                pass
        break
    except KeyboardInterrupt:
        pass
report(kinds=kinds, threads=numba.get_num_threads(), before=threads,
       in_flight=hw.budget.in_flight(), workers=workers_used(),
       right=bool(np.allclose(slow_sum[4096](64), sum(
           sum(math.sqrt(k + i) for k in range(64)) for i in range(4096)))),
       saxpy_right=(saxpy[n](2.0, x, y, o), bool(np.array_equal(o, 2.0 * x + y)))[1])
"""


def test_repeated_interrupts_of_short_launches_leave_no_state_and_no_system_error():
    proc = _child(STORM)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")
    sent = 0
    end = time.monotonic() + 3.0  # the child storms for 4 s: stop well before
    rng = np.random.default_rng(18)
    while time.monotonic() < end:
        time.sleep(float(rng.uniform(0.001, 0.006)))
        os.kill(proc.pid, signal.SIGINT)
        sent += 1
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert sent > 100
    assert r["kinds"].get("KeyboardInterrupt", 0) > 50, r
    assert set(r["kinds"]) <= {"KeyboardInterrupt"}, r  # never SystemError, never KernelError
    assert r["threads"] == r["before"] and r["in_flight"] == 0, r
    assert r["workers"] == list(range(veda.max_threads())), r
    assert r["right"] and r["saxpy_right"], r


HANDLERS = """
calls = []

def counting(signum, frame):
    calls.append(time.perf_counter())

class Stop(Exception):
    pass

def stopping(signum, frame):
    raise Stop("from the handler")

veda.launch(slow, N, 1, out, target="parallel")
veda.launch(slow, N, 1, out, target="cpu")
MEDIUM = 1 << 11  # a second or a few
for target in ("parallel", "cpu"):
    signal.signal(signal.SIGINT, counting)
    calls.clear()
    ready(f"counting-{target}")
    t0 = time.perf_counter()
    veda.launch(slow, N, MEDIUM, out, target=target)
    t1 = time.perf_counter()
    report(case=f"counting-{target}", calls=len(calls), seconds=t1 - t0,
           during=bool(calls) and t0 < calls[0] < t1, complete=bool(np.all(out > 0)))
    signal.signal(signal.SIGINT, stopping)
    ready(f"stopping-{target}")
    t0 = time.perf_counter()
    try:
        veda.launch(slow, N, LONG, out, target=target)
        kind, message = "none", ""
    except BaseException as exc:
        kind, message = type(exc).__name__, str(exc)
    report(case=f"stopping-{target}", kind=kind, message=message,
           seconds=time.perf_counter() - t0, in_flight=hw.budget.in_flight())
signal.signal(signal.SIGINT, signal.SIG_IGN)
ready("ignored")
t0 = time.perf_counter()
out[:] = 0
veda.launch(slow, N, MEDIUM, out, target="parallel")
report(case="ignored", seconds=time.perf_counter() - t0, complete=bool(np.all(out > 0)))
"""


def test_a_user_handler_runs_during_the_launch_and_sig_ign_is_respected():
    reports = {r["case"]: r for r in _drive(_child(HANDLERS), delay=0.3)}
    for target in ("parallel", "cpu"):
        counting = reports[f"counting-{target}"]
        # A handler that returns lets the launch finish; it ran while the launch was running.
        assert counting["calls"] == 1 and counting["during"] and counting["complete"], counting
        stopping = reports[f"stopping-{target}"]
        # A handler's own exception ends the launch as it is: not a KernelError.
        assert stopping["kind"] == "Stop" and stopping["message"] == "from the handler"
        assert stopping["seconds"] < 5.0 and stopping["in_flight"] == 0, stopping
    assert reports["ignored"]["complete"], reports["ignored"]


ASYNCIO = """
import asyncio

async def main():
    for _ in range(20):
        saxpy[100_000](2.0, np.ones(100_000), np.ones(100_000), np.empty(100_000))
    ready("asyncio")
    # A launch of a second or two inside the coroutine: asyncio's own SIGINT handler runs
    # during it (and does not raise), then cancels the main task at its next await.
    veda.launch(slow, N, 1 << 11, out, target="parallel")
    await asyncio.sleep(60)

veda.launch(slow, N, 1, out, target="parallel")
t0 = time.perf_counter()
try:
    asyncio.run(main())
    kind = "none"
except BaseException as exc:
    kind = type(exc).__name__
report(kind=kind, seconds=time.perf_counter() - t0, complete=bool(np.all(out > 0)),
       handler_restored=signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_asyncio_still_receives_ctrl_c_after_and_during_veda_launches():
    (r,) = _drive(_child(ASYNCIO), delay=0.3)
    assert r["kind"] == "KeyboardInterrupt", r
    assert r["complete"] and r["seconds"] < 30, r
    assert r["handler_restored"], r


# --------------------------------------------------------------------------------------------
# In-process: the pieces


def test_a_system_error_caused_by_an_interrupt_is_unwrapped():
    cause = KeyboardInterrupt()
    try:
        try:
            raise cause
        except KeyboardInterrupt as exc:
            raise SystemError("<CPUDispatcher> returned a result with an exception set") from exc
    except SystemError as wrapped:
        assert _signals.unwrap_interrupt(wrapped) is cause
    other = SystemError("something else")
    assert _signals.unwrap_interrupt(other) is other


def test_held_interrupts_defers_sigint_to_the_end_of_the_block():
    seen = []
    try:
        with _signals.held_interrupts():
            signal.raise_signal(signal.SIGINT)
            seen.append("block finished")
    except KeyboardInterrupt:
        seen.append("interrupt")
    assert seen == ["block finished", "interrupt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_launches_still_give_right_answers_with_the_signal_checks():
    # The pieces of a static block and the serial loop's pieces cover every index once.
    n = 100_003
    x = np.arange(n, dtype=np.float64)
    out = np.zeros(n)

    @veda.kernel
    def inc(i, x, out):
        out[i] += x[i] + 1.0

    # Chunk 1: tens of thousands of chunks per worker, each a cheap piece (the piece size must
    # stop doubling: it once overflowed and the launch never ended).
    for settings in (
        {"target": "cpu"},
        {"target": "parallel", "schedule": "static"},
        {"target": "parallel", "schedule": "dynamic", "chunk": 1},
        {"target": "parallel", "schedule": "interleaved", "chunk": 3},
        {"target": "parallel", "schedule": "guided", "chunk": 1},
    ):
        out[:] = 0
        veda.launch(inc, n, x, out, **settings)
        np.testing.assert_array_equal(out, x + 1.0)


def test_an_interrupt_after_any_call_in_the_parallel_runner_leaves_no_state():
    """CPython raises a pending KeyboardInterrupt when a call returns (and at loop back-jumps).
    Inject one after every call of the parallel runner in turn: the in-flight count and the
    thread count must come back each time."""

    @veda.kernel
    def fill(i, out):
        out[i] = 1.0

    n = 1 << 14
    out = np.zeros(n)
    for _ in range(40):  # the dispatcher sizes the threads: runners that share the cores
        veda.launch(fill, n, out, target="parallel", schedule="static")
    runners = [
        runner
        for entry in fill._fast.values()
        for decision, (runner, _) in entry.runners.items()
        if decision.target == "parallel" and decision.threads > 1
    ]
    if not runners:
        pytest.skip("one CPU thread: no parallel candidates")
    run = runners[0]
    code = run.__code__
    instructions = list(dis.get_instructions(code))
    after_call = [
        nxt.offset for ins, nxt in itertools.pairwise(instructions) if ins.opname.startswith("CALL")
    ]
    assert len(after_call) > 5
    before = numba.get_num_threads()
    numba.set_num_threads(1)  # so that the runner changes the count, and must restore it
    try:
        for offset in after_call:
            fired = []

            def local(frame, event, arg, offset=offset, fired=fired):
                if event == "opcode" and not fired and frame.f_lasti == offset:
                    fired.append(offset)
                    raise KeyboardInterrupt
                return local

            def tracer(frame, event, arg, local=local):
                if frame.f_code is code:
                    frame.f_trace_opcodes = True
                    return local
                return None

            sys.settrace(tracer)
            try:
                run((out,))
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
            assert numba.get_num_threads() == 1, offset
            assert hw.budget.in_flight() == 0, offset
    finally:
        numba.set_num_threads(before)


COMPILE_INTERRUPT = """
import sys, time
import numpy as np
import veda

@veda.kernel
def fresh(i, x, out):
    out[i] = 3.0 * x[i] + 1.0

x, out = np.arange(1000.0), np.zeros(1000)
print("ready", flush=True)
try:
    veda.launch(fresh, 1000, x, out, target="cpu")  # the first launch compiles
    print("launched", flush=True)
    time.sleep(3)  # an interrupt that came after the launch arrives here
    print("lost", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
veda.launch(fresh, 1000, x, out, target="cpu")
print("after", bool((out == 3.0 * x + 1.0).all()), flush=True)
"""


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.5, 0.8])
def test_ctrl_c_during_a_first_compile_is_never_lost(tmp_path, delay):
    """A SIGINT that lands in llvmlite's callbacks during a compile used to be printed and
    dropped; now it is held to the end of the compile and raised there (or, if it came after
    the launch, in the code that follows)."""
    script = tmp_path / "compile_interrupt.py"
    script.write_text(COMPILE_INTERRUPT)
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = out.splitlines()
    assert "lost" not in lines, out + err
    assert "interrupted" in lines, out + err
    assert "after True" in lines, out + err
