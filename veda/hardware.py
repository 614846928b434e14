"""The machine as veda sees it: facts its hardware layer reads, for users.

>>> import veda.hardware
>>> veda.hardware.max_threads() >= 1
True
"""

from __future__ import annotations

from veda._config import get_config, power_model
from veda._hardware import energy as _energy
from veda._hardware.cpu import affinity, affinity_reason, cpu_model, max_threads, threading_layer

__all__ = [
    "affinity",
    "affinity_reason",
    "cpu_model",
    "energy_sources",
    "max_threads",
    "power_model",
    "temperature",
    "threading_layer",
]


def energy_sources(root: str | None = None) -> dict[str, str | None]:
    """Each energy source and why it cannot be read here (None: it can).  ``"model"`` can
    always be used.  ``root`` is the sysfs tree (by default ``veda.get_config().sysfs_root``).

    >>> import veda.hardware
    >>> veda.hardware.energy_sources()["model"] is None
    True
    """
    root = get_config().sysfs_root if root is None else root
    out: dict[str, str | None] = {}
    for name in _energy.reader_names():
        out[name] = None if name == "model" else _energy.reader(name, root).unavailable_reason()
    return out


def temperature(root: str | None = None) -> float | None:
    """The hottest thermal zone now, in degrees Celsius, or None when none can be read.

    >>> import veda.hardware
    >>> t = veda.hardware.temperature()
    >>> t is None or t > -100
    True
    """
    return _energy.Thermal(get_config().sysfs_root if root is None else root).celsius()
