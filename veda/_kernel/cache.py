"""Generated modules on disk, so that Numba's cache can serve a new process.

Numba caches a function only when it lives in a real file it can stamp: closures and functions
passed as arguments never hit its disk cache.  veda therefore writes each specialisation's
generated source to ``<cache_dir>/kernels/<name>_<hash>.py`` and imports it; Numba keeps its
compiled code beside it in ``__pycache__``.  The file name carries a hash of the whole generated
text, so a changed kernel body (or helper, or constant) is a new file, and two processes that
generate the same kernel write identical bytes: the write is atomic (a temporary file renamed over
the target) and skipped when the file already exists, so a racing process never sees half a file
and never changes the stamp Numba's index was built against.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import linecache
import marshal
import os
import pickle
import shutil
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numba

from veda import _files
from veda._config import get_config
from veda._hardware.signals import held_interrupts
from veda._kernel import background as _background
from veda._version import __version__
from veda.errors import ConfigError

# Bumped whenever generated code or the cache's file format changes shape, so old files are
# never imported by mistake.
CODEGEN_VERSION = 3

_lock = threading.RLock()
_memory_modules: dict[str, types.ModuleType] = {}


@dataclass
class LineMap:
    """Where a function's text sits in a generated module, to map errors back."""

    gen_start: int  # first line (1-based) of the function in the generated module
    length: int
    source: Any  # SourceLines: the text and origin, not the function
    #: The line of the function's text at ``gen_start`` (0-based): a body written into a
    #: launcher (``_veda_span``) starts past the ``def``.
    first: int = 0


# generated file's base name -> list of LineMap
line_maps: dict[str, list[LineMap]] = {}


def kernels_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ConfigError(
            f"cache_dir must be a path (str or os.PathLike), not {type(cache_dir).__name__}"
        )
    root = Path(cache_dir if cache_dir is not None else get_config().cache_dir)
    return root / "kernels"


def module_name(stem: str, text: str) -> str:
    digest = hashlib.sha256(
        f"{CODEGEN_VERSION}|{__version__}|{numba.__version__}|{text}".encode()
    ).hexdigest()[:20]
    safe = "".join(c if c.isalnum() else "_" for c in stem)[:40]
    return f"veda_gen_{safe}_{digest}"


def _kernels_dir() -> Path | None:
    """The kernel cache folder to use (:func:`veda._files.usable_dir`); ``None``: in memory."""
    return _files.usable_dir(
        kernels_dir(),
        "kernel cache",
        inside=("__pycache__",),  # Numba's compiled code goes beside the modules
        otherwise="compiling in memory: kernels will not be reused by other processes",
    )


def _uncached(text: str) -> str:
    """The same module with Numba's disk cache turned off."""
    text = text.replace("njit(cache=True", "njit(cache=False")
    text = text.replace("jit(device=True, cache=True", "jit(device=True, cache=False")
    return text.replace("jit(cache=True", "jit(cache=False")


def _ensure_text(path: Path, text: str) -> None:
    """Make ``path`` hold exactly ``text``: write it if missing, rebuild it if it differs."""
    data = text.encode("utf-8")
    try:
        current = _files.read_private(path)
    except FileNotFoundError:
        _files.write_atomic(path, data)
        return
    except _files.Untrusted as exc:
        reason = str(exc)
    else:
        if current == data:
            return
        reason = "its contents do not match the kernel's source"
    _files.warn_once(f"module:{path}", f"rebuilt the generated module {path} ({reason})")
    _files.write_atomic(path, data)


