"""Immutable telemetry snapshots and their exporters: dict, JSON, Prometheus, HTML, plot."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

from veda._hardware.gpu import kernel_transfers
from veda._registry import describe
from veda._types import Decision
from veda.errors import UnknownKernelError
from veda.scheduler import dispatcher
from veda.telemetry._histogram import LogHistogram
from veda.telemetry._registry import Registry, Series

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))

#: A Prometheus family: (name, type, help, [(suffix, labels, value)]).
Family = tuple[str, str, str, list[tuple[str, str, float]]]


def render_prometheus(parts: list[tuple[dict[str, str], list[Family]]]) -> str:
    """The text exposition of several snapshots' families, each with constant labels of its
    own (``{"worker": address}``, say): one ``# HELP``/``# TYPE`` per family name, every
    part's samples under it."""
    merged: dict[str, tuple[str, str, list[str]]] = {}
    for extra, families in parts:
        prefix = ",".join(f'{k}="{_escape(v)}"' for k, v in extra.items())
        for name, kind, help_, samples in families:
            lines = merged.setdefault(name, (kind, help_, []))[2]
            for suffix, labels, value in samples:
                both = ",".join(x for x in (prefix, labels) if x)
                lines.append(f"{name}{suffix}{{{both}}} {_num(value)}")
    out: list[str] = []
    for name, (kind, help_, lines) in merged.items():
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Figures:
    """Launch figures of a kernel, overall or in one configuration.  Times are seconds."""

    launches: int
    errors: int
    total_time: float
    min_time: float
    max_time: float
    p50: float
    p90: float
    p99: float
    p999: float
    elements: int
    bytes: int
    imbalance: float  # mean max/mean worker busy time over profiled launches; NaN if none
    profiled_launches: int
    histogram: tuple[tuple[float, float, int], ...]
    #: Joules by source: a reader's name ("rapl", "nvml") for measured launches, "model" for
    #: the others (their seconds times the power model's watts for their configuration).
    energy: tuple[tuple[str, float], ...] = ()

    @property
    def joules(self) -> float:
        """The launches' energy in joules (measured, modelled or both: see :attr:`energy`)."""
        return sum(j for _, j in self.energy)

    @property
    def watts(self) -> float:
        """Average power over the launches' time."""
        return self.joules / self.total_time if self.total_time > 0 else math.nan

    @property
    def energy_source(self) -> str:
        """Where the joules come from: ``"model"``, a reader's name, both (``"model+rapl"``),
        or ``"none"`` before any launch."""
        return "+".join(name for name, _ in self.energy) or "none"

    @property
    def mean_time(self) -> float:
        return self.total_time / self.launches if self.launches else math.nan

    @property
    def gbps(self) -> float:
        """Achieved bandwidth: bytes of the array arguments over launch time, in GB/s.

        An estimate: each array argument counts once at its ``nbytes``, whatever the kernel
        reads or writes of it.
        """
        return self.bytes / self.total_time / 1e9 if self.total_time > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        skip = ("histogram", "energy")
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        d["mean_time"] = self.mean_time
        d["gbps"] = self.gbps
        d["joules"] = self.joules
        d["watts"] = self.watts
        d["energy"] = dict(self.energy)
        d["histogram"] = [list(b) for b in self.histogram]
        return d


def _sum_energy(parts: Any) -> tuple[tuple[str, float], ...]:
    """Joules by source, summed over ``parts`` (each a mapping or pairs of source, joules)."""
    out: dict[str, float] = {}
    for part in parts:
        for name, joules in part.items() if isinstance(part, dict) else part:
            out[name] = out.get(name, 0.0) + joules
    return tuple(sorted(out.items()))


def _figures(series: list[Series]) -> Figures:
    hist = LogHistogram()
    launches = errors = elements = nbytes = profiled = 0
    total = imb = 0.0
    lo, hi = math.inf, 0.0
    for s in series:
        hist.merge(s.hist)
        launches += s.launches
        errors += s.errors
        total += s.total
        lo = min(lo, s.min)
        hi = max(hi, s.max)
        elements += s.elements
        nbytes += s.bytes
        profiled += s.profiled
        imb += s.imbalance_sum
    q = {name: hist.quantile(p) for name, p in QUANTILES}
    return Figures(
        launches=launches,
        errors=errors,
        total_time=total,
        min_time=lo if launches else math.nan,
        max_time=hi if launches else math.nan,
        elements=elements,
        bytes=nbytes,
        imbalance=imb / profiled if profiled else math.nan,
        profiled_launches=profiled,
        histogram=tuple(hist.buckets()),
        energy=_sum_energy(s.energy for s in series),
        **q,
    )


