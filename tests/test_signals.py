"""Ctrl-C during launches (issue 18): a long launch is interrupted promptly, an interrupt never
surfaces as SystemError, and an interrupted launch leaves nothing behind.

Each scenario runs in a child process that prints ``ready <case>`` just before the launch the
parent interrupts with ``os.kill(pid, SIGINT)``; the child reports what it saw as one JSON line.
The bounds are wide on purpose: a launch that would take about a minute must stop within 5 s.
"""

from __future__ import annotations

import dis
import itertools
import signal
import sys

import numba
import numpy as np
import pytest

import veda
from veda._hardware import cpu as hw
from veda._hardware import signals as _signals

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
            assert len(hw.in_flight) == 0, offset
    finally:
        numba.set_num_threads(before)