def _exec_module(name: str, path: Path, text: str) -> types.ModuleType:
    """Run ``text`` (already checked against ``path``) as the module of that file.

    The text is compiled here rather than imported, so no ``.pyc`` is read or written (one
    could hold code the check never saw) and the file is not read a second time; the code
    object is kept in a checksummed record tied to the text (:func:`_compiled`).  Numba's
    caches are attached afterwards (:func:`harden`): the text runs with them off.
    """
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod
    try:
        exec(_compiled(name, path, _uncached(text)), mod.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    harden(mod)
    return mod


def _compiled(name: str, path: Path, text: str) -> types.CodeType:
    """``compile(text)`` for the module file ``path``, kept in the kernel cache: compiling a
    kernel's module (a dispatcher per target and schedule) costs a warm first launch 3-10 ms,
    loading the kept code 0.1 ms.  The record names the bytecode format, the optimisation
    level, the file and the text's digest, and is used only when all match.  It is trusted as
    Numba's pickles beside it are: checksummed against damage, and read only from a folder
    nobody else can write to (a forged record there could run anything, as a forged pickle
    could)."""
    key = (
        importlib.util.MAGIC_NUMBER,  # the bytecode format, bumped even in patch releases
        sys.flags.optimize,  # code compiled under -O has no asserts
        str(path),
        hashlib.sha256(text.encode()).hexdigest(),
    )
    kept = load_record(f"{name}.code")
    if isinstance(kept, tuple) and len(kept) == 2 and kept[0] == key:
        with contextlib.suppress(Exception):
            code = marshal.loads(kept[1])
            if isinstance(code, types.CodeType):
                return code
    code = compile(text, str(path), "exec")
    save_record(f"{name}.code", (key, marshal.dumps(code)))
    return code


def load_module(
    name: str, text: str, inject: dict[str, Any] | None, maps: list[LineMap], on_disk: bool
) -> types.ModuleType:
    """Import generated ``text`` as module ``name`` (from the disk cache when ``on_disk``).

    On disk, the file is compared with ``text`` before it is imported: a damaged or altered file
    is rebuilt from ``text`` with one warning, so a cache entry never runs code veda did not
    generate.  Where no private cache folder can be had, the module is compiled in memory.
    A fork in another thread waits for it (:class:`~veda._kernel.background.compiling`).
    """
    with held_interrupts(), _background.compiling(), _lock:
        # Numba's first call with an array imports numpy.ma (30-80 ms): here, where a fork
        # waits for it, rather than in that call, where an import in progress in another
        # thread hung a fork's child.
        import numpy.ma  # noqa: F401

        mod = sys.modules.get(name) or _memory_modules.get(name)
        if mod is not None:
            # The same text for a newer definition (a notebook cell run again): errors now
            # point to its source, and the older definition's source is let go.
            key = os.path.basename(getattr(mod, "__file__", None) or "")
            if maps and key in line_maps:
                line_maps[key] = maps
            return mod
        if on_disk and not inject:
            directory = _kernels_dir()
            if directory is not None:
                path = directory / f"{name}.py"
                try:
                    _ensure_text(path, text)
                except OSError as exc:
                    _files.warn_once(
                        f"write:{directory}",
                        f"cannot write to the kernel cache {directory} ({exc}); compiling in "
                        "memory: kernels will not be reused by other processes",
                    )
                else:
                    line_maps[path.name] = maps
                    return _exec_module(name, path, text)
        # In memory: the same text, with objects that have no source form injected.
        text = _uncached(text)
        filename = f"<veda-generated {name}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        line_maps[filename] = maps
        mod = types.ModuleType(name)
        mod.__file__ = filename
        if inject:
            mod.__dict__.update(inject)
        exec(compile(text, filename, "exec"), mod.__dict__)
        _memory_modules[name] = mod
        return mod


def get_module(name: str) -> types.ModuleType:
    """A generated module (used by generated code): loaded already, or from the kernel cache
    if its file is trusted and its text matches the hash in its name."""
    with _lock:
        mod = sys.modules.get(name) or _memory_modules.get(name)
        if mod is not None:
            return mod
        directory = _kernels_dir()
        path = (directory or kernels_dir()) / f"{name}.py"
        try:
            if directory is None:
                raise FileNotFoundError(path)
            text = _files.read_private(path).decode("utf-8")
        except (OSError, ValueError, _files.Untrusted) as exc:
            raise ImportError(
                f"veda: generated module {name} is missing from {path.parent}"
            ) from exc
        stem = name[len("veda_gen_") :].rsplit("_", 1)[0]
        if module_name(stem, text) != name:
            raise ImportError(f"veda: generated module {path} does not match its name")
        return _exec_module(name, path, text)


# --------------------------------------------------------------------------------------------
# Numba's cache, checked
#
# Numba keeps an index (a pickle) and compiled code (pickles) per function.  A damaged file makes
# its loader raise, and a pickle written by someone else runs their code when it is read.  veda's
# dispatchers therefore use a cache whose files carry a SHA-256 of their payload and are read
# only when this user owns them and nobody else can write to them; anything else is discarded
# with one warning and compiled afresh.  This leans on Numba's ``Cache`` and
# ``IndexDataCacheFile`` classes (stable since Numba 0.49); where they are missing, dispatchers
# keep Numba's own cache.

_MAGIC = b"veda-nbcache-1\n"
_DIGEST = 32


#: Cache folders found writable in this process (:class:`_KernelLocator`).
_writable: set[str] = set()


class _Damaged(Exception):
    """A cache file that must not be read: ``(path, reason)``."""


try:
    from numba.core import caching as _nc

    _HAVE_CACHE_API = all(
        hasattr(_nc, n)
        for n in ("FunctionCache", "IndexDataCacheFile", "CompileResultCacheImpl", "_CacheLocator")
    ) and hasattr(_nc, "_SourceFileBackedLocatorMixin")
except ImportError:  # pragma: no cover - every supported Numba has it
    _HAVE_CACHE_API = False

if _HAVE_CACHE_API:

    class _CheckedFile(_nc.IndexDataCacheFile):  # type: ignore[misc]
        """Index and data files with a checksum, read only when they are ours."""

        def _read(self, path: str) -> bytes:
            try:
                raw = _files.read_private(Path(path))
            except _files.Untrusted as exc:
                raise _Damaged(path, str(exc)) from None
            head = len(_MAGIC)
            payload = raw[head + _DIGEST :]
            if (
                raw[:head] != _MAGIC
                or hashlib.sha256(payload).digest() != raw[head : head + _DIGEST]
            ):
                raise _Damaged(path, "damaged: its checksum does not match")
            return payload

        def _write(self, path: str, payload: bytes) -> None:
            digest = hashlib.sha256(payload).digest()
            _files.write_atomic(Path(path), _MAGIC + digest + payload)

        def _load_index(self) -> dict[Any, Any]:
            """The index, or ``{}`` when there is none or it cannot be used (then, with one
            warning, it is discarded: the next save writes a new one)."""
            try:
                payload = self._read(self._index_path)
                version, stamp, overloads = pickle.loads(payload)
                overloads = dict(overloads)
            except FileNotFoundError:
                return {}
            except Exception as exc:
                path, why = exc.args if isinstance(exc, _Damaged) else (self._index_path, repr(exc))
                _discard(path, why)
                return {}
            if version != self._version or stamp != self._source_stamp:
                return {}
            return overloads

        def _save_index(self, overloads: dict[Any, Any]) -> None:
            self._write(
                self._index_path, self._dump((self._version, self._source_stamp, overloads))
            )

        def _load_data(self, name: str) -> Any:
            return pickle.loads(self._read(self._data_path(name)))

        def _save_data(self, name: str, data: Any) -> None:
            self._write(self._data_path(name), self._dump(data))

    class _CheckedCache(_nc.FunctionCache):  # type: ignore[misc]
        """Numba's function cache over :class:`_CheckedFile`: what it cannot read is discarded
        and compiled again, what it cannot write is kept in memory, each with one warning."""

        def load_overload(self, sig: Any, target_context: Any) -> Any:
            try:
                return super().load_overload(sig, target_context)
            except Exception as exc:  # an unreadable data file: discard the entry
                index = self._cache_file._index_path
                path, why = exc.args if isinstance(exc, _Damaged) else (index, repr(exc))
                _discard(path, why)
                _discard_entry(index)
                return None

        def save_overload(self, sig: Any, data: Any) -> None:
            try:
                super().save_overload(sig, data)
            except Exception as exc:  # a full disk, a vanished folder: the code stays in memory
                _files.warn_once(
                    f"save:{self._cache_path}",
                    f"cannot save compiled code in {self._cache_path} ({exc}); it is kept in "
                    "memory for this process",
                )

    class _KernelLocator(_nc.InTreeCacheLocator):  # type: ignore[misc]
        """Numba's locator beside the generated file, testing that the folder is writable once
        per folder and process: Numba writes and deletes a file there for every dispatcher, and
        a kernel's module has about a dozen (2 ms each, a third of a cached kernel's first
        launch in a new process).  The folder is still created whenever it is missing."""

        def ensure_cache_path(self) -> None:
            path = self.get_cache_path()
            if path in _writable:
                os.makedirs(path, exist_ok=True)
                return
            super().ensure_cache_path()
            _writable.add(path)

    class _KernelImpl(_nc.CompileResultCacheImpl):  # type: ignore[misc]
        """Generated modules: compiled code beside them, in the checked kernel cache (never in
        ``NUMBA_CACHE_DIR``, a folder veda does not check)."""

        _locator_classes: ClassVar[list[type]] = [_KernelLocator]

    class _KernelCache(_CheckedCache):
        _impl_class = _KernelImpl

    class _OwnImpl(_nc.CompileResultCacheImpl):  # type: ignore[misc]
        """veda's own compiled functions, cached under veda's cache folder."""

        _locator_classes: ClassVar[list[type]] = []

    class _OwnLocator(_nc._SourceFileBackedLocatorMixin, _nc._CacheLocator):  # type: ignore[misc]
        root: Path | None = None

        def __init__(self, py_func: Any, py_file: str) -> None:
            assert self.root is not None
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(self.root / self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self) -> str:
            return self._cache_path

        def ensure_cache_path(self) -> None:
            reason = _files.private_dir(Path(self._cache_path))
            if reason is not None:
                raise OSError(f"{self._cache_path}: {reason}")

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if cls.root is None:
                return None
            return super().from_function(py_func, py_file)

    _OwnImpl._locator_classes = [_OwnLocator]

    class _OwnCache(_CheckedCache):
        _impl_class = _OwnImpl


def _discard(path: str, why: str) -> None:
    _files.warn_once(f"nb:{path}", f"discarded the compiled-code cache file {path} ({why})")


def _discard_entry(path: str) -> None:
    with contextlib.suppress(OSError):
        _files.clear_entry(Path(path))
        os.unlink(path)


def load_record(name: str) -> Any:
    """What :func:`save_record` kept under ``name`` in the kernel cache, or None: missing,
    or discarded with one warning when it is damaged or not ours."""
    directory = _kernels_dir()
    if directory is None:
        return None
    path = directory / f"{name}.record"
    try:
        raw = _files.read_private(path)
    except FileNotFoundError:
        return None
    except (OSError, _files.Untrusted) as exc:
        _discard(str(path), str(exc))
        return None
    head = len(_MAGIC)
    payload = raw[head + _DIGEST :]
    if raw[:head] != _MAGIC or hashlib.sha256(payload).digest() != raw[head : head + _DIGEST]:
        _discard(str(path), "damaged: its checksum does not match")
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    try:
        return pickle.loads(payload)
    except Exception as exc:
        _discard(str(path), repr(exc))
        return None


def save_record(name: str, value: Any) -> None:
    """Keep a small picklable ``value`` under ``name`` in the kernel cache, checksummed like
    Numba's files there (nothing is kept where the cache is in memory or cannot be written)."""
    directory = _kernels_dir()
    if directory is None:
        return
    payload = pickle.dumps(value)
    with contextlib.suppress(OSError):
        _files.write_atomic(
            directory / f"{name}.record", _MAGIC + hashlib.sha256(payload).digest() + payload
        )


def harden(module: types.ModuleType) -> None:
    """Attach the checked disk cache to the dispatchers of a generated module on disk (the
    module ran with Numba's caching off).  Where a cache cannot be attached (the file vanished
    meanwhile), its functions are compiled per process, with one warning."""
    path = getattr(module, "__file__", "")
    for value in list(vars(module).values()):
        py_func = getattr(value, "py_func", None)
        if getattr(getattr(py_func, "__code__", None), "co_filename", None) != path:
            continue
        try:
            cpu = isinstance(value, numba.core.dispatcher.Dispatcher)
            if cpu and _HAVE_CACHE_API and not type(value).__module__.startswith("numba.cuda"):
                value._cache = _LazyCache(py_func, path)
            elif hasattr(value, "enable_caching"):  # numba-cuda's, or Numba's plain cache
                value.enable_caching()
        except Exception as exc:
            _cannot_attach(path, exc)


def _cannot_attach(path: str, exc: BaseException) -> None:
    _files.warn_once(
        f"attach:{path}",
        f"cannot cache the compiled code of {path} ({exc}); compiling it in this process only",
    )


_lazy_lock = threading.Lock()


class _LazyCache:
    """The checked disk cache of one CPU dispatcher, built when the dispatcher first compiles.

    A kernel's module holds a dispatcher per target and schedule, and a launch uses one or
    two: building the other caches (a locator, its folder checks, index paths) cost a warm
    first launch ~1 ms each.  Where the cache cannot be built, the dispatcher compiles in this
    process only, with one warning, as :func:`harden` does.
    """

    _real: Any = None  # (a class default: __getattr__ never recurses looking for it)

    def __init__(self, py_func: Any, path: str) -> None:
        self._py_func = py_func
        self._path = path

    def _built(self) -> Any:
        if self._real is None:
            with _lazy_lock:  # its own: taken inside Numba's compiler lock, never around it
                if self._real is None:
                    try:
                        cache = _KernelCache(self._py_func)
                        cache._cache_file.__class__ = _CheckedFile
                    except Exception as exc:
                        if os.path.exists(self._path):  # cleared meanwhile: nothing to say
                            _cannot_attach(self._path, exc)
                        cache = _nc.NullCache()
                    self._real = cache
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._built(), name)


