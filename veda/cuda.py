"""The GPU side of veda: is a CUDA device here, and moving arrays to and from it.

Importing this module (or veda) imports no CUDA machinery: :func:`is_available` first looks for an
NVIDIA driver on the file system and for the ``numba-cuda`` package, and only then asks Numba's
CUDA driver about devices.  The answer is worked out once per process.

``target="cuda"`` runs a kernel on the GPU; the adaptive dispatcher considers the GPU only when
:func:`is_available` is True.  Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) an
explicit ``target="cuda"`` runs on the simulator, for tests, but :func:`is_available` stays False:
the simulator is not a GPU, and the dispatcher never picks it.

Examples
--------
>>> import veda
>>> veda.cuda.is_available() in (True, False)
True
>>> isinstance(veda.cuda.unavailable_reason() or "", str)
True
"""

from __future__ import annotations

from veda._hardware.gpu import (
    device_resident,
    is_available,
    is_device_array,
    simulator_enabled,
    to_device,
    to_host,
    transfer_stats,
    unavailable_reason,
)

# Documented and used by the CLI and the tests, though not in __all__.
from veda._hardware.gpu import explicit_reason as explicit_reason
from veda._hardware.gpu import gpu_driver_present as gpu_driver_present
from veda._hardware.gpu import kernel_transfers as kernel_transfers

__all__ = [
    "device_resident",
    "is_available",
    "is_device_array",
    "simulator_enabled",
    "to_device",
    "to_host",
    "transfer_stats",
    "unavailable_reason",
]
