"""Every Linux-only read has a path for macOS and Windows that degrades with a stated reason,
tested here by faking the platform (``sys.platform``, and the functions it takes away)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types

import pytest

import veda
from veda import _config, _progress
from veda._hardware import cpu, gpu
from veda.scheduler import _wisdom


@pytest.fixture
def fresh_model():
    cpu.cpu_model.cache_clear()
    yield
    cpu.cpu_model.cache_clear()


def test_affinity_on_linux_is_the_scheduler_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("not Linux")
    assert cpu.affinity() == len(os.sched_getaffinity(0))
    assert cpu.affinity_reason() is None


def test_affinity_on_macos_says_there_is_none(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cpu.affinity() is None
    assert "macOS has no CPU affinity" in cpu.affinity_reason()


def test_affinity_on_windows_comes_from_psutil(monkeypatch):
    import psutil

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(psutil.Process, "cpu_affinity", lambda self: [0, 1, 2], raising=False)
    assert cpu.affinity() == 3
    assert cpu.affinity_reason() is None


def test_affinity_where_psutil_cannot_tell(monkeypatch):
    import psutil

    def refuse(self):
        raise psutil.AccessDenied(os.getpid())

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(sys, "platform", "freebsd14")
    monkeypatch.setattr(psutil.Process, "cpu_affinity", refuse, raising=False)
    assert cpu.affinity() is None
    assert "freebsd14 does not report" in cpu.affinity_reason()


def test_veda_info_states_why_affinity_is_unknown(monkeypatch, capsys):
    from veda import cli

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cli.main(["info"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "may use" in ln)
    assert "? (macOS has no CPU affinity" in line, line


def test_cpu_model_on_macos_asks_sysctl(monkeypatch, fresh_model):
    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="Apple M3 Max\n", stderr="")

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert cpu.cpu_model() == "Apple M3 Max"
    assert calls == [["sysctl", "-n", "machdep.cpu.brand_string"]]


def test_cpu_model_without_sysctl_or_proc_falls_back_to_platform(monkeypatch, fresh_model):
    def no_sysctl(argv, **kwargs):
        raise FileNotFoundError("sysctl")

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(subprocess, "run", no_sysctl)
    monkeypatch.setattr(cpu.platform, "processor", lambda: "arm")
    assert cpu.cpu_model() == "arm"
    cpu.cpu_model.cache_clear()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(cpu.platform, "processor", lambda: "")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "AMD64")
    assert cpu.cpu_model() == "AMD64"


def test_gpu_driver_on_windows_is_nvcuda_dll(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("SystemRoot", str(tmp_path))
    assert not gpu.gpu_driver_present()
    assert str(tmp_path / "System32" / "nvcuda.dll") in gpu.driver_missing()
    (tmp_path / "System32").mkdir()
    (tmp_path / "System32" / "nvcuda.dll").write_bytes(b"")
    assert gpu.gpu_driver_present()


def test_gpu_driver_on_macos_is_never_there(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os.path, "exists", lambda path: True)  # not even a stray libcuda
    assert not gpu.gpu_driver_present()
    assert "macOS has no CUDA driver" in gpu.driver_missing()


def test_cache_dir_is_platformdirs(monkeypatch, tmp_path):
    import platformdirs
    from platformdirs.macos import MacOS
    from platformdirs.windows import Windows

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert _config._default_cache_dir() == str(tmp_path / "xdg" / "veda")
    monkeypatch.delenv("XDG_CACHE_HOME")  # platformdirs honours it on macOS too
    monkeypatch.setattr(platformdirs, "PlatformDirs", MacOS)
    assert _config._default_cache_dir().endswith(os.path.join("Library", "Caches", "veda"))
    monkeypatch.setattr(platformdirs, "PlatformDirs", Windows)
    monkeypatch.setattr(
        "platformdirs.windows.get_win_folder", lambda csidl: "C:\\Users\\u\\AppData\\Local"
    )
    # Windows' own class: veda, without an author folder, then Cache.
    assert _config._default_cache_dir() == os.path.join(
        "C:\\Users\\u\\AppData\\Local", "veda", "Cache"
    )


def test_cache_dir_without_a_home_folder_is_per_user_under_tmp(monkeypatch):
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # "~" stays "~": no home
    folder = _config._default_cache_dir()
    assert os.path.dirname(folder) == __import__("tempfile").gettempdir()
    assert os.path.basename(folder).startswith("veda-")


def test_tuning_lock_uses_msvcrt_without_fcntl(monkeypatch, tmp_path):
    locked = []
    fake = types.SimpleNamespace(
        LK_LOCK=1, LK_UNLCK=0, locking=lambda fd, mode, n: locked.append((mode, n))
    )
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    cache = _wisdom.TuningCache(str(tmp_path))
    cache.put("k|1d|2^4|adaptive", {"decision": veda.targets.Decision("cpu").to_json()})
    assert locked[:2] == [(1, 1), (0, 1)]  # locked, then unlocked before the file closes
    assert _wisdom.TuningCache(str(tmp_path)).get("k|1d|2^4|adaptive") is not None


def test_tuning_lock_gives_up_waiting_and_still_writes(monkeypatch, tmp_path):
    tries = []

    def busy(fd, mode, n):
        tries.append(fd)
        raise OSError("locked by another process")

    monkeypatch.setitem(sys.modules, "fcntl", None)
    fake = types.SimpleNamespace(LK_LOCK=1, LK_UNLCK=0, locking=busy)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    cache = _wisdom.TuningCache(str(tmp_path))
    cache.put("k|1d|2^4|adaptive", {"decision": veda.targets.Decision("cpu").to_json()})
    assert len(tries) == 6
    assert _wisdom.TuningCache(str(tmp_path)).get("k|1d|2^4|adaptive") is not None


def test_progress_is_off_outside_notebooks_and_terminals(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert not _progress.in_notebook()
    assert _progress.wanted(None) is False
    assert _progress.wanted(None, terminal=True) is False
    assert _progress.wanted(True) is True
    assert _progress.wanted(False, terminal=True) is False


def test_progress_in_a_faked_notebook(monkeypatch):
    class ZMQInteractiveShell:
        pass

    fake = types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell())
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert _progress.in_notebook()
    assert _progress.wanted(None) is True
    assert _progress.wanted(False) is False
