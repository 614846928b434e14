"""The ``"cuda"`` target: the same kernel body on an NVIDIA GPU through Numba's CUDA target.

Importing this module imports no CUDA machinery; the first :meth:`CUDATarget.prepare` does
(``numba.cuda`` and the CUDA implementations of the kernel language).

A launch runs the kernel body as a device function inside a generated grid-stride kernel over the
flattened domain (see :func:`veda._kernel.codegen.cuda_launchers`).  Arguments:

* NumPy arrays are copied to device buffers taken from a pool (reused across launches), and every
  writeable one is copied back unless the analysis of the body (and its ``@veda.func`` helpers)
  proves the kernel only reads it; NumPy arguments that share memory are refused when the kernel
  may write one of them (each would get its own device buffer);
* device arrays (CuPy, Numba, anything with ``__cuda_array_interface__``) are used in place, and
  what the kernel writes into them stays on the device;
* scalars and tuples pass as they are.

Every launch ends with a device synchronisation, so its telemetry time covers transfers and the
kernel, and an exception raised in the body reaches the caller at the launch.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from veda.errors import KernelError, KernelIndexError, LaunchError, VedaError
from veda.targets import Decision, Runner, Target

if TYPE_CHECKING:
    from veda._kernel.kernel import Kernel
    from veda.telemetry._registry import Recorder

#: Threads per block on a GPU: a multiple of the 32-thread warp that keeps 8 blocks of an SM
#: busy on every architecture since Kepler; the usual choice for memory-bound grid-stride loops.
CUDA_BLOCK = 256
#: Blocks per multiprocessor a grid-stride launch starts (at most): enough to hide memory latency
#: without paying to start blocks that would only loop once.
BLOCKS_PER_SM = 32
#: Under the simulator every thread is a Python thread: small blocks and grids keep tests fast
#: while still exercising the grid-stride loop and the block tree.
SIM_BLOCK = 32
SIM_MAX_BLOCKS = 4
#: Elements per block in deterministic reductions, as on the CPU targets: the grid follows the
#: domain, not the device, so the combine order is the same on every GPU and at every launch.
DET_PER_BLOCK = 2048


def default_block() -> int:
    """Threads per block when the decision names none."""
    from veda import cuda as vc

    return SIM_BLOCK if vc.simulator_enabled() else CUDA_BLOCK


class DevicePool:
    """Device buffers kept between launches, by shape and dtype, so that a kernel launched again
    with NumPy arrays of the same shapes allocates nothing on the device."""

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._free: dict[tuple[tuple[int, ...], str], list[Any]] = {}
        self._lock = threading.Lock()

    def take(self, cuda: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        key = (shape, dtype.str)
        with self._lock:
            free = self._free.get(key)
            if free:
                self.hits += 1
                buf = free.pop()
                self.bytes -= buf.nbytes
                return buf
            self.misses += 1
        return cuda.device_array(shape, dtype)

    def give(self, buffers: list[Any]) -> None:
        with self._lock:
            for buf in buffers:
                if self.bytes + buf.nbytes > self.limit_bytes:
                    continue  # dropped: the driver frees it
                self._free.setdefault((tuple(buf.shape), buf.dtype.str), []).append(buf)
                self.bytes += buf.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self.bytes = 0

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"cached_bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                    "buffers": sum(len(v) for v in self._free.values())}


pool = DevicePool()


def _configure(kernel: Any, grid: int, block: int) -> Any:
    """``kernel[grid, block]``, once per prepared launch.  veda sizes grids on purpose (one block
    for the final pass of a reduction, few blocks for small domains), so Numba's low-occupancy
    warning, which it gives when a launch is configured, would only be noise here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size")
        return kernel[grid, block]


def _is_compile_error(exc: BaseException) -> bool:
    return any(c.__name__ == "NumbaError" for c in type(exc).__mro__)


def _identity_source(value: Any) -> str:
    v = value.item() if hasattr(value, "item") else value
    if isinstance(v, float) and math.isinf(v):
        return "float('inf')" if v > 0 else "float('-inf')"
    return repr(v)


def _placeholder(value: Any, ndim: int) -> Any:
    """A host stand-in with the type of ``value``, for typing the body on the CPU."""
    from veda import cuda as vc

    if vc.is_device_array(value):
        return np.empty((1,) * len(value.shape), dtype=np.dtype(value.dtype))
    if type(value) is tuple:
        return tuple(_placeholder(v, ndim) for v in value)
    return value


def _type_key(value: Any) -> Any:
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return (str(dtype), getattr(value, "ndim", 0))
    if type(value) is tuple:
        return tuple(_type_key(v) for v in value)
    return type(value)


