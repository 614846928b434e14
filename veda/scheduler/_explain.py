"""``veda.explain``: the dispatcher's decisions for a kernel, in words and as data."""

from __future__ import annotations

import html
import statistics
from typing import Any

from veda import _registry
from veda._config import get_config
from veda._hardware import energy as _energy
from veda._kernel.definition import KernelDefinition
from veda._types import Decision
from veda.errors import UnknownKernelError
from veda.scheduler._dispatch import dispatcher

__all__ = ["Explanation", "explain"]


class Explanation:
    """Why veda chose what it chose for one kernel: see :func:`explain`."""

    def __init__(
        self, kernel: str, rows: list[dict[str, Any]], code: list[dict[str, Any]] | None = None
    ) -> None:
        self.kernel = kernel
        self.rows = rows
        #: One entry per compiled CPU configuration (launcher and argument types): whether its
        #: loop was vectorised and how wide, from the optimised LLVM IR (see :func:`explain`).
        self.code = code or []

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "size_classes": self.rows, "code": self.code}

    def decision_for(
        self, size: int, ndim: int | None = None, policy: str | None = None
    ) -> Decision | None:
        """The decision taken for launches of ``size`` elements, or None while exploring.

        >>> import numpy as np, veda
        >>> @veda.kernel
        ... def twice(i, x):
        ...     x[i] *= 2
        >>> twice[1](np.ones(1))  # one index: the serial loop is the only candidate
        >>> veda.explain(twice).decision_for(1)
        Decision(target='cpu', threads=1, schedule='static', chunk=1, block=0)
        """
        cls = f"<= 2^{max(0, (int(size) - 1).bit_length())}"
        cfg = get_config()  # a power cap, and an energy policy's model, tune apart
        model = (cfg.static_watts, cfg.watts_per_core, cfg.gpu_watts, cfg.energy)
        for r in self.rows:
            if (
                r["size_class"] == cls
                and (ndim is None or r["ndim"] == ndim)
                and (policy is None or r["policy"] == policy)
                and r.get("max_power_watts") == cfg.max_power_watts
                and r.get("power_model") in (None, model)
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
            return "\n".join([f"{self.kernel}: no adaptive decisions yet", *self._code_lines()])
        lines = [f"{self.kernel}:"]
        for r in self.rows:
            state = f"{self.label(r['decision'])} ({r['source']})" if r["decision"] else "exploring"
            lines.append(
                f"  {r['ndim']}-d, size {r['size_class']}, policy {r['policy']}{_limits(r)}: "
                f"{state}"
            )
            for t in r["trials"]:
                times = ", ".join(f"{s * 1e9:.3g}" for s in t["samples"]) or "-"
                note = f"  [{_note(t)}]" if _note(t) else ""
                lines.append(
                    f"      {self.label(t['decision']):<34} ns/element: {times}"
                    f"{_energy_text(t, r)}{note}"
                )
        return "\n".join(lines + self._code_lines())

    def _code_lines(self) -> list[str]:
        if not self.code:
            return []
        lines = ["  compiled loops (from the optimised LLVM IR):"]
        for c in self.code:
            lines.append(f"      {_where(c):<34} {_vector_text(c)}")
            lines.append(f"          arguments ({c['arguments']})")
        return lines

    __repr__ = __str__

    def _repr_html_(self) -> str:
        """A table per size class in a notebook: the decision, then each candidate's times."""
        esc = html.escape
        if not self.rows:
            return f"<p><b>{esc(self.kernel)}</b>: no adaptive decisions yet</p>{self._code_html()}"
        body = []
        for r in self.rows:
            state = (
                f"{esc(self.label(r['decision']))} <i>({esc(r['source'])})</i>"
                if r["decision"]
                else "<i>exploring</i>"
            )
            body.append(
                f"<tr><td><b>{r['ndim']}-d, size {esc(r['size_class'])}</b></td>"
                f"<td>{esc(r['policy'] + _limits(r))}</td><td colspan='3'>{state}</td></tr>"
            )
            for t in r["trials"]:
                times = ", ".join(f"{x * 1e9:.3g}" for x in t["samples"]) or "-"
                body.append(
                    f"<tr style='color:#555'><td>&nbsp;&nbsp;{esc(self.label(t['decision']))}"
                    f"</td><td></td><td>{times}</td><td>{esc(_energy_text(t, r).strip(' ;'))}</td>"
                    f"<td>{esc(_note(t))}</td></tr>"
                )
        head = (
            "<tr><th>size class / candidate</th><th>policy</th><th>ns per element</th>"
            "<th>energy per element</th><th>dropped</th></tr>"
        )
        return (
            f"<table><caption>veda.explain({esc(self.kernel)})</caption><thead>{head}</thead>"
            f"<tbody>{''.join(body)}</tbody></table>{self._code_html()}"
        )

    def _code_html(self) -> str:
        esc = html.escape
        if not self.code:
            return ""
        rows = "".join(
            f"<tr><td>{esc(_where(c))}</td><td><code>{esc(c['arguments'])}</code></td>"
            f"<td>{esc(_vector_text(c))}</td></tr>"
            for c in self.code
        )
        return (
            "<table><caption>compiled loops (from the optimised LLVM IR)</caption><thead><tr>"
            "<th>configuration</th><th>arguments</th><th>inner loop</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )


def _where(code: dict[str, Any]) -> str:
    """``"parallel, fastmath={'reassoc'}"``: a compiled configuration and its options."""
    extra = "".join(
        f", {k}" + ("" if v is True else f"={v}") for k, v in code["options"].items() if v
    )
    return code["configuration"] + extra


def _vector_text(code: dict[str, Any]) -> str:
    """What a compiled configuration's loop report says, in words."""
    if code["vectorized"] is None:
        return f"unknown: {code['reason']}"
    loops = f"{code['vectorized_loops']} of its {code['loops']} IR loop(s) on vectors"
    if code["vectorized"]:
        return f"vectorised, {code['lanes']} x {code['element']} ({code['bits']}-bit); {loops}"
    return f"not vectorised ({code['loops']} loop(s))"


def _code(kernel: KernelDefinition) -> list[dict[str, Any]]:
    """The loop reports of every CPU module compiled for ``kernel`` (:mod:`veda._kernel.simd`)."""
    from veda._kernel import simd
    from veda._kernel.codegen import fastmath_label
    from veda._kernel.definition import LAUNCHERS

    out = []
    for (ndim, _, (boundscheck, _)), module in sorted(
        kernel._programs.items(), key=lambda item: repr(item[0])
    ):
        options = {
            "fastmath": fastmath_label(kernel.fastmath) if kernel.fastmath else None,
            "boundscheck": boundscheck,
        }
        out += [
            {**r, "ndim": ndim, "options": options} for r in simd.reports(module, ndim, LAUNCHERS)
        ]
    return out


def _limits(row: dict[str, Any]) -> str:
    """The power cap and the energy policy's model a size class was tuned under, if any."""
    out = ""
    if row.get("power_model") is not None:
        out += " (model {:g} W + {:g} W/thread, GPU {:g} W; energy {})".format(*row["power_model"])
    if row.get("max_power_watts") is not None:
        out += f" (max {row['max_power_watts']:g} W)"
    return out


def _energy_text(trial: dict[str, Any], row: dict[str, Any]) -> str:
    """``"; nJ/element: 0.51 (model)"``: a candidate's median time per element times its
    configuration's watts (measured, or the power model's: the one its size class was tuned
    under, for an energy policy), or nothing before it ran."""
    if not trial["samples"]:
        return ""
    model = row.get("power_model")
    if model is not None and model[3] == "model":  # ranked by that model's watts
        w, source = _energy.PowerModel(*model[:3]).watts(trial["decision"]), "model"
    else:
        w, source = _energy.watts(trial["decision"])
    return f"; nJ/element: {statistics.median(trial['samples']) * w * 1e9:.3g} ({source})"


def explain(kernel: Any) -> Explanation:
    """The dispatcher's decisions for ``kernel``: per size class, the candidates it tried, their
    measured times per element, what it chose and why (explored, tuning cache, only candidate).

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def add_one(i, x):
    ...     x[i] += 1
    >>> add_one[1](np.zeros(1))  # one index: the serial loop is the only candidate
    >>> print(veda.explain(add_one))  # doctest: +ELLIPSIS
    add_one:
      1-d, size <= 2^0, policy adaptive: cpu (only candidate)
    ...
    """
    if not isinstance(kernel, KernelDefinition):
        raise UnknownKernelError(f"veda.explain: expected a @veda.kernel, not {kernel!r}")
    return Explanation(kernel.name, dispatcher.explain(kernel), _code(kernel))


def _note(trial: dict[str, Any]) -> str:
    """Why a candidate was dropped, or that its loop is compiling in the background."""
    if trial["pruned"]:
        return str(trial["pruned"])
    return "compiling in the background" if trial.get("compiling") else ""
