"""The registries of targets and policies: the only place their names live.

A **target** is where a launch runs.  It declares its name, whether it can run here (and why
not), which settings it takes, the decisions the dispatcher may try for a domain on this machine,
its default decision, what a launch costs it before any work (cost hints), and how it prepares a
launch from a kernel's form.  ``"cpu"``, ``"parallel"`` and ``"cuda"`` are registered by
:mod:`veda.targets`; a third-party target registers the same way and is then accepted by
``veda.launch(..., target=)``, ``veda.config(target=)``, record and replay, ``veda.explain`` and
the dispatcher.

A **policy** is how the dispatcher ranks the candidates it measured: a name and a scoring
function over one candidate's measurements (lower is better), or no function for a policy that
never explores.

Nothing here imports a target, the dispatcher or the launch path; they ask this module.
"""

from __future__ import annotations

import abc
import math
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from veda._hardware import energy as _energy
from veda._types import Decision, KernelForm, LaunchOptions, Runner
from veda.errors import ConfigError, LaunchError, TargetUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Measured",
    "Policy",
    "Profiler",
    "Target",
    "get",
    "get_policy",
    "names",
    "on_change",
    "policy_names",
    "register",
    "register_policy",
    "targets",
    "unregister",
    "unregister_policy",
]

#: The launch settings beyond ``target=`` that a target may take.
SETTINGS = ("threads", "schedule", "chunk")


class Profiler(Protocol):
    """Where a target with workers reports each profiled launch's per-worker busy time."""

    def profile(self, busy: Any, chunks: Any, seconds_per_tick: float) -> None: ...


