"""The tuning cache: decisions remembered across processes, like FFTW's wisdom.

One JSON file per machine fingerprint (CPU model, core count, Numba worker threads, Numba and
veda versions) under ``<cache_dir>/tuning/``.  Entries are keyed by the kernel's
``module.qualname``, a digest of its source and the size class.  Writes merge with what is on
disk under an exclusive ``flock`` and land atomically (a temporary file renamed over the old
one), so processes tuning at the same time keep each other's entries.  A file that does not
parse, or comes from another format version or machine, is ignored with one warning and
rewritten on the next write.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from veda import _files
from veda._config import get_config
from veda._hardware import cpu as _cpu
from veda._hardware.cpu import fingerprint_id
from veda._kernel import background as _background
from veda._version import __version__

FORMAT = 1


def fingerprint() -> dict[str, Any]:
    """This machine's identity for the tuning cache (:func:`veda._hardware.cpu.fingerprint`)."""
    return _cpu.fingerprint(__version__)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = Path(str(path) + ".lock")
    _files.clear_entry(lock_path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(lock_path, flags, 0o600)
    with open(fd, "a+") as lock:
        unlock = _lock_file(lock.fileno())
        try:
            yield
        finally:
            unlock()


def _lock_file(fd: int) -> Callable[[], None]:
    """Take an exclusive lock on the open file ``fd``; returns what gives it back (closing the
    file does too).  ``flock`` on POSIX, ``msvcrt.locking`` on its first byte on Windows (which
    itself retries for 10 s; after a minute without the lock the write goes ahead unlocked: the
    rename still lands whole, and at worst one process's new entries are lost)."""
    try:
        import fcntl
    except ImportError:
        import msvcrt  # Windows

        for _ in range(6):
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
            except OSError:
                continue
            return lambda: msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return lambda: None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return lambda: fcntl.flock(fd, fcntl.LOCK_UN)


#: Numbers the tuning cache's deferred writes (each a job of its own in the background thread).
_writes = itertools.count()

#: Every tuning cache of this process, whose locks a fork child makes anew.
_caches: weakref.WeakSet[TuningCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Another thread of the parent may have held a cache's lock at the fork (a ``put`` writes
    the file under it, about 1 ms): the child's copy would stay held, and its first launch
    that looks a decision up would wait forever.  The child's entries are whole either way
    (a put replaces them in one store)."""
    for cache in list(_caches):
        cache._lock = threading.Lock()
        cache._pending = {}  # (the parent writes its own)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class TuningCache:
    """Read and merge-write the tuning file of this machine."""

    def __init__(self, cache_dir: str | None = None) -> None:
        self.fp = fingerprint()
        root = Path(cache_dir if cache_dir is not None else get_config().cache_dir)
        want = root / "tuning"
        folder = _files.usable_dir(
            want, "tuning cache", otherwise="decisions are kept in memory for this process"
        )
        #: ``None`` when no private folder could be had: decisions then live in memory only
        self.folder = folder
        self.path = (folder or want) / f"{fingerprint_id(self.fp)}.json"
        self._entries: dict[str, Any] | None = None
        #: Entries put while a compile ran in the background thread, not yet written.
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        _caches.add(self)

    def _read(self) -> dict[str, Any]:
        if self.folder is None:
            return dict(self._entries or {})
        try:
            data = _files.read_private(self.path)
        except _files.Untrusted as exc:
            self._warn(f"ignoring the tuning cache {self.path} ({exc}); it will be rebuilt")
            return {}
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"cannot read {self.path}: {exc}")
            return {}
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
            if doc.get("fingerprint") != self.fp:
                raise ValueError("written for another machine or version")
            entries = doc.get("entries")
            if not isinstance(entries, dict):
                raise ValueError("no entries")
            return entries
        except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError, JSONDecodeError
            self._warn(f"ignoring the tuning cache {self.path} ({exc}); it will be rebuilt")
            return {}

    def _warn(self, message: str) -> None:
        _files.warn_once(f"tuning:{self.path}", message)

    def entries(self) -> dict[str, Any]:
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            return self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self.entries().get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store one decision, merged with whatever other processes wrote meanwhile.

        While the background thread compiles (:mod:`veda._kernel.background`), the entry is
        kept at once and written by that thread after its compile (at exit at the latest):
        the write's dozen system calls each wait for the compiling thread to give back the
        GIL, which took 27-90 ms of an exploring launch on the 2-core machine.
        """
        if self.folder is None:
            with self._lock:
                self._entries = {**(self._entries or {}), key: value}
            return
        if (
            self._entries is not None  # (else the write reads the file first anyway)
            and _background.busy()
            and not _background.in_compile_thread()
        ):
            with self._lock:
                self._entries = {**(self._entries or {}), key: value}
                self._pending[key] = value
                queued = len(self._pending) > 1  # the write queued before takes it too
            if not queued:
                try:
                    job = ("tuning-write", id(self), next(_writes))
                    _background.submit(job, self._flush, keep=True)
                except RuntimeError:  # no new thread (the interpreter is exiting)
                    self._flush()
            return
        self._write({key: value})

    def _flush(self) -> None:
        """Write the entries put while the background thread compiled (its job)."""
        self._write(None)

    def _write(self, new: dict[str, Any] | None) -> None:
        """Merge ``new`` (None: the pending entries) into the file, under its lock."""
        try:
            with self._lock, _locked(self.path):
                if new is None:
                    new, self._pending = self._pending, {}
                    if not new:
                        return  # (cleared meanwhile)
                for key in new:
                    self._pending.pop(key, None)  # (a newer value written now wins)
                entries = self._read()
                entries.update(new)
                doc = {"format": FORMAT, "fingerprint": self.fp, "entries": entries}
                text = json.dumps(doc, indent=1, sort_keys=True)
                _files.write_atomic(self.path, text.encode("utf-8"))
                self._entries = {**entries, **self._pending}
        except OSError as exc:
            self._warn(f"cannot write the tuning cache {self.path}: {exc}")

    def clear(self) -> None:
        with self._lock:
            self._entries = {}
            self._pending = {}
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