def merge_figures(figures: list[Figures]) -> Figures:
    """Figures of the launches of several (of other processes, say): counts and times add,
    histograms merge exactly, so the quantiles are those of all the launches together."""
    hist = LogHistogram()
    for f in figures:
        hist.merge(LogHistogram.from_buckets(f.histogram))
    launches = sum(f.launches for f in figures)
    profiled = sum(f.profiled_launches for f in figures)
    ran = [f for f in figures if f.launches]
    imb = sum(f.imbalance * f.profiled_launches for f in figures if f.profiled_launches)
    return Figures(
        launches=launches,
        errors=sum(f.errors for f in figures),
        total_time=sum(f.total_time for f in figures),
        min_time=min((f.min_time for f in ran), default=math.nan),
        max_time=max((f.max_time for f in ran), default=math.nan),
        elements=sum(f.elements for f in figures),
        bytes=sum(f.bytes for f in figures),
        imbalance=imb / profiled if profiled else math.nan,
        profiled_launches=profiled,
        histogram=tuple(hist.buckets()),
        energy=_sum_energy(f.energy for f in figures),
        **{name: hist.quantile(p) for name, p in QUANTILES},
    )


@dataclass(frozen=True)
class ConfigMetrics:
    """One kernel's figures in one configuration (a :class:`veda.targets.Decision`'s fields)."""

    target: str
    threads: int
    schedule: str
    chunk: int
    block: int
    figures: Figures

    def __getattr__(self, name: str) -> Any:  # .p50, .launches, ... from the figures
        if name == "figures":
            raise AttributeError(name)
        return getattr(self.figures, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "threads": self.threads,
            "schedule": self.schedule,
            "chunk": self.chunk,
            "block": self.block,
            **self.figures.to_dict(),
        }

    @property
    def decision(self) -> Decision:
        return Decision(self.target, self.threads, self.schedule, self.chunk, self.block)


@dataclass(frozen=True)
class KernelMetrics:
    """One kernel's telemetry: overall figures as attributes, per configuration in ``configs``."""

    name: str
    module: str
    figures: Figures
    configs: tuple[ConfigMetrics, ...]
    compiles: int
    cache_hits: int
    compile_time: float
    #: The dispatcher's decisions per size class, as :func:`veda.explain` gives them.
    decisions: tuple[dict[str, Any], ...] = ()

    def __getattr__(self, name: str) -> Any:  # .launches, .p99, .gbps, .imbalance, ...
        if name == "figures":
            raise AttributeError(name)
        return getattr(self.figures, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            **self.figures.to_dict(),
            "compiles": self.compiles,
            "cache_hits": self.cache_hits,
            "compile_time": self.compile_time,
            "configs": [c.to_dict() for c in self.configs],
            "decisions": [
                {
                    **d,
                    "decision": d["decision"].to_json() if d["decision"] else None,
                    "trials": [{**t, "decision": t["decision"].to_json()} for t in d["trials"]],
                }
                for d in self.decisions
            ],
        }


class Section(Protocol):
    """A section of the snapshot from the runtime above telemetry (the ``tasks`` section)."""

    def to_dict(self) -> dict[str, Any]: ...

    def families(self) -> list[tuple[str, str, str, list[tuple[str, str, float]]]]:
        """Prometheus families: (name, type, help, [(suffix, labels, value)])."""
        ...


class SectionSource(Protocol):
    def take(self) -> Section | None:
        """The section now, or None while there is nothing to report."""
        ...

    def reset(self) -> None: ...


#: Sources of extra snapshot sections, by name, registered by the layers above telemetry (lower
#: layers learn of higher ones through callbacks, never imports).
sections: dict[str, SectionSource] = {}


@dataclass(frozen=True)
class MemorySection:
    """The buffer pools: host (``veda.empty``, ``veda.zeros``, ``veda.empty_like``) and device
    (the CUDA target's copies), as :func:`veda.memory_stats` gives them."""

    pools: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"pools": self.pools}

    def families(self) -> list[Family]:
        held = []
        for pool, info in sorted(self.pools.items()):
            if pool == "host":
                held.append(("", 'pool="host",state="free"', float(info["free_bytes"])))
                held.append(("", 'pool="host",state="lent"', float(info["lent_bytes"])))
            else:  # the device pool keeps free buffers only (lent ones are in flight)
                held.append(("", f'pool="{pool}",state="free"', float(info["cached_bytes"])))

        def per_pool(kind: str) -> list[tuple[str, str, float]]:
            return [("", f'pool="{p}"', float(i[kind])) for p, i in sorted(self.pools.items())]

        return [
            ("veda_pool_bytes", "gauge", "Bytes a buffer pool holds free or has lent.", held),
            (
                "veda_pool_hits_total",
                "counter",
                "Requests a buffer pool served from a free buffer.",
                per_pool("hits"),
            ),
            (
                "veda_pool_misses_total",
                "counter",
                "Requests a buffer pool served by a new allocation.",
                per_pool("misses"),
            ),
        ]


