"""Shared fixtures: an isolated kernel cache, and one test body for every CPU target."""

from __future__ import annotations

import os
import signal
import tempfile
import time

# Each test session compiles into its own cache, so tests never read kernels compiled by an
# earlier version of the code, and never write into the user's cache.  Set before veda loads.
os.environ.setdefault("VEDA_CACHE_DIR", tempfile.mkdtemp(prefix="veda-test-cache-"))
# The dispatcher's tests count the launches an exploration takes; with compiles in the
# background that count would depend on how fast this machine compiles.  The option is off here
# (and in the processes tests start) and on in the tests of it (tests/test_background.py).
os.environ.setdefault("VEDA_BACKGROUND_COMPILE", "0")

import pytest

import veda

# A shell starts a background job (``cmd &`` without job control, ``nohup``) with SIGINT
# ignored, and so every process it starts: Python then installs no KeyboardInterrupt handler,
# and the Ctrl-C tests would see nothing.  Handled here, SIGINT is reset to its default for
# the test processes this one starts.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The CUDA suite runs under Numba's CUDA simulator, which is global to a process and slow: it is
# started in its own process by tests/test_cuda.py (or on a GPU by bench/gpu_check.sh), with
# VEDA_TEST_CUDA=1, and is not collected otherwise.
collect_ignore = [] if os.environ.get("VEDA_TEST_CUDA") == "1" else ["cuda"]

SCHEDULES = ("static", "interleaved", "dynamic", "guided")

# Every way a launch can run on the CPU: (id, launch settings).
CPU_CONFIGS = [("cpu", {"target": "cpu"})] + [
    (f"parallel-{s}-t{t}", {"target": "parallel", "schedule": s, "threads": t})
    for s in SCHEDULES
    for t in sorted({1, veda.max_threads()})
]


@pytest.fixture(params=[c for _, c in CPU_CONFIGS], ids=[i for i, _ in CPU_CONFIGS])
def settings(request):
    """Launch settings for every CPU target, schedule and thread count."""
    return request.param


@pytest.fixture(params=["cpu", "parallel"])
def target(request):
    return request.param


@pytest.fixture(autouse=True)
def _background_compiles_end():
    """A compile a test left in veda's background thread (an exploration that ended before
    its last candidate compiled, the serial loop behind a first tier) ends before the next
    test starts: it would share the machine with that test's timings, make its forks wait and
    hold its tuning-cache writes back (veda.scheduler._wisdom)."""
    yield
    from veda._kernel import background

    if background.busy():
        assert background.wait(120), "a compile in veda's background thread did not end"


@pytest.fixture
def reap():
    """``reap(pid, what)``: wait up to 60 s for the fork child ``pid`` and check that it exited
    with status 0; a child still running then is killed and the test fails with ``what``."""

    def wait(pid: int, what: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, what
                return
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail(what)

    return wait
