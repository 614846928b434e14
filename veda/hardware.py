"""The machine as veda sees it: facts its hardware layer reads, for users.

>>> import veda.hardware
>>> veda.hardware.max_threads() >= 1
True
"""

from __future__ import annotations

from veda._hardware.cpu import affinity, affinity_reason, cpu_model, max_threads, threading_layer

__all__ = ["affinity", "affinity_reason", "cpu_model", "max_threads", "threading_layer"]