class _MemorySource:
    """The pools' figures, once either has served a request."""

    def take(self) -> MemorySection | None:
        from veda._hardware.memory import memory_stats  # not a cost of importing telemetry

        pools = memory_stats()
        used = any(i.get("hits", 0) or i.get("misses", 0) for i in pools.values())
        return MemorySection(pools) if used else None

    def reset(self) -> None:
        """The pools' counters run for the process's life (like ``veda.memory_stats()``)."""


sections["memory"] = _MemorySource()


class Snapshot:
    """An immutable picture of veda's telemetry at one moment; see :func:`veda.metrics`.

    ``snapshot.tasks`` is the task executor's section (:func:`veda.submit`, :func:`veda.spawn`)
    once a task was queued, else None.
    """

    def __init__(
        self,
        kernels: tuple[KernelMetrics, ...],
        transfers: dict[str, dict[str, int]] | None = None,
        extra: dict[str, Section] | None = None,
    ) -> None:
        self.kernels = kernels
        #: Bytes copied between host and GPU for each kernel's CUDA launches, by direction.
        self.transfers = transfers or {}
        #: Sections from the runtime above telemetry, by name.
        self.sections = extra or {}

    @property
    def tasks(self) -> Any:
        """The ``tasks`` section (a ``TaskMetrics``), or None before the first task."""
        return self.sections.get("tasks")

    @property
    def memory(self) -> MemorySection | None:
        """The ``memory`` section (the host and device buffer pools), or None before either
        served a request."""
        return self.sections.get("memory")

    @property
    def graphs(self) -> Any:
        """The ``graphs`` section (launch graphs' replays, :class:`veda.graph`), or None
        before the first replay."""
        return self.sections.get("graphs")

    @classmethod
    def take(cls, registry: Registry) -> Snapshot:
        registry.fold_all()
        out = []
        with registry.lock:
            records = list(registry.kernels.values())
        for rec in records:
            copies = []
            for s in list(rec.series.values()):
                with s.lock:
                    if s.launches or s.errors or s.profiled:
                        copies.append(s.copy())
            configs = tuple(ConfigMetrics(*c.config, _figures([c])) for c in copies)
            out.append(
                KernelMetrics(
                    rec.name,
                    rec.module,
                    _figures(copies),
                    configs,
                    rec.compiles,
                    rec.cache_hits,
                    rec.compile_seconds,
                    tuple(dispatcher.rows(rec.module, rec.name)),
                )
            )
        extra = {}
        for name, source in list(sections.items()):
            section = source.take()
            if section is not None:
                extra[name] = section
        return cls(tuple(sorted(out, key=lambda k: (k.module, k.name))), kernel_transfers(), extra)

    @classmethod
    def merge(cls, snapshots: list[Snapshot]) -> Snapshot:
        """One snapshot of the launches of several (every worker's of a cluster, say): per
        kernel and configuration, counts and times add and latency histograms merge exactly.
        Decisions and the runtime's sections are each process's own and are left out."""
        kernels: dict[tuple[str, str], list[KernelMetrics]] = {}
        transfers: dict[str, dict[str, int]] = {}
        for snap in snapshots:
            for k in snap.kernels:
                kernels.setdefault((k.module, k.name), []).append(k)
            for name, t in snap.transfers.items():
                into = transfers.setdefault(name, {})
                for key, v in t.items():
                    into[key] = into.get(key, 0) + v
        out = []
        for (module, name), ks in sorted(kernels.items()):
            configs: dict[Decision, list[Figures]] = {}
            for k in ks:
                for c in k.configs:
                    configs.setdefault(c.decision, []).append(c.figures)
            out.append(
                KernelMetrics(
                    name,
                    module,
                    merge_figures([k.figures for k in ks]),
                    tuple(ConfigMetrics(*d, merge_figures(f)) for d, f in configs.items()),
                    sum(k.compiles for k in ks),
                    sum(k.cache_hits for k in ks),
                    sum(k.compile_time for k in ks),
                )
            )
        return cls(tuple(out), transfers)

    def kernel(self, name: Any) -> KernelMetrics:
        """A kernel's metrics by ``__qualname__``, ``module.qualname`` or the kernel itself.

        A bare function name (the last part of a qualname, e.g. for a kernel defined inside a
        function) is accepted too when exactly one kernel has it.
        """
        if not isinstance(name, str):
            if not hasattr(name, "__qualname__") or not hasattr(name, "__module__"):
                raise UnknownKernelError(f"expected a kernel or its name, not {name!r}")
            name = f"{name.__module__}.{name.__qualname__}"
        for k in self.kernels:
            if name == f"{k.module}.{k.name}":
                return k
        for candidates in (
            [k for k in self.kernels if k.name == name],
            [k for k in self.kernels if k.name.rsplit(".", 1)[-1] == name],
        ):
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                raise UnknownKernelError(
                    f"{name!r} names several kernels; use one of "
                    + ", ".join(f"{k.module}.{k.name}" for k in candidates)
                )
        known = ", ".join(k.name for k in self.kernels) or "none yet"
        raise UnknownKernelError(
            f"no telemetry for a kernel named {name!r}; kernels with telemetry: {known}"
        )

    def __iter__(self) -> Any:
        return iter(self.kernels)

    def __len__(self) -> int:
        return len(self.kernels)

    def to_dict(self) -> dict[str, Any]:
        out = {"kernels": [k.to_dict() for k in self.kernels], "transfers": self.transfers}
        out.update({name: s.to_dict() for name, s in self.sections.items()})
        return out

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (NaN written as null)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return json.dumps(clean(self.to_dict()), **kwargs)

    def to_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        Counters carry their ``_total`` name on the ``# TYPE`` line, as that format wants;
        latency is a summary with the quantiles p50, p90, p99 and p99.9.
        """
        return render_prometheus([({}, self.families())])

    def families(self) -> list[Family]:
        """The Prometheus families of this snapshot: (name, type, help, [(suffix, labels,
        value)]), as :meth:`to_prometheus` writes them."""
        out: list[Family] = []

        def family(name: str, kind: str, help_: str, samples: list[tuple[str, str, float]]) -> None:
            out.append((name, kind, help_, samples))

        def labels(k: KernelMetrics, c: ConfigMetrics | None = None, **extra: Any) -> str:
            items = {"kernel": f"{k.module}.{k.name}"}
            if c is not None:
                items.update(
                    target=c.target,
                    threads=str(c.threads),
                    schedule=c.schedule,
                    chunk=str(c.chunk),
                    block=str(c.block),
                )
            items.update({key: str(v) for key, v in extra.items()})
            return ",".join(f'{key}="{_escape(v)}"' for key, v in items.items())

        per_config = [(k, c) for k in self.kernels for c in k.configs]
        family(
            "veda_launches_total",
            "counter",
            "Kernel launches.",
            [("", labels(k, c), c.launches) for k, c in per_config],
        )
        family(
            "veda_launch_errors_total",
            "counter",
            "Launches that raised.",
            [("", labels(k, c), c.errors) for k, c in per_config],
        )
        summary: list[tuple[str, str, float]] = []
        for k, c in per_config:
            for qname, q in QUANTILES:
                summary.append(("", labels(k, c, quantile=q), getattr(c, qname)))
            summary.append(("_sum", labels(k, c), c.total_time))
            summary.append(("_count", labels(k, c), c.launches))
        family("veda_launch_seconds", "summary", "Launch latency in seconds.", summary)
        family(
            "veda_elements_total",
            "counter",
            "Domain elements processed.",
            [("", labels(k, c), c.elements) for k, c in per_config],
        )
        family(
            "veda_bytes_total",
            "counter",
            "Bytes of the array arguments (each counted once at its nbytes; an estimate).",
            [("", labels(k, c), c.bytes) for k, c in per_config],
        )
        family(
            "veda_energy_joules_total",
            "counter",
            "Energy of the launches in joules, by source: a reader's (rapl, nvml) or the "
            "power model's (model).",
            [("", labels(k, source=src), j) for k in self.kernels for src, j in k.energy],
        )
        family(
            "veda_imbalance",
            "gauge",
            "Mean max/mean worker busy time over profiled launches.",
            [("", labels(k, c), c.imbalance) for k, c in per_config if c.profiled_launches],
        )
        if self.transfers:
            family(
                "veda_transfer_bytes_total",
                "counter",
                "Bytes copied between host and GPU for CUDA launches.",
                [
                    ("", f'kernel="{_escape(name)}",direction="{d}"', float(t[f"{d}_bytes"]))
                    for name, t in sorted(self.transfers.items())
                    for d in ("host_to_device", "device_to_host")
                ],
            )
        family(
            "veda_compiles_total",
            "counter",
            "Specialisations compiled from scratch.",
            [("", labels(k), k.compiles) for k in self.kernels],
        )
        family(
            "veda_cache_hits_total",
            "counter",
            "Specialisations loaded from the disk cache.",
            [("", labels(k), k.cache_hits) for k in self.kernels],
        )
        family(
            "veda_compile_seconds_total",
            "counter",
            "Time spent compiling or loading.",
            [("", labels(k), k.compile_time) for k in self.kernels],
        )
        for section in self.sections.values():
            for name, kind, help_, samples in section.families():
                family(name, kind, help_, samples)
        return out

    def _repr_html_(self) -> str:
        head = (
            "<tr><th>kernel</th><th>launches</th><th>errors</th><th>p50</th><th>p99</th>"
            "<th>mean</th><th>GB/s</th><th>imbalance</th><th>joules</th><th>compiles</th>"
            "<th>cache hits</th></tr>"
        )
        rows = []
        for k in self.kernels:
            rows.append(
                f"<tr><td><b>{html.escape(k.name)}</b></td><td>{k.launches}</td>"
                f"<td>{k.errors}</td><td>{_t(k.p50)}</td><td>{_t(k.p99)}</td>"
                f"<td>{_t(k.mean_time)}</td><td>{_f(k.gbps)}</td><td>{_f(k.imbalance)}</td>"
                f"<td>{_joules(k.figures)}</td><td>{k.compiles}</td><td>{k.cache_hits}</td></tr>"
            )
            for c in k.configs:
                label = describe(c.decision)
                rows.append(
                    f"<tr style='color:#555'><td>&nbsp;&nbsp;{html.escape(label)}</td>"
                    f"<td>{c.launches}</td><td>{c.errors}</td><td>{_t(c.p50)}</td>"
                    f"<td>{_t(c.p99)}</td><td>{_t(c.mean_time)}</td><td>{_f(c.gbps)}</td>"
                    f"<td>{_f(c.imbalance)}</td><td>{_joules(c.figures)}</td><td></td><td></td></tr>"
                )
        return (
            f"<table><caption>veda telemetry ({len(self.kernels)} kernels)</caption>"
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def __repr__(self) -> str:
        parts = [f"{k.name}: {k.launches} launches, p50 {_t(k.p50)}" for k in self.kernels]
        return f"<veda.telemetry.Snapshot {'; '.join(parts) or 'empty'}>"

    def plot(self, kernels: list[str] | None = None) -> Any:
        """A matplotlib figure: latency histogram per kernel, and imbalance per configuration.

        Needs matplotlib (``pip install matplotlib``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            from veda.errors import TelemetryError

            raise TelemetryError("Snapshot.plot needs matplotlib: pip install matplotlib") from exc
        chosen = [self.kernel(n) for n in kernels] if kernels else list(self.kernels)
        fig, (ax_lat, ax_imb) = plt.subplots(1, 2, figsize=(11, 4))
        for k in chosen:
            if not k.histogram:
                continue
            edges = [lo for lo, _, _ in k.histogram]
            counts = [c for _, _, c in k.histogram]
            ax_lat.step([e * 1e6 for e in edges], counts, where="post", label=k.name)
        ax_lat.set_xscale("log")
        ax_lat.set_xlabel("launch time (µs)")
        ax_lat.set_ylabel("launches")
        ax_lat.set_title("latency")
        if chosen:
            ax_lat.legend(fontsize="small")
        labels, values = [], []
        for k in chosen:
            for c in k.configs:
                if c.profiled_launches:
                    labels.append(f"{k.name}\n{c.schedule} {c.threads}t")
                    values.append(c.imbalance)
        ax_imb.bar(range(len(values)), values, color="tab:orange")
        ax_imb.axhline(1.0, color="gray", lw=0.8)
        ax_imb.set_xticks(range(len(values)), labels, fontsize="small")
        ax_imb.set_ylabel("max / mean worker busy time")
        ax_imb.set_title("load imbalance (profile=True launches)")
        fig.tight_layout()
        return fig


def _joules(f: Figures) -> str:
    return f"{f.joules:.3g} J ({html.escape(f.energy_source)})" if f.energy else ""


def _num(v: float) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _t(v: float) -> str:
    if not math.isfinite(v):
        return "–"
    if v < 1e-3:
        return f"{v * 1e6:.1f} µs"
    if v < 1:
        return f"{v * 1e3:.2f} ms"
    return f"{v:.2f} s"


def _f(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else "–"
