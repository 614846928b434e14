"""Choosing where and how a launch runs.

Explicit settings (``veda.launch`` arguments, then ``veda.config`` scopes, then process defaults)
always win.  What they leave open, the adaptive dispatcher decides: per kernel and size class it
explores a bounded set of candidates, exploits the fastest, re-explores on drift or when other
processes take cores, and remembers its decisions in the tuning cache
(:mod:`veda.scheduler._dispatch`).  With ``policy="fixed"`` (or telemetry off before anything was
learned) the rule :func:`decide` applies: each target may declare a minimum size
(:meth:`veda.targets.Target.rule_min_size`) and the one with the largest minimum at or below the
launch's size runs it with its default decision: ``"cpu"`` below :data:`PARALLEL_MIN_SIZE`
elements, above it ``"parallel"`` with a static schedule on every thread.

How the dispatcher ranks what it measured is a policy, and policies are plug-ins too
(:class:`Policy`, :func:`register_policy`).
"""

from __future__ import annotations

from typing import Any

from veda._registry import Policy, get_policy, policy_names, register_policy, unregister_policy
from veda.scheduler._dispatch import dispatcher, gpu_available
from veda.scheduler._explain import Explanation, explain
from veda.scheduler._rules import decide, pins
from veda.scheduler._tuner import REVIEW_EVERY
from veda.targets.cpu import PARALLEL_MIN_SIZE, default_chunk

__all__ = [
    "PARALLEL_MIN_SIZE",
    "POLICIES",
    "REVIEW_EVERY",
    "Explanation",
    "Policy",
    "decide",
    "default_chunk",
    "dispatcher",
    "explain",
    "get_policy",
    "gpu_available",
    "pins",
    "policy_names",
    "register_policy",
    "unregister_policy",
]


def __getattr__(name: str) -> Any:
    if name == "POLICIES":  # the registered policies, read when asked (a registry, not a list)
        return tuple(policy_names())
    raise AttributeError(f"module 'veda.scheduler' has no attribute {name!r}")
