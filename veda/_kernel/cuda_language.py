"""CUDA implementations of the kernel language: atomics, ``local_array`` and ``veda.random``.

The public functions of :mod:`veda._kernel.language` and :mod:`veda.random` carry CPU
implementations; importing this module registers CUDA ones for the same function objects, so one
kernel body compiles for both.  It is imported by the CUDA target on its first launch, never by
``import veda``.  Under the CUDA simulator nothing is registered: the simulator runs kernel bodies
as Python, where the public functions are plain Python.
"""

from __future__ import annotations

import threading
import types as pytypes
from typing import Any

from veda import random as _random
from veda._kernel import language as _lang

_registered = False
_lock = threading.Lock()


def register() -> None:
    """Register the CUDA implementations (once; a no-op under the simulator).

    Thread-safe: a thread that finds them being registered waits until they are, and the flag
    is set only once they all are (a failure leaves it unset, to be tried again).
    """
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        _register()
        _registered = True


def _register() -> None:
    import numba

    if getattr(numba.config, "ENABLE_CUDASIM", 0):
        return
    from numba import cuda

    try:  # numba-cuda with its own typing core (0.2x and later)
        from numba.cuda.core.errors import TypingError
        from numba.cuda.extending import overload
    except ImportError:  # older numba-cuda, typed by Numba's core with target="cuda"
        from numba.core.errors import TypingError
        from numba.core.extending import overload

    def _one(index: Any) -> bool:
        return isinstance(index, numba.core.types.BaseTuple) and len(index) == 1

    # Numba's CUDA atomics take 32- and 64-bit elements; 8- and 16-bit integers go through a
    # compare-and-swap loop on their 32-bit word (veda._kernel.language._subword_rmw), and
    # float min/max through veda's own loop, for the NaN rule of the CPU targets.
    try:
        from numba.cuda import cgutils as cuda_cgutils
        from numba.cuda.extending import intrinsic as cuda_intrinsic
        from numba.cuda.np.arrayobj import make_array as cuda_make_array
    except ImportError:  # older numba-cuda, built on Numba's core
        from numba.core import cgutils as cuda_cgutils
        from numba.core.extending import intrinsic as cuda_intrinsic
        from numba.np.arrayobj import make_array as cuda_make_array

    def _own_loop(array: Any, name: str) -> bool:
        """8- and 16-bit integers, and float min/max (one NaN rule on every target)."""
        dtype = getattr(array, "dtype", None)
        if isinstance(dtype, numba.core.types.Float):
            return name != "add"
        return isinstance(dtype, numba.core.types.Integer) and dtype.bitwidth < 32

    def _atomic(name: str, native: Any, native_one: Any) -> None:
        subword = _lang._make_atomic_intrinsic(
            name, cuda_intrinsic, cuda_make_array, cuda_cgutils, subword=True
        )

        @overload(getattr(_lang, f"atomic_{name}"), target="cuda")
        def _ol(array, index, value):  # type: ignore[no-untyped-def]
            if _own_loop(array, name):
                return lambda array, index, value: subword(array, index, value)
            return native_one if _one(index) else native

    # Numba's CUDA atomics take the index of a 1-d array only as an integer, not a 1-tuple.
    _atomic(
        "add",
        lambda array, index, value: cuda.atomic.add(array, index, value),
        lambda array, index, value: cuda.atomic.add(array, index[0], value),
    )
    _atomic(
        "min",
        lambda array, index, value: cuda.atomic.min(array, index, value),
        lambda array, index, value: cuda.atomic.min(array, index[0], value),
    )
    _atomic(
        "max",
        lambda array, index, value: cuda.atomic.max(array, index, value),
        lambda array, index, value: cuda.atomic.max(array, index[0], value),
    )

    @overload(_lang.local_array, target="cuda", prefer_literal=True, inline="always")
    def _ol_local_array(shape, dtype):  # type: ignore[no-untyped-def]
        dims = _lang._literal_shape(shape)
        if dims is None:
            raise TypingError(
                "local_array: the shape must be a compile-time constant integer or tuple of "
                f"integers (a literal or a module-level constant), not {shape}"
            )
        elem = _lang._dtype_of(dtype)
        if elem is None:
            raise TypingError(f"local_array: the dtype must be a NumPy scalar type, not {dtype}")
        const_shape = dims[0] if len(dims) == 1 else dims
        return lambda shape, dtype: cuda.local.array(const_shape, elem)

    device = _random_device_functions(cuda)

    @overload(_random.uniform, target="cuda")
    def _ol_uniform(seed, counter):  # type: ignore[no-untyped-def]
        fn = device["_uniform"]
        return lambda seed, counter: fn(seed, counter)

    @overload(_random.uniform2, target="cuda")
    def _ol_uniform2(seed, counter):  # type: ignore[no-untyped-def]
        fn = device["_uniform2"]
        return lambda seed, counter: fn(seed, counter)

    @overload(_random.normal, target="cuda")
    def _ol_normal(seed, counter):  # type: ignore[no-untyped-def]
        fn = device["_normal"]
        return lambda seed, counter: fn(seed, counter)

    @overload(_random.integers, target="cuda")
    def _ol_integers(seed, counter, low, high):  # type: ignore[no-untyped-def]
        fn = device["_integers"]
        return lambda seed, counter, low, high: fn(seed, counter, low, high)


