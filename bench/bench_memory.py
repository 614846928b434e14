"""Pooled host arrays (``veda.empty``) against fresh ``np.empty`` (issue 16's target: a reused
8 MB buffer written once takes at most half the time of a fresh one written once).

Side by side in one process, interleaved, medians after a warm-up:

* ``pooled``: ``veda.empty`` of 8 MB, written once, dropped (the pool lends the same buffer
  again: its pages are mapped already);
* ``np.empty``: the same with NumPy's allocation, as a program sees it; glibc adapts its mmap
  threshold to repeated large frees and may keep the memory, so this can be fast already;
* ``np.empty, trimmed``: the same after ``malloc_trim(0)`` (untimed) before each repeat, so that
  glibc hands its free memory back to the kernel and each allocation is fresh: page faults;
* ``np.empty, new size``: a size never allocated before in the process each repeat (8 MB plus
  a new multiple of 64 KiB), where glibc's threshold has not adapted yet.

And the cost of a call for small arrays (64 B, 4 KiB, 64 KiB: served by ``np.empty`` behind the
pool's checks) and a pool hit at 256 KiB, against ``np.empty``, without writing.

    python bench/bench_memory.py [--quick]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import sys
import time

import numpy as np

import veda

from _util import parser, per_call, report


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return None


def _pair(fns, setups, repeats, warmup):
    """Median seconds of each of two functions, interleaved repeat by repeat."""
    noop = lambda: None
    for _ in range(warmup):
        for name, fn in fns.items():
            setups.get(name, noop)()
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.disable()  # a collection inside one side's timing would be charged to it
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                setups.get(name, noop)()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}


def large(nbytes: int, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Pooled against each kind of fresh allocation, one interleaved pair at a time (a fresh
    allocation's page faults are not charged to its neighbour)."""
    n = nbytes // 8
    trim = _malloc_trim()
    sizes = iter(range(1, 10**9))

    def pooled():
        a = veda.empty(n)
        a.fill(1.0)

    def fresh():
        a = np.empty(n)
        a.fill(1.0)

    def fresh_new_size():
        a = np.empty(n + 8192 * next(sizes))
        a[:n].fill(1.0)

    pairs = {
        "np.empty": ({"np.empty": fresh}, {}),
        "np.empty, new size": ({"np.empty, new size": fresh_new_size}, {}),
    }
    if trim is not None:
        pairs["np.empty, trimmed"] = (
            {"np.empty, trimmed": fresh},
            {"np.empty, trimmed": lambda: trim(0)},
        )
    return {
        name: _pair({"pooled": pooled, **fns}, setups, repeats, warmup)
        for name, (fns, setups) in pairs.items()
    }


def small(calls: int) -> dict[str, dict[str, float]]:
    out = {}
    for nbytes in (64, 4096, 65536, 262144):
        n = nbytes // 8
        per_call(lambda: veda.empty(n), calls // 10)  # warm-up
        rows = {"veda.empty": [], "np.empty": []}
        for _ in range(5):
            rows["veda.empty"].append(per_call(lambda: veda.empty(n), calls))
            rows["np.empty"].append(per_call(lambda: np.empty(n), calls))
        out[f"{nbytes} B"] = {k: statistics.median(v) for k, v in rows.items()}
    return out


def main() -> int:
    args = parser(__doc__).parse_args()
    nbytes = 1 << 20 if args.quick else 8 << 20
    repeats, warmup, calls = (5, 1, 200) if args.quick else (200, 20, 20_000)

    # Checks: the pooled array is what was asked, and a reused buffer keeps nothing of the past.
    a = veda.empty(nbytes // 8)
    a.fill(3.0)
    del a
    z = veda.zeros(nbytes // 8)
    if z.any() or z.ctypes.data % 64:
        print("veda.zeros returned memory that is not zero or not aligned", file=sys.stderr)
        return 1
    del z

    big = large(nbytes, repeats, warmup)
    tiny = small(calls)
    label = f"{nbytes >> 20} MB"
    print(f"{label} float64 written once, median of {repeats} after {warmup} warm-up rounds:")
    for name, pair in big.items():
        ratio = pair["pooled"] / pair[name]
        print(
            f"  pooled {pair['pooled'] * 1e3:6.3f} ms, {name:<20} {pair[name] * 1e3:6.3f} ms: "
            f"pooled / fresh {ratio:.2f} (target <= 0.5)"
        )
    print("a call, no write (median of 5 rounds):")
    for size, row in tiny.items():
        print(
            f"  {size:>10}: veda.empty {row['veda.empty'] * 1e6:6.2f} us, "
            f"np.empty {row['np.empty'] * 1e6:6.2f} us"
        )
    print(f"pool: {veda.memory_stats()['host']}")
    report(
        "bench_memory",
        {
            "nbytes": nbytes,
            "repeats": repeats,
            "large_seconds": big,
            "pooled_over_fresh": {k: v["pooled"] / v[k] for k, v in big.items()},
            "small_seconds": tiny,
            "pool": veda.memory_stats()["host"],
        },
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