class _Launch:
    """Everything one (kernel, domain, decision, options) form needs across launches."""

    def __init__(self, kernel: Kernel, dims: tuple[int, ...], nargs: int, decision: Decision,
                 options: tuple[bool, bool, bool]) -> None:
        from numba import cuda

        from veda import cuda as vc
        from veda._kernel import cuda_language

        cuda_language.register()
        self.cuda = cuda
        self.kernel = kernel
        self.dims = dims
        self.nargs = nargs
        self.options = options
        plan = kernel._plan(len(dims), nargs)
        self.names = plan.names
        # Copied back: every argument the analysis cannot prove is only read (aliases, views
        # and calls it cannot follow would otherwise lose their writes).
        self.written = frozenset(plan.maybe_written)
        self.size = math.prod(dims)
        block = decision[1] if decision[1] >= 32 else default_block()
        self.block = block
        if vc.simulator_enabled():
            max_blocks = SIM_MAX_BLOCKS
        else:
            device = cuda.get_current_device()
            max_blocks = device.MULTIPROCESSOR_COUNT * BLOCKS_PER_SM
        self.grid = max(1, min(-(-self.size // block), max_blocks))
        self.reduce = kernel.reduce
        self.label = f"{kernel.module_name}.{kernel.name}"
        self._modules: dict[Any, tuple[Any, Any, Any]] = {}
        self._checked: set[Any] = set()  # argument-type keys whose arguments were checked
        if self.options[2]:  # deterministic reductions: the grid follows the domain only
            self.blocks, self.per_block = max(1, -(-self.size // DET_PER_BLOCK)), DET_PER_BLOCK
        else:
            self.blocks, self.per_block = self.grid, 0
        if self.reduce is None:
            module = kernel.cuda_program(len(dims), nargs, options[:2], None, None, block)
            self._kernel = _configure(module._veda_kernel, self.grid, block)

    # -- arguments ---------------------------------------------------------------------------
    def _refuse_shared_memory(self, args: tuple[Any, ...]) -> None:
        """Refuse NumPy arguments that share memory when the kernel may write one of them.

        Each host array gets its own device buffer: writes through one would not be seen
        through the other, and the copy-backs would overwrite each other, where the CPU targets
        see one memory.
        """
        hosts: list[tuple[int, np.ndarray]] = []
        for pos, value in enumerate(args):
            if isinstance(value, np.ndarray):
                hosts.append((pos, value))
            elif type(value) is tuple:
                hosts += [(pos, v) for v in value if isinstance(v, np.ndarray)]
        if len(hosts) < 2:
            return
        written = self.written
        for k, (p, a) in enumerate(hosts):
            a_written = p in written and a.flags.writeable
            for q, b in hosts[k + 1:]:
                if not (a_written or (q in written and b.flags.writeable)):
                    continue
                if np.may_share_memory(a, b) and np.shares_memory(a, b):
                    first, second = self.names[p], self.names[q]
                    what = (f"arguments {first!r} and {second!r} are" if p != q
                            else f"argument {first!r} holds arrays that are")
                    raise LaunchError(
                        f"kernel {self.kernel.name!r}: {what} the same memory (the same array "
                        "or overlapping views) and the kernel may write them; on target 'cuda' "
                        "each array gets its own device buffer, so the writes would not be "
                        f"seen through the other and the copies back would overwrite each "
                        f"other; pass the array once, or pass a copy (e.g. {second}.copy())"
                    )

    def _to_device(self, pos: int, value: Any, borrowed: list[Any],
                   back: list[tuple[np.ndarray, Any]]) -> Any:
        from veda import cuda as vc

        if isinstance(value, np.ndarray):
            host = value if value.flags.c_contiguous else np.ascontiguousarray(value)
            buf = pool.take(self.cuda, host.shape, host.dtype)
            buf.copy_to_device(host)
            borrowed.append(buf)
            vc._stats["host_to_device_bytes"] += host.nbytes
            vc._stats["host_to_device_copies"] += 1
            if pos in self.written and value.flags.writeable:
                back.append((value, buf))
            return buf
        if type(value) is tuple:
            return tuple(self._to_device(pos, v, borrowed, back) for v in value)
        return value  # scalars; device arrays are used in place

    def _copy_back(self, back: list[tuple[np.ndarray, Any]]) -> None:
        from veda import cuda as vc

        for host, buf in back:
            if host.flags.c_contiguous:
                buf.copy_to_host(host)
            else:
                host[...] = buf.copy_to_host()
            vc._stats["device_to_host_bytes"] += host.nbytes
            vc._stats["device_to_host_copies"] += 1

    # -- reductions ----------------------------------------------------------------------------
    def _reduction_module(self, args: tuple[Any, ...]) -> tuple[Any, Any, Any]:
        key = tuple(_type_key(a) for a in args)
        got = self._modules.get(key)
        if got is None:
            ndim = len(self.dims)
            cpu = self.kernel.program(ndim, self.nargs, self.options[:2])
            ident = cpu._veda_acc_probe(*(_placeholder(a, ndim) for a in args))[0]
            acc = ident.dtype
            module = self.kernel.cuda_program(ndim, self.nargs, self.options[:2], acc.name,
                                              _identity_source(ident), self.block)
            got = self._modules[key] = (
                _configure(module._veda_partials, self.blocks, self.block),
                _configure(module._veda_final, 1, self.block),
                acc.type(ident),
            )
        return got

    def _reduce(self, dev_args: tuple[Any, ...], args: tuple[Any, ...],
                borrowed: list[Any]) -> Any:
        from veda import cuda as vc

        partials_kernel, final_kernel, ident = self._reduction_module(args)
        if self.size == 0:
            return ident
        partials = pool.take(self.cuda, (self.blocks,), ident.dtype)
        result = pool.take(self.cuda, (1,), ident.dtype)
        borrowed += [partials, result]
        partials_kernel(*self.dims, *dev_args, partials, self.per_block)
        final_kernel(partials, self.blocks, result)
        value = result.copy_to_host()[0]
        vc._stats["device_to_host_bytes"] += ident.dtype.itemsize
        return value

    # -- one launch ----------------------------------------------------------------------------
    def run(self, args: tuple[Any, ...]) -> Any:
        from veda import cuda as vc

        borrowed: list[Any] = []
        back: list[tuple[np.ndarray, Any]] = []
        try:
            key = tuple(_type_key(a) for a in args)
            if key not in self._checked:  # once per argument types, as Numba compiles
                from veda._kernel.kernel import check_arguments

                check_arguments(self.kernel.name, self.names, args, device=True)
                self._checked.add(key)
            self._refuse_shared_memory(args)
            dev_args = tuple(self._to_device(p, a, borrowed, back) for p, a in enumerate(args))
            up = sum(b.nbytes for b in borrowed)
            if self.reduce is not None:
                result = self._reduce(dev_args, args, borrowed)
            else:
                result = None
                if self.size:
                    self._kernel(*self.dims, *dev_args)
            self.cuda.synchronize()
            vc._stats["launches"] += 1
            self._copy_back(back)
            down = sum(h.nbytes for h, _ in back)
            if self.reduce is not None and self.size:
                down += result.dtype.itemsize
            if up or down:
                vc.count_transfer(self.label, up, down)
            return result
        except VedaError:
            raise
        except Exception as exc:
            if _is_compile_error(exc):
                from veda._kernel.kernel import translate_compile_error

                raise translate_compile_error(exc, self.kernel.name, self.names, args) from None
            cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
            raise cls(self.kernel.name, type(exc), str(exc), None, "cuda") from exc
        finally:
            pool.give(borrowed)


class CUDATarget(Target):
    """An NVIDIA GPU through Numba's CUDA target (or the simulator, for explicit launches)."""

    name = "cuda"

    def unavailable_reason(self) -> str | None:
        from veda import cuda as vc

        return vc.explicit_reason()

    def prepare(self, kernel: Kernel, dims: tuple[int, ...], nargs: int, decision: Decision,
                options: tuple[bool, bool, bool], profiler: Recorder | None,
                shared: bool = False) -> Runner:
        return _Launch(kernel, dims, nargs, decision, options).run


def measure(nbytes: int = 32 << 20, repeats: int = 3) -> tuple[float, float, float]:
    """Host-to-device and device-to-host bandwidth (bytes/s) of pageable NumPy memory, and the
    seconds one empty launch with a synchronisation takes; best of ``repeats``.

    The dispatcher calls this once, the first time it weighs the GPU (about 0.1 s).
    """
    import time

    from numba import cuda

    host = np.ones(nbytes // 8)
    dev = cuda.device_array_like(host)
    up = down = launch = math.inf

    @cuda.jit
    def _empty(x):  # type: ignore[no-untyped-def]
        pass

    _empty[1, 32](dev)  # compile
    cuda.synchronize()
    for _ in range(repeats):
        t0 = time.perf_counter()
        dev.copy_to_device(host)
        cuda.synchronize()
        t1 = time.perf_counter()
        dev.copy_to_host(host)
        t2 = time.perf_counter()
        _empty[1, 32](dev)
        cuda.synchronize()
        t3 = time.perf_counter()
        up, down, launch = min(up, t1 - t0), min(down, t2 - t1), min(launch, t3 - t2)
    return host.nbytes / up, host.nbytes / down, launch
