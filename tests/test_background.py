"""Compiles in the background while the dispatcher explores (``background_compile``)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import veda
from veda._kernel import background
from veda.scheduler import _dispatch
from veda.scheduler._tuner import Tuner
from veda.targets import Decision

needs_threads = pytest.mark.skipif(veda.max_threads() < 2, reason="needs 2 threads")


@pytest.fixture(autouse=True)
def _idle_machine(monkeypatch):
    """The parallel candidates must not depend on what else the machine runs meanwhile."""
    monkeypatch.setattr(_dispatch.dispatcher.load, "free_cores", lambda: veda.max_threads())


@veda.kernel
def heavy_bg(i, x, out):
    # A few hundred operations per index: long enough that the parallel candidates are not
    # dropped as too short for a region, so the exploration needs the parallel loop.
    acc = 0.0
    for j in range(300):
        acc += x[i] * 1.0000001 + j * 1e-9
    out[i] = acc


@veda.kernel
def heavy_failed(i, x, out):
    acc = 0.0
    for j in range(300):
        acc += x[i] * 1.0000005 + j * 1e-9
    out[i] = acc


@veda.kernel
def heavy_off(i, x, out):
    acc = 0.0
    for j in range(300):
        acc += x[i] * 1.0000003 + j * 1e-9
    out[i] = acc


def _expected(x, factor):
    acc = np.zeros_like(x)
    for j in range(300):
        acc += x * factor + j * 1e-9
    return acc


def _explore(kernel, x, out, expected):
    """Launch ``kernel`` until its exploration ends (results checked); the launches that ran
    while a compile was pending in the background, and the explain row."""
    while_compiling = noted = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kernel[x.size](x, out)
        np.testing.assert_allclose(out, expected, rtol=1e-12)
        explained = veda.explain(kernel)
        (row,) = explained.rows
        if _pending_jobs():
            while_compiling += 1
            # explain says which candidates wait for the compile
            waiting = {t["decision"].target for t in row["trials"] if t["compiling"]}
            assert waiting <= {"parallel"}
            if waiting:
                assert "[compiling in the background]" in str(explained)
                noted += 1
        if row["decision"] is not None:
            break
    assert row["decision"] is not None, "the exploration did not end"
    return while_compiling, noted, row


def _pending_jobs():
    return [k for k, v in list(background._jobs.items()) if v == background.PENDING]


@needs_threads
def test_launches_run_on_while_a_candidate_compiles(tmp_path):
    n = 1 << 14
    x = np.random.default_rng(1).random(n)
    out = np.zeros(n)
    with veda.config(background_compile=True, progress=False, cache_dir=str(tmp_path)):
        launches_while_compiling, noted, row = _explore(heavy_bg, x, out, _expected(x, 1.0000001))
    stats = heavy_bg.compile_stats
    # the serial loop's first tier compiled in the first launch, the serial loop and the
    # parallel one in the compile thread
    assert stats.compiled == 3 and stats.background == 2, stats.as_dict()
    assert launches_while_compiling >= 2 and noted >= 1
    # once compiled, the parallel candidates were measured like the serial one
    measured = {t["decision"].target for t in row["trials"] if t["samples"]}
    assert measured == {"cpu", "parallel"}, row["trials"]


@needs_threads
def test_without_the_option_the_launch_compiles_itself(tmp_path):
    n = 1 << 14
    x = np.random.default_rng(2).random(n)
    out = np.zeros(n)
    with veda.config(background_compile=False, progress=False, cache_dir=str(tmp_path)):
        launches_while_compiling, _, row = _explore(heavy_off, x, out, _expected(x, 1.0000003))
    assert launches_while_compiling == 0
    measured = {t["decision"].target for t in row["trials"] if t["samples"]}
    assert measured == {"cpu", "parallel"}, row["trials"]
    assert heavy_off.compile_stats.compiled == 2
    assert heavy_off.compile_stats.background == 0


def test_a_job_runs_once_per_key_in_the_compile_thread():
    ran = []
    gate = threading.Event()

    def job():
        ran.append(threading.current_thread().name)
        gate.wait(10)

    key = ("test", object())
    assert background.state(key) is None
    assert background.submit(key, job) == background.PENDING
    assert background.submit(key, lambda: ran.append("again")) == background.PENDING
    gate.set()
    assert background.wait(30)
    assert background.state(key) == background.DONE
    assert ran == ["veda-compile"]


def test_a_failed_job_is_left_to_the_launch():
    key = ("test", object())

    def job():
        raise ValueError("no code for you")

    background.submit(key, job)
    assert background.wait(30)
    assert background.state(key) == background.FAILED

    from veda._launch import _pending

    class Runner:
        @staticmethod
        def warm(args):
            return key, job

    assert _pending(Runner(), ()) is None  # the launch compiles (and raises) in its own thread


@needs_threads
def test_a_compile_that_failed_in_the_background_is_made_by_the_launch(monkeypatch, tmp_path):
    from veda.targets import cpu

    real = cpu.background_job
    failed = []

    def failing(fn, params):
        got = real(fn, params)
        if got is None or "parallel" not in fn.py_func.__name__:
            return got

        def job():
            failed.append(1)
            raise RuntimeError("the compile thread could not")

        return got[0], job

    monkeypatch.setattr(cpu, "background_job", failing)
    n = 1 << 14
    x = np.random.default_rng(4).random(n)
    out = np.zeros(n)
    with veda.config(background_compile=True, progress=False, cache_dir=str(tmp_path)):
        _, _, row = _explore(heavy_failed, x, out, _expected(x, 1.0000005))
    assert failed == [1]
    stats = heavy_failed.compile_stats
    # the serial loop's first tier in the first launch, the serial loop in the compile thread,
    # the parallel loop in a launch after its compile failed there
    assert stats.compiled == 3 and stats.background == 1, stats.as_dict()
    measured = {t["decision"].target for t in row["trials"] if t["samples"]}
    assert measured == {"cpu", "parallel"}, row["trials"]


def test_tuner_takes_a_later_candidate_first_and_counts_it():
    a, b = Decision("cpu"), Decision("parallel", 2, "static", 1)
    c = Decision("parallel", 2, "dynamic", 64)
    tuner = Tuner([a, b, c])
    assert tuner.queued() == [a, b, c]
    for d in (a, c):  # warm-up launches, then one sample each, out of order
        tuner.observe(d, 1.0)
        tuner.observe(d, 1.0)
    assert tuner.queued() == [b]
    tuner.observe(Decision("parallel", 2, "dynamic", 7), 1.0)  # not a candidate: ignored
    tuner.observe(a, 2.0)  # a candidate this round no longer runs: ignored
    assert tuner.trials[a].samples == [1.0] and tuner.trials[c].samples == [1.0]
    assert tuner.trials[b].samples == []


CHILD = textwrap.dedent(
    """
    import atexit, os, sys, time

    def _at_exit():  # registered before veda's: runs after it
        background = sys.modules["veda._kernel.background"]
        heavy = sys.modules["test_background"].heavy_bg
        print("at exit", background._thread is None, heavy.compile_stats.background)

    atexit.register(_at_exit)
    import numpy as np
    sys.path.insert(0, {tests!r})
    import veda
    from veda._kernel import background
    from test_background import heavy_bg, _pending_jobs
    from veda.scheduler._dispatch import LoadMonitor
    LoadMonitor.free_cores = lambda self: veda.max_threads()  # not the machine's other load
    n = 1 << 14
    x = np.random.default_rng(3).random(n)
    out = np.zeros(n)
    with veda.config(background_compile=True, progress=False):
        for _ in range(400):
            heavy_bg[n](x, out)
            if _pending_jobs():
                break
    assert _pending_jobs(), "no compile went to the background"
    # Running, not only queued: exit drops the queued jobs and waits for the running one.
    deadline = time.monotonic() + 30
    while background._queue and time.monotonic() < deadline:
        time.sleep(0.001)
    {after}
    """
)


def _child(after: str, cache: str) -> subprocess.CompletedProcess:
    code = CHILD.format(tests=os.path.dirname(__file__), after=after)
    # an empty cache: the kernel compiles in the child (this process may have cached it)
    env = dict(os.environ, VEDA_BACKGROUND_COMPILE="1", VEDA_CACHE_DIR=cache)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


@needs_threads
def test_a_program_that_ends_while_a_compile_runs_exits_cleanly(tmp_path):
    out = _child("print('leaving')", str(tmp_path))
    assert out.returncode == 0, out.stderr
    # veda's exit hook waited for the compile, which ended in the compile thread (the serial
    # loop's, and perhaps a parallel one's after it)
    lines = out.stdout.split("\n")
    assert lines[0] == "leaving" and lines[1] in ("at exit True 1", "at exit True 2"), out.stdout
    assert "Traceback" not in out.stderr and "terminate" not in out.stderr


@needs_threads
@pytest.mark.skipif(os.name != "posix", reason="exit status of a process killed by SIGINT")
def test_a_program_ended_by_ctrl_c_while_a_compile_runs_exits_as_interrupted(tmp_path):
    """An uncaught KeyboardInterrupt ends the program as killed by SIGINT (-2 here, 130 in a
    shell), also when the compile veda waits for at exit ran on after it (status 1 before:
    CPython's note of the interrupt is cleared by the compile's own ``exec`` calls)."""
    out = _child("raise KeyboardInterrupt", str(tmp_path))
    assert out.returncode == -signal.SIGINT, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split("\n")[0] in ("at exit True 1", "at exit True 2"), out.stdout
    assert "KeyboardInterrupt" in out.stderr


@needs_threads
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_during_a_background_compile_leaves_the_child_able_to_compile(tmp_path):
    after = textwrap.dedent(
        """
        pid = os.fork()
        if pid == 0:
            import numba
            ok = numba.njit(lambda v: v + 1)(41) == 42 and not _pending_jobs()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    out = _child(after, str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "child 0", out.stdout


FOREGROUND_FORK = textwrap.dedent(
    """
    import faulthandler, os, sys, threading, time
    import numpy as np
    import veda

    @veda.kernel
    def in_thread(i, x, out):
        out[i] = x[i] * 3.0 + 1.0

    @veda.kernel
    def in_child(i, x, out):
        out[i] = x[i] * 5.0 - 1.0

    x = np.ones(1000)
    t = threading.Thread(target=lambda: veda.launch(in_thread, 1000, x, np.zeros(1000),
                                                   target="cpu"))
    t.start()
    time.sleep(float(sys.argv[1]))  # the thread is building or compiling its kernel now
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(60, exit=True)  # a hang: exit 1, with the stacks
        out = np.zeros(1000)
        veda.launch(in_child, 1000, x, out, target="cpu")
        os._exit(0 if out[0] == 4.0 else 3)
    t.join()
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1])
def test_a_fork_while_another_thread_compiles_leaves_the_child_able_to_compile(tmp_path, delay):
    # The child of a fork made while a program's thread compiled in the foreground hung at its
    # own first compile, on locks that thread held in the parent: Numba's compile lock, the
    # cache's, the import of numpy.ma.  The fork now waits for that compile.
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", FOREGROUND_FORK, str(delay)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "child 0", (out.stdout, out.stderr)


CTRL_C_DURING_FORK = textwrap.dedent(
    """
    import os, signal, threading, time
    import numpy as np
    import veda

    @veda.kernel
    def k(i, x, out):
        out[i] = x[i] * 3.0 + 1.0

    x = np.ones(1 << 16)
    t = threading.Thread(target=lambda: veda.launch(k, x.size, x, np.zeros(x.size),
                                                   target="parallel"))
    t.start()
    time.sleep(0.1)  # the thread compiles the parallel loop (a second or more)
    threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        pid = os.fork()  # waits for that compile; the Ctrl-C comes meanwhile
        if pid == 0:
            o = np.zeros(100)
            veda.launch(k, 100, x[:100], o, target="cpu")
            os._exit(0 if o[0] == 4.0 else 3)
        time.sleep(2)
        print("no interrupt")
    except KeyboardInterrupt:
        print("interrupted after the fork")
    t.join()
    print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_ctrl_c_while_a_real_fork_waits_reaches_the_program(tmp_path):
    # Raised in the at-fork hook (signal.raise_signal runs the handler at once), Python printed
    # "Exception ignored" and the program never saw its Ctrl-C (adversarial review).
    env = dict(os.environ, VEDA_CACHE_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", CTRL_C_DURING_FORK],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["interrupted after the fork", "child 0"], out
    assert "Exception ignored" not in out.stderr


def test_a_fork_waits_for_the_compiles_of_other_threads_and_holds_new_ones():
    # The gate, in one process: a compile in progress holds the fork hook; while the fork
    # waits or runs, a compile that starts in a third thread waits for it to end.
    inside, leave = threading.Event(), threading.Event()
    events = []

    def compiling_thread():
        with background.compiling():
            inside.set()
            leave.wait(10)
            events.append("compiled")  # (inside: the fork hook goes on only once it left)

    def fork_hooks():
        background._before_fork()
        events.append("forking")
        time.sleep(0.2)
        events.append("forked")
        background._after_fork_parent()

    def late_thread():
        with background.compiling():
            events.append("late compile")

    first = threading.Thread(target=compiling_thread)
    first.start()
    assert inside.wait(10)
    forker = threading.Thread(target=fork_hooks)
    forker.start()
    forker.join(0.2)
    assert events == []  # the fork waits for the compile in progress
    leave.set()
    first.join(10)
    time.sleep(0.05)  # the fork hook runs now (it sleeps 0.2 s between its events)
    late = threading.Thread(target=late_thread)
    late.start()
    forker.join(10)
    late.join(10)
    assert events == ["compiled", "forking", "forked", "late compile"]
    with background.compiling():  # nested in one thread, and open again after the fork
        with background.compiling():
            pass
    assert background._inside == {}


def test_a_fork_waits_for_the_job_in_progress_only():
    # What the fork hook does around a fork, in one thread: it waits for the job in progress
    # (not for those queued behind it), holds the next back, and lets it go after.
    gate = threading.Event()
    started = threading.Event()
    ran = []

    def first():
        started.set()
        gate.wait(10)
        ran.append("first")

    keys = [("test", object()) for _ in range(3)]
    background.submit(keys[0], first)
    for key in keys[1:]:
        background.submit(key, lambda: (time.sleep(0.3), ran.append("next")))
    assert started.wait(10)
    events = []

    def fork_hooks():
        background._before_fork()
        events.append(list(ran))
        background._after_fork_parent()

    forker = threading.Thread(target=fork_hooks)
    forker.start()
    forker.join(0.2)
    assert not events  # waits while the job runs
    gate.set()
    forker.join(10)
    assert events == [["first"]]  # right after the job in progress, before the next
    assert background.wait(30)
    assert [background.state(k) for k in keys] == [background.DONE] * 3


@needs_threads
def test_a_private_temporary_cache_is_removed_after_a_compile_at_exit(tmp_path):
    # An unusable cache folder (a file) sends veda to a private temporary cache, removed at
    # exit; a compile still running then must not write into it after its removal.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    after = "from veda import _files\nprint('fallback', _files._fallback)"
    out = _child(after, str(blocker))
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("fallback "))
    folder = line.split(" ", 1)[1]
    assert folder != "None"
    assert not os.path.exists(folder), os.listdir(folder)


def test_a_program_gc_disable_during_another_threads_compile_stays(tmp_path):
    assert gc.isenabled()
    started, go = threading.Event(), threading.Event()

    def compile_in_a_thread():
        from veda._kernel.checks import gc_paused

        with gc_paused:  # as veda's compile hook around a compile
            started.set()
            go.wait(10)

    worker = threading.Thread(target=compile_in_a_thread)
    worker.start()
    try:
        assert started.wait(10)
        assert gc.isenabled()  # the pause does not disable the collector
        gc.disable()  # the program's own, meanwhile
        go.set()
        worker.join(10)
        assert not gc.isenabled()
        assert gc.get_threshold()[0] > 0  # the pause's threshold put back
    finally:
        go.set()
        gc.enable()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="main")
def test_ctrl_c_in_submit_leaves_the_job_running(monkeypatch):
    real_start = threading.Thread.start

    def interrupted_start(self):
        os.kill(os.getpid(), signal.SIGINT)  # lands while submit starts the thread
        real_start(self)

    assert background.wait(30)  # no compile thread: the next submit starts one
    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    key = ("test", object())
    with pytest.raises(KeyboardInterrupt):
        background.submit(key, lambda: None)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert background.wait(30)
    assert background.state(key) == background.DONE


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="main")
def test_ctrl_c_while_a_fork_waits_is_raised_after_it():
    gate, started, ended = threading.Event(), threading.Event(), threading.Event()
    key = ("test", object())
    background.submit(key, lambda: (started.set(), gate.wait(10), ended.set()))
    assert started.wait(10)

    def interrupt_then_finish():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # while the fork hook waits for the job
        time.sleep(0.2)
        gate.set()

    helper = threading.Thread(target=interrupt_then_finish)
    helper.start()
    waited = []
    with pytest.raises(KeyboardInterrupt):
        try:
            background._before_fork()  # waits for the job, the Ctrl-C held
            waited.append(ended.is_set())
        finally:
            background._after_fork_parent()  # locks given back, then the Ctrl-C
        time.sleep(1)  # (the handler runs at the next bytecode)
    helper.join(10)
    assert waited == [True]  # the hook returned (not interrupted) once the job had ended
    assert background.wait(30)
    assert background.state(key) == background.DONE
    later = ("test", object())
    background.submit(later, lambda: None)  # the compile thread still works
    assert background.wait(30)
    assert background.state(later) == background.DONE


EXIT_CTRL_C = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from veda._kernel import background

    def compile_stand_in():
        time.sleep(1.0)
        open(sys.argv[1] + "/compiled", "w").close()

    background.submit("compile", compile_stand_in)
    background.submit("write", lambda: open(sys.argv[1] + "/written", "w").close(), keep=True)

    def ctrl_c():
        time.sleep(0.3)  # while exit waits for the compile
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGINT")
def test_ctrl_c_while_exit_waits_for_a_compile_lets_it_and_the_kept_jobs_end(tmp_path):
    """A join that Ctrl-C interrupted marked the compile thread as stopped (Python 3.11), exit
    went on, and the interpreter ended the compile in the middle: the tuning cache's write
    kept for exit was lost."""
    out = subprocess.run(
        [sys.executable, "-c", EXIT_CTRL_C, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "compiled").exists() and (tmp_path / "written").exists()
    assert "Traceback" not in out.stderr, out.stderr
