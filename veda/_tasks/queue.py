"""The task queue's ordering: five priority levels, earliest deadline first within a level, and
aging.  Pure: no clock, no threads, no locks; the executor passes the time and holds the lock.

The aging rule
--------------
A task that has waited ``w`` seconds competes as if its level were
``level - floor(w / age_step)``: it climbs one level for every ``age_step`` seconds in the queue
(:data:`AGE_STEP`, 1 s by default).  The queue compares the *oldest* task of each level,
the level with the best (lowest) effective level wins, and a tie goes to the level that is
nominally higher.  A winning level that has not aged gives its earliest-deadline task (tasks
without a deadline after those with one, then first come first served); a level that won by
aging gives its oldest task.

What that guarantees: a task is never passed by work that arrived more than
``(level + 1) * age_step`` seconds after it (a BACKGROUND task, level 4, by nothing that arrived
5 s later), however much higher-priority work keeps arriving.  So BACKGROUND cannot starve,
while under a short burst the levels keep their strict order.

Examples
--------
>>> q = TaskQueue()
>>> q.push(Item(Priority.LOW, None, 0.0, "low"))
>>> q.push(Item(Priority.HIGH, None, 0.0, "high"))
>>> q.pop(0.0).payload, q.pop(0.0).payload
('high', 'low')
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["AGE_STEP", "Entry", "Item", "Priority", "TaskQueue"]

#: Seconds a queued task waits to climb one priority level (see the aging rule above).  Aging
#: trades the levels' order for a bound on waiting: under a sustained overload every level's
#: waits grow once BACKGROUND has aged past the others.  At 0.25 s, a 3 s overload in
#: bench/bench_tasks.py (tasks arriving 1.5x faster than they drain) gave HIGH a p99 wait of
#: 0.59x BACKGROUND's; at 1 s, the levels keep their order through overloads of a few seconds
#: and BACKGROUND still waits at most about 5 s behind a stream of REALTIME work.
AGE_STEP = 1.0


class Priority(IntEnum):
    """A task's priority: lower values start first (``REALTIME`` before ``BACKGROUND``).

    Examples
    --------
    >>> import veda
    >>> veda.Priority.HIGH < veda.Priority.LOW
    True
    >>> veda.Priority["BACKGROUND"].value
    4
    """

    REALTIME = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


_LEVELS = len(Priority)
_counter = itertools.count()


class Item:
    """One queued task: its level, absolute deadline (or None), the time it was queued, and
    what the executor runs (``payload``).

    The queue reads and writes only ``level``, ``deadline``, ``enqueued``, ``seq`` and
    ``taken``: any object with those attributes can be queued (the executor queues its
    tasks themselves, so that a task costs no second object).
    """

    __slots__ = ("deadline", "enqueued", "level", "payload", "seq", "taken")

    def __init__(self, level: int, deadline: float | None, enqueued: float, payload: Any) -> None:
        self.level = int(level)
        self.deadline = deadline
        self.enqueued = enqueued
        self.payload = payload
        self.seq = next(_counter)
        #: Popped or removed: the item is skipped where it still sits in a heap or a FIFO.
        self.taken = False


class Entry(Protocol):
    """What the queue reads and writes of what it holds (an :class:`Item`, or a task)."""

    level: int
    deadline: float | None
    enqueued: float
    seq: int
    taken: bool


E = TypeVar("E", bound=Entry)


class TaskQueue(Generic[E]):
    """Queued entries (:class:`Item` objects, or the executor's tasks) in the order of the
    aging rule (module docstring).

    Each level keeps a FIFO of all its items by arrival and a heap by (deadline, arrival) of
    those with a deadline; an item leaves both lazily (``taken``), so push, pop and remove cost
    O(log n), and O(1) for items without a deadline.
    """

    def __init__(self, age_step: float = AGE_STEP) -> None:
        if not age_step > 0:
            raise ValueError(f"age_step={age_step!r} must be a positive number of seconds")
        self.age_step = age_step
        self._heaps: list[list[tuple[float, int, E]]] = [[] for _ in range(_LEVELS)]
        self._fifos: list[deque[E]] = [deque() for _ in range(_LEVELS)]
        self._live = [0] * _LEVELS
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, item: E) -> None:
        # Counted first, calls last: a KeyboardInterrupt comes only after a call returns (or
        # as a Python function starts), so one here leaves a counted item in the FIFO, which
        # pop() finds, at worst without its place in the deadline order.
        item.taken = False
        self._live[item.level] += 1
        self._len += 1
        self._fifos[item.level].append(item)
        if item.deadline is not None:
            heapq.heappush(self._heaps[item.level], (item.deadline, item.seq, item))

    def remove(self, item: E) -> bool:
        """Take ``item`` out (cancelled, expired); False if it was popped or removed already."""
        if item.taken:
            return False
        item.taken = True
        self._live[item.level] -= 1
        self._len -= 1
        fifo = self._fifos[item.level]
        if fifo and fifo[-1] is item:  # the newest, say run by a thread that waits on it
            fifo.pop()
        self._trim(item.level)
        return True

    def pop(self, now: float) -> E | None:
        """The item to start at time ``now``, or None when the queue is empty."""
        if not self._len:
            return None
        best_level, best_rank, aged = -1, math.inf, False
        live = self._live
        for level in range(_LEVELS):
            if not live[level]:
                continue
            fifo = self._fifos[level]
            while fifo and fifo[0].taken:
                fifo.popleft()
            if not fifo:
                continue
            climbed = int((now - fifo[0].enqueued) // self.age_step)
            rank = level - max(0, climbed)
            if rank < best_rank:  # strict: a tie keeps the nominally higher level
                best_level, best_rank, aged = level, rank, climbed > 0
        heap = self._heaps[best_level]
        while heap and heap[0][2].taken:
            heapq.heappop(heap)
        if aged or not heap:
            # The oldest (aged), or first come first served among tasks without a deadline
            # (which start after those with one).
            item = self._fifos[best_level].popleft()
        else:
            item = heapq.heappop(heap)[2]
        item.taken = True
        self._live[best_level] -= 1
        self._len -= 1
        self._trim(best_level)
        return item

    def _trim(self, level: int) -> None:
        # Taken items linger in the other structure of their level until they reach its
        # front; drop them there so that memory stays proportional to what is queued.
        heap, fifo = self._heaps[level], self._fifos[level]
        while heap and heap[0][2].taken:
            heapq.heappop(heap)
        while fifo and fifo[0].taken:
            fifo.popleft()
        live = self._live[level]
        if len(heap) > 2 * live + 16:
            self._heaps[level] = [e for e in heap if not e[2].taken]
            heapq.heapify(self._heaps[level])
        if len(fifo) > 2 * live + 16:
            self._fifos[level] = deque(i for i in fifo if not i.taken)

    def find(self, wanted: Any, limit: int) -> E | None:
        """The first queued item for which ``wanted(item)`` is true, looking at the newest
        ``limit`` items of each level, levels in priority order; None if none is.  It stays
        queued (:meth:`remove` takes it out)."""
        for level in range(_LEVELS):
            if not self._live[level]:
                continue
            seen = 0
            for item in reversed(self._fifos[level]):
                if item.taken:
                    continue
                if wanted(item):
                    return item
                seen += 1
                if seen >= limit:
                    break
        return None

    def items(self) -> list[E]:
        """Every queued item (for cancelling them all), in no particular order."""
        return [i for fifo in self._fifos for i in fifo if not i.taken]
