"""Configuration in three layers: process defaults, scoped overrides, per-launch arguments.

Every ``VEDA_*`` environment variable is read here and nowhere else.  Scopes live in a
:class:`contextvars.ContextVar`, so a ``with veda.config(...)`` block applies to the current
thread or asyncio task only.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from veda import _registry
from veda._hardware import energy as _energy
from veda._hardware import pinning as _pinning
from veda._hardware.cpu import max_threads
from veda._types import Decision
from veda.errors import ConfigError, LaunchError, VedaError

__all__ = ["SCHEDULES", "Config", "config", "get_config", "max_threads", "set_config"]

#: The schedules of ``"parallel"`` launches (codegen has one loop for each).
SCHEDULES = ("static", "interleaved", "dynamic", "guided")

F = TypeVar("F", bound=Callable[..., Any])


def _default_cache_dir() -> str:
    """The per-user cache folder platformdirs gives veda: ``$XDG_CACHE_HOME/veda`` or
    ``~/.cache/veda`` on Linux, ``~/Library/Caches/veda`` on macOS, ``%LOCALAPPDATA%\\veda\\Cache``
    on Windows; without a home folder, a per-user folder under the temporary one."""
    import platformdirs  # 4 ms, and only for the process default

    if os.path.expanduser("~") == "~":  # no home folder (platformdirs would give "~/...")
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        return os.path.join(tempfile.gettempdir(), f"veda-{uid}")
    return str(platformdirs.user_cache_dir("veda", appauthor=False))


@dataclasses.dataclass(frozen=True)
class Config:
    """veda's settings.  ``None`` means "the dispatcher decides".

    Parameters
    ----------
    target : str or None
        Where launches run: ``"cpu"``, ``"parallel"``, ``"cuda"`` or another registered target
        (:mod:`veda.targets`).  ``None`` lets veda choose per launch.
    threads : int or None
        Worker threads for ``"parallel"`` launches, 1 to :func:`max_threads`.
    schedule : {"static", "interleaved", "dynamic", "guided"} or None
        How ``"parallel"`` launches deal out chunks of the domain.
    chunk : int or None
        Elements per chunk (the smallest chunk for ``"guided"``).
    boundscheck : bool
        Check every array access; out-of-bounds accesses raise :class:`veda.KernelIndexError`.
    telemetry : bool
        Keep launch metrics (counts, latency histograms, bytes) and call listeners.
    profile : bool
        Time every worker of ``"parallel"`` launches from inside the compiled loop, for the
        load-imbalance figure (a separately compiled loop: no cost when off).
    deterministic : bool
        Reductions give the same bits whatever the target, thread count, schedule and chunk
        (fixed blocks, combined by a fixed pairwise tree); see :func:`deterministic`.
    seed : int or None
        The seed of deterministic mode, recorded with it (kernels draw from
        :mod:`veda.random` with whatever seed they are given).
    policy : str
        How the dispatcher decides what settings leave open: ``"adaptive"`` explores and
        exploits the fastest (median time), ``"throughput"`` the best mean, ``"latency"`` weighs
        the worst times in; ``"fixed"`` never explores and uses the size rule.  Other policies
        can be registered (:func:`veda.scheduler.register_policy`).
    cache : bool
        Keep compiled kernels on disk so that a new process reuses them.
    background_compile : bool
        While the dispatcher explores, a candidate whose loop is not compiled yet for the
        launch's argument types compiles in a background thread; launches meanwhile run on a
        candidate already compiled, and the new one joins the exploration when it is ready.
        False: each compile happens inside the launch that first needs it.
    cache_dir : str
        Where the disk cache lives (by default the per-user cache folder of the platform, from
        platformdirs: ``$XDG_CACHE_HOME/veda`` or ``~/.cache/veda`` on Linux).
    max_pending : int
        How many tasks (:func:`veda.submit`, :func:`veda.spawn`) may wait in the queue before
        a submit blocks, and after its ``timeout`` raises :class:`veda.QueueFull`.
    progress : bool or None
        Progress bars on long work: an adaptive kernel's exploration once its launches have
        taken more than a second (``veda tune``, ``veda bench`` and ``veda demo`` draw theirs on a
        terminal).  None: in a Jupyter notebook only (a widget, with ipywidgets; otherwise
        text); True: also on a terminal (stderr); False: never.
    sysfs_root : str
        The folder veda reads the Linux kernel's hardware files from (``/sys``: energy
        counters under ``class/powercap``, thermal zones under ``class/thermal``, NUMA nodes
        under ``devices/system/node``); tests point it at a fake tree.
    energy : str
        Where launch energy comes from: ``"model"`` (the default: each launch's seconds times
        the modelled power of its configuration, no reading on the launch path), ``"rapl"``
        (the CPU packages' counters), ``"nvml"`` (the GPUs' counters) or ``"auto"`` (RAPL where
        readable, else the model).  A measured source reads its counter before and after each
        launch; where it cannot read, launches fall back to the model with a warning, and
        telemetry names the source of every joule.  See docs/hardware.md.
    static_watts, watts_per_core, gpu_watts : float
        The power model: watts of the package while a launch runs, of each busy worker
        thread, and of a busy GPU.
    max_power_watts : float or None
        A power cap: the dispatcher and the size rule give ``"parallel"`` launches only thread
        counts whose power (measured, or modelled) stays at or below it; explicit
        ``threads=`` settings are kept, and the GPU is not capped.
    pin_threads : bool or {"compact", "scatter"}
        Pin each worker of ``"parallel"`` launches to one CPU: ``"compact"`` (or True) fills a
        NUMA node before the next, ``"scatter"`` deals workers round the nodes.  The first
        parallel launch without it (in the same thread) restores every worker's affinity.
        On the OpenMP layer; refused with a warning on TBB and workqueue, and where the
        platform has no ``sched_setaffinity``.
    max_temperature : float or None
        Degrees Celsius: while the hottest thermal zone is at or above it, the dispatcher
        lends one thread fewer (down to one) each time it looks, at most once a second, when
        it reviews or prepares a launch; it gives them back once the zone is 5 degrees below.

    Each field has an environment variable that sets its process default: ``VEDA_TARGET``,
    ``VEDA_THREADS``, ``VEDA_SCHEDULE``, ``VEDA_CHUNK``, ``VEDA_BOUNDSCHECK``,
    ``VEDA_TELEMETRY``, ``VEDA_PROFILE``, ``VEDA_DETERMINISTIC``, ``VEDA_SEED``, ``VEDA_POLICY``,
    ``VEDA_CACHE``, ``VEDA_BACKGROUND_COMPILE``, ``VEDA_CACHE_DIR``, ``VEDA_MAX_PENDING``,
    ``VEDA_PROGRESS`` (``auto`` for None), ``VEDA_SYSFS_ROOT``, ``VEDA_ENERGY``,
    ``VEDA_STATIC_WATTS``, ``VEDA_WATTS_PER_CORE``, ``VEDA_GPU_WATTS``, ``VEDA_MAX_POWER_WATTS``,
    ``VEDA_MAX_TEMPERATURE`` (``none`` for None) and ``VEDA_PIN_THREADS`` (0/1, ``compact`` or
    ``scatter``).
    """

    target: str | None = None
    threads: int | None = None
    schedule: str | None = None
    chunk: int | None = None
    boundscheck: bool = False
    telemetry: bool = True
    profile: bool = False
    deterministic: bool = False
    seed: int | None = None
    policy: str = "adaptive"
    cache: bool = True
    background_compile: bool = True
    cache_dir: str = dataclasses.field(default_factory=_default_cache_dir)
    max_pending: int = 10_000
    progress: bool | None = None
    sysfs_root: str = "/sys"
    energy: str = "model"
    static_watts: float = 20.0
    watts_per_core: float = 10.0
    gpu_watts: float = 150.0
    max_power_watts: float | None = None
    max_temperature: float | None = None
    pin_threads: bool | str = False

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:  # NumPy integers count as the ints they hold
            value = getattr(self, name)
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
        if self.pin_threads is True:
            object.__setattr__(self, "pin_threads", "compact")
        _validate(dataclasses.asdict(self), ConfigError, where="veda.Config")
        for name in _NUMBERS:  # checked numbers: watts and degrees as floats
            value = getattr(self, name)
            if value is not None and type(value) is not float:
                object.__setattr__(self, name, float(value))
        # One spelling per folder: absolute, so a later chdir does not move the cache.
        folder = os.path.abspath(os.path.expanduser(os.fsdecode(self.cache_dir)))
        object.__setattr__(self, "cache_dir", folder)
        root = os.path.abspath(os.path.expanduser(os.fsdecode(self.sysfs_root)))
        object.__setattr__(self, "sysfs_root", root)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build a :class:`Config` from ``VEDA_*`` environment variables."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get("VEDA_" + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse_env(field.name, raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_FLAGS = ("boundscheck", "telemetry", "profile", "deterministic", "cache", "background_compile")
#: Settings that take a number (watts, or degrees); then those of them that may be None.
_NUMBERS = ("static_watts", "watts_per_core", "gpu_watts", "max_power_watts", "max_temperature")
_OPTIONAL_NUMBERS = ("max_power_watts", "max_temperature")
#: Settings that take integers: a NumPy integer (``np.int64(2)``) counts as the int it holds.
_INT_FIELDS = ("threads", "chunk", "seed", "max_pending")


def plain_int(value: Any) -> Any:
    """``value`` as a Python int when it is a NumPy integer; anything else unchanged (to be
    checked, and refused with its own type's name, by the validation)."""
    return int(value) if isinstance(value, np.integer) else value


def _plain_ints(values: dict[str, Any]) -> dict[str, Any]:
    if any(isinstance(values.get(name), np.integer) for name in _INT_FIELDS):
        values = dict(values)
        for name in _INT_FIELDS:
            if name in values:
                values[name] = plain_int(values[name])
    return values


def _parse_env(name: str, raw: str) -> Any:
    var = "VEDA_" + name.upper()
    if name in ("threads", "chunk", "seed", "max_pending"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: expected an integer") from None
    if name == "progress" and raw.strip().lower() == "auto":
        return None
    if name == "pin_threads" and raw.strip().lower() in ("compact", "scatter"):
        return raw.strip().lower()
    if name in _NUMBERS:
        if name in _OPTIONAL_NUMBERS and raw.strip().lower() == "none":
            return None
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: expected a number") from None
    if name in _FLAGS or name in ("progress", "pin_threads"):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        auto = {"progress": ", or auto", "pin_threads": ", compact or scatter"}.get(name, "")
        raise ConfigError(f"{var}={raw!r}: expected 0/1, true/false, yes/no or on/off{auto}")
    return raw.strip()


def _validate(values: Mapping[str, Any], error: type[VedaError], where: str) -> None:
    """Check one layer's values; ``error`` is raised with a message naming the argument."""
    for name in ("target", "schedule", "policy"):
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            raise error(f"{where}: {name} must be a name (a str), not {value!r}")
    schedule = values.get("schedule")
    if schedule is not None and schedule not in SCHEDULES:
        raise error(
            f"{where}: unknown schedule={schedule!r}; expected one of {', '.join(SCHEDULES)}"
        )
    threads = values.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise error(f"{where}: threads must be an integer, not {type(threads).__name__}")
        limit = max_threads()
        if not 1 <= threads <= limit:
            raise error(
                f"{where}: threads={threads} is out of range; Numba started {limit} worker "
                f"threads, so threads must be between 1 and {limit}"
            )
    policy = values.get("policy")
    if policy is not None and policy not in _registry.policy_names():
        raise error(
            f"{where}: unknown policy={policy!r}; expected one of "
            f"{', '.join(_registry.policy_names())}"
        )
    seed = values.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed >= 2**64
    ):
        raise error(f"{where}: seed must be an integer in [0, 2**64), not {seed!r}")
    chunk = values.get("chunk")
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int):
            raise error(f"{where}: chunk must be an integer, not {type(chunk).__name__}")
        if chunk < 1:
            raise error(f"{where}: chunk={chunk} must be at least 1")
        if chunk >= 2**63:
            raise error(
                f"{where}: chunk={chunk} is too large: chunks are counted in 64-bit "
                "integers (a chunk larger than the domain is the whole domain)"
            )
    if "max_pending" in values:
        pending = values["max_pending"]
        if isinstance(pending, bool) or not isinstance(pending, int):
            raise error(f"{where}: max_pending must be an integer, not {type(pending).__name__}")
        if pending < 1:
            raise error(f"{where}: max_pending={pending} must be at least 1")
    if "cache_dir" in values:
        folder = values["cache_dir"]
        if not isinstance(folder, (str, os.PathLike)):
            raise error(
                f"{where}: cache_dir must be a path (str or os.PathLike), "
                f"not {type(folder).__name__}"
            )
        if os.fsdecode(folder).strip() == "":
            raise error(f"{where}: cache_dir must name a folder, not an empty path")
        if "\0" in os.fsdecode(folder):
            raise error(f"{where}: cache_dir must not contain a NUL character")
    if "sysfs_root" in values:
        root = values["sysfs_root"]
        if (
            not isinstance(root, (str, os.PathLike))
            or not os.fsdecode(root).strip()
            or "\0" in os.fsdecode(root)
        ):
            raise error(f"{where}: sysfs_root must be a folder's path, not {root!r}")
    pin = values.get("pin_threads")
    if "pin_threads" in values and not (isinstance(pin, bool) or pin in _pinning.MODES):
        raise error(
            f"{where}: unknown pin_threads={pin!r}; expected True, False, 'compact' or 'scatter'"
        )
    energy = values.get("energy")
    if "energy" in values and energy not in ("auto", *_energy.reader_names()):
        raise error(
            f"{where}: unknown energy={energy!r}; expected auto, "
            f"{', '.join(_energy.reader_names())}"
        )
    for name in _NUMBERS:
        if name not in values or (values[name] is None and name in _OPTIONAL_NUMBERS):
            continue
        value = given = values[name]
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise error(f"{where}: {name} must be a number, not {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise error(f"{where}: {name}={value!r} is too large") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and name != "static_watts"):
            what = "at least 0" if name == "static_watts" else "a positive number"
            raise error(f"{where}: {name}={given!r} must be {what}")
    # The target's name and the settings it takes, as the registry knows them.
    _registry.check_settings(dict(values), error, where)
    for flag in _FLAGS:
        if flag in values and not isinstance(values[flag], bool):
            raise error(f"{where}: {flag} must be True or False, not {values[flag]!r}")
    progress = values.get("progress")
    if progress is not None and not isinstance(progress, bool):
        raise error(f"{where}: progress must be True, False or None (auto), not {progress!r}")


_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))


