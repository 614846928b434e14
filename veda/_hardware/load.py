"""How many cores other processes leave free, sampled off the launch path."""

from __future__ import annotations

import os
import threading
import time

from veda._hardware.cpu import max_threads

#: How often (seconds) the machine's load is sampled.
LOAD_INTERVAL = 0.5


class LoadMonitor:
    """How many cores other processes leave free.

    A daemon thread samples the machine every :data:`LOAD_INTERVAL` seconds (system-wide busy
    cores minus this process's own), so the launch path only reads a number.  It starts with the
    first question, and again in a forked child.
    """

    def __init__(self) -> None:
        self._free = max_threads()
        self._pid = -1
        self._lock = threading.Lock()

    def _run(self) -> None:
        import psutil  # here, in the monitor's thread: not a cost of ``import veda``

        process = psutil.Process()
        ncpu = psutil.cpu_count() or 1
        psutil.cpu_percent(interval=None)
        process.cpu_percent(interval=None)
        while True:
            time.sleep(LOAD_INTERVAL)
            total = psutil.cpu_percent(interval=None) / 100.0 * ncpu  # busy cores, all processes
            own = process.cpu_percent(interval=None) / 100.0  # busy cores of this process
            others = max(0.0, total - own)
            self._free = max(1, min(max_threads(), round(ncpu - others)))

    def free_cores(self) -> int:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    threading.Thread(
                        target=self._run, name="veda-load-monitor", daemon=True
                    ).start()
        return self._free
