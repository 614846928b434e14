"""The public API is what DESIGN.md promises, and configuration behaves as documented."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import veda

EXPECTED = {
    "DeadlineExceeded",
    "Priority",
    "QueueFull",
    "Scope",
    "ShutdownError",
    "Task",
    "TaskError",
    "launch_async",
    "scope",
    "shutdown",
    "spawn",
    "submit",
    "try_spawn",
    "try_submit",
    "Config",
    "ConfigError",
    "Func",
    "Kernel",
    "KernelDefinitionError",
    "KernelError",
    "KernelIndexError",
    "LaunchError",
    "ParIter",
    "ReplayError",
    "TargetUnavailableError",
    "UnknownKernelError",
    "VedaError",
    "__version__",
    "atomic_add",
    "atomic_max",
    "atomic_min",
    "cache_clear",
    "cache_info",
    "config",
    "deterministic",
    "explain",
    "func",
    "get_config",
    "graph",
    "GraphError",
    "kernel",
    "launch",
    "local_array",
    "max_threads",
    "metrics",
    "par_iter",
    "par_range",
    "random",
    "record",
    "replay",
    "scan",
    "scheduler",
    "set_config",
    "targets",
    "telemetry",
    "TelemetryError",
    "threading_layer",
    "to_device",
    "to_host",
    "cuda",
    "empty",
    "empty_like",
    "memory_stats",
    "zeros",
}

# The public names of the subpackages, pinned as veda's own (a change must be deliberate).
SUBPACKAGES = {
    "targets": {
        "CPUTarget",
        "CUDATarget",
        "Decision",
        "KernelForm",
        "LaunchOptions",
        "ParallelTarget",
        "Profiler",
        "Runner",
        "Target",
        "get",
        "names",
        "register",
        "unregister",
    },
    "scheduler": {
        "PARALLEL_MIN_SIZE",
        "POLICIES",
        "REVIEW_EVERY",
        "Explanation",
        "Policy",
        "decide",
        "default_chunk",
        "dispatcher",
        "explain",
        "get_policy",
        "gpu_available",
        "pins",
        "policy_names",
        "register_policy",
        "unregister_policy",
    },
    "telemetry": {
        "CompileEvent",
        "ConfigMetrics",
        "Figures",
        "KernelMetrics",
        "LaunchEvent",
        "Listener",
        "MetricsServer",
        "Snapshot",
        "SpanEvent",
        "add_listener",
        "metrics",
        "remove_listener",
        "reset",
        "serve",
        "span",
        "trace",
    },
    "hardware": {
        "HostPool",
        "Node",
        "Topology",
        "affinity",
        "affinity_reason",
        "cpu_model",
        "energy_sources",
        "max_threads",
        "memory_pool",
        "power_model",
        "temperature",
        "threading_layer",
        "topology",
    },
    "cuda": {
        "device_resident",
        "is_available",
        "is_device_array",
        "simulator_enabled",
        "to_device",
        "to_host",
        "transfer_stats",
        "unavailable_reason",
    },
}


def test_public_names_are_pinned():
    assert set(veda.__all__) == EXPECTED
    for name in veda.__all__:
        assert hasattr(veda, name), name


def test_import_leaves_what_a_program_may_not_use_for_later():
    # Run in a fresh interpreter: this one has imported everything already.
    code = textwrap.dedent(
        """
        import sys
        import veda
        lazy = ["veda._tasks", "veda.random", "veda._kernel.language", "veda._record",
                "veda._scan", "veda._iter", "veda._graph", "asyncio", "psutil"]
        print(sorted(m for m in lazy if m in sys.modules))
        from veda._tasks import spawn
        from veda._kernel.language import atomic_add
        assert veda.spawn is spawn and veda.atomic_add is atomic_add
        assert veda.random is sys.modules["veda.random"]
        assert {"spawn", "random", "atomic_add", "record"} <= set(dir(veda))
        try:
            veda.no_such_name
        except AttributeError as exc:
            assert "veda" in str(exc) and "no_such_name" in str(exc), exc
        else:
            raise AssertionError("no AttributeError")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("package", sorted(SUBPACKAGES))
def test_subpackage_names_are_pinned(package):
    module = getattr(veda, package)
    assert set(module.__all__) == SUBPACKAGES[package]
    for name in module.__all__:
        assert getattr(module, name) is not None, f"veda.{package}.{name}"


