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
