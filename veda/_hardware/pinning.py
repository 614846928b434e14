"""Pinning the worker threads of parallel launches to CPUs: ``veda.config(pin_threads=...)``.

Each worker of a ``"parallel"`` launch is pinned to one CPU of those the process may use:
``"compact"`` fills one NUMA node before the next (neighbouring workers share caches),
``"scatter"`` deals workers round the nodes (and spreads them over one node's CPUs), so that
each node's memory bandwidth is used.  A compiled parallel region in which every worker sets
its own affinity (``sched_setaffinity`` on the calling thread) does it, and saves the mask it
had; the first parallel launch without ``pin_threads`` in the same Python thread puts every
mask back.  So a ``with veda.config(pin_threads=...)`` block pins the launches inside it, and
the affinity is restored after it.

Where the threading layer allows it: OpenMP, where a Python thread's launches run on a team
of workers of its own, each with its fixed thread id.  TBB hands a region's work to whichever
arena threads are free, so a worker index names no fixed thread; Numba's workqueue layer has
one pool of workers for every Python thread, so one thread's pinning would move the others'
launches: pinning is refused there with a warning, as on platforms without
``sched_setaffinity`` (macOS, Windows).

While pinned, the calling thread (worker 0) runs on one CPU, and what it starts inherits that
mask: threads, and subprocesses.  :meth:`Pinner.allowed` gives the CPUs it had before.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

import numpy as np

__all__ = ["MODES", "Pinner", "plan", "unavailable_reason"]

#: The placements ``pin_threads`` takes (True means ``"compact"``).
MODES = ("compact", "scatter")

#: Bytes of a CPU mask: room for 8192 CPUs, as glibc's ``cpu_set_t`` has for 1024.
MASK_BYTES = 1024


def plan(mode: str, workers: int, nodes: list[list[int]]) -> list[int]:
    """The CPU of each worker: ``nodes`` lists the CPUs this process may use, node by node.

    >>> plan("compact", 4, [[0, 1, 2, 3], [4, 5, 6, 7]])
    [0, 1, 2, 3]
    >>> plan("scatter", 4, [[0, 1, 2, 3], [4, 5, 6, 7]])
    [0, 4, 1, 5]
    >>> plan("scatter", 2, [[0, 1, 2, 3, 4, 5, 6, 7]])  # fewer workers than CPUs
    [0, 4]
    >>> plan("compact", 3, [[0, 1]])  # more workers than CPUs: round again
    [0, 1, 0]
    """
    # (a CPU beyond the masks veda builds cannot be pinned to)
    nodes = [sorted(c for c in n if c < MASK_BYTES * 8) for n in nodes]
    nodes = [n for n in nodes if n]
    if not nodes:
        raise ValueError("no CPU to pin to")
    if mode == "compact":
        order = [c for n in nodes for c in n]
    elif len(nodes) == 1:
        cpus = nodes[0]
        step = max(1, len(cpus) // max(1, min(workers, len(cpus))))
        order = [cpus[(k * step) % len(cpus)] for k in range(len(cpus))]
        order = list(dict.fromkeys(order)) + [c for c in cpus if c not in order]
    else:  # deal round the nodes
        order = []
        for k in range(max(len(n) for n in nodes)):
            order += [n[k] for n in nodes if k < len(n)]
    return [order[k % len(order)] for k in range(workers)]


def unavailable_reason(layer: str) -> str | None:
    """Why workers cannot be pinned on threading layer ``layer`` here, or None."""
    if not hasattr(os, "sched_setaffinity"):
        return "this platform has no sched_setaffinity (macOS, Windows)"
    if layer == "tbb":
        return (
            "the TBB threading layer runs a region on whichever of its threads are free, so a "
            "worker is no fixed thread"
        )
    if layer == "workqueue":
        return (
            "the workqueue layer's workers serve every Python thread, so one thread's pinning "
            "would move another's launches"
        )
    return None


_compiled: dict[str, Any] = {}


def _regions() -> tuple[Any, Any]:
    """The compiled regions: pin every worker (saving its mask), and put the masks back."""
    if not _compiled:
        import numba

        libc = ctypes.CDLL(None, use_errno=True)
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t)
        setaff = proto(("sched_setaffinity", libc))
        getaff = proto(("sched_getaffinity", libc))

        @numba.njit(parallel=True, cache=False)
        def pin(masks, saved, done, n):  # type: ignore[no-untyped-def]
            nbytes = masks.shape[1]
            for _ in numba.prange(n):
                t = numba.get_thread_id()
                if done[t] == 0:  # a worker running two iterations saves its own mask once
                    if getaff(0, nbytes, saved[t].ctypes.data) == 0:
                        done[t] = 1 if setaff(0, nbytes, masks[t].ctypes.data) == 0 else 2

        @numba.njit(parallel=True, cache=False)
        def unpin(saved, done, n):  # type: ignore[no-untyped-def]
            nbytes = saved.shape[1]
            for _ in numba.prange(n):
                t = numba.get_thread_id()
                if done[t] == 1:
                    if setaff(0, nbytes, saved[t].ctypes.data) == 0:
                        done[t] = 0

        _compiled["pin"], _compiled["unpin"] = pin, unpin
    return _compiled["pin"], _compiled["unpin"]


class _State(threading.local):
    mode: str | None = None
    saved: Any = None
    done: Any = None
    cpus: list[int] | None = None
    own: Any = None  # the calling thread's mask before it pinned


class Pinner:
    """Pins and restores the workers of the calling Python thread's parallel launches.

    ``nodes`` gives the CPUs to use, node by node (the caller reads the topology);
    ``workers`` is the number of worker threads; ``get_threads`` and ``set_threads`` are
    Numba's per-thread thread count, which a pinning region sets to every worker.
    """

    def __init__(self) -> None:
        self._state = _State()
        #: Python threads whose workers are pinned now: while none is, launches without
        #: pin_threads skip the check.
        self.pinned = 0

    def allowed(self) -> set[int]:
        """The CPUs the calling thread may use, as before it pinned (its mask while pinned is
        one CPU)."""
        own = self._state.own if self._state.mode is not None else None
        return set(own) if own is not None else set(os.sched_getaffinity(0))

    def mode(self) -> str | None:
        return self._state.mode

    def cpus(self) -> list[int] | None:
        """The CPU of each worker as last pinned from this thread, or None."""
        return self._state.cpus

    def apply(
        self,
        mode: str | None,
        workers: int,
        nodes: list[list[int]],
        get_threads: Any,
        set_threads: Any,
    ) -> None:
        st = self._state
        if st.mode == mode:
            return
        pin, unpin = _regions()
        previous = get_threads()
        try:
            if previous != workers:
                set_threads(workers)
            if st.mode is not None:
                unpin(st.saved, st.done, workers)
                st.mode, st.cpus = None, None
                self.pinned -= 1
            if mode is not None:
                cpus = plan(mode, workers, nodes)
                masks = np.zeros((workers, MASK_BYTES), np.uint8)
                for k, c in enumerate(cpus):
                    masks[k, c // 8] = 1 << (c % 8)
                st.own = os.sched_getaffinity(0)
                st.saved = np.zeros((workers, MASK_BYTES), np.uint8)
                st.done = np.zeros(workers, np.int64)
                st.mode, st.cpus = mode, cpus
                self.pinned += 1
                pin(masks, st.saved, st.done, workers)
        finally:
            if previous != workers:
                set_threads(previous)


#: The process's pinner.
pinner = Pinner()


def _after_fork() -> None:
    # The child's one thread is the forking one, with its mask: put back what it had before
    # it pinned; the child's workers are new, and nothing of theirs is pinned.
    own = pinner._state.own if pinner._state.mode is not None else None
    pinner._state = _State()
    pinner.pinned = 0
    if own is not None:
        try:
            os.sched_setaffinity(0, own)
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