def _random_device_functions(cuda: Any) -> dict[str, Any]:
    """Device versions of veda.random's jitted helpers: the same Python code, re-bound to call
    each other's device versions (the generator is plain integer arithmetic)."""
    names = ["_round", "_bump", "philox4x32_10", "_words", "_unit", "_uniform", "_uniform2"]
    names += ["_normal", "_integers"]
    glb = dict(vars(_random))
    out: dict[str, Any] = {}
    for name in names:  # callees first, so each function's globals hold device versions
        py = getattr(_random, name).py_func
        fn = pytypes.FunctionType(py.__code__, glb, py.__name__, py.__defaults__, py.__closure__)
        out[name] = glb[name] = cuda.jit(device=True)(fn)
    return out


def guard(fn: Any, value: bool = False) -> Any:
    """``guard(fn)(*args)``: call the device function ``fn`` and say whether it raised, instead
    of letting its error end the calling thread; ``guard(fn, value=True)`` returns
    ``(raised, result)``.

    On a GPU, Numba reports a device function's exception to the host only in debug mode;
    otherwise the error status stops the calling kernel's thread and is dropped.  The
    generated grid-stride kernels call the kernel body through this guard and record the
    failing index in an error flag that the host reads after synchronising
    (:mod:`veda.targets.cuda`), so a ``raise`` reaches the caller as a
    :class:`veda.KernelError` without debug mode.  Under the simulator it is a ``try`` in
    Python.
    """
    import numba

    if getattr(numba.config, "ENABLE_CUDASIM", 0):
        if value:

            def failed_or_value(*args: Any) -> tuple[bool, Any]:
                try:
                    return False, fn(*args)
                except Exception:
                    return True, None

            return failed_or_value

        def failed(*args: Any) -> bool:
            try:
                fn(*args)
            except Exception:
                return True
            return False

        return failed
    return _guard_intrinsic(fn, value)


def _guard_intrinsic(fn: Any, value: bool) -> Any:
    try:  # numba-cuda with its own typing core (0.2x and later)
        from numba.cuda import cgutils
        from numba.cuda.extending import intrinsic
    except ImportError:  # older numba-cuda, typed by Numba's core with target="cuda"
        from numba.core import cgutils
        from numba.core.extending import intrinsic
    import numba

    types: Any = numba.core.types

    def compiled(argtys: tuple[Any, ...]) -> Any:
        return fn.compile_device(tuple(argtys))

    @intrinsic  # type: ignore[untyped-decorator]
    def _veda_guarded(typingctx: Any, *argtys: Any) -> Any:
        restype = compiled(argtys).signature.return_type
        out = types.Tuple((types.boolean, restype)) if value else types.boolean

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            packed = signature.args[0]  # the arguments arrive as one tuple
            cres = compiled(tuple(packed.types))
            values = cgutils.unpack_tuple(builder, args[0], len(packed.types))
            context.active_code_library.add_linking_library(cres.library)
            # The call the dispatcher's own lowering makes, without propagating the error
            # status to the caller.
            status, result = context.call_internal_no_propagate(
                builder, cres.fndesc, cres.signature, values
            )
            if not value:
                return status.is_error
            return context.make_tuple(builder, signature.return_type, [status.is_error, result])

        return out(types.StarArgTuple.from_types(argtys)), codegen

    return _veda_guarded