class Target(abc.ABC):
    """One place a kernel can run.

    Subclass it, give it a :attr:`name`, implement :meth:`prepare`, and :func:`register` an
    instance.  Everything else has a default that keeps the dispatcher away from the target
    unless it says otherwise (:meth:`candidates`).

    Examples
    --------
    A target that runs the serial loop and counts its launches:

    >>> import numpy as np, veda
    >>> from veda.targets import Target, Decision
    >>> class Counting(Target):
    ...     name = "counting"
    ...     launches = 0
    ...     def prepare(self, form, dims, decision, options, profiler=None, shared=False):
    ...         loop = form.program(options.compile)._veda_cpu
    ...         def run(args):
    ...             Counting.launches += 1
    ...             loop(*dims, *args)
    ...         return run
    >>> _ = veda.targets.register(Counting())
    >>> @veda.kernel
    ... def ones(i, x):
    ...     x[i] = 1.0
    >>> x = np.zeros(5)
    >>> veda.launch(ones, 5, x, target="counting")
    >>> Counting.launches, x.sum()
    (1, np.float64(5.0))
    >>> veda.targets.unregister("counting")
    """

    #: The name users pass as ``target=``.
    name: str = ""
    #: Launches may use several CPU threads: the target takes ``threads=``, ``schedule=`` and
    #: ``chunk=``, and a launch whose thread count the dispatcher chose shares the cores with
    #: the other such launches in flight.
    parallel: bool = False
    #: Which of ``threads``, ``schedule`` and ``chunk`` it takes (all three when parallel).
    settings: tuple[str, ...] = ()
    #: Completes "target='<name>' ..., so threads= does not apply to it; drop threads=" in the
    #: error refusing a setting it does not take; :attr:`settings_hint` may add what to do instead.
    refuses_settings_because: str = "takes no threads, schedule or chunk"
    settings_hint: str = ""
    #: Targets with the same numerics give the same bits in deterministic mode: there the
    #: dispatcher chooses only among targets of the first candidate's numerics.
    numerics: str = "cpu"
    #: Whether launches read arrays in host memory (NumPy) and in device memory (CuPy, Numba).
    reads_host_arrays: bool = True
    reads_device_arrays: bool = False
    #: Whether the target runs kernels that reduce arrays into private copies
    #: (``@veda.kernel(reduce={name: op})``); the dispatcher and the rule give such kernels
    #: only targets that do.
    reduces_arrays: bool = False
    #: Whether a launch copies host arrays to another memory and back (then the dispatcher
    #: prices the copies with :meth:`fixed_seconds` before trying the target).
    copies_host_arrays: bool = False
    #: Cost hint: seconds one launch costs before any work, on this machine.  The dispatcher
    #: drops a target's candidates when the serial candidate took less than twice this.
    launch_overhead: float = 0.0

    def available(self) -> bool:
        """True when this target can run launches in this process."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or None when it can."""
        return None

    def dispatchable(self) -> bool:
        """Whether the dispatcher may choose this target without being asked (the CUDA target
        says no under the simulator, which runs explicit launches only)."""
        return self.available()

    def candidates(self, size: int, free_cores: int) -> list[Decision]:
        """The decisions the dispatcher may try for a domain of ``size`` elements when
        ``free_cores`` cores are free; none by default (the target runs when asked for)."""
        return []

    def default_decision(
        self,
        size: int,
        threads: int | None = None,
        schedule: str | None = None,
        chunk: int | None = None,
    ) -> Decision:
        """The decision of a launch that names this target, with the settings it gave."""
        return Decision(self.name)

    def rule_min_size(self) -> int | None:
        """Under the fixed policy, with no target set, the target with the largest minimum size
        at or below a launch's size runs it; None: never chosen by that rule."""
        return None

    def fixed_seconds(self, bytes_in: int, bytes_out: int) -> float:
        """Predicted seconds of one launch before any work, given the host bytes it would copy in
        and out (only asked of targets that copy host arrays).  Raises ``RuntimeError`` when the
        cost cannot be known (then the dispatcher drops the target)."""
        return self.launch_overhead

    def describe(self, decision: Decision) -> str:
        """A short text for one of this target's decisions, for ``veda.explain`` and tables."""
        if not self.parallel:
            return decision.target
        extra = f" chunk {decision.chunk}" if decision.schedule != "static" else ""
        return f"{decision.target} {decision.threads}t {decision.schedule}{extra}"

    @abc.abstractmethod
    def prepare(
        self,
        form: KernelForm,
        dims: tuple[int, ...],
        decision: Decision,
        options: LaunchOptions,
        profiler: Profiler | None = None,
        shared: bool = False,
    ) -> Runner:
        """A callable that runs ``form`` over ``dims`` with this decision.

        It takes the launch's argument tuple and returns the reduction result (a NumPy scalar)
        or None.  veda keeps it for later launches with the same domain, settings and argument
        count, so everything that does not depend on the arguments' values belongs here, not in
        it.  With a ``profiler``, a target that has workers reports each launch's per-worker
        busy time to it.  ``shared`` says veda chose the thread count (the dispatcher, or the
        fixed rule where it has no choice), so the target may lower it while other launches
        share the cores; an explicit ``threads=`` is never lowered.  The runner raises veda
        errors (:class:`veda.KernelError` for an exception in the body) and must let through
        exceptions that are not ``Exception`` subclasses.
        """

    def __repr__(self) -> str:
        return f"<veda target {self.name!r}>"


_lock = threading.Lock()
_targets: dict[str, Target] = {}


def _on_gpu(name: str) -> bool:
    target = _targets.get(name)
    return target is not None and target.reads_device_arrays


_energy.on_gpu = _on_gpu
_listeners: list[Callable[[], None]] = []


def on_change(callback: Callable[[], None]) -> None:
    """Call ``callback()`` whenever a target is registered or removed (the launch path forgets
    its prepared launches, the dispatcher its candidates)."""
    _listeners.append(callback)


def _changed() -> None:
    for callback in _listeners:
        callback()


