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
from typing import Any

import numpy as np

from veda._hardware import gpu as hw
from veda._hardware.gpu import pool
from veda._kernel.checks import check_arguments, translate_compile_error
from veda._registry import Profiler, Target
from veda._types import Decision, KernelForm, LaunchOptions, Runner
from veda.errors import KernelError, KernelIndexError, LaunchError, VedaError
from veda.targets.cpu import _unflatten, exception_at

__all__ = ["CUDA_BLOCK", "CUDA_MIN_SIZE", "CUDATarget", "default_block", "pool"]

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


#: Below this many elements the GPU is never a candidate.  A CUDA launch from Numba costs about
#: 10-20 us of launch and synchronisation before any work (plus transfers), while the serial CPU
#: loop of a saxpy runs 1e5 elements in about 30 us and 2 threads in about 20 us on the 2-core
#: machine (bench/bench_threshold.py); bench/gpu_check.sh measures the crossover on a GPU.
CUDA_MIN_SIZE = 1 << 17


def default_block() -> int:
    """Threads per block of a GPU launch (the only place it is chosen)."""
    return SIM_BLOCK if hw.simulator_enabled() else CUDA_BLOCK


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
    if hw.is_device_array(value):
        return np.empty((1,) * len(value.shape), dtype=np.dtype(value.dtype))
    if type(value) is tuple:
        return tuple(_placeholder(v, ndim) for v in value)
    return value


def _on_device(value: Any) -> bool:
    if type(value) is tuple:
        return any(_on_device(v) for v in value)
    return hw.is_device_array(value)


def _type_key(value: Any) -> Any:
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return (str(dtype), getattr(value, "ndim", 0))
    if type(value) is tuple:
        return tuple(_type_key(v) for v in value)
    return type(value)


