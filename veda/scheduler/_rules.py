"""The settings in force for a launch, what they leave to the dispatcher, and the fixed rule.

Explicit settings (``veda.launch`` arguments, then ``veda.config`` scopes, then process defaults)
always win.  :func:`pins` says what they fix of an adaptive decision; with ``policy="fixed"``
(or telemetry off before anything was learned) the rule :func:`decide` applies.
"""

from __future__ import annotations

from veda import _files, _registry
from veda._config import Config
from veda._hardware import energy as _energy
from veda._registry import get_policy
from veda._types import Decision, Overrides
from veda.errors import LaunchError

__all__ = ["decide", "merge", "pins", "rule_target"]


def _first_parallel() -> str:
    """The target that ``threads=``, ``schedule=`` or ``chunk=`` without ``target=`` imply."""
    for target in _registry.targets():
        if target.parallel:
            return target.name
    raise LaunchError("no registered target takes threads=, schedule= or chunk=")


def _takes_settings(target: str | None) -> bool:
    return target is None or _registry.known(target).parallel


def merge(cfg: Config, overrides: Overrides | None) -> Overrides:
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
    target, threads, schedule, chunk = merge(cfg, overrides)
    if threads is not None or chunk is not None or not _takes_settings(target):
        return None
    if schedule is not None and target is None:
        target = _first_parallel()  # a schedule implies a parallel target, as in decide()
    return target, schedule


def _reads(target: _registry.Target, residency: str) -> bool:
    return target.reads_device_arrays if residency == "device" else target.reads_host_arrays


def rule_target(size: int, residency: str = "host", arrays: bool = False) -> str:
    """The target the fixed rule gives a launch of ``size`` elements with no target set: the
    dispatchable target with the largest :meth:`~veda.targets.Target.rule_min_size` at or below
    ``size``; with device-resident arguments, the first dispatchable target that reads them.
    A kernel that reduces ``arrays`` into private copies gets a target that does."""
    best, floor = None, -1
    for target in _registry.targets():
        try:
            if not target.dispatchable() or not _reads(target, residency):
                continue
            if arrays and not target.reduces_arrays:
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
            return rule_target(size, arrays=arrays)
        if not _registry.names():
            raise LaunchError("no target is registered (veda.targets.register one)")
        return _registry.names()[0]
    return best.name


def decide(
    size: int,
    cfg: Config,
    overrides: Overrides | None,
    residency: str = "host",
    arrays: bool = False,
) -> Decision:
    """The rule: the decision for a launch of ``size`` elements under these settings.

    With ``max_power_watts`` set and no thread count, a parallel decision gets the most threads
    whose (measured or modelled) power fits the cap, as the dispatcher's candidates do.
    """
    target, threads, schedule, chunk = merge(cfg, overrides)
    if target is None:
        if threads is not None or schedule is not None or chunk is not None:
            target = _first_parallel()
        else:
            target = rule_target(size, residency, arrays)
    found = _registry.known(target)
    if threads is None and found.parallel:
        threads = thread_limit(cfg, target)
    return found.default_decision(size, threads, schedule, chunk)


def thread_limit(cfg: Config, target: str = "parallel") -> int | None:
    """The most threads the settings let veda give a launch on ``target``, or None for no
    limit: within ``max_power_watts`` (measured or modelled watts), and the thermal governor's
    count while ``max_temperature`` is set (:data:`veda._hardware.energy.governor`)."""
    limit = None
    if cfg.max_power_watts is not None:
        cap = cfg.max_power_watts
        limit = _energy.threads_within(cap, lambda t: _energy.watts(Decision(target, t))[0])
        if limit == 1:
            one = _energy.watts(Decision(target, 1))[0]
            if one > cap:
                _files.warn_once(
                    f"power-cap:{cap}",
                    f"max_power_watts={cap:g} is below the power of one thread ({one:g} W): "
                    "launches run on one thread",
                )
    if cfg.max_temperature is not None:
        hot = _energy.governor.allowed(_energy.Thermal(cfg.sysfs_root), cfg.max_temperature)
        limit = hot if limit is None else min(limit, hot)
    return limit
