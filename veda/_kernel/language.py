"""The kernel language beyond plain Numba: atomics and per-index scratch arrays.

Each public function here is an ordinary Python function (so it can be called, and documented,
outside compiled code) that also carries a Numba implementation for the CPU targets.  The CUDA
target registers its own implementations for the same function objects, so one kernel body
compiles everywhere.

The private intrinsics at the end are used by veda's generated launchers, not by kernel authors.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

from veda._hardware.signals import SIGNAL_MARK

__all__ = ["atomic_add", "atomic_max", "atomic_min", "local_array"]

# Pure-Python fallbacks are serialised by one lock, so they are atomic too.
_py_atomic_lock = threading.Lock()


def _py_rmw(array: np.ndarray, index: Any, value: Any, combine: Any) -> Any:
    with _py_atomic_lock:
        old = array[index]
        array[index] = combine(old, value)
        return old


def atomic_add(array: np.ndarray, index: Any, value: Any) -> Any:
    """Atomically add ``value`` to ``array[index]`` and return the old value.

    Usable inside any ``@veda.kernel`` or ``@veda.func`` body on every target; many indices may
    update the same element at once (a histogram, a scatter-add).  ``index`` is an integer or a
    tuple of integers; ``array`` must hold integers or floats.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def histogram(i, values, counts):
    ...     veda.atomic_add(counts, values[i] % 4, 1)
    >>> counts = np.zeros(4, np.int64)
    >>> histogram[8](np.arange(8), counts)
    >>> counts
    array([2, 2, 2, 2])
    """
    return _py_rmw(array, index, value, lambda a, b: a + b)


def atomic_min(array: np.ndarray, index: Any, value: Any) -> Any:
    """Atomically set ``array[index]`` to ``min(array[index], value)``; return the old value.

    For floats a NaN ``value`` leaves the element unchanged and a stored NaN stays, on every
    target (the rule is ``value if value < old else old``).
    """
    return _py_rmw(array, index, value, lambda a, b: b if b < a else a)


def atomic_max(array: np.ndarray, index: Any, value: Any) -> Any:
    """Atomically set ``array[index]`` to ``max(array[index], value)``; return the old value.

    For floats a NaN ``value`` leaves the element unchanged and a stored NaN stays, on every
    target (the rule is ``value if value > old else old``).
    """
    return _py_rmw(array, index, value, lambda a, b: b if b > a else a)


def local_array(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """Fixed-size scratch array private to one index of a kernel.

    ``shape`` must be a compile-time constant (a literal or a module-level constant); the array
    lives on the stack (the CPU targets) or in thread-local memory (CUDA) and is uninitialised,
    like :func:`numpy.empty`.  It must not outlive the kernel body that made it.

    Examples
    --------
    >>> import numpy as np, veda
    >>> @veda.kernel
    ... def reverse3(i, x, out):
    ...     tmp = veda.local_array(3, np.float64)
    ...     for k in range(3):
    ...         tmp[k] = x[i, 2 - k]
    ...     for k in range(3):
    ...         out[i, k] = tmp[k]
    >>> x = np.arange(6.0).reshape(2, 3); out = np.empty_like(x)
    >>> reverse3[2](x, out)
    >>> out
    array([[2., 1., 0.],
           [5., 4., 3.]])
    """
    return np.empty(shape, dtype)


# --------------------------------------------------------------------------------------------
# Numba CPU implementations


def _index_types(index: types.Type) -> tuple[types.Type, ...] | None:
    if isinstance(index, types.Integer):
        return (index,)
    if isinstance(index, types.BaseTuple) and all(isinstance(t, types.Integer) for t in index):
        return tuple(index)
    return None


_RMW_OPS = {
    # name: (integer signed, integer unsigned, float)
    "add": ("add", "add", "fadd"),
    "min": ("min", "umin", "fmin"),
    "max": ("max", "umax", "fmax"),
}


def _subword_rmw(builder: Any, ptr: Any, val: Any, opname: str, signed: bool, bits: int) -> Any:
    """An atomic read-modify-write of an 8- or 16-bit integer as a compare-and-swap loop on the
    aligned 32-bit word that holds it; returns the old value.

    For targets whose atomics take 32- and 64-bit operands only (CUDA).  The other bytes of the
    word are written back unchanged in the same swap, so neighbouring elements (of this array or
    another) are never disturbed.  Assumes little-endian byte order, as on every CUDA device.
    """
    i32, i64, narrow = ir.IntType(32), ir.IntType(64), ir.IntType(bits)
    addr = builder.ptrtoint(ptr, i64)
    word_ptr = builder.inttoptr(builder.and_(addr, ir.Constant(i64, ~3)), i32.as_pointer())
    offset = builder.shl(builder.and_(addr, ir.Constant(i64, 3)), ir.Constant(i64, 3))
    shift = builder.trunc(offset, i32)
    keep = builder.not_(builder.shl(ir.Constant(i32, (1 << bits) - 1), shift))
    first = builder.load(word_ptr)
    before = builder.block
    loop = builder.append_basic_block("veda.subword.loop")
    done = builder.append_basic_block("veda.subword.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    word = builder.phi(i32)
    word.add_incoming(first, before)
    old = builder.trunc(builder.lshr(word, shift), narrow)
    if opname == "add":
        new = builder.add(old, val)
    else:
        less = (
            builder.icmp_signed("<", val, old) if signed else builder.icmp_unsigned("<", val, old)
        )
        smaller, larger = builder.select(less, val, old), builder.select(less, old, val)
        new = smaller if opname == "min" else larger
    placed = builder.shl(builder.zext(new, i32), shift)
    swapped = builder.cmpxchg(
        word_ptr, word, builder.or_(builder.and_(word, keep), placed), "monotonic", "monotonic"
    )
    word.add_incoming(builder.extract_value(swapped, 0), builder.block)
    builder.cbranch(builder.extract_value(swapped, 1), done, loop)
    builder.position_at_end(done)
    return old


def _float_minmax_rmw(builder: Any, ptr: Any, val: Any, opname: str) -> Any:
    """Atomic min/max of a float as a compare-and-swap loop on its bits; returns the old value.

    The rule is ``value if value < old else old`` (``>`` for max), an ordered comparison: a NaN
    ``value`` leaves the element unchanged and a stored NaN stays.  LLVM's ``atomicrmw fmin``
    would replace a stored NaN (its ``minnum`` rule) and CUDA's keeps it, so veda spells the rule
    out the same way on every target.  No store happens when the element does not change.
    """
    fty = val.type
    ity = ir.IntType(64 if isinstance(fty, ir.DoubleType) else 32)
    iptr = builder.bitcast(ptr, ity.as_pointer())
    first = builder.load(iptr)
    before = builder.block
    loop = builder.append_basic_block("veda.fminmax.loop")
    swap = builder.append_basic_block("veda.fminmax.swap")
    done = builder.append_basic_block("veda.fminmax.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    word = builder.phi(ity)
    word.add_incoming(first, before)
    old = builder.bitcast(word, fty)
    better = builder.fcmp_ordered("<" if opname == "min" else ">", val, old)
    builder.cbranch(better, swap, done)
    builder.position_at_end(swap)
    swapped = builder.cmpxchg(iptr, word, builder.bitcast(val, ity), "monotonic", "monotonic")
    word.add_incoming(builder.extract_value(swapped, 0), swap)
    builder.cbranch(builder.extract_value(swapped, 1), done, loop)
    builder.position_at_end(done)
    return old


def _make_atomic_intrinsic(
    opname: str,
    intrinsic_: Any = intrinsic,
    make_array_: Any = make_array,
    cgutils_: Any = cgutils,
    subword: bool = False,
) -> Any:
    """The intrinsic of ``atomic_<opname>``: an LLVM ``atomicrmw`` on the element.

    The CUDA target builds it again from its own extension API (``intrinsic_``, ``make_array_``,
    ``cgutils_``) with ``subword=True``: 8- and 16-bit integers then go through
    :func:`_subword_rmw`, since the GPU's atomics take 32- and 64-bit operands only.  Float
    min/max go through :func:`_float_minmax_rmw` on every target, for one NaN rule.
    """
    signed_op, unsigned_op, float_op = _RMW_OPS[opname]

    @intrinsic_
    def _rmw(typingctx, array, index, value):  # type: ignore[no-untyped-def]
        if not isinstance(array, types.Array):
            raise TypingError(f"atomic_{opname}: the first argument must be an array, not {array}")
        dtype = array.dtype
        if isinstance(dtype, types.Boolean) or not isinstance(dtype, (types.Integer, types.Float)):
            raise TypingError(
                f"atomic_{opname}: the array must hold integers or floats, not {dtype}"
            )
        idx_types = _index_types(index)
        if idx_types is None or len(idx_types) != array.ndim:
            raise TypingError(
                f"atomic_{opname}: the index must be {array.ndim} integer(s) for a "
                f"{array.ndim}-d array, not {index}"
            )
        if not isinstance(value, (types.Number, types.Boolean)):
            raise TypingError(f"atomic_{opname}: the value must be a number, not {value}")

        if isinstance(dtype, types.Float):
            llop = float_op
        else:
            llop = signed_op if dtype.signed else unsigned_op
        narrow = subword and isinstance(dtype, types.Integer) and dtype.bitwidth < 32

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            aryty, idxty, valty = sig.args
            ary = make_array_(aryty)(context, builder, args[0])
            if isinstance(idxty, types.Integer):
                raw_idx = [args[1]]
            else:
                raw_idx = cgutils_.unpack_tuple(builder, args[1], len(idxty))
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(raw_idx, idx_types)]
            ptr = cgutils_.get_item_pointer(
                context,
                builder,
                aryty,
                ary,
                idx,
                wraparound=True,
                boundscheck=context.enable_boundscheck,
            )
            val = context.cast(builder, args[2], valty, aryty.dtype)
            if narrow:
                return _subword_rmw(builder, ptr, val, opname, dtype.signed, dtype.bitwidth)
            if isinstance(dtype, types.Float) and opname != "add":
                return _float_minmax_rmw(builder, ptr, val, opname)
            return builder.atomic_rmw(llop, ptr, val, "monotonic")

        return dtype(array, index, value), codegen

    return _rmw


_atomic_add_impl = _make_atomic_intrinsic("add")
_atomic_min_impl = _make_atomic_intrinsic("min")
_atomic_max_impl = _make_atomic_intrinsic("max")


@overload(atomic_add, target="cpu")
def _ol_atomic_add(array, index, value):  # type: ignore[no-untyped-def]
    def impl(array, index, value):  # type: ignore[no-untyped-def]
        return _atomic_add_impl(array, index, value)

    return impl


@overload(atomic_min, target="cpu")
def _ol_atomic_min(array, index, value):  # type: ignore[no-untyped-def]
    def impl(array, index, value):  # type: ignore[no-untyped-def]
        return _atomic_min_impl(array, index, value)

    return impl


@overload(atomic_max, target="cpu")
def _ol_atomic_max(array, index, value):  # type: ignore[no-untyped-def]
    def impl(array, index, value):  # type: ignore[no-untyped-def]
        return _atomic_max_impl(array, index, value)

    return impl


def _literal_shape(shape: types.Type) -> tuple[int, ...] | None:
    if isinstance(shape, types.IntegerLiteral):
        return (int(shape.literal_value),)
    if isinstance(shape, types.BaseTuple) and all(
        isinstance(t, types.IntegerLiteral) for t in shape
    ):
        return tuple(int(t.literal_value) for t in shape)
    return None


def _dtype_of(dtype: types.Type) -> types.Type | None:
    if isinstance(dtype, types.NumberClass):
        return dtype.instance_type
    if isinstance(dtype, types.DType):
        return dtype.dtype
    if isinstance(dtype, types.BooleanLiteral) or isinstance(dtype, types.Boolean):
        return None
    return None


@intrinsic
def _stack_array(typingctx, shape, dtype):  # type: ignore[no-untyped-def]
    dims = _literal_shape(shape)
    elem = _dtype_of(dtype)
    if dims is None or elem is None:
        return None
    arrty = types.Array(elem, len(dims), "C")

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        lltype = context.get_data_type(elem)
        count = 1
        for d in dims:
            count *= d
        # alloca_once places the allocation in the entry block, so a call inside a loop does
        # not grow the stack at every iteration.
        data = cgutils.alloca_once(builder, lltype, size=max(count, 1))
        ary = make_array(arrty)(context, builder)
        itemsize = context.get_abi_sizeof(lltype)
        intp = context.get_value_type(types.intp)
        strides = []
        stride = itemsize
        for d in reversed(dims):
            strides.append(stride)
            stride *= d
        strides.reverse()
        populate_array(
            ary,
            data=data,
            shape=[ir.Constant(intp, d) for d in dims],
            strides=[ir.Constant(intp, s) for s in strides],
            itemsize=ir.Constant(intp, itemsize),
            meminfo=None,
        )
        return ary._getvalue()

    return arrty(shape, dtype), codegen


@overload(local_array, target="cpu", prefer_literal=True)
def _ol_local_array(shape, dtype):  # type: ignore[no-untyped-def]
    if _literal_shape(shape) is None:
        raise TypingError(
            "local_array: the shape must be a compile-time constant integer or tuple of "
            f"integers (a literal or a module-level constant), not {shape}"
        )
    if _dtype_of(dtype) is None:
        raise TypingError(f"local_array: the dtype must be a NumPy scalar type, not {dtype}")

    def impl(shape, dtype):  # type: ignore[no-untyped-def]
        return _stack_array(shape, dtype)

    return impl


# --------------------------------------------------------------------------------------------
# Intrinsics used by generated launchers


def _is_counter(array: types.Type) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.int64


def _element_pointer(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    aryty = sig.args[0]
    ary = make_array(aryty)(context, builder, args[0])
    idx = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])


@intrinsic
def fetch_add(typingctx, array, index, value):  # type: ignore[no-untyped-def]
    """Atomic ``old = array[index]; array[index] += value`` on an int64 counter array."""
    if not _is_counter(array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        ptr = _element_pointer(context, builder, sig, args)
        return builder.atomic_rmw("add", ptr, val, "monotonic")

    return types.int64(array, index, value), codegen


@intrinsic
def atomic_load(typingctx, array, index):  # type: ignore[no-untyped-def]
    """Relaxed atomic load of an int64 flag, so workers see another worker's error promptly."""
    if not _is_counter(array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _element_pointer(context, builder, sig, args)
        return builder.load_atomic(ptr, "monotonic", 8)

    return types.int64(array, index), codegen


def accumulator_type(op: str, value: types.Type) -> types.Type:
    """The Numba type a reduction accumulates in, following NumPy's rules on Linux."""
    if op in ("sum", "prod"):
        if isinstance(value, types.Boolean):
            return types.int64
        if isinstance(value, types.Integer):
            return types.int64 if value.signed else types.uint64
    return value


def _identity_value(op: str, acc: types.Type) -> Any:
    if op == "sum":
        return 0
    if op == "prod":
        return 1
    if isinstance(acc, types.Boolean):
        return op == "min"  # min starts at True, max at False
    if isinstance(acc, types.Float):
        return float("inf") if op == "min" else float("-inf")
    info = np.iinfo(np.dtype(str(acc)))
    return int(info.max) if op == "min" else int(info.min)


@intrinsic
def reduce_identity(typingctx, fn, args, op):  # type: ignore[no-untyped-def]
    """The identity of ``op`` in the accumulator type of ``fn(*args)``'s return value.

    Resolving the body's type here, at typing time, lets one generated launcher serve every
    argument type without asking Python for the body's return type on the launch path.
    """
    if not isinstance(op, types.StringLiteral):
        return None
    sig = typingctx.resolve_function_type(fn, tuple(args.types), {})
    if sig is None:
        return None
    ret = sig.return_type
    opname = op.literal_value
    if not isinstance(ret, (types.Number, types.Boolean)):
        raise TypingError(
            f"a reduce={opname!r} kernel must return a number for each index, not {ret}"
        )
    if opname in ("min", "max") and isinstance(ret, types.Complex):
        raise TypingError(f"reduce={opname!r} needs real values; the kernel returns {ret}")
    acc = accumulator_type(opname, ret)
    value = _identity_value(opname, acc)

    def codegen(context, builder, signature, llargs):  # type: ignore[no-untyped-def]
        return context.get_constant(acc, value)

    return acc(fn, args, op), codegen


@intrinsic
def to_accumulator(typingctx, value, ident):  # type: ignore[no-untyped-def]
    """Cast one body value to the accumulator's type (the type of ``ident``)."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return context.cast(builder, args[0], sig.args[0], sig.return_type)

    return ident(value, ident), codegen


def _reassociating(op: str, fop: str) -> Any:
    """An intrinsic ``(a, b) -> a op b`` whose float form carries LLVM's ``reassoc`` flag, the
    one rewrite a vectoriser needs to split a running sum over SIMD lanes (see
    ``codegen.LANES_OPS``); other types get Python's operator as Numba compiles it.  Lowered
    into its caller, so it costs no compiled library of its own."""
    python_op = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b}[op]

    def typer(typingctx, a, b):  # type: ignore[no-untyped-def]
        if a != b or not isinstance(a, (types.Number, types.Boolean)):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            if isinstance(a, types.Float):
                return getattr(builder, fop)(args[0], args[1], flags=("reassoc",))
            if isinstance(a, types.Complex) and op == "add":  # part by part
                x, y = (context.make_complex(builder, a, value=v) for v in args)
                z = context.make_complex(builder, a)
                z.real = builder.fadd(x.real, y.real, flags=("reassoc",))
                z.imag = builder.fadd(x.imag, y.imag, flags=("reassoc",))
                return z._getvalue()
            return context.compile_internal(builder, python_op, sig, args)

        return a(a, b), codegen

    typer.__name__ = f"reassoc_{op}"
    return intrinsic(typer)


#: ``a + b`` and ``a * b`` that LLVM may reassociate (floats); exact elsewhere.
reassoc_add = _reassociating("add", "fadd")
reassoc_mul = _reassociating("mul", "fmul")


@intrinsic
def nonneg(typingctx, value):  # type: ignore[no-untyped-def]
    """Return ``value``, telling LLVM it is >= 0.

    Launch indices never are negative, but inside a chunk loop ``range(lo, hi)`` LLVM cannot
    prove it, keeps NumPy's negative-index wraparound in every ``x[i]`` and stops vectorising:
    a chunked saxpy ran about 5x slower than the plain loop before this assumption.
    """
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        zero = context.get_constant(sig.args[0], 0)
        builder.assume(builder.icmp_signed(">=", args[0], zero))
        return args[0]

    return value(value), codegen


@intrinsic
def cycles(typingctx):  # type: ignore[no-untyped-def]
    """The CPU's cycle counter (``llvm.readcyclecounter``: RDTSC on x86), for in-loop timing."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def atomic_store(typingctx, array, index, value):  # type: ignore[no-untyped-def]
    """Relaxed atomic store into an int64 flag that other workers read with :func:`atomic_load`."""
    if not _is_counter(array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        ptr = _element_pointer(context, builder, sig, args)
        builder.store_atomic(val, ptr, "monotonic", 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


# Signals.  Python runs its signal handlers only when the main thread executes bytecode, and a
# launch keeps the main thread in machine code.  The launchers therefore poll: every so often
# the worker that runs on the launching thread takes the GIL and calls PyErr_CheckSignals,
# which runs the pending handlers there, as the interpreter would between two bytecodes.  A
# handler that raises (Python's default SIGINT handler raises KeyboardInterrupt) leaves its
# exception set in the thread's state; the launcher stops its workers at their next chunk and
# returns through Numba's "exception already set" status, so the exception reaches the caller
# as it is.  No signal disposition is touched.  See docs/design.md, "Signals".


@intrinsic
def thread_ident(typingctx):  # type: ignore[no-untyped-def]
    """The calling thread's ``threading.get_ident()`` (``PyThread_get_thread_ident``; no GIL)."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "PyThread_get_thread_ident")
        return builder.call(fn, [])

    return types.int64(), codegen


# Python runs signal handlers in the main thread only, so only a launch from the main thread
# polls: a launch from another thread never takes the GIL inside a parallel region.  (A daemon
# thread, a task's worker, that takes the GIL while the interpreter is exiting is ended on the
# spot, and ended inside an OpenMP region it took the whole process down: "terminate called
# without an active exception".)  The generated code compares the launching thread with this
# process's main thread, kept in a symbol that the compiled code (cached too) links to.
_MAIN_THREAD_SYMBOL = "veda_main_thread_ident"
_main_thread = ctypes.c_uint64(threading.main_thread().ident or 0)
llvm.add_symbol(_MAIN_THREAD_SYMBOL, ctypes.addressof(_main_thread))


def _forked() -> None:  # the forking thread is the child's main thread
    _main_thread.value = threading.main_thread().ident or 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@intrinsic
def poll_signals(typingctx):  # type: ignore[no-untyped-def]
    """In the main thread, run Python's pending signal handlers with the GIL taken for the
    call; 1 if one raised.  Elsewhere 0, without taking the GIL (no handler runs there).

    The exception then stays set in this thread's state for :func:`raise_pending`.  Only the
    launching thread may call this (the state is that thread's).
    """

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        i64 = ir.IntType(64)
        result = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
        main = builder.module.globals.get(_MAIN_THREAD_SYMBOL)
        if main is None:
            main = ir.GlobalVariable(builder.module, i64, _MAIN_THREAD_SYMBOL)
            main.linkage = "external"
        ident = builder.call(
            cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i64, []), "PyThread_get_thread_ident"
            ),
            [],
        )
        in_main = builder.icmp_unsigned("==", ident, builder.load(main))
        with builder.if_then(in_main, likely=True):
            builder.store(_check_signals(context, builder), result)
        return builder.load(result)

    return types.int64(), codegen


def _check_signals(context: Any, builder: Any) -> Any:
    """PyErr_CheckSignals with the GIL taken for the call: 1 (int64) if a handler raised."""
    pyapi = context.get_python_api(builder)
    gil = pyapi.gil_ensure()
    fnty = ir.FunctionType(ir.IntType(32), [])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "PyErr_CheckSignals")
    status = builder.call(fn, [])
    failed = builder.icmp_signed("!=", status, ir.Constant(ir.IntType(32), 0))
    with builder.if_then(failed, likely=False):
        # Mark the exception as a signal handler's (SIGNAL_MARK), so that the launch path
        # does not take it for the kernel body's: fetch, normalise, mark, restore.
        slots = [cgutils.alloca_once(builder, pyapi.pyobj) for _ in range(3)]
        pyapi.err_fetch(*slots)
        norm = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [pyapi.pyobjptr] * 3),
            "PyErr_NormalizeException",
        )
        builder.call(norm, slots)
        value = builder.load(slots[1])
        with builder.if_then(cgutils.is_not_null(builder, value)):
            true = pyapi.bool_from_bool(ir.Constant(ir.IntType(1), 1))
            pyapi.object_setattr_string(value, SIGNAL_MARK, true)
            pyapi.decref(true)
        pyapi.err_clear()  # a failed setattr's error, if any; the exception is in hand
        pyapi.err_restore(*(builder.load(slot) for slot in slots))
    pyapi.gil_release(gil)
    return builder.zext(failed, ir.IntType(64))


@intrinsic
def raise_pending(typingctx, flag):  # type: ignore[no-untyped-def]
    """When ``flag`` is non-zero, return from the enclosing launcher with the exception that
    :func:`poll_signals` left set (Numba's status for "a Python exception is set")."""
    if not isinstance(flag, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        zero = context.get_constant(sig.args[0], 0)
        with builder.if_then(builder.icmp_signed("!=", args[0], zero), likely=False):
            context.call_conv.return_exc(builder)
        return context.get_dummy_value()

    return types.none(flag), codegen


# A launcher's scratch arrays, made without NumPy's allocation overloads: ``np.full`` and
# ``np.zeros`` each compile an implementation of their own for every signature, about a quarter
# of a cold parallel launch's compile (bench/bench_compile.py).


def _c_array(context: Any, builder: Any, arrty: Any, data: Any, count: Any) -> Any:
    """A 1-d C array over ``count`` elements at ``data`` that no NRT memory owns."""
    ary = make_array(arrty)(context, builder)
    intp = context.get_value_type(types.intp)
    itemsize = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
    populate_array(
        ary,
        data=data,
        shape=[count],
        strides=[ir.Constant(intp, itemsize)],
        itemsize=ir.Constant(intp, itemsize),
        meminfo=None,
    )
    return ary


@intrinsic
def scratch(typingctx, count, value):  # type: ignore[no-untyped-def]
    """A 1-d array of ``count`` copies of ``value`` on the launcher's stack.

    Call it once per launcher, outside loops (each call grows the stack frame), and never
    return it: it lives as long as the calling function's frame.  The parallel region's workers
    may use it, since the launcher waits for them.
    """
    if not isinstance(count, types.Integer) or not isinstance(value, (types.Number, types.Boolean)):
        return None
    arrty = types.Array(value, 1, "C")

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        intp = context.get_value_type(types.intp)
        n = context.cast(builder, args[0], sig.args[0], types.intp)
        one = ir.Constant(intp, 1)
        room = builder.select(builder.icmp_signed("<", n, one), one, n)  # alloca of 0 is UB
        elem = context.get_data_type(value)
        data = builder.alloca(elem, size=room)
        stored = context.get_value_as_data(builder, value, args[1])
        with cgutils.for_range(builder, n) as loop:
            builder.store(stored, builder.gep(data, [loop.index]))
        return _c_array(context, builder, arrty, data, n)._getvalue()

    return arrty(count, value), codegen


@intrinsic
def one_element(typingctx, value):  # type: ignore[no-untyped-def]
    """A new 1-element NumPy array holding ``value``: how a launcher returns a reduction's
    result with its exact dtype (a bare scalar would come back as a Python number)."""
    if not isinstance(value, (types.Number, types.Boolean)):
        return None
    arrty = types.Array(value, 1, "C")

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        from numba.np.arrayobj import _empty_nd_impl

        intp = context.get_value_type(types.intp)
        ary = _empty_nd_impl(context, builder, arrty, [ir.Constant(intp, 1)])
        builder.store(context.get_value_as_data(builder, value, args[0]), ary.data)
        return ary._getvalue()

    return arrty(value), codegen


@intrinsic
def private_copies(typingctx, count, array, op):  # type: ignore[no-untyped-def]
    """``count`` rows of ``array.size`` elements of ``array``'s dtype, each set to the identity
    of ``op``: the private copies a launcher reduces an array argument into
    (``reduce={name: op}``), one per worker or per fixed piece of the domain."""
    if not isinstance(op, types.StringLiteral) or not isinstance(array, types.Array):
        return None
    elem = array.dtype
    if not isinstance(elem, types.Number) or (
        op.literal_value in ("min", "max") and isinstance(elem, types.Complex)
    ):
        return None
    value = _identity_value(op.literal_value, elem)
    value = complex(value) if isinstance(elem, types.Complex) else value
    value = float(value) if isinstance(elem, types.Float) else value
    arrty = types.Array(elem, 2, "C")

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        from numba.np.arrayobj import _empty_nd_impl

        rows = context.cast(builder, args[0], sig.args[0], types.intp)
        src = make_array(array)(context, builder, args[1])
        cols = context.get_constant(types.intp, 1)
        for axis in range(array.ndim):
            cols = builder.mul(cols, builder.extract_value(src.shape, axis))
        out = _empty_nd_impl(context, builder, arrty, [rows, cols])
        stored = context.get_value_as_data(builder, elem, context.get_constant(elem, value))
        with cgutils.for_range(builder, builder.mul(rows, cols)) as loop:
            builder.store(stored, builder.gep(out.data, [loop.index]))
        return out._getvalue()

    return arrty(count, array, op), codegen
