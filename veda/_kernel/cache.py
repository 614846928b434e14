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

import hashlib
import importlib.util
import linecache
import os
import shutil
import sys
import tempfile
import threading
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba

from veda._config import get_config
from veda._version import __version__

# Bumped whenever generated code changes shape, so old files are never imported by mistake.
CODEGEN_VERSION = 1

_lock = threading.RLock()
_memory_modules: dict[str, types.ModuleType] = {}
_unwritable_warned = False


@dataclass
class LineMap:
    """Where a function's text sits in a generated module, to map errors back."""

    gen_start: int  # first line (1-based) of the function in the generated module
    length: int
    source: Any  # SourceLines: the text and origin, not the function


# generated file's base name -> list of LineMap
line_maps: dict[str, list[LineMap]] = {}


def kernels_dir(cache_dir: str | None = None) -> Path:
    root = Path(cache_dir if cache_dir is not None else get_config().cache_dir)
    return root / "kernels"


def module_name(stem: str, text: str) -> str:
    digest = hashlib.sha256(
        f"{CODEGEN_VERSION}|{__version__}|{numba.__version__}|{text}".encode()
    ).hexdigest()[:20]
    safe = "".join(c if c.isalnum() else "_" for c in stem)[:40]
    return f"veda_gen_{safe}_{digest}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_module(
    name: str, text: str, inject: dict[str, Any] | None, maps: list[LineMap], on_disk: bool
) -> types.ModuleType:
    """Import generated ``text`` as module ``name`` (from the disk cache when ``on_disk``)."""
    global _unwritable_warned
    with _lock:
        mod = sys.modules.get(name) or _memory_modules.get(name)
        if mod is not None:
            # The same text for a newer definition (a notebook cell run again): errors now
            # point to its source, and the older definition's source is let go.
            key = os.path.basename(getattr(mod, "__file__", None) or "")
            if maps and key in line_maps:
                line_maps[key] = maps
            return mod
        if on_disk and not inject:
            path = kernels_dir() / f"{name}.py"
            try:
                if not path.exists():
                    _write_atomic(path, text)
            except OSError as exc:
                if not _unwritable_warned:
                    warnings.warn(
                        f"veda: cannot write to the kernel cache {path.parent} ({exc}); "
                        "compiled kernels will not be reused by other processes",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    _unwritable_warned = True
            else:
                line_maps[path.name] = maps
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                try:
                    spec.loader.exec_module(mod)
                except BaseException:
                    del sys.modules[name]
                    raise
                return mod
        # In memory: the same text, with objects that have no source form injected.
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
    """A generated module already loaded in this process (used by generated code)."""
    mod = sys.modules.get(name) or _memory_modules.get(name)
    if mod is None:
        path = kernels_dir() / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.exists():
            raise ImportError(f"veda: generated module {name} is missing from {path.parent}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# Statistics and management


@dataclass
class CompileStats:
    """Compilations of one kernel in this process, as counted by veda.

    ``compiled`` counts specialisations built from scratch, ``cache_hits`` those loaded from the
    disk cache; ``compile_seconds`` is the time both took.
    """

    compiled: int = 0
    cache_hits: int = 0
    compile_seconds: float = 0.0
    signatures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "compiled": self.compiled,
            "cache_hits": self.cache_hits,
            "compile_seconds": self.compile_seconds,
            "signatures": list(self.signatures),
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
