"""Private folders and files for veda's caches.

Everything veda keeps on disk is either run (generated modules, Numba's pickled index and compiled
code) or steers what runs (tuning decisions), so a cache folder is used only when this user owns
it and nobody else can write to it.  Folders veda creates are ``0700`` and files ``0600``; a
folder of ours that is merely readable by others (older veda releases made them ``0755``) is
tightened, and one that another user owns or others can write to is refused: the caller then
falls back to :func:`fallback_dir`, a private temporary folder for this process.

Files are written whole or not at all (a temporary file in the same folder renamed over the
target), so a racing process never reads half a file.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numba

__all__ = [
    "Untrusted",
    "clear_entry",
    "fallback_dir",
    "private_dir",
    "read_private",
    "untrusted",
    "usable_dir",
    "warn_once",
    "write_atomic",
]

_lock = threading.RLock()


def _after_fork_in_child() -> None:
    """The lock anew in a fork child: a parent thread may have held it at the fork (checking a
    cache folder takes a few system calls under it)."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_fallback: Path | None = None
_warned: set[str] = set()
# folder asked for -> the folder used (itself or a private temporary one); None: keep in memory
_usable: dict[str, tuple[Path | None, tuple[int, ...] | None]] = {}
_fallback_failed = False


def _owner_checks() -> bool:
    return hasattr(os, "getuid")  # POSIX; Windows folders are private to the user by default


def untrusted(path: Path, st: os.stat_result | None = None) -> str | None:
    """Why the file ``path`` must not be read, or ``None`` if it may be.

    Trusted means: a regular file (not a link, a FIFO or a device, which could point elsewhere
    or block a reader), owned by this user and writable by nobody else.  With ``st`` (a folder's
    ``os.stat``), only ownership and write permissions are checked.  Raises
    ``FileNotFoundError`` when there is no such file.
    """
    if st is None:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return "it is not a regular file"
    if not _owner_checks():
        return None
    if st.st_uid != os.getuid():
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class Untrusted(Exception):
    """A cache file veda will not read; ``str(exc)`` says why."""


def read_private(path: Path) -> bytes:
    """The bytes of the file ``path``, read only if it may be trusted.

    The file is opened without following a link and without blocking (a FIFO), and checked on
    the open descriptor, so it cannot be swapped between the check and the read: it must be a
    regular file of this user that nobody else can write to, in a folder nobody else can write
    to.  Raises :class:`Untrusted` (with the reason) or ``FileNotFoundError``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a link (ELOOP), a folder (EISDIR), no permission
        raise Untrusted(f"it cannot be opened as a regular file ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted("it is not a regular file")
        reason = untrusted(path, st)
        if reason is None:
            reason = untrusted(path.parent, os.stat(path.parent))
            if reason is not None:
                reason = f"its folder {path.parent}: {reason}"
        if reason is not None:
            raise Untrusted(reason)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def private_dir(path: Path) -> str | None:
    """Make ``path`` a folder only this user can use; the reason it cannot be, or ``None``.

    A missing folder is created ``0700`` (its missing parents too).  An existing one must be a
    folder this user owns that nobody else can write to; if others can read it, it is tightened
    to ``0700``.
    """
    try:
        if not path.exists():
            missing = []
            p = path
            while not p.exists() and p != p.parent:
                missing.append(p)
                p = p.parent
            for q in reversed(missing):
                try:
                    q.mkdir(mode=0o700)
                except FileExistsError:
                    pass
        st = os.stat(path)
    except OSError as exc:
        return f"it cannot be created ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    reason = untrusted(path, st)
    if reason is not None:
        return reason
    if _owner_checks():  # whoever may write to a parent may rename the folder away
        for parent in path.resolve().parents:
            try:
                pst = os.stat(parent)
            except OSError:
                continue
            writable = pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if writable and not pst.st_mode & stat.S_ISVTX and pst.st_uid != os.getuid():
                return f"others can write to its parent folder {parent}, and could replace it"
    if _owner_checks() and stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:  # pragma: no cover - we own it, so chmod succeeds
            return f"it cannot be made private ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def fallback_dir() -> Path | None:
    """This process's private temporary cache folder (made on first use), or ``None``.

    It is removed when the process that made it exits (a forked child leaves it alone).
    ``None`` when no temporary folder can be made either: the caller then keeps things in memory.
    """
    global _fallback, _fallback_failed
    with _lock:
        if _fallback is None and not _fallback_failed:
            try:
                made = Path(tempfile.mkdtemp(prefix="veda-cache-"))
            except OSError:
                _fallback_failed = True
            else:
                _fallback = made
                owner = os.getpid()
                atexit.register(_remove_fallback, made, owner)
        return _fallback


def _remove_fallback(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def clear_entry(path: Path) -> None:
    """Remove ``path`` unless it is a regular file (a folder, a link, a FIFO), so that a file
    can take its place."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        elif not stat.S_ISREG(mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode ``0600``) so that readers see the old file or the new.

    Whatever ``path`` was (a file, a link, a FIFO, a folder) is replaced, not written through.
    """
    clear_entry(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def warn_once(key: str, message: str) -> None:
    """One ``RuntimeWarning`` per ``key`` in this process."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"veda: {message}", RuntimeWarning, stacklevel=_caller_level())


#: veda's and Numba's files, and veda's generated call-site launchers ("<veda launcher ...>").
_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(numba.__file__),
    "<veda launcher",
)


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside veda and Numba (the user's line)."""
    frame = sys._getframe(2)  # the caller of warn_once
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level


def usable_dir(
    want: Path, what: str, *, inside: tuple[str, ...] = (), otherwise: str = "kept in memory"
) -> Path | None:
    """``want`` if it is a private folder of ours; else a private temporary one, or ``None``.

    ``inside`` names subfolders that must be private too (created if missing).  A refused folder
    is named in one warning per process, saying what happens instead (``otherwise`` when no
    temporary folder can be made either).  The answer is remembered while the folder is the
    same (device, inode, owner and mode): a folder swapped or loosened meanwhile is checked again.
    """
    key = str(want)
    with _lock:
        if key in _usable:
            got, seen = _usable[key]
            if got is None or _signature(got) == seen:  # the same folder, still private
                return got
        reason = private_dir(want)
        for sub in inside:
            if reason is None and (why := private_dir(want / sub)) is not None:
                reason = f"its {sub} cannot be used: {why}"
        if reason is None:
            got = want
        else:
            fallback = fallback_dir()
            got = None
            if fallback is not None:
                got = fallback / want.name
                if any(private_dir(p) for p in (got, *(got / sub for sub in inside))):
                    got = None
            instead = (
                f"using a private temporary {what} in {got} for this process"
                if got is not None
                else otherwise
            )
            warn_once(f"dir:{key}", f"not using the {what} {want}: {reason}; {instead}")
        _usable[key] = (got, None if got is None else _signature(got))
        return got


def _signature(path: Path) -> tuple[int, ...] | None:
    """What identifies a folder and its permissions (a swapped or loosened one differs)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_uid, st.st_mode)
