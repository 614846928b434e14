"""Caches that heal and cannot run someone else's code.

Every case runs in fresh processes: one fills a cache, the test damages one file of it (or the
folder), the next process must give the right answers with one warning naming what it
discarded, and the process after that must see a healed cache (no warning).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import veda

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numpy as np
        import veda

        @veda.kernel
        def axpb(i, x, out):
            out[i] = 3.0 * x[i] + 1.0

        @veda.kernel(reduce="max")
        def biggest(i, x):
            return x[i]

        n = 1 << 16
        x = np.arange(n, dtype=np.float64)
        out = np.empty_like(x)
        veda.launch(axpb, n, x, out, target="cpu")
        ok = bool(np.array_equal(out, 3.0 * x + 1.0))
        out[:] = 0.0
        veda.launch(axpb, n, x, out, target="parallel", schedule="dynamic")
        ok = ok and bool(np.array_equal(out, 3.0 * x + 1.0))
        for _ in range(20):  # adaptive launches read the tuning cache
            axpb[n](x, out)
        ok = ok and bool(np.array_equal(out, 3.0 * x + 1.0))
        # Whether the dispatcher has decided by now depends on the machine's load; one entry
        # written through the tuning cache makes sure its file exists.
        from veda.scheduler._wisdom import TuningCache
        TuningCache().put("test/entry", {"decision": {"target": "cpu"}})
        ok = ok and float(veda.launch(biggest, n, x, target="cpu")) == n - 1
        ok = ok and veda.random.uniform(7, 3) == veda.random.uniform(7, 3)
    mine = [str(w.message) for w in caught if str(w.message).startswith("veda:")]
    stats = axpb.compile_stats.as_dict()
    print(json.dumps({"ok": ok, "warnings": mine, "compiled": stats["compiled"],
                      "cache_hits": stats["cache_hits"], "cache_dir": veda.get_config().cache_dir}))
    """
)

MARKER = "VEDA_TEST_MARKER"


