"""veda kernels over Dask arrays, on a ``distributed`` cluster or Dask's local schedulers.

The same kernels run block by block: :func:`map_blocks` launches an index kernel over each
output block (the domain is the block's shape), :func:`map_overlap` does so over blocks with
halos (stencils), and :func:`reduce` runs a reduction kernel per block and combines the
per-block values in block order, so the result does not depend on the number of workers or on
the order blocks finish (nor its bits, in deterministic mode).

Each worker process compiles a kernel once (the kernel is sent by value where it cannot be
imported by name, and the worker keeps one copy of it; the disk cache is shared safely by the
workers of one machine) and runs its own adaptive dispatcher on the worker's threads: a worker
of one thread runs ``"cpu"``, a worker of k threads lends its launches k threads in all.

Needs the ``dask`` extra: ``pip install 'veda[dask]'``.

Examples
--------
>>> import numpy as np, dask.array as da, veda, veda.dask
>>> @veda.kernel
... def axpy_blocks(i, a, x, y, out):
...     out[i] = a * x[i] + y[i]
>>> x = da.ones(10, chunks=4); y = da.arange(10.0, chunks=4)
>>> veda.dask.map_blocks(axpy_blocks, 2.0, x, y).compute()[:4]
array([2., 3., 4., 5.])
>>> @veda.kernel(reduce="sum")
... def block_total(i, x):
...     return x[i]
>>> float(veda.dask.reduce(block_total, y).compute())
45.0
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from veda import _config, telemetry
from veda._launch import Kernel, launch
from veda.errors import KernelError, LaunchError, VedaError
from veda.telemetry._snapshot import Snapshot, render_prometheus

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "veda.dask needs Dask: pip install 'veda[dask]' (dask[array] and distributed)"
    ) from exc

__all__ = [
    "ClusterMetrics",
    "compiles",
    "map_blocks",
    "map_overlap",
    "metrics",
    "reduce",
    "warm",
    "worker_threads",
]

#: The caller's settings a block launch keeps (the rest a worker's dispatcher decides).
_KEPT = ("target", "schedule", "chunk", "boundscheck", "deterministic", "seed", "policy")
#: Those of them (and ``threads``) that :func:`veda.launch` takes itself.
_LAUNCH_ARGS = ("target", "threads", "schedule", "chunk")


def worker_threads() -> int | None:
    """The threads of the Dask worker running the caller, or None outside a worker."""
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - dask without distributed
        return None
    try:
        worker = get_worker()
    except ValueError:  # not in a worker task
        return None
    state = getattr(worker, "state", None)
    return int(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1))


_budget_lock = threading.Lock()
_budget_set: int | None = None


def _worker_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as they apply in this worker: one thread means ``"cpu"`` (an explicit
    ``"parallel"`` runs on one thread); in a worker process of k threads, its launches are lent
    k threads in all (a worker in the client's own process, ``LocalCluster(processes=False)``,
    leaves the process's budget alone: it is the client's too)."""
    global _budget_set
    threads = worker_threads()
    if threads is None:
        return settings
    if threads <= 1:
        if settings.get("target") is None:
            settings = {**settings, "target": "cpu", "schedule": None, "chunk": None}
        elif settings["target"] == "parallel":  # asked for: on the worker's one thread
            settings = {**settings, "threads": 1}
        return settings
    if _budget_set != threads and multiprocessing.parent_process() is not None:
        from veda._hardware import cpu

        with _budget_lock:
            if _budget_set != threads:
                cpu.budget.cap(threads)
                _budget_set = threads
    return settings


def _where() -> str:
    try:
        from distributed import get_worker

        return f"dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return "Dask's local scheduler"


def _settings() -> dict[str, Any]:
    """The caller's settings that block launches keep (a worker has its own scopes)."""
    cfg = _config.get_config()
    return {name: getattr(cfg, name) for name in _KEPT}


