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

from veda import _registry
from veda._config import Config
from veda._registry import Policy, get_policy, policy_names, register_policy, unregister_policy
from veda._types import Decision, Overrides
from veda.errors import LaunchError
from veda.scheduler._dispatch import dispatcher, gpu_available
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


def _first_parallel() -> str:
    """The target that ``threads=``, ``schedule=`` or ``chunk=`` without ``target=`` imply."""
    for target in _registry.targets():
        if target.parallel:
            return target.name
    raise LaunchError("no registered target takes threads=, schedule= or chunk=")


def _takes_settings(target: str | None) -> bool:
    return target is None or _registry.known(target).parallel


def _merge(cfg: Config, overrides: Overrides | None) -> Overrides:
    """The settings in force for one launch: its own arguments over the configuration."""
    if overrides is None:
        return Overrides(cfg.target, cfg.threads, cfg.schedule, cfg.chunk)
    target, threads, schedule, chunk = overrides
    if target is None and threads is None and schedule is None and chunk is None:
        target = cfg.target
    elif target is None:
        target = _first_parallel()
    if _takes_settings(target):
        threads = threads if threads is not None else cfg.threads
        schedule = schedule if schedule is not None else cfg.schedule
        chunk = chunk if chunk is not None else cfg.chunk
    return Overrides(target, threads, schedule, chunk)


def pins(cfg: Config, overrides: Overrides | None) -> tuple[str | None, str | None] | None:
    """What the settings fix of an adaptive decision, or None when nothing is left to decide.

    The dispatcher chooses when the policy explores and neither ``threads`` nor ``chunk`` is
    set; a set parallel target (``target="parallel"``) or ``schedule`` narrows its candidates.
    """
    if not get_policy(cfg.policy).explores:
        return None
    target, threads, schedule, chunk = _merge(cfg, overrides)
    if threads is not None or chunk is not None or not _takes_settings(target):
        return None
    if schedule is not None and target is None:
        target = _first_parallel()  # a schedule implies a parallel target, as in decide()
    return target, schedule


def _reads(target: _registry.Target, residency: str) -> bool:
    return target.reads_device_arrays if residency == "device" else target.reads_host_arrays


def rule_target(size: int, residency: str = "host") -> str:
    """The target the fixed rule gives a launch of ``size`` elements with no target set: the
    dispatchable target with the largest :meth:`~veda.targets.Target.rule_min_size` at or below
    ``size``; with device-resident arguments, the first dispatchable target that reads them."""
    best, floor = None, -1
    for target in _registry.targets():
        try:
            if not target.dispatchable() or not _reads(target, residency):
                continue
            if residency == "device":
                return target.name
            least = target.rule_min_size()
            if least is not None and floor < least <= size:
                best, floor = target, least
        except Exception:  # a plug-in's bug keeps it out of the rule (the dispatcher says so)
            continue
    if best is None:  # nothing reads them: the host rule, whose target then says what is wrong
        if residency == "device":
            return rule_target(size)
        if not _registry.names():
            raise LaunchError("no target is registered (veda.targets.register one)")
        return _registry.names()[0]
    return best.name


def decide(
    size: int, cfg: Config, overrides: Overrides | None, residency: str = "host"
) -> Decision:
    """The rule: the decision for a launch of ``size`` elements under these settings."""
    target, threads, schedule, chunk = _merge(cfg, overrides)
    if target is None:
        if threads is not None or schedule is not None or chunk is not None:
            target = _first_parallel()
        else:
            target = rule_target(size, residency)
    return _registry.known(target).default_decision(size, threads, schedule, chunk)


class Explanation:
    """Why veda chose what it chose for one kernel: see :func:`explain`."""

    def __init__(self, kernel: str, rows: list[dict[str, Any]]) -> None:
        self.kernel = kernel
        self.rows = rows

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "size_classes": self.rows}

    def decision_for(
        self, size: int, ndim: int | None = None, policy: str | None = None
    ) -> Decision | None:
        """The decision taken for launches of ``size`` elements, or None while exploring.

        >>> import numpy as np, veda
        >>> @veda.kernel
        ... def twice(i, x):
        ...     x[i] *= 2
        >>> twice[10](np.ones(10))
        >>> veda.explain(twice).decision_for(10)
        Decision(target='cpu', threads=1, schedule='static', chunk=1, block=0)
        """
        cls = f"<= 2^{max(0, (int(size) - 1).bit_length())}"
        for r in self.rows:
            if (
                r["size_class"] == cls
                and (ndim is None or r["ndim"] == ndim)
                and (policy is None or r["policy"] == policy)
                and r["decision"]
            ):
                return Decision(*r["decision"])
        return None

    @staticmethod
    def label(d: Any) -> str:
        """A short text for a decision: ``"cpu"`` or ``"parallel 2t guided chunk 4096"`` (the
        decision's target describes it).  Takes a :class:`~veda.targets.Decision`, its JSON
        object (records, the tuning cache) or None (exploring).

        >>> from veda.scheduler import Explanation
        >>> Explanation.label({"target": "parallel", "threads": 2, "schedule": "dynamic",
        ...                    "chunk": 64})
        'parallel 2t dynamic chunk 64'
        """
        return _registry.describe(None if d is None else Decision.from_json(d))

    def __str__(self) -> str:
        if not self.rows:
            return f"{self.kernel}: no adaptive decisions yet"
        lines = [f"{self.kernel}:"]
        for r in self.rows:
            state = f"{self.label(r['decision'])} ({r['source']})" if r["decision"] else "exploring"
            lines.append(f"  {r['ndim']}-d, size {r['size_class']}, policy {r['policy']}: {state}")
            for t in r["trials"]:
                times = ", ".join(f"{s * 1e9:.3g}" for s in t["samples"]) or "-"
                note = f"  [{t['pruned']}]" if t["pruned"] else ""
                lines.append(f"      {self.label(t['decision']):<34} ns/element: {times}{note}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(str(self)) + "</pre>"


def explain(kernel: Any) -> Explanation:
    """The dispatcher's decisions for ``kernel``: per size class, the candidates it tried, their
    measured times per element, what it chose and why (explored, tuning cache, only candidate).

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def add_one(i, x):
    ...     x[i] += 1
    >>> add_one[10](np.zeros(10))
    >>> print(veda.explain(add_one))  # doctest: +ELLIPSIS
    add_one:
      1-d, size <= 2^4, policy adaptive: cpu (only candidate)
    ...
    """
    return Explanation(kernel.name, dispatcher.explain(kernel))