def power_model(cfg: Config | None = None) -> _energy.PowerModel:
    """The power model of ``cfg`` (by default the settings in force here)."""
    cfg = get_config() if cfg is None else cfg
    return _energy.PowerModel(cfg.static_watts, cfg.watts_per_core, cfg.gpu_watts)


_defaults: Config = Config.from_env()
_generation = 0


_energy.model = power_model
_energy.measuring = lambda: get_config().energy != "model"


class _Scope:
    __slots__ = ("generation", "merged", "overrides", "parent")

    def __init__(self, overrides: dict[str, Any], parent: _Scope | None) -> None:
        self.overrides = overrides
        self.parent = parent
        self.generation = -1
        self.merged: Config = _defaults

    def effective(self) -> Config:
        if self.generation != _generation:
            base = _defaults if self.parent is None else self.parent.effective()
            key = (id(base), tuple(sorted(self.overrides.items())))
            merged = _interned.get(key)
            if merged is None or merged[0] is not base:
                if len(_interned) > 1024:
                    _interned.clear()
                merged = (base, base.replace(**self.overrides))
                _interned[key] = merged
            self.merged = merged[1]
            self.generation = _generation
        return self.merged


# The same overrides on the same base give the same Config object, so a `with veda.config(...)`
# entered again and again (in a loop) keeps hitting the launch path's prepared entries, which are
# keyed on the Config's identity.
_interned: dict[tuple[Any, ...], tuple[Config, Config]] = {}


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("veda_config", default=None)