def _run(
    kernel: Kernel,
    dims: tuple[int, ...],
    args: Sequence[Any],
    settings: dict[str, Any],
    location: tuple[Any, tuple[int, ...] | None],
) -> Any:
    """One block's launch, with a kernel error naming the block and the worker.

    ``location`` is the block's place in the grid and the index of its first element in the
    array (None for a block with a halo).  The target, threads, schedule and chunk go to the
    launch itself; a scope is opened only for settings that differ from the worker's (a
    ``veda.config`` scope costs more than the launch of a small block)."""
    settings = _worker_settings(settings)
    overrides = {k: settings[k] for k in _LAUNCH_ARGS if settings.get(k) is not None}
    scoped = {k: v for k, v in settings.items() if k not in _LAUNCH_ARGS}
    cfg = _config.get_config()
    differ = any(getattr(cfg, k) != v for k, v in scoped.items())
    with _config.config(**scoped) if differ else contextlib.nullcontext():
        try:
            return launch(kernel, dims, *args, **overrides)
        except KernelError as exc:
            block, start = location
            index = exc.index
            if index is not None and start is not None:  # the array's index, not the block's
                index = tuple(i + o for i, o in zip(index, start))
            halo = "" if start is not None else " with its halo"
            raise type(exc)(
                exc.kernel,
                exc.original_type,
                exc.original_message,
                index,
                exc.target,
                f"in block {tuple(block)} of shape {dims}{halo}, on {_where()}",
            ) from exc


def _merge(blocks: Sequence[Any], scalars: dict[int, Any], count: int) -> list[Any]:
    """The launch's arguments: the blocks in the array positions, the scalars in theirs."""
    it = iter(blocks)
    return [scalars[p] if p in scalars else next(it) for p in range(count)]