class _Launch:
    """Everything one (kernel form, domain, decision, options) launch needs across launches."""

    def __init__(
        self, form: KernelForm, dims: tuple[int, ...], decision: Decision, options: LaunchOptions
    ) -> None:
        from numba import cuda

        from veda._kernel import cuda_language

        cuda_language.register()
        self.cuda = cuda
        self.form = form
        self.dims = dims
        self.options = options
        self.names = form.names
        # Copied back: every argument the analysis cannot prove is only read (aliases, views
        # and calls it cannot follow would otherwise lose their writes).
        self.written = frozenset(form.maybe_written)
        self.size = math.prod(dims)
        block = decision.block if decision.block >= 32 else default_block()
        self.block = block
        if hw.simulator_enabled():
            max_blocks = SIM_MAX_BLOCKS
        else:
            device = cuda.get_current_device()
            max_blocks = device.MULTIPROCESSOR_COUNT * BLOCKS_PER_SM
        self.grid = max(1, min(-(-self.size // block), max_blocks))
        self.reduce = form.reduce
        self.label = form.label
        self._modules: dict[Any, tuple[Any, Any, Any]] = {}
        self._checked: set[Any] = set()  # argument-type keys whose arguments were checked
        #: Error flags (mapped host memory, one int64 each) of the launches not in flight:
        #: list.pop and list.append are atomic, so concurrent launches each take their own.
        self._flags: list[Any] = []
        if options.deterministic:  # deterministic reductions: the grid follows the domain only
            self.blocks, self.per_block = max(1, -(-self.size // DET_PER_BLOCK)), DET_PER_BLOCK
        else:
            self.blocks, self.per_block = self.grid, 0
        if self.reduce is None:
            module = form.cuda_program(options.compile, None, None, block)
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
            for q, b in hosts[k + 1 :]:
                if not (a_written or (q in written and b.flags.writeable)):
                    continue
                if np.may_share_memory(a, b) and np.shares_memory(a, b):
                    first, second = self.names[p], self.names[q]
                    what = (
                        f"arguments {first!r} and {second!r} are"
                        if p != q
                        else f"argument {first!r} holds arrays that are"
                    )
                    raise LaunchError(
                        f"kernel {self.form.name!r}: {what} the same memory (the same array "
                        "or overlapping views) and the kernel may write them; on target 'cuda' "
                        "each array gets its own device buffer, so the writes would not be "
                        f"seen through the other and the copies back would overwrite each "
                        f"other; pass the array once, or pass a copy (e.g. {second}.copy())"
                    )

    def _refuse_read_only(self, args: tuple[Any, ...], key: Any) -> None:
        """Refuse a read-only NumPy array the kernel writes, as the CPU targets do.

        On the CPU, Numba types a read-only array as immutable and refuses any write to it; a
        device copy would be writable and its writes lost.  Where the analysis says a read-only
        argument may be written (an element bound to a name counts, though it is only read),
        the CPU loop is typed for these arguments, once per argument types, and its refusal is
        raised here.
        """
        read_only = tuple(
            pos
            for pos in self.written
            if pos < len(args)
            and any(
                isinstance(a, np.ndarray) and not a.flags.writeable
                for a in (args[pos] if type(args[pos]) is tuple else (args[pos],))
            )
        )
        if not read_only or (key, read_only) in self._checked:
            return
        import numba

        cpu = self.form.program(self.options.compile)._veda_cpu
        types = (numba.int64,) * len(self.dims) + tuple(numba.typeof(a) for a in args)
        try:
            cpu.compile(types)
        except Exception as exc:
            err = translate_compile_error(exc, self.form.name, self.names, args)
            if "read-only" in str(err):
                raise err from None
        self._checked.add((key, read_only))

    def _to_device(
        self, pos: int, value: Any, borrowed: list[Any], back: list[tuple[np.ndarray, Any]]
    ) -> Any:
        if isinstance(value, np.ndarray):
            host = value if value.flags.c_contiguous else np.ascontiguousarray(value)
            buf = pool.take(self.cuda, host.shape, host.dtype)
            buf.copy_to_device(host)
            borrowed.append(buf)
            hw._stats["host_to_device_bytes"] += host.nbytes
            hw._stats["host_to_device_copies"] += 1
            if pos in self.written and value.flags.writeable:
                back.append((value, buf))
            return buf
        if type(value) is tuple:
            return tuple(self._to_device(pos, v, borrowed, back) for v in value)
        return value  # scalars; device arrays are used in place

    def _copy_back(self, back: list[tuple[np.ndarray, Any]]) -> None:
        for host, buf in back:
            if host.flags.c_contiguous:
                buf.copy_to_host(host)
            else:
                host[...] = buf.copy_to_host()
            hw._stats["device_to_host_bytes"] += host.nbytes
            hw._stats["device_to_host_copies"] += 1

    # -- reductions ----------------------------------------------------------------------------
    def _reduction_module(self, args: tuple[Any, ...]) -> tuple[Any, Any, Any]:
        key = tuple(_type_key(a) for a in args)
        got = self._modules.get(key)
        if got is None:
            ndim = len(self.dims)
            cpu = self.form.program(self.options.compile)
            ident = cpu._veda_acc_probe(*(_placeholder(a, ndim) for a in args))[0]
            acc = ident.dtype
            module = self.form.cuda_program(
                self.options.compile, acc.name, _identity_source(ident), self.block
            )
            got = self._modules[key] = (
                _configure(module._veda_partials, self.blocks, self.block),
                _configure(module._veda_final, 1, self.block),
                acc.type(ident),
            )
        return got

    def _reduce(
        self, dev_args: tuple[Any, ...], args: tuple[Any, ...], borrowed: list[Any], flag: Any
    ) -> Any:
        partials_kernel, final_kernel, ident = self._reduction_module(args)
        if self.size == 0:
            return ident
        partials = pool.take(self.cuda, (self.blocks,), ident.dtype)
        result = pool.take(self.cuda, (1,), ident.dtype)
        borrowed += [partials, result]
        partials_kernel(*self.dims, *dev_args, partials, self.per_block, flag)
        final_kernel(partials, self.blocks, result)
        value = result.copy_to_host()[0]
        hw._stats["device_to_host_bytes"] += ident.dtype.itemsize
        return value

    # -- exceptions in the body ---------------------------------------------------------------
    def _take_flag(self) -> Any:
        try:
            flag = self._flags.pop()
        except IndexError:
            # Mapped: the kernel writes it in host memory, read after the synchronisation
            # without a copy.
            flag = self.cuda.mapped_array(1, np.int64)
        flag[0] = -1
        return flag

    def _failure(self, flat: int, args: tuple[Any, ...]) -> KernelError:
        """The error of a launch whose body raised at flat index ``flat`` (the index that the
        guarded call of the generated kernel recorded): the body's own exception, re-raised
        by running that index on the CPU where the arguments are host arrays."""
        index = _unflatten(flat, self.dims)
        if not any(_on_device(a) for a in args):
            module = self.form.program(self.options.compile)
            err = exception_at(self.form, module, index, args, "cuda")
            if err is not None:
                return err
            why = (
                "run again on the CPU at that index after the launch, it did not raise, so its "
                "type and message are unknown"
            )
        else:
            why = "its type and message stay on the GPU (the arguments are device arrays)"
        return KernelError(
            self.form.name,
            RuntimeError,
            f"the body raised an exception on the GPU; {why}",
            index,
            "cuda",
        )

    # -- one launch ----------------------------------------------------------------------------
    def run(self, args: tuple[Any, ...]) -> Any:
        borrowed: list[Any] = []
        back: list[tuple[np.ndarray, Any]] = []
        flag = None
        try:
            key = tuple(_type_key(a) for a in args)
            if key not in self._checked:  # once per argument types, as Numba compiles
                check_arguments(self.form.name, self.names, args, device=True)
                self._checked.add(key)
            self._refuse_read_only(args, key)
            self._refuse_shared_memory(args)
            dev_args = tuple(self._to_device(p, a, borrowed, back) for p, a in enumerate(args))
            up = sum(b.nbytes for b in borrowed)
            flag = self._take_flag()
            if self.reduce is not None:
                result = self._reduce(dev_args, args, borrowed, flag)
            else:
                result = None
                if self.size:
                    self._kernel(*self.dims, *dev_args, flag)
            self.cuda.synchronize()
            hw._stats["launches"] += 1
            self._copy_back(back)  # what the launch wrote, as on the CPU, even if it failed
            failed = int(flag[0])
            if failed >= 0:
                raise self._failure(failed, args)
            down = sum(h.nbytes for h, _ in back)
            if self.reduce is not None and self.size:
                down += result.dtype.itemsize
            if up or down:
                hw.count_transfer(self.label, up, down)
            return result
        except VedaError:
            raise
        except Exception as exc:
            if _is_compile_error(exc):
                raise translate_compile_error(exc, self.form.name, self.names, args) from None
            cls = KernelIndexError if isinstance(exc, IndexError) else KernelError
            raise cls(self.form.name, type(exc), str(exc), None, "cuda") from exc
        finally:
            pool.give(borrowed)
            if flag is not None:
                self._flags.append(flag)


class CUDATarget(Target):
    """An NVIDIA GPU through Numba's CUDA target (or the simulator, for explicit launches)."""

    name = "cuda"
    refuses_settings_because = "chooses its own block and grid sizes"
    #: GPU reductions repeat run to run, but are not the CPU targets' bits (fused multiply-add,
    #: another combine tree): in deterministic mode the dispatcher does not switch to the GPU.
    numerics = "cuda"
    reads_device_arrays = True
    copies_host_arrays = True

    def unavailable_reason(self) -> str | None:
        return hw.explicit_reason()

    def dispatchable(self) -> bool:
        return hw.is_available()  # a real device: never the simulator

    def candidates(self, size: int, free_cores: int) -> list[Decision]:
        return [self.default_decision(size)] if size >= CUDA_MIN_SIZE else []

    def default_decision(
        self,
        size: int,
        threads: int | None = None,
        schedule: str | None = None,
        chunk: int | None = None,
    ) -> Decision:
        return Decision(self.name, 1, "grid", 0, default_block())

    def fixed_seconds(self, bytes_in: int, bytes_out: int) -> float:
        return hw.gpu_cost().transfer_seconds(bytes_in, bytes_out)

    def describe(self, decision: Decision) -> str:
        return f"cuda block {decision.block}"

    def prepare(
        self,
        form: KernelForm,
        dims: tuple[int, ...],
        decision: Decision,
        options: LaunchOptions,
        profiler: Profiler | None = None,
        shared: bool = False,
    ) -> Runner:
        if getattr(form, "private", ()):
            names = ", ".join(repr(form.names[pos]) for pos, _ in form.private)
            raise LaunchError(
                f"kernel {form.name!r} reduces array argument(s) {names} into private copies "
                "(reduce={name: op}), which the 'cuda' target does not do; use "
                "veda.atomic_add (or atomic_min / atomic_max) on the GPU, or target='cpu' / "
                "'parallel'"
            )
        return _Launch(form, dims, decision, options).run