def get_config() -> Config:
    """The settings in force here: process defaults with the enclosing scopes applied.

    Examples
    --------
    >>> import veda
    >>> with veda.config(target="cpu"):
    ...     veda.get_config().target
    'cpu'
    """
    scope = _scope.get()
    return _defaults if scope is None else scope.effective()


def set_config(**changes: Any) -> Config:
    """Change the process-wide defaults (every thread, below any open scope); return them."""
    global _defaults, _generation
    unknown = set(changes) - _FIELDS
    if unknown:
        raise ConfigError(
            f"veda.set_config: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"expected some of {', '.join(sorted(_FIELDS))}"
        )
    _defaults = _defaults.replace(**_plain_ints(changes))
    _generation += 1
    return _defaults


class config:
    """Override settings for a block of code or a function; restored on exit.

    Applies to the current thread or asyncio task only (it is a :mod:`contextvars` scope) and
    nests: an inner scope overrides an outer one.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def double(i, x):
    ...     x[i] *= 2
    >>> x = np.ones(4)
    >>> with veda.config(target="cpu"):
    ...     double[4](x)
    >>> @veda.config(target="parallel", threads=1)
    ... def step(x):
    ...     double[4](x)
    >>> step(x); x
    array([4., 4., 4., 4.])
    """

    def __init__(self, **overrides: Any) -> None:
        unknown = set(overrides) - _FIELDS
        if unknown:
            raise ConfigError(
                f"veda.config: unknown setting(s) {', '.join(sorted(unknown))}; "
                f"expected some of {', '.join(sorted(_FIELDS))}"
            )
        overrides = _plain_ints(overrides)
        _validate(overrides, ConfigError, where="veda.config")
        self._overrides = overrides
        self._tokens: list[contextvars.Token[_Scope | None]] = []

    def __enter__(self) -> Config:
        scope = _Scope(self._overrides, _scope.get())
        merged = scope.effective()  # may refuse the merge: before the scope is installed
        self._tokens.append(_scope.set(scope))
        return merged

    def __exit__(self, *exc: object) -> None:
        _scope.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with config(**self._overrides):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._overrides.items())
        return f"veda.config({inner})"