def _run(cache: Path, env: dict[str, str] | None = None, prelude: str = "") -> dict:
    full = {**os.environ, "VEDA_CACHE_DIR": str(cache), **(env or {})}
    full.pop("NUMBA_CACHE_DIR", None)
    # A file, not ``-c``: Numba caches only functions whose source it can read.
    script = Path(tempfile.mkdtemp(prefix="veda-test-script-")) / "script.py"
    script.write_text(prelude + SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache filled by one process (compiled modules, Numba's files, a tuning file)."""
    root = tmp_path_factory.mktemp("filled") / "cache"
    first = _run(root)
    assert first["ok"] and first["warnings"] == [], first
    assert list((root / "tuning").glob("*.json")), "no tuning file was written"
    return root


@pytest.fixture
def cache(filled: Path, tmp_path: Path) -> Path:
    """A private copy of the filled cache, to damage."""
    copy = tmp_path / "cache"
    shutil.copytree(filled, copy)
    return copy


def _module(cache: Path) -> Path:
    return sorted((cache / "kernels").glob("veda_gen_axpb_*.py"))[0]


def _numba_file(cache: Path, suffix: str) -> Path:
    return sorted((cache / "kernels" / "__pycache__").glob(f"*_veda_cpu*{suffix}"))[0]


def _code_record(cache: Path) -> Path:
    return sorted((cache / "kernels").glob("veda_gen_axpb_*.code.record"))[0]


def _tuning(cache: Path) -> Path:
    return sorted((cache / "tuning").glob("*.json"))[0]


class _Payload:
    """A pickle that, when loaded, creates the marker file: code run by reading a cache."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(256))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _fifo(path: Path) -> None:
    """A FIFO blocks whoever opens it for reading: a reader would hang."""
    path.unlink()
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _link(path: Path) -> None:
    """A link to a copy of the right contents: still not read, it could point anywhere."""
    copy = path.with_name(path.name + ".copy")
    shutil.copy(path, copy)
    path.unlink()
    path.symlink_to(copy)


DAMAGE = {
    "module-garbage": (_module, _garbage),
    "module-truncated": (_module, _truncate),
    "module-empty": (_module, _empty),
    "module-syntax-error": (_module, lambda p: p.write_text("def broken(:\n")),
    "module-appended-code": (
        _module,
        lambda p: p.write_text(
            p.read_text() + f"\nopen({str(p.parent.parent / MARKER)!r}, 'w').close()\n"
        ),
    ),
    "module-fifo": (_module, _fifo),
    "module-folder": (_module, _folder),
    "module-link": (_module, _link),
    "index-garbage": (lambda c: _numba_file(c, ".nbi"), _garbage),
    "index-link": (lambda c: _numba_file(c, ".nbi"), _link),
    "index-folder": (lambda c: _numba_file(c, ".nbi"), _folder),
    "tuning-folder": (_tuning, _folder),
    "tuning-deeply-nested": (_tuning, lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
    "index-truncated": (lambda c: _numba_file(c, ".nbi"), _truncate),
    "index-foreign-pickle": (
        lambda c: _numba_file(c, ".nbi"),
        lambda p: p.write_bytes(pickle.dumps(_Payload(str(p.parent.parent.parent / MARKER)))),
    ),
    "code-garbage": (lambda c: _numba_file(c, ".nbc"), _garbage),
    "record-garbage": (_code_record, _garbage),
    "record-truncated": (_code_record, _truncate),
    "code-truncated": (lambda c: _numba_file(c, ".nbc"), _truncate),
    "tuning-not-utf8": (_tuning, lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "tuning-not-json": (_tuning, lambda p: p.write_text("{not json")),
    "tuning-wrong-shape": (_tuning, lambda p: p.write_text("[1, 2, 3]")),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_file_is_discarded_with_one_warning_and_rebuilt(cache: Path, case: str) -> None:
    where, damage = DAMAGE[case]
    victim = where(cache)
    damage(victim)
    second = _run(cache)
    assert second["ok"], second
    assert len(second["warnings"]) == 1, second["warnings"]
    assert victim.name in second["warnings"][0]
    assert not (cache / MARKER).exists(), "code from the damaged cache ran"
    if case.startswith("tuning"):  # rewritten as a healthy tuning file
        doc = json.loads(_tuning(cache).read_text(encoding="utf-8"))
        assert isinstance(doc, dict) and isinstance(doc.get("entries"), dict), doc
    if case.startswith(("module", "index", "code", "record")):  # healed on disk too
        third = _run(cache)
        assert third["ok"] and third["warnings"] == [], third
        assert third["compiled"] == 0, third  # the rebuilt entry serves the next process


def test_a_healthy_cache_is_reused_without_warnings(cache: Path) -> None:
    again = _run(cache)
    assert again["ok"] and again["warnings"] == [] and again["compiled"] == 0, again


def test_cache_folders_are_private_and_files_owner_only(cache: Path) -> None:
    if not hasattr(os, "getuid"):
        pytest.skip("POSIX permissions")
    _run(cache)
    for path in [cache, *cache.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path} has mode {mode:04o}, expected {expected:04o}"


def test_veda_own_functions_are_cached_under_the_veda_cache(cache: Path) -> None:
    assert list((cache / "numba").rglob("random.*.nbi")), "veda.random is not cached there"
    package_cache = Path(veda.__file__).parent / "__pycache__"
    before = set(package_cache.glob("*.nbi")) if package_cache.exists() else set()
    shutil.rmtree(cache / "numba")
    _run(cache)
    after = set(package_cache.glob("*.nbi")) if package_cache.exists() else set()
    assert after == before
    assert list((cache / "numba").rglob("random.*.nbi"))


@pytest.mark.parametrize("mode", [0o770, 0o707])
def test_a_cache_folder_others_can_write_to_is_refused(cache: Path, mode: int) -> None:
    if not hasattr(os, "getuid"):
        pytest.skip("POSIX permissions")
    (cache / MARKER).write_text("")  # left alone: nothing from this folder is read
    os.chmod(cache / "kernels", mode)
    result = _run(cache)
    assert result["ok"], result
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "others can write to it" in result["warnings"][0]
    assert "private temporary kernel cache" in result["warnings"][0]
    assert result["compiled"] > 0  # nothing was loaded from the refused folder


def test_a_cache_folder_of_another_user_is_refused(cache: Path) -> None:
    if not hasattr(os, "getuid"):
        pytest.skip("POSIX permissions")
    # This process pretends to be someone else: every existing folder then belongs to another
    # user, and so does the temporary fallback, so the process compiles in memory.
    prelude = "import os\n_uid = os.getuid()\nos.getuid = lambda: _uid + 1\n"
    result = _run(cache, prelude=prelude)
    assert result["ok"], result
    assert any("belongs to another user" in w for w in result["warnings"]), result
    assert result["compiled"] > 0


def test_a_cache_dir_that_is_a_file_falls_back(tmp_path: Path) -> None:
    plain = tmp_path / "a-file"
    plain.write_text("not a folder")
    result = _run(plain)
    assert result["ok"], result
    assert any(str(plain) in w and "temporary" in w for w in result["warnings"]), result


def test_no_writable_folder_at_all(tmp_path: Path) -> None:
    """No home, a cache_dir that cannot exist, no temporary folder: import and launch work."""
    plain = tmp_path / "a-file"
    plain.write_text("")
    env = {"HOME": str(plain / "home"), "XDG_CACHE_HOME": ""}
    # Running as root, a writable temporary folder can always be found: take it away.
    prelude = (
        "import tempfile\n"
        "def _no_folder(*a, **k):\n"
        "    raise PermissionError('no writable folder')\n"
        "tempfile.mkdtemp = _no_folder\n"
    )
    result = _run(plain / "cache", env=env, prelude=prelude)
    assert result["ok"], result
    assert any("compiling in memory" in w for w in result["warnings"]), result


@pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() == 0, reason="root can write to any folder"
)
def test_an_unwritable_cache_folder_falls_back(cache: Path) -> None:
    os.chmod(cache / "kernels", 0o500)
    try:
        result = _run(cache)
    finally:
        os.chmod(cache / "kernels", 0o700)
    assert result["ok"], result
    assert any("not writable" in w for w in result["warnings"]), result


def _forge_pyc(cache: Path) -> None:
    """A bytecode file that matches the module's size and time but runs extra code."""
    import importlib.util
    import py_compile

    module = _module(cache)
    real = module.read_bytes()
    st = module.stat()
    evil = f"open({str(cache / MARKER)!r}, 'w').close()\n".encode()
    module.write_bytes(evil + b"#" * (len(real) - len(evil) - 1) + b"\n")
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    py_compile.compile(str(module), cfile=importlib.util.cache_from_source(str(module)))
    module.write_bytes(real)
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_forged_bytecode_file_is_never_run(cache: Path) -> None:
    _forge_pyc(cache)
    result = _run(cache, env={"PYTHONDONTWRITEBYTECODE": ""})
    assert result["ok"], result
    assert not (cache / MARKER).exists(), "a .pyc veda never checked ran"


def test_a_lock_file_that_is_a_link_is_replaced(cache: Path) -> None:
    lock = Path(str(_tuning(cache)) + ".lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(cache / "nowhere")
    result = _run(cache)
    assert result["ok"] and result["warnings"] == [], result
    assert lock.is_file() and not lock.is_symlink()


def test_tuning_entries_with_absurd_figures_are_ignored(cache: Path) -> None:
    """A well-formed tuning file whose figures are absurd (a 400-digit integer, a negative or
    zero time, a string) is not an error: those entries are not adopted."""
    path = _tuning(cache)
    doc = json.loads(path.read_text())
    absurd = [10**400, -1.0, 0.0, "fast", None]
    for k, key in enumerate(sorted(doc["entries"])):
        entry = doc["entries"][key]
        if isinstance(entry, dict):
            entry["seconds_per_element"] = absurd[k % len(absurd)]
    path.write_text(json.dumps(doc))
    result = _run(cache)
    assert result["ok"] and result["warnings"] == [], result


def test_a_full_disk_keeps_compiled_code_in_memory(cache: Path) -> None:
    """Saving compiled code fails (ENOSPC): the launch succeeds, with one warning."""
    shutil.rmtree(cache / "kernels" / "__pycache__")
    prelude = textwrap.dedent(
        """
        import errno, veda._files as _f
        _write = _f.write_atomic
        def _full(path, data):
            if "__pycache__" in str(path):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return _write(path, data)
        _f.write_atomic = _full
        """
    )
    result = _run(cache, prelude=prelude)
    assert result["ok"], result
    saves = [w for w in result["warnings"] if "cannot save compiled code" in w]
    assert len(saves) == 1 and "No space left" in saves[0], result["warnings"]


@pytest.mark.parametrize("value", [123, "", b"/tmp/cache", 1.5, "/tmp/a\0b"])
def test_cache_dir_must_be_a_path(value: object) -> None:
    with pytest.raises(veda.ConfigError, match="cache_dir"):
        with veda.config(cache_dir=value):
            pass


def test_cache_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with veda.config(cache_dir="relative"):
        assert veda.get_config().cache_dir == str(tmp_path / "relative")


@pytest.mark.parametrize("call", [veda.cache_clear, veda.cache_info])
def test_cache_management_refuses_what_is_not_a_path(call) -> None:
    with pytest.raises(veda.ConfigError, match="cache_dir"):
        call(5)
