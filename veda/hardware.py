"""The machine as veda sees it: facts its hardware layer reads, for users.

>>> import veda.hardware
>>> veda.hardware.max_threads() >= 1
True
>>> len(veda.hardware.topology().nodes) >= 1
True
"""

from __future__ import annotations

import os

from veda._config import get_config
from veda._hardware import memory as _memory
from veda._hardware.cpu import affinity, affinity_reason, cpu_model, max_threads, threading_layer
from veda._hardware.memory import HostPool
from veda._hardware.numa import Node, Topology, read_topology

__all__ = [
    "HostPool",
    "Node",
    "Topology",
    "affinity",
    "affinity_reason",
    "cpu_model",
    "max_threads",
    "memory_pool",
    "threading_layer",
    "topology",
]


def topology(root: str | os.PathLike[str] | None = None) -> Topology:
    """The machine's NUMA nodes: their CPUs, memory and distances.

    Parameters
    ----------
    root : str or path, optional
        The sysfs folder to read ``devices/system/node`` from; None: the configured
        ``sysfs_root`` (``veda.config(sysfs_root=...)``, ``VEDA_SYSFS_ROOT``, ``/sys``).

    Returns
    -------
    Topology
        ``nodes`` in node order; without NUMA information (no node folders: not Linux, or a
        container), one node holding every CPU this process may run on, and a ``reason``.

    Raises
    ------
    veda.ConfigError
        When the folder does not exist.

    Examples
    --------
    >>> import veda.hardware
    >>> topo = veda.hardware.topology()
    >>> all(n.cpus or n.memory_bytes for n in topo.nodes)
    True
    """
    return read_topology(get_config().sysfs_root if root is None else root)


def memory_pool() -> HostPool:
    """The host pool behind ``veda.empty``, ``veda.zeros`` and ``veda.empty_like``.

    Set ``limit_bytes`` to bound the bytes it keeps free (512 MiB by default; 0 keeps none),
    ``clear()`` it to unmap its free buffers, ``info()`` for its figures (also in
    ``veda.memory_stats()["host"]``).

    Examples
    --------
    >>> import veda.hardware
    >>> pool = veda.hardware.memory_pool()
    >>> before = pool.limit_bytes
    >>> pool.limit_bytes = 64 << 20
    >>> pool.info()["limit_bytes"]
    67108864
    >>> pool.limit_bytes = before
    """
    return _memory.pool