def validate_launch_overrides(values: Mapping[str, Any]) -> None:
    """Per-launch overrides follow the same rules; their errors are :class:`LaunchError`."""
    _validate(values, LaunchError, where="veda.launch")


def check_decision(decision: Any, error: type[VedaError], where: str) -> None:
    """Refuse a decision that cannot run here: not a Decision, an unknown or unavailable target,
    or (on a parallel target) settings out of this machine's range."""
    if not isinstance(decision, Decision):
        raise error(f"{where}: {decision!r} is not a veda.targets.Decision")
    target = _registry.get(decision.target)
    if target.parallel:
        _validate(
            {
                "target": decision.target,
                "threads": decision.threads,
                "schedule": decision.schedule,
                "chunk": decision.chunk,
            },
            error,
            where,
        )


def check_defaults() -> None:
    """Check the process defaults' target against the registry, once the built-in targets are
    registered (``VEDA_TARGET`` is read before they are, and before any plug-in could be: it
    names a built-in target; a plug-in is set with ``veda.set_config(target=...)``)."""
    _validate(
        {
            "target": _defaults.target,
            "threads": _defaults.threads,
            "schedule": _defaults.schedule,
            "chunk": _defaults.chunk,
        },
        ConfigError,
        where="VEDA_TARGET (read at import, so a built-in target; set a registered "
        "plug-in with veda.set_config(target=...))",
    )


class deterministic(config):
    """Bit-reproducible reductions in a block of code or a function (also a decorator).

    Inside it every reduction gives identical bits whatever the thread count, schedule or
    chunk, and ``"cpu"`` and ``"parallel"`` agree: partials are formed over fixed blocks of
    2048 elements and combined by a fixed pairwise tree.  ``seed`` is recorded with the mode.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel(reduce="sum")
    ... def total(i, x):
    ...     return x[i]
    >>> x = np.random.default_rng(0).random(100_000)
    >>> with veda.deterministic(seed=7):
    ...     a = veda.launch(total, x.size, x, target="cpu")
    ...     b = veda.launch(total, x.size, x, target="parallel", schedule="dynamic", chunk=999)
    >>> bool(a == b)
    True
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(deterministic=True, seed=seed)