def register(target: Target) -> Target:
    """Add (or replace) a target under ``target.name``; returns it.

    Replacing a built-in target (``"cpu"``, ...) is allowed, and changes every launch that runs
    on it.  Raises :class:`veda.ConfigError` for anything that is not a usable target.
    """
    where = "veda.targets.register"
    if not isinstance(target, Target):
        raise ConfigError(
            f"{where}: expected an instance of a veda.targets.Target subclass, not {target!r}"
        )
    if not isinstance(target.name, str) or not target.name:
        raise ConfigError(
            f"{where}: a target's name must be a non-empty string, not {target.name!r}"
        )
    settings = target.settings
    if not isinstance(settings, tuple) or not all(isinstance(s, str) for s in settings):
        raise ConfigError(
            f"{where}: target {target.name!r}: settings must be a tuple of names, not {settings!r}"
        )
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ConfigError(
            f"{where}: target {target.name!r}: unknown settings "
            f"{sorted(unknown)}; expected some of {', '.join(SETTINGS)}"
        )
    if target.parallel and "threads" not in settings:
        raise ConfigError(
            f"{where}: target {target.name!r} is parallel, so it takes threads=: "
            "add 'threads' to its settings"
        )
    with _lock:
        _targets[target.name] = target
    _changed()
    return target


def unregister(name: str) -> None:
    """Remove the target called ``name`` (no error if there is none)."""
    with _lock:
        removed = _targets.pop(name, None)
    if removed is not None:
        _changed()


def names() -> list[str]:
    """Every registered target's name, in registration order, available here or not."""
    return list(_targets)


def targets() -> Iterator[Target]:
    """Every registered target, in registration order."""
    return iter(list(_targets.values()))


def known(name: str) -> Target:
    """The target called ``name``, available or not; raises :class:`veda.LaunchError`."""
    try:
        return _targets[name]
    except KeyError:
        raise LaunchError(
            f"unknown target={name!r}; expected one of {', '.join(_targets)}"
        ) from None


def lookup(name: str) -> Target | None:
    """The target called ``name``, or None (for code that must not fail on a target removed
    meanwhile, such as the dispatcher's bookkeeping after a launch ran)."""
    return _targets.get(name)


def get(name: str) -> Target:
    """The target called ``name``; raises when unknown or unavailable here."""
    target = known(name)
    reason = target.unavailable_reason()
    if reason is not None:
        raise TargetUnavailableError(f"target {name!r} is not available: {reason}")
    return target


def describe(decision: Decision | None) -> str:
    """A short text for a decision (``"cpu"``, ``"parallel 2t guided chunk 4096"``)."""
    if decision is None:
        return "(exploring)"
    target = _targets.get(decision.target)
    if target is None:
        return decision.target
    try:
        return str(target.describe(decision))
    except Exception:  # a plug-in's bug must not break explain
        return str(decision.target)


def check_settings(values: dict[str, Any], error: type[Exception], where: str) -> None:
    """Refuse a target name that is not registered, or a setting the named target does not take.

    Before the built-in targets are registered (while veda itself is being imported) names are
    not checked; :mod:`veda.targets` checks the process defaults once they are.
    """
    name = values.get("target")
    if name is None or not _targets:
        return
    target = _targets.get(name)
    if target is None:
        raise error(f"{where}: unknown target={name!r}; expected one of {', '.join(_targets)}")
    clash = [k for k in SETTINGS if values.get(k) is not None and k not in target.settings]
    if clash:
        raise error(
            f"{where}: target={name!r} {target.refuses_settings_because}, so "
            f"{', '.join(clash)}= does not apply to it; drop {clash[0]}={target.settings_hint}"
        )


# --------------------------------------------------------------------------------------------
# Policies


class Measured(Protocol):
    """What a policy scores: one candidate's measurements (a tuner's trial of it)."""

    @property
    def decision(self) -> Decision:
        """The candidate."""
        ...

    @property
    def samples(self) -> Sequence[float]:
        """Seconds per element of each measured launch."""
        ...


