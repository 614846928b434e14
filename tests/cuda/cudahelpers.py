"""Helpers shared by the CUDA test modules (this folder is on sys.path while they run)."""

from __future__ import annotations

from typing import Any

import veda


def on_cuda(k: Any, domain: Any, *args: Any) -> Any:
    """An explicit launch on the "cuda" target."""
    return veda.launch(k, domain, *args, target="cuda")


def delta(before: dict[str, int]) -> dict[str, int]:
    """What veda.cuda.transfer_stats() counted since ``before``."""
    after = veda.cuda.transfer_stats()
    return {k: after[k] - before[k] for k in after}


def fake_gpu_costs(monkeypatch: Any) -> None:
    """Make the dispatcher take the simulator for a GPU (the probe's answer), with measured
    host-device costs injected (10 GB/s each way, 20 us a launch)."""
    from veda._hardware import gpu

    monkeypatch.setattr(gpu, "_probed", (None, None))
    monkeypatch.setattr(gpu, "_gpu_cost", gpu.GPUCost(10e9, 10e9, 20e-6))
