"""Record and replay of dispatcher decisions (``veda.record``, ``veda.replay``).

A record is versioned JSON: the deterministic mode and seed in force when recording began, and
for each launch in the order launches started, the kernel (``module.qualname``), its domain and
the decision it ran with (an object with the fields of :class:`veda.targets.Decision`: target,
threads, schedule, chunk and the GPU block size), with the mode and seed of that launch.
Version 1 records (decisions as 4-item lists) are still read.  A record also holds a short
hash of each kernel's source (``"sources"``, by kernel name; a launch of another body under the
same name carries its own ``"source"``): replaying with another body of a kernel is refused.
Records written before the hashes existed replay without that check.

Replaying forces the same decisions, restores the mode and seed for its duration, and raises
:class:`veda.ReplayError` at the first launch that differs (another kernel or domain, or a
launch beyond the recorded ones) and, on exit, when fewer launches came than recorded.  Replay
is guaranteed for one launching thread (the scope is a :mod:`contextvars` scope).

Both are interceptors of the launch core (:class:`veda._launch.Interceptor`): a record sees
each launch start, a replay forces each launch's decision.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import stat
import tempfile
import weakref
from typing import Any

from veda._config import check_decision, config, get_config
from veda._launch import Interceptor, LaunchInfo, add_interceptor, remove_interceptor
from veda._types import Decision
from veda.errors import LaunchError, ReplayError, TargetUnavailableError

FORMAT = "veda-record"
VERSION = 2

#: The record and replay scopes open in this thread or task, outermost first.  Every record in
#: it notes the launches; the innermost replay forces them.
_scopes: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("veda_record", default=())


def _enter(scope: Interceptor) -> contextvars.Token[tuple[Any, ...]]:
    if scope in _scopes.get():
        raise ReplayError(f"{scope!r} is open already; use a new veda.record/veda.replay")
    token = _scopes.set((*_scopes.get(), scope))
    add_interceptor(scope)
    return token


def _exit(scope: Interceptor, token: contextvars.Token[tuple[Any, ...]] | None) -> None:
    if token is None:
        raise ReplayError(f"{scope!r} was not entered, or was exited already")
    remove_interceptor(scope)
    _scopes.reset(token)


def current() -> Any:
    """The innermost record or replay scope of this thread or task, or None."""
    scopes = _scopes.get()
    return scopes[-1] if scopes else None


def _path(path: Any, what: str) -> str:
    try:
        return os.fsdecode(path)
    except TypeError:
        raise ReplayError(
            f"veda.{what}: the path must be a str or os.PathLike, not {type(path).__name__}"
        ) from None


_hashes: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def source_hash(kernel: Any) -> str:
    """A short hash of what a kernel computes: its source (decorators stripped), its reduction
    and declared rank; for a kernel without readable source, its compiled Python code."""
    digest = _hashes.get(kernel)
    if digest is None:
        text = kernel.source.text
        if text is None:
            code = kernel.py_func.__code__
            text = f"{code.co_code!r} {code.co_consts!r} {code.co_names!r}"
        text += f"\nreduce={kernel.reduce!r} ndim={kernel.ndim!r}"
        if getattr(kernel, "private", None):  # reduce={name: op} (absent before: same hashes)
            text += f" private={kernel.private!r}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        _hashes[kernel] = digest
    return digest


def _describe(entry: dict[str, Any]) -> str:
    return f"kernel {entry['kernel']} over domain {tuple(entry['domain'])}"


class record(Interceptor):
    """Record each launch's kernel, domain and decision, with the mode and seed, to ``path``.

    Examples
    --------
    >>> import os, tempfile, numpy as np, veda
    >>> @veda.kernel
    ... def inc(i, x):
    ...     x[i] += 1
    >>> path = os.path.join(tempfile.mkdtemp(), "run.json")
    >>> x = np.zeros(8)
    >>> with veda.record(path):
    ...     inc[8](x)
    >>> with veda.replay(path):
    ...     inc[8](x)
    >>> x[0]
    np.float64(2.0)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _path(path, "record")
        self.launches: list[dict[str, Any]] = []
        #: The source hash of each kernel recorded, by name (:func:`source_hash`).
        self.sources: dict[str, str] = {}
        self._token: contextvars.Token[tuple[Any, ...]] | None = None
        self._header: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"veda.record({self.path!r})"

    def __enter__(self) -> record:
        if not self.path:
            raise ReplayError("veda.record: the path is empty; name the file to write")
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path):
            raise ReplayError(f"cannot write the record to {self.path!r}: it is a directory")
        try:
            st = os.stat(self.path)
        except OSError:
            pass
        else:  # the file is replaced at the end: never a device, a FIFO or a socket
            if not stat.S_ISREG(st.st_mode):
                raise ReplayError(
                    f"cannot write the record to {self.path!r}: it is not a regular file"
                )
        if not os.path.isdir(directory):
            raise ReplayError(
                f"cannot write the record to {self.path!r}: {directory} is not a directory"
            )
        # Try it, before the block runs: os.access says yes to root on read-only file systems
        # and on /proc or /sys, where creating the file fails.
        try:
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".record-", suffix=".json")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ReplayError(
                f"cannot write the record to {self.path!r}: {directory} is not a writable "
                f"directory ({exc.strerror or exc})"
            ) from None
        cfg = get_config()
        self._header = {"deterministic": cfg.deterministic, "seed": cfg.seed}
        self._token = _enter(self)
        return self

    def active(self) -> bool:
        return self in _scopes.get()

    def start(self, launch: LaunchInfo) -> None:
        """A launch starts running (it passed its checks): note it."""
        cfg = get_config()
        name = f"{launch.kernel.module_name}.{launch.kernel.name}"
        entry = {
            "kernel": name,
            "domain": list(launch.dims),
            "decision": launch.decision.to_json(),
            "deterministic": cfg.deterministic,
            "seed": cfg.seed,
        }
        digest = source_hash(launch.kernel)
        if self.sources.setdefault(name, digest) != digest:
            entry["source"] = digest  # another body under the same name, in the same run
        self.launches.append(entry)

    def __exit__(self, *exc: object) -> None:
        _exit(self, self._token)
        self._token = None
        doc = {
            "format": FORMAT,
            "version": VERSION,
            **self._header,
            "sources": self.sources,
            "launches": self.launches,
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".record-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(tmp, self.path)
        except OSError as exc:  # the folder went away, or the disk filled, during the block
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise ReplayError(f"cannot write the record to {self.path!r}: {exc}") from exc


#: The largest record replay reads (a record of a million launches is about 150 MB).
MAX_RECORD_BYTES = 1 << 30


def _read_record(path: str) -> bytes:
    """The bytes of a record file: a regular file (a FIFO or a device would block or never
    end), of at most :data:`MAX_RECORD_BYTES`."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReplayError(f"cannot read the record {path!r}: it is not a regular file")
        if st.st_size > MAX_RECORD_BYTES:
            raise ReplayError(
                f"the record {path!r} is {st.st_size} bytes, more than a record can be "
                f"({MAX_RECORD_BYTES} bytes)"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)


class replay(Interceptor):
    """Force the decisions recorded in ``path``; raise at the first launch that diverges."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _path(path, "replay")
        try:
            doc = json.loads(_read_record(self.path).decode("utf-8"))
        except OSError as exc:
            raise ReplayError(f"cannot read the record {self.path!r}: {exc}") from None
        except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError, nesting
            raise ReplayError(f"the record {self.path!r} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ReplayError(f"{self.path!r} is not a veda record")
        version = doc.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise ReplayError(
                f"the record {self.path!r} has format version {version!r}; this veda reads "
                f"version {VERSION} and older (it was written by a newer veda)"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ReplayError(
                f"the record {self.path!r} is damaged: its format version is "
                f"{version!r}, not a whole number from 1 to {VERSION}"
            )
        launches = doc.get("launches")
        if not isinstance(launches, list) or not all(
            isinstance(e, dict) and {"kernel", "domain", "decision"} <= set(e) for e in launches
        ):
            raise ReplayError(f"the record {self.path!r} is damaged: bad launch entries")
        self.decisions = []
        for k, e in enumerate(launches):
            try:
                self.decisions.append(_decision(e["decision"], version))
                _check_entry(e, k)
            except (TypeError, ValueError) as exc:
                where = f"launch #{k + 1}: " if not str(exc).startswith("launch #") else ""
                raise ReplayError(f"the record {self.path!r} is damaged: {where}{exc}") from None
        sources = doc.get("sources", {})
        if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
            raise ReplayError(
                f"the record {self.path!r} is damaged: 'sources' is {sources!r}, not an "
                "object of kernel names and source hashes"
            )
        for k, e in enumerate(launches):
            if not isinstance(e.get("source", ""), str):
                raise ReplayError(
                    f"the record {self.path!r} is damaged: launch #{k + 1}: its source hash "
                    f"is {e['source']!r}, not a string"
                )
        #: The recorded source hash of each launch's kernel, or None (a record without them).
        self.sources: list[str | None] = [
            e.get("source", sources.get(e["kernel"])) for e in launches
        ]
        self._checked: set[int] = set()
        self.launches = launches
        self.deterministic = doc.get("deterministic", False)
        self.seed = doc.get("seed")
        if not isinstance(self.deterministic, bool):
            raise ReplayError(
                f"the record {self.path!r} is damaged: 'deterministic' is "
                f"{self.deterministic!r}, not true or false"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**64
        ):
            raise ReplayError(
                f"the record {self.path!r} is damaged: 'seed' is {self.seed!r}, "
                "not null or an integer in [0, 2**64)"
            )
        self.position = 0
        self._scope: Any = None
        self._token: contextvars.Token[tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        return f"veda.replay({self.path!r})"

    def __enter__(self) -> replay:
        self._scope = config(deterministic=self.deterministic, seed=self.seed)
        self._scope.__enter__()
        try:
            self._token = _enter(self)
        except BaseException:
            self._scope.__exit__(None, None, None)
            raise
        return self

    def active(self) -> bool:
        innermost = next((s for s in reversed(_scopes.get()) if isinstance(s, replay)), None)
        return innermost is self

    def redirect(self, kernel: Any, dims: tuple[int, ...]) -> Decision:
        """The decision of the next recorded launch, which must be this one.  The record moves
        on when the launch starts running (:meth:`start`): a launch refused by its checks was
        not recorded either."""
        k = self.position
        name = f"{kernel.module_name}.{kernel.name}"
        if k >= len(self.launches):
            raise ReplayError(
                f"launch #{k + 1} ({name} over domain {dims}) diverges: the record holds only "
                f"{len(self.launches)} launch(es)"
            )
        entry = self.launches[k]
        if entry["kernel"] != name or tuple(entry["domain"]) != tuple(dims):
            raise ReplayError(
                f"launch #{k + 1} diverges: recorded {_describe(entry)}, got kernel {name} over "
                f"domain {dims}"
            )
        decision = self.decisions[k]
        if k not in self._checked:
            recorded = self.sources[k]
            if recorded is not None and recorded != source_hash(kernel):
                raise ReplayError(
                    f"launch #{k + 1} diverges: the record {self.path!r} was made with another "
                    f"body of kernel {name} (source hash {recorded}, this one's is "
                    f"{source_hash(kernel)}); record the run again"
                )
            # A decision this machine cannot run (an unknown target, too many threads) is no
            # damage to the file: refused as the launch error it is, naming where it came from.
            where = f"the record {self.path!r}, launch #{k + 1} ({name})"
            try:
                check_decision(decision, LaunchError, f"{where}, decision {decision}")
            except (LaunchError, TargetUnavailableError) as exc:
                if self.path in str(exc):
                    raise
                raise type(exc)(f"{where}: {exc}") from None
            self._checked.add(k)
        return decision

    def start(self, launch: LaunchInfo) -> None:
        self.position += 1

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        _exit(self, self._token)
        self._token = None
        self._scope.__exit__(exc_type, *exc)
        if exc_type is None and self.position < len(self.launches):
            missing = self.launches[self.position]
            raise ReplayError(
                f"only {self.position} of {len(self.launches)} recorded launches came; the "
                f"first missing is #{self.position + 1}: {_describe(missing)}"
            )


def _decision(value: Any, version: int) -> Decision:
    """A recorded decision; version 1 wrote (target, threads, schedule, chunk) lists, with the
    GPU's block size in the threads field."""
    decision = Decision.from_json(value)
    if version < 2 and isinstance(value, list) and decision.target == "cuda":
        decision = Decision("cuda", 1, decision.schedule, decision.chunk, decision.threads)
    return decision


def _check_entry(entry: dict[str, Any], k: int) -> None:
    """A recorded launch's kernel name and domain (its decision is read by :func:`_decision`)."""
    domain = entry["domain"]
    if not isinstance(entry["kernel"], str):
        raise ValueError(f"launch #{k + 1}: the kernel is {entry['kernel']!r}, not a name")
    if (
        not isinstance(domain, list)
        or not 1 <= len(domain) <= 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in domain)
    ):
        raise ValueError(f"launch #{k + 1}: the domain is {domain!r}, not a list of 1 to 3 sizes")