@dataclass(frozen=True)
class Policy:
    """How the dispatcher ranks measured candidates.

    Parameters
    ----------
    name : str
        The name users pass as ``veda.config(policy=...)``.
    score : callable or None
        ``score(measured) -> float`` for one candidate's measurements (:class:`Measured`): lower
        is better.  None makes a policy that never explores: the fixed size rule decides.
    description : str
        One line for the documentation and error messages.

    Examples
    --------
    >>> import statistics, veda
    >>> best = veda.scheduler.register_policy(veda.scheduler.Policy(
    ...     "best-case", lambda m: min(m.samples) if m.samples else float("inf"),
    ...     "the fastest launch seen"))
    >>> with veda.config(policy="best-case"):
    ...     veda.get_config().policy
    'best-case'
    >>> veda.scheduler.unregister_policy("best-case")
    """

    name: str
    score: Callable[[Measured], float] | None
    description: str = ""

    @property
    def explores(self) -> bool:
        return self.score is not None


def _median(m: Measured) -> float:
    return statistics.median(m.samples) if m.samples else math.inf


def _mean(m: Measured) -> float:
    return statistics.fmean(m.samples) if m.samples else math.inf


def _tail(m: Measured) -> float:
    # p99 of few samples is their maximum; weigh it with the median so one outlier does not
    # decide alone
    if not m.samples:
        return math.inf
    return 0.5 * max(m.samples) + 0.5 * statistics.median(m.samples)


def _joules(m: Measured) -> float:
    # joules per element: seconds per element times the configuration's (measured or
    # modelled) watts
    return _median(m) * _energy.watts(m.decision)[0]


def _edp(m: Measured) -> float:
    # the energy-delay product per element, (J/element) x (s/element): for one launch size it
    # ranks candidates as energy x time does
    return _joules(m) * _median(m)


_policies: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("adaptive", _median, "explore, then exploit the fastest (median time)"),
        Policy("fixed", None, "never explore: the size rule decides"),
        Policy("latency", _tail, "explore, weighing the slowest launches in"),
        Policy("throughput", _mean, "explore, then exploit the best mean time"),
        Policy("energy", _joules, "explore, then exploit the least energy per element"),
        Policy("edp", _edp, "explore, then exploit the least energy x time"),
    )
}


def register_policy(policy: Policy) -> Policy:
    """Add (or replace) a dispatcher policy under ``policy.name``; returns it.

    Raises :class:`veda.ConfigError` for anything that is not a usable policy.
    """
    where = "veda.scheduler.register_policy"
    if not isinstance(policy, Policy):
        raise ConfigError(f"{where}: expected a veda.scheduler.Policy, not {policy!r}")
    if not isinstance(policy.name, str) or not policy.name:
        raise ConfigError(
            f"{where}: a policy's name must be a non-empty string, not {policy.name!r}"
        )
    if policy.score is not None and not callable(policy.score):
        raise ConfigError(
            f"{where}: policy {policy.name!r}: score must be a function of one "
            f"candidate's measurements, or None; not {policy.score!r}"
        )
    if policy.name in ("adaptive", "fixed"):
        raise ConfigError(
            f"{where}: the built-in policy {policy.name!r} cannot be replaced; "
            "register another name"
        )
    with _lock:
        _policies[policy.name] = policy
    return policy


def unregister_policy(name: str) -> None:
    """Remove a policy (the built-in ``"adaptive"`` and ``"fixed"`` stay)."""
    if name in ("adaptive", "fixed"):
        raise ConfigError(
            f"veda.scheduler.unregister_policy: the built-in policy {name!r} cannot be removed"
        )
    with _lock:
        _policies.pop(name, None)


def policy_names() -> list[str]:
    """Every registered policy's name."""
    return list(_policies)


def get_policy(name: str) -> Policy:
    """The policy called ``name``; raises :class:`veda.ConfigError` when unknown."""
    try:
        return _policies[name]
    except KeyError:
        raise ConfigError(
            f"unknown policy={name!r}; expected one of {', '.join(_policies)}"
        ) from None