def _map_block(
    *blocks: np.ndarray,
    kernel: Kernel,
    scalars: dict[int, Any],
    count: int,
    out_dtype: np.dtype[Any],
    settings: dict[str, Any],
    halo: bool = False,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    dims = tuple(int(d) for d in blocks[0].shape)
    out = np.empty(dims, out_dtype)
    info = (block_info or {}).get(None, {})
    start = None
    if not halo and "array-location" in info:
        start = tuple(lo for lo, _ in info["array-location"])
    _run(
        kernel,
        dims,
        [*_merge(blocks, scalars, count), out],
        settings,
        (info.get("chunk-location", ()), start),
    )
    return out


def _partial(
    kernel: Kernel,
    blocks: Sequence[np.ndarray],
    scalars: dict[int, Any],
    count: int,
    settings: dict[str, Any],
    location: tuple[tuple[int, ...], tuple[int, ...]],
) -> Any:
    dims = tuple(int(d) for d in blocks[0].shape)
    if 0 in dims and kernel.reduce in ("min", "max"):
        return None  # an empty block has no min: left out of the combine
    return _run(kernel, dims, _merge(blocks, scalars, count), settings, location)


_COMBINE = {
    "sum": lambda a, b: a + b,
    "prod": lambda a, b: a * b,
    "min": np.minimum,  # a NaN wins, as in the kernel's own reduction
    "max": np.maximum,
}


def _combine(parts: Sequence[Any], op: str) -> Any:
    """The per-block values in block order, combined pairwise as a balanced tree: the same
    operations in the same order whatever ran where."""
    join = _COMBINE[op]
    level = [p for p in parts if p is not None]  # empty blocks of a min or max
    while len(level) > 1:
        pairs = [join(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


# -- the public functions ------------------------------------------------------------------------
def _kernel(kernel: Any, what: str, reduction: bool | None) -> Kernel:
    """``kernel``, checked: a veda kernel, a reduction or not as ``reduction`` says (None:
    either), reducing no arrays."""
    if not isinstance(kernel, Kernel):
        raise LaunchError(f"veda.dask.{what}: expected a @veda.kernel, not {kernel!r}")
    if reduction and kernel.reduce is None:
        raise LaunchError(
            f"veda.dask.{what}: kernel {kernel.name!r} is not a reduction; declare it with "
            "@veda.kernel(reduce='sum') (or use veda.dask.map_blocks)"
        )
    if reduction is False and kernel.reduce is not None:
        raise LaunchError(
            f"veda.dask.{what}: kernel {kernel.name!r} is a reduction (reduce="
            f"{kernel.reduce!r}); use veda.dask.reduce"
        )
    if kernel.private:
        raise LaunchError(
            f"veda.dask.{what}: kernel {kernel.name!r} reduces arrays ({kernel.private!r}); "
            "each block would reduce into its own copy of them, which Dask cannot combine"
        )
    return kernel


def _arguments(
    kernel: Kernel, args: Sequence[Any], what: str, extra: int
) -> tuple[list[Any], dict[int, Any], int]:
    """The Dask arrays among ``args`` (all with the same shape and chunks), the scalars by
    position, and the domain's rank; refuses what cannot be launched block by block."""
    arrays = [a for a in args if isinstance(a, da.Array)]
    if not arrays:
        raise LaunchError(f"veda.dask.{what}: kernel {kernel.name!r} got no Dask array argument")
    a0 = arrays[0]
    ndim = a0.ndim
    params = kernel.params

    def name(pos: int) -> str:
        k = max(ndim, 1) + pos  # an index parameter per dimension (1 at least) comes first
        return f"{pos + 1} ({params[k]!r})" if k < len(params) else str(pos + 1)

    first = name(next(p for p, a in enumerate(args) if a is a0))
    if not 1 <= ndim <= 3:
        raise LaunchError(
            f"veda.dask.{what}: argument {first} has {ndim} dimension(s); kernels run over "
            "1-, 2- or 3-d blocks"
        )
    scalars: dict[int, Any] = {}
    for pos, arg in enumerate(args):
        if isinstance(arg, da.Array):
            if arg.shape != a0.shape or arg.chunks != a0.chunks:
                raise LaunchError(
                    f"veda.dask.{what}: argument {name(pos)} has shape {arg.shape} in chunks "
                    f"{arg.chunks}, but argument {first} has shape {a0.shape} in chunks "
                    f"{a0.chunks}: each block is one launch, so the arrays must have the same "
                    "blocks (rechunk one of them)"
                )
        elif hasattr(arg, "__array_interface__") or hasattr(arg, "__cuda_array_interface__"):
            raise LaunchError(
                f"veda.dask.{what}: argument {name(pos)} is a {type(arg).__name__}, not a Dask "
                "array; wrap it with dask.array.from_array (with the chunks of the others)"
            )
        else:
            scalars[pos] = arg
    if any(math.isnan(c) for dim in a0.chunks for c in dim):
        raise LaunchError(
            f"veda.dask.{what}: argument {first} has unknown chunk sizes (compute them first: "
            "x.compute_chunk_sizes())"
        )
    declared = kernel.ndim
    if declared is not None and declared != ndim:
        raise LaunchError(
            f"veda.dask.{what}: kernel {kernel.name!r} declares ndim={declared} but its blocks "
            f"have {ndim} dimension(s)"
        )
    want = ndim + len(args) + extra
    if len(params) != want:
        out = " and the output block" if extra else ""
        raise LaunchError(
            f"veda.dask.{what}: kernel {kernel.name!r} takes {len(params)} parameters "
            f"({', '.join(params)}), but {ndim} index parameter(s), {len(args)} argument(s)"
            f"{out} make {want}"
        )
    if kernel.source.tree is not None:  # veda read the body: what it writes is known
        written = kernel.written
        inputs = [p for p in written if p != params[-1] or not extra]
        if inputs:
            raise LaunchError(
                f"veda.dask.{what}: kernel {kernel.name!r} writes {', '.join(inputs)}, an "
                "input: a block of a Dask array must not be changed in place (other tasks and "
                "persisted results share it); write into the output parameter only"
            )
        if extra and params[-1] not in written:
            raise LaunchError(
                f"veda.dask.{what}: kernel {kernel.name!r} never writes its last parameter "
                f"{params[-1]!r}, the output block"
            )
    if kernel.reduce in ("min", "max") and a0.size == 0:
        raise LaunchError(
            f"veda.dask.{what}: a {kernel.reduce} of no elements has no value (argument "
            f"{first} is empty)"
        )
    return arrays, scalars, ndim


def _dtype(dtype: Any, arrays: Sequence[Any], what: str) -> np.dtype[Any]:
    """The output's dtype: given, or NumPy's result type of the arrays' (a kernel that
    writes floats into an integer output truncates them, as NumPy's assignment does)."""
    for a in arrays:
        if a.dtype.kind not in "biufc":
            raise LaunchError(
                f"veda.dask.{what}: a Dask array of dtype {a.dtype} cannot be a kernel's "
                "argument; kernels take arrays of booleans and numbers"
            )
    if dtype is None:
        return np.result_type(*(a.dtype for a in arrays))
    try:
        out = np.dtype(dtype)
    except TypeError:
        raise LaunchError(f"veda.dask.{what}: dtype={dtype!r} is not a NumPy dtype") from None
    if out.kind not in "biufc":
        raise LaunchError(
            f"veda.dask.{what}: dtype={dtype!r}: the output must hold booleans or numbers"
        )
    return out


def _token(kernel: Kernel, *parts: Any) -> str:
    """The graph's token: the kernel object's own (two kernels of one source, closing over
    different values, are different kernels) and what the launches take."""
    return str(dask.base.tokenize(kernel.token, *parts))


def map_blocks(kernel: Kernel, *args: Any, dtype: Any = None) -> Any:
    """Launch an index kernel over every block of Dask arrays; returns the Dask array of its
    output.

    The kernel's last parameter is the output block, which veda allocates: ``kernel[shape](*args,
    out)`` runs for each block, with the blocks of the Dask arrays among ``args`` (all with the
    same shape and chunks) and the other arguments (scalars) as they are.  The domain is the
    block's shape, so index ``i`` is the block's own.

    Parameters
    ----------
    kernel : veda.Kernel
        An index kernel (not a reduction) whose last parameter it writes.
    *args
        Dask arrays with the same blocks, and scalars.  NumPy arrays are refused: wrap them
        with ``dask.array.from_array``.
    dtype : dtype, optional
        The output's dtype; by default NumPy's result type of the arrays' dtypes.

    Examples
    --------
    >>> import numpy as np, dask.array as da, veda, veda.dask
    >>> @veda.kernel
    ... def scale_blocks(i, j, a, x, out):
    ...     out[i, j] = a * x[i, j]
    >>> x = da.ones((4, 6), chunks=(2, 3))
    >>> float(veda.dask.map_blocks(scale_blocks, 3.0, x).sum().compute())
    72.0
    """
    k = _kernel(kernel, "map_blocks", reduction=False)
    arrays, scalars, ndim = _arguments(k, args, "map_blocks", extra=1)
    out = _dtype(dtype, arrays, "map_blocks")
    settings = _settings()
    return da.map_blocks(
        _map_block,
        *arrays,
        dtype=out,
        meta=np.empty((0,) * ndim, out),
        name=f"veda-{k.name}-{_token(k, arrays, scalars, out, settings)}",
        kernel=k,
        scalars=scalars,
        count=len(args),
        out_dtype=out,
        settings=settings,
    )


def map_overlap(
    kernel: Kernel,
    *args: Any,
    depth: Any,
    boundary: Any = "none",
    dtype: Any = None,
) -> Any:
    """Launch a stencil kernel over every block of Dask arrays with ``depth`` elements of its
    neighbours around it (a halo); returns the Dask array of its output, halos trimmed.

    The domain of each launch is the block with its halo, so the kernel reads its neighbours
    there as it would in one array, and must treat the edges of its domain as it treats the
    edges of an array: with ``boundary="none"`` (the default) the array's own edges are the
    only edges a kept output sees, and the result equals one launch over the whole array.
    ``boundary`` can also be ``"periodic"``, ``"reflect"``, ``"nearest"`` or a constant (as
    in :func:`dask.array.map_overlap`).

    Examples
    --------
    >>> import numpy as np, dask.array as da, veda, veda.dask
    >>> @veda.kernel
    ... def smooth_blocks(i, x, out):
    ...     n = x.shape[0]
    ...     if i == 0 or i == n - 1:
    ...         out[i] = x[i]
    ...     else:
    ...         out[i] = (x[i - 1] + x[i] + x[i + 1]) / 3.0
    >>> x = np.arange(10.0) ** 2
    >>> whole = np.empty(10); smooth_blocks[10](x, whole)
    >>> blocks = veda.dask.map_overlap(smooth_blocks, da.from_array(x, chunks=3), depth=1)
    >>> bool(np.array_equal(blocks.compute(), whole))
    True
    """
    k = _kernel(kernel, "map_overlap", reduction=False)
    arrays, scalars, ndim = _arguments(k, args, "map_overlap", extra=1)
    out = _dtype(dtype, arrays, "map_overlap")
    _check_overlap(depth, boundary, ndim)
    settings = _settings()
    token = _token(k, arrays, scalars, out, settings, depth, boundary)
    try:
        return da.map_overlap(
            _map_block,
            *arrays,
            depth=depth,
            boundary=boundary,
            trim=True,
            align_arrays=False,
            dtype=out,
            meta=np.empty((0,) * ndim, out),
            name=f"veda-{k.name}-overlap-{token}",
            kernel=k,
            scalars=scalars,
            count=len(args),
            out_dtype=out,
            settings=settings,
            halo=True,
        )
    except (ValueError, TypeError, NotImplementedError) as exc:  # Dask's word on depth, boundary
        raise LaunchError(
            f"veda.dask.map_overlap: depth={depth!r}, boundary={boundary!r}: {exc}"
        ) from None


_BOUNDARIES = ("none", "periodic", "reflect", "nearest")


def _check_overlap(depth: Any, boundary: Any, ndim: int) -> None:
    what = "veda.dask.map_overlap"

    def per_axis(value: Any, name: str) -> list[Any]:
        if isinstance(value, dict):
            bad = [a for a in value if not isinstance(a, int) or not 0 <= a < ndim]
            if bad:
                raise LaunchError(
                    f"{what}: {name}={value!r} names axis {bad[0]!r}; the blocks have axes "
                    f"0 to {ndim - 1}"
                )
            return list(value.values())
        if isinstance(value, (tuple, list)):
            if len(value) != ndim:
                raise LaunchError(
                    f"{what}: {name}={value!r} has {len(value)} entries for {ndim}-d blocks"
                )
            return list(value)
        return [value]

    for d in per_axis(depth, "depth"):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise LaunchError(
                f"{what}: depth={depth!r}: expected a count of neighbours (an int >= 0), one "
                "per axis or a dict {axis: int}"
            )
    for b in per_axis(boundary, "boundary"):
        constant = isinstance(b, (int, float, complex, np.number)) and not isinstance(b, bool)
        if not constant and b not in _BOUNDARIES:
            raise LaunchError(
                f"{what}: boundary={boundary!r}: expected one of {', '.join(_BOUNDARIES)} or a "
                "constant, one per axis or a dict {axis: ...}"
            )


def reduce(kernel: Kernel, *args: Any) -> Any:
    """Run a reduction kernel over every block of Dask arrays and combine the per-block
    values; returns a :class:`dask.delayed.Delayed` whose ``compute()`` is the NumPy scalar.

    Each block's value is the kernel's own reduction of the block; the values are combined in
    block order (C order of the block grid), pairwise as a balanced tree, so the result does not
    depend on how many workers there are or which block finished first.  In deterministic mode
    (``veda.config(deterministic=True)`` around this call) every block has the same bits on
    every thread count, and so has the result, on any cluster with the same chunks.

    Examples
    --------
    >>> import numpy as np, dask.array as da, veda, veda.dask
    >>> @veda.kernel(reduce="max")
    ... def largest_block(i, x):
    ...     return x[i]
    >>> int(veda.dask.reduce(largest_block, da.arange(100, chunks=7)).compute())
    99
    """
    k = _kernel(kernel, "reduce", reduction=True)
    arrays, scalars, _ = _arguments(k, args, "reduce", extra=0)
    _dtype(None, arrays, "reduce")
    settings = _settings()
    grids = [a.to_delayed() for a in arrays]
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in arrays[0].chunks]
    token = _token(k, arrays, scalars, settings)
    parts = [
        dask.delayed(_partial, pure=True)(
            k,
            [g[ix] for g in grids],
            scalars,
            len(args),
            settings,
            (ix, tuple(int(st[i]) for st, i in zip(starts, ix))),
            dask_key_name=f"veda-{k.name}-part-{token}-{'.'.join(map(str, ix))}",
        )
        for ix in np.ndindex(grids[0].shape)
    ]
    return dask.delayed(_combine, pure=True)(
        parts, k.reduce, dask_key_name=f"veda-{k.name}-reduce-{token}"
    )


class ClusterMetrics:
    """Every worker's telemetry, as :func:`metrics` gathers it.

    ``workers`` maps each worker's address to its :class:`veda.telemetry.Snapshot`;
    ``merged`` is one snapshot of all their launches (per kernel and configuration, counts and
    times add and the latency histograms merge exactly, so its quantiles are the cluster's).
    :meth:`to_prometheus` writes every worker's figures with a ``worker`` label.  Workers that
    share a process (``LocalCluster(processes=False)``) share its telemetry, which also holds
    the client's own launches there: they are counted once, under the first one's address.
    """

    def __init__(self, workers: dict[str, tuple[int, Snapshot]]) -> None:
        self.workers = {a: snap for a, (_, snap) in sorted(workers.items())}
        #: One address per process: workers in one process share its telemetry.
        self._processes: dict[int, str] = {}
        for address, (pid, _) in sorted(workers.items()):
            self._processes.setdefault(pid, address)
        self.merged = Snapshot.merge([self.workers[a] for a in self._processes.values()])

    def kernel(self, name: Any) -> Any:
        """A kernel's merged metrics (:meth:`veda.telemetry.Snapshot.kernel`)."""
        return self.merged.kernel(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "merged": self.merged.to_dict(),
            "workers": {a: s.to_dict() for a, s in self.workers.items()},
        }

    def to_prometheus(self) -> str:
        """Every worker's families in one text exposition, each sample labelled with its
        worker's address (sum them by kernel in PromQL for the cluster's figures)."""
        return render_prometheus(
            [({"worker": a}, self.workers[a].families()) for a in self._processes.values()]
        )

    def _repr_html_(self) -> str:
        return (
            f"<p>veda telemetry of {len(self.workers)} Dask worker(s), merged</p>"
            + self.merged._repr_html_()
        )

    def __repr__(self) -> str:
        return f"<veda.dask.ClusterMetrics {len(self.workers)} workers: {self.merged!r}>"


def _worker_snapshot() -> tuple[int, Snapshot]:
    snap = telemetry.metrics()
    # The runtime's sections stay in the worker; the process id tells workers that share one
    # process (LocalCluster(processes=False)), and so one telemetry, apart.
    return os.getpid(), Snapshot(snap.kernels, snap.transfers)


def metrics(client: Any) -> ClusterMetrics:
    """The telemetry of every worker of ``client``'s cluster, merged (:class:`ClusterMetrics`).

    >>> import dask.array as da, veda, veda.dask
    >>> from distributed import Client, LocalCluster
    >>> @veda.kernel
    ... def twice_on_workers(i, x, out):
    ...     out[i] = 2 * x[i]
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
    ...     with Client(cluster) as client:
    ...         _ = veda.dask.map_blocks(twice_on_workers, da.ones(100, chunks=10)).compute()
    ...         veda.dask.metrics(client).kernel("twice_on_workers").launches >= 10
    True
    """
    run = getattr(client, "run", None)
    if run is None:
        raise LaunchError(f"veda.dask.metrics: expected a distributed.Client, not {client!r}")
    return ClusterMetrics(run(_worker_snapshot))


def warm(client: Any, kernel: Kernel, *sample_args: Any) -> dict[str, int]:
    """Compile ``kernel`` on every worker of ``client`` before a computation needs it, by
    launching it once there with ``sample_args`` (small NumPy arrays and scalars of the types
    the blocks will have, the output included for an index kernel), under the caller's
    settings as the block launches will be; returns :func:`compiles` of each worker.

    A one-thread worker compiles the one configuration its blocks run (``"cpu"``); a worker of
    more threads compiles the configuration its dispatcher tries first, and the others as its
    exploration reaches them.  It launches twice and waits for the compiles the launches sent
    to the background thread (``background_compile``), so that the serial loop is compiled
    past its first tier.
    """
    k = _kernel(kernel, "warm", reduction=None)
    if not any(isinstance(a, np.ndarray) for a in sample_args):
        raise LaunchError(f"veda.dask.warm: kernel {k.name!r} needs sample NumPy arrays")
    run = getattr(client, "run", None)
    if run is None:
        raise LaunchError(f"veda.dask.warm: expected a distributed.Client, not {client!r}")
    return dict(run(_warm_here, k, sample_args, _settings()))


def _warm_here(kernel: Kernel, sample_args: Sequence[Any], settings: dict[str, Any]) -> int:
    from veda._kernel import background

    dims = next(a for a in sample_args if isinstance(a, np.ndarray)).shape
    # Twice, then what the launches sent to the background thread: a first launch on "cpu"
    # compiles its first tier only, the second sends the serial loop's compile there
    # (veda.targets.cpu.CPUTarget).
    for _ in range(2):
        _run(kernel, dims, sample_args, settings, ((), (0,) * len(dims)))
    background.wait()
    return compiles(kernel)


def compiles(kernel: Kernel) -> int:
    """How many specialisations of ``kernel`` this process has: compiled here, or loaded
    from the disk cache (a worker's count, through :func:`warm` or ``client.run``)."""
    try:
        k = telemetry.metrics().kernel(kernel)
    except VedaError:
        return 0
    return int(k.compiles + k.cache_hits)