def test_error_hierarchy():
    assert issubclass(veda.KernelIndexError, veda.KernelError)
    assert issubclass(veda.KernelIndexError, IndexError)
    assert issubclass(veda.LaunchError, ValueError)
    assert issubclass(veda.ConfigError, ValueError)
    assert issubclass(veda.KernelDefinitionError, TypeError)
    assert issubclass(veda.UnknownKernelError, KeyError)
    for cls in (
        veda.LaunchError,
        veda.KernelError,
        veda.ConfigError,
        veda.TargetUnavailableError,
        veda.KernelDefinitionError,
    ):
        assert issubclass(cls, veda.VedaError)


def test_config_scope_restores_and_nests():
    before = veda.get_config()
    with veda.config(target="cpu"):
        assert veda.get_config().target == "cpu"
        with veda.config(boundscheck=True):
            assert veda.get_config().target == "cpu"
            assert veda.get_config().boundscheck is True
        assert veda.get_config().boundscheck is before.boundscheck
    assert veda.get_config() == before


def test_config_as_decorator():
    @veda.config(threads=1)
    def inside():
        return veda.get_config().threads

    assert inside() == 1
    assert veda.get_config().threads is None


def test_config_does_not_leak_into_other_threads():
    seen = []
    ready = threading.Event()
    go = threading.Event()

    def other():
        ready.set()
        go.wait(5)
        seen.append(veda.get_config().target)

    t = threading.Thread(target=other)
    t.start()
    ready.wait(5)
    with veda.config(target="cpu"):
        go.set()
        t.join(5)
        assert veda.get_config().target == "cpu"
    assert seen == [None]


def test_config_is_per_asyncio_task():
    async def task(target):
        with veda.config(target=target):
            await asyncio.sleep(0.01)
            return veda.get_config().target

    async def main():
        return await asyncio.gather(task("cpu"), task("parallel"))

    assert asyncio.run(main()) == ["cpu", "parallel"]


def test_set_config_changes_defaults_below_scopes():
    old = veda.get_config()
    try:
        with veda.config(target="cpu"):
            veda.set_config(boundscheck=True)
            assert veda.get_config().boundscheck is True  # scope re-merges new defaults
            assert veda.get_config().target == "cpu"
    finally:
        veda.set_config(boundscheck=old.boundscheck)
    assert veda.get_config().boundscheck is old.boundscheck


def test_config_from_env():
    cfg = veda.Config.from_env(
        {
            "VEDA_TARGET": "parallel",
            "VEDA_THREADS": "1",
            "VEDA_BOUNDSCHECK": "yes",
            "VEDA_CACHE_DIR": "/tmp/x",
        }
    )
    assert (cfg.target, cfg.threads, cfg.boundscheck, cfg.cache_dir) == (
        "parallel",
        1,
        True,
        "/tmp/x",
    )


@pytest.mark.parametrize(
    "env, word",
    [
        ({"VEDA_THREADS": "two"}, "VEDA_THREADS"),
        ({"VEDA_TARGET": "gpu"}, "target"),
        ({"VEDA_BOUNDSCHECK": "maybe"}, "VEDA_BOUNDSCHECK"),
        ({"VEDA_CHUNK": "0"}, "chunk"),
    ],
)
def test_bad_env_is_a_config_error(env, word):
    with pytest.raises(veda.ConfigError, match=word):
        veda.Config.from_env(env)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"target": "gpu"}, "target"),
        ({"schedule": "fastest"}, "schedule"),
        ({"threads": 0}, "threads"),
        ({"threads": 10**6}, "threads"),
        ({"chunk": -1}, "chunk"),
        ({"target": "cpu", "threads": 2}, "threads"),
        ({"speed": 11}, "speed"),
        ({"threads": 1.5}, "threads"),
    ],
)
def test_bad_config_names_the_setting(kwargs, word):
    with pytest.raises(veda.ConfigError, match=word):
        veda.config(**kwargs)


def test_kernel_keeps_metadata():
    @veda.kernel
    def documented(i, x):
        """Doubles x."""
        x[i] *= 2

    assert documented.__doc__ == "Doubles x."
    assert documented.__name__ == "documented"
    assert "documented" in repr(documented)
    assert documented.written == ["x"]
    x = np.ones(3)
    documented[3](x)
    assert x.tolist() == [2.0, 2.0, 2.0]