def own_njit(**options: Any) -> Any:
    """``numba.njit`` for veda's own functions, cached under ``<cache_dir>/numba``.

    Where no private folder can be had (no writable home, a read-only installation), the
    functions are compiled per process instead: importing veda never fails for want of a cache.
    """

    def wrap(fn: Any) -> Any:
        dispatcher = numba.njit(**options)(fn)
        if _HAVE_CACHE_API and not os.environ.get("NUMBA_DISABLE_CACHE"):
            if _OwnLocator.root is None:
                want = Path(get_config().cache_dir) / "numba"
                if _files.private_dir(want) is None:
                    _OwnLocator.root = want
            if _OwnLocator.root is not None:
                try:
                    cache = _OwnCache(fn)
                    cache._cache_file.__class__ = _CheckedFile
                    dispatcher._cache = cache
                except Exception:  # no usable locator: compiled per process
                    pass
        return dispatcher

    return wrap


# --------------------------------------------------------------------------------------------
# Statistics and management


@dataclass
class CompileStats:
    """Compilations of one kernel in this process, as counted by veda.

    ``compiled`` counts specialisations built from scratch, ``cache_hits`` those loaded from the
    disk cache; ``compile_seconds`` is the time both took (compiles in the background thread
    included).  ``background`` counts those of them that ran in the dispatcher's compile thread
    (``veda.config(background_compile=True)``), which no launch waited for.
    """

    compiled: int = 0
    cache_hits: int = 0
    compile_seconds: float = 0.0
    signatures: list[str] = field(default_factory=list)
    background: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "compiled": self.compiled,
            "cache_hits": self.cache_hits,
            "compile_seconds": self.compile_seconds,
            "signatures": list(self.signatures),
            "background": self.background,
        }


@dataclass(frozen=True)
class CacheInfo:
    """What the kernel disk cache holds."""

    path: str
    modules: int
    compiled_files: int
    bytes: int

    def __str__(self) -> str:
        return (
            f"veda kernel cache at {self.path}: {self.modules} generated modules, "
            f"{self.compiled_files} compiled files, {self.bytes / 1e6:.1f} MB"
        )


def cache_info(cache_dir: str | None = None) -> CacheInfo:
    """Summarise the kernel disk cache."""
    root = kernels_dir(cache_dir)
    modules = compiled = size = 0
    if root.exists():
        for p in root.rglob("*"):
            if not p.is_file():
                continue
            size += p.stat().st_size
            if p.suffix == ".py" and p.parent == root:
                modules += 1
            elif p.suffix in (".nbi", ".nbc"):
                compiled += 1
    return CacheInfo(str(root), modules, compiled, size)


def cache_clear(cache_dir: str | None = None) -> CacheInfo:
    """Delete the kernel disk cache; returns what it held.  Loaded kernels keep working."""
    info = cache_info(cache_dir)
    root = kernels_dir(cache_dir)
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    return info
