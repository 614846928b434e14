"""The machine as veda sees it: facts its hardware layer reads, for users.

>>> import veda.hardware
>>> veda.hardware.max_threads() >= 1
True
>>> len(veda.hardware.topology().nodes) >= 1
True
"""

from __future__ import annotations

import os

from veda._config import get_config, power_model
from veda._hardware import energy as _energy
from veda._hardware import memory as _memory
from veda._hardware.cpu import affinity, affinity_reason, cpu_model, max_threads, threading_layer
from veda._hardware.memory import HostPool
from veda._hardware.numa import Node, Topology, read_topology
from veda.errors import ConfigError

__all__ = [
    "HostPool",
    "Node",
    "Topology",
    "affinity",
    "affinity_reason",
    "cpu_model",
    "energy_sources",
    "max_threads",
    "memory_pool",
    "power_model",
    "temperature",
    "threading_layer",
    "topology",
]


def _root(root: object, where: str) -> str:
    """``root`` (a sysfs folder's path: str, bytes or os.PathLike) as a str, the configured
    ``sysfs_root`` for None, or a :class:`~veda.errors.ConfigError` naming ``root``, ``where``
    and what was expected.  Whether the folder exists is for the reader to say.

    >>> _root(None, "topology") == get_config().sysfs_root
    True
    >>> _root(b"/sys", "topology")
    '/sys'
    """
    if root is None:
        return get_config().sysfs_root
    expected = "a folder's path (str or os.PathLike)"
    try:
        path = os.fsdecode(root)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"veda.hardware.{where}: root must be {expected}, not {type(root).__name__} {root!r}"
        ) from None
    if "\0" in path:
        raise ConfigError(
            f"veda.hardware.{where}: root must be {expected} without NUL characters, not {path!r}"
        )
    if not path.strip():
        raise ConfigError(f"veda.hardware.{where}: root must be {expected}, not an empty path")
    return path


def energy_sources(root: str | os.PathLike[str] | None = None) -> dict[str, str | None]:
    """Each energy source and why it cannot be read here (None: it can).  ``"model"`` can
    always be used.  ``root`` is the sysfs tree (by default ``veda.get_config().sysfs_root``).

    >>> import veda.hardware
    >>> veda.hardware.energy_sources()["model"] is None
    True
    """
    root = _root(root, "energy_sources")
    out: dict[str, str | None] = {}
    for name in _energy.reader_names():
        out[name] = None if name == "model" else _energy.reader(name, root).unavailable_reason()
    return out


def temperature(root: str | os.PathLike[str] | None = None) -> float | None:
    """The hottest thermal zone now, in degrees Celsius, or None when none can be read.

    >>> import veda.hardware
    >>> t = veda.hardware.temperature()
    >>> t is None or t > -100
    True
    """
    return _energy.Thermal(_root(root, "temperature")).celsius()


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
        When the folder does not exist, or ``root`` is not a folder's path (a str, bytes or
        os.PathLike without NUL characters).

    Examples
    --------
    >>> import veda.hardware
    >>> topo = veda.hardware.topology()
    >>> all(n.cpus or n.memory_bytes for n in topo.nodes)
    True
    """
    return read_topology(_root(root, "topology"))


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
