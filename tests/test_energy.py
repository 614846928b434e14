"""Energy: the readers against fake sysfs trees and a fake NVML, the power model in telemetry,
the energy and EDP policies, the power cap and the thermal governor."""

from __future__ import annotations

import json
import math
import os
import types
import warnings

import numpy as np
import pytest

import veda
import veda.hardware
from veda._hardware import energy
from veda._types import Decision
from veda.scheduler._tuner import Trial, Tuner, score


def _zone(root, name, label, uj, top=262143328850):
    path = os.path.join(root, "class", "powercap", name)
    os.makedirs(path, exist_ok=True)
    for f, v in (("name", label), ("energy_uj", uj), ("max_energy_range_uj", top)):
        with open(os.path.join(path, f), "w") as fh:
            fh.write(f"{v}\n")
    return path


def _set(path, uj):
    with open(os.path.join(path, "energy_uj"), "w") as fh:
        fh.write(f"{uj}\n")


@pytest.fixture
def rapl_tree(tmp_path):
    """Two packages, each with core and dram subzones."""
    root = str(tmp_path / "sys")
    zones = {
        "p0": _zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "p0core": _zone(root, "intel-rapl:0:0", "core", 500_000),
        "p0dram": _zone(root, "intel-rapl:0:1", "dram", 100_000),
        "p1": _zone(root, "intel-rapl:1", "package-1", 7_000_000),
        "p1core": _zone(root, "intel-rapl:1:0", "core", 300_000),
    }
    return root, zones


@pytest.fixture(autouse=True)
def _own_measured_watts(monkeypatch):
    """Each test starts with no measured watts (the module keeps them per process)."""
    monkeypatch.setattr(energy, "_observed", {})
    monkeypatch.setattr(energy, "_observed_source", {})


CPU = Decision("cpu")
PAR = Decision("parallel", 2, "static", 1)


# -- RAPL ----------------------------------------------------------------------------------------


def test_rapl_sums_the_packages_as_their_counters_advance(rapl_tree):
    root, zones = rapl_tree
    rapl = energy.RAPL(root)
    assert rapl.unavailable_reason() is None
    assert [(z.name, z.package) for z in rapl.zones()] == [
        ("package-0", True),
        ("core", False),
        ("dram", False),
        ("package-1", True),
        ("core", False),
    ]
    assert rapl.joules() == 0.0
    _set(zones["p0"], 3_000_000)  # +2 J
    _set(zones["p1"], 7_500_000)  # +0.5 J
    _set(zones["p0core"], 9_000_000)  # a subzone: inside its package's figure already
    assert rapl.joules() == pytest.approx(2.5)
    _set(zones["p1"], 8_500_000)
    assert rapl.joules() == pytest.approx(3.5)


def test_rapl_undoes_the_wrap_around_of_a_counter(tmp_path):
    root = str(tmp_path)
    p0 = _zone(root, "intel-rapl:0", "package-0", 9_000_000, top=10_000_000)
    rapl = energy.RAPL(root)
    rapl.joules()
    _set(p0, 500_000)  # wrapped: 1 J to the top, then 0.5 J
    assert rapl.joules() == pytest.approx(1.5)
    _set(p0, 2_500_000)
    assert rapl.joules() == pytest.approx(3.5)


def test_rapl_reasons_missing_folder_missing_zones_and_permission(tmp_path, monkeypatch):
    assert "no powercap folder" in energy.RAPL(str(tmp_path / "none")).unavailable_reason()
    os.makedirs(tmp_path / "sys" / "class" / "powercap" / "intel-rapl-mmio:0")
    reason = energy.RAPL(str(tmp_path / "sys")).unavailable_reason()
    assert "no RAPL package zone" in reason
    root = str(tmp_path / "denied")
    _zone(root, "intel-rapl:0", "package-0", 1)
    real = energy._read_int

    def denied(path):
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(energy, "_read_int", denied)
    reason = energy.RAPL(root).unavailable_reason()
    assert "permission denied" in reason and "root" in reason and "energy_uj" in reason


def test_a_damaged_counter_file_is_a_reason_not_a_crash(tmp_path):
    root = str(tmp_path)
    p0 = _zone(root, "intel-rapl:0", "package-0", 1)
    with open(os.path.join(p0, "energy_uj"), "w") as fh:
        fh.write("not a number\n")
    assert "cannot read" in energy.RAPL(root).unavailable_reason()


# -- NVML ----------------------------------------------------------------------------------------


def _fake_nvml(counters, fail_init=False):
    m = types.SimpleNamespace()
    m.counters = counters

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: len(m.counters)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetTotalEnergyConsumption = lambda h: m.counters[h]
    return m


def test_nvml_sums_every_gpu_from_its_first_reading():
    fake = _fake_nvml([10_000, 50_000])  # millijoules
    nvml = energy.NVML(fake)
    assert nvml.unavailable_reason() is None
    assert nvml.joules() == 0.0
    fake.counters[0] += 1500
    fake.counters[1] += 500
    assert nvml.joules() == pytest.approx(2.0)


def test_nvml_reasons():
    assert "NVML cannot read" in energy.NVML(_fake_nvml([], fail_init=True)).unavailable_reason()
    assert "no GPU" in energy.NVML(_fake_nvml([])).unavailable_reason()


def test_nvml_without_the_package_says_which_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    reason = energy.NVML().unavailable_reason()
    assert "nvidia-ml-py" in reason and "veda[energy]" in reason


# -- the power model in telemetry -----------------------------------------------------------------


@veda.kernel
def _scale(i, x, out):
    out[i] = 2.0 * x[i]


def test_modelled_energy_is_seconds_times_the_watts_of_each_configuration():
    veda.telemetry.reset()
    x = np.ones(1000)
    out = np.empty(1000)
    with veda.config(static_watts=7.0, watts_per_core=3.0):  # the model when launched
        with veda.config(target="cpu"):
            for _ in range(20):
                _scale[1000](x, out)
        with veda.config(target="parallel", threads=veda.max_threads(), schedule="static"):
            for _ in range(20):
                _scale[1000](x, out)
    k = veda.metrics().kernel(_scale)  # read under the default model: priced as launched
    for c in k.configs:
        assert c.energy_source == "model"
        expected = c.total_time * (7.0 + 3.0 * c.threads)
        assert c.joules == pytest.approx(expected, rel=1e-9)
        assert c.watts == pytest.approx(7.0 + 3.0 * c.threads)
    assert k.joules == pytest.approx(sum(c.joules for c in k.configs))
    with veda.config(static_watts=500.0):  # a counter: reading elsewhere changes nothing
        text = veda.metrics().to_prometheus()
    d = json.loads(veda.metrics().to_json())
    line = next(ln for ln in text.splitlines() if ln.startswith("veda_energy_joules_total{"))
    assert 'source="model"' in line and "_scale" in line
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(k.joules)
    entry = next(e for e in d["kernels"] if e["name"] == "_scale")
    assert entry["energy"] == {"model": pytest.approx(k.joules)}
    assert "J (model)" in veda.metrics()._repr_html_()


def test_measured_launches_are_counted_under_their_reader(tmp_path, monkeypatch):
    import time

    root = str(tmp_path)
    _zone(root, "intel-rapl:0", "package-0", 1)
    reader = energy.reader("rapl", root)

    # an ideal 50 W meter, whose reads take time of their own (20 us each)
    def ideal():
        t = time.perf_counter()
        while time.perf_counter() - t < 20e-6:
            pass
        return 50.0 * t

    monkeypatch.setattr(reader, "joules", ideal)
    x = np.ones(100)
    out = np.empty(100)
    with veda.config(target="cpu"):
        _scale[100](x, out)  # compiled (a launch that compiles is left to the model)
    veda.telemetry.reset()
    with veda.config(energy="rapl", sysfs_root=root, target="cpu"):
        for _ in range(200):
            _scale[100](x, out)
    c = veda.metrics().kernel(_scale).configs[0]
    assert c.launches == 200
    assert c.energy_source == "rapl" and set(dict(c.figures.energy)) == {"rapl"}
    # the reads' own time is not charged to the launches: 50 W, not the window's
    assert c.watts == pytest.approx(50.0, rel=0.15), c.watts
    got = energy._observed[("cpu", 1)]
    assert got[0] == pytest.approx(c.joules) and got[1] == pytest.approx(c.total_time)


def test_implausible_and_backward_readings_are_not_charged(tmp_path):
    root = str(tmp_path)
    p0 = _zone(root, "intel-rapl:0", "package-0", 5_000_000)
    rapl = energy.RAPL(root)
    rapl.joules()
    _set(p0, 4_999_000)  # a step back that is no wrap: a reset, nothing counted
    assert rapl.joules() == 0.0
    _set(p0, -3)
    with pytest.raises(ValueError, match="outside the counter's range"):
        rapl.joules()
    _set(p0, 2**64)
    with pytest.raises(ValueError, match="outside the counter's range"):
        rapl.joules()


def test_readers_meter_only_the_targets_they_cover():
    rapl, nvml = energy.RAPL("/nonexistent"), energy.NVML(_fake_nvml([1]))
    assert rapl.covers("cpu") and rapl.covers("parallel") and not rapl.covers("cuda")
    assert nvml.covers("cuda") and not nvml.covers("cpu")
    fake = _fake_nvml([10_000])
    n = energy.NVML(fake)
    n.joules()
    fake.counters[0] = 5_000  # the driver reloaded: the counter restarts
    assert n.joules() == 0.0
    fake.counters[0] = 6_000
    assert n.joules() == pytest.approx(1.0)


def test_measured_watts_replace_the_model_once_there_are_enough():
    one = Decision("cpu", 1)
    energy.record_observed(one, 100.0, 1.0, "rapl")
    with veda.config(static_watts=20.0, watts_per_core=10.0):  # energy="model": the model only
        assert energy.watts(one) == (30.0, "model")
    energy._observed.clear()
    with veda.config(static_watts=20.0, watts_per_core=10.0, energy="auto"):
        energy.record_observed(one, 0.5, energy.OBSERVED_ENOUGH / 2, "rapl")
        assert energy.watts(one) == (30.0, "model")  # too little measured yet
        energy.record_observed(one, 4.5, energy.OBSERVED_ENOUGH / 2, "rapl")
        w, source = energy.watts(one)
        assert source == "rapl" and w == pytest.approx(5.0 / energy.OBSERVED_ENOUGH)
        assert energy.watts(PAR) == (40.0, "model")  # another thread count: still modelled


def test_a_reader_that_cannot_read_falls_back_to_the_model_with_a_warning(tmp_path):
    veda.telemetry.reset()
    x = np.ones(10)
    out = np.empty(10)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with veda.config(energy="rapl", sysfs_root=str(tmp_path), target="cpu"):
            _scale[10](x, out)
    assert any("energy='rapl' cannot be read here" in str(w.message) for w in seen)
    assert veda.metrics().kernel(_scale).energy_source == "model"


def test_a_counter_that_fails_mid_run_never_fails_a_launch(tmp_path, monkeypatch):
    root = str(tmp_path / "flaky")
    _zone(root, "intel-rapl:0", "package-0", 1)
    reader = energy.reader("rapl", root)

    def broken():
        raise OSError("the counter went away")

    monkeypatch.setattr(reader, "joules", broken)
    x = np.ones(10)
    out = np.zeros(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with veda.config(energy="rapl", sysfs_root=root, target="cpu"):
            _scale[10](x, out)
    assert (out == 2.0).all()


# -- policies ------------------------------------------------------------------------------------


def test_energy_and_edp_rank_by_joules_and_by_joules_times_time():
    # model: 20 W + 10 W per thread -> cpu 30 W, two threads 40 W
    with veda.config(static_watts=20.0, watts_per_core=10.0):
        fast = [Trial(CPU, [10e-9] * 3), Trial(PAR, [6e-9] * 3)]  # 300 vs 240 nJ*: parallel
        assert score(fast[1], "energy") < score(fast[0], "energy")
        slow = [Trial(CPU, [10e-9] * 3), Trial(PAR, [8e-9] * 3)]  # 300 vs 320: serial
        assert score(slow[0], "energy") < score(slow[1], "energy")
        # EDP: 10*10*30 = 3000 against 8*8*40 = 2560: the parallel candidate
        assert score(slow[1], "edp") < score(slow[0], "edp")
        assert score(slow[1], "adaptive") < score(slow[0], "adaptive")


def test_the_energy_tuner_keeps_a_time_baseline():
    with veda.config(static_watts=20.0, watts_per_core=10.0):
        tuner = Tuner([CPU, PAR], policy="energy")
        times = {CPU: 10e-9, PAR: 8e-9}
        while tuner.choice is None:
            d = tuner.next()
            tuner.observe(d, times[d])
    assert tuner.choice == CPU  # less energy, though slower
    assert tuner.baseline == pytest.approx(10e-9)  # seconds per element, not joules


def test_explain_shows_energy_beside_time(monkeypatch):
    if veda.max_threads() < 2:
        pytest.skip("one worker thread: the serial loop is the only candidate")
    from veda.scheduler import dispatcher

    # a busy machine would leave the serial loop the only candidate, never measured
    monkeypatch.setattr(dispatcher.load, "free_cores", lambda: veda.max_threads())

    @veda.kernel
    def bump(i, x):
        x[i] += 1.0

    x = np.zeros(1 << 16)
    for _ in range(60):
        bump[x.size](x)
    text = str(veda.explain(bump))
    assert "nJ/element" in text and "(model)" in text, text
    assert "energy per element" in veda.explain(bump)._repr_html_()


# -- power cap and temperature -------------------------------------------------------------------


def test_threads_within_a_power_cap():
    def w(t):
        return 20.0 + 10.0 * t

    assert energy.threads_within(45.0, w, most=8) == 2
    assert energy.threads_within(1000.0, w, most=8) == 8
    assert energy.threads_within(5.0, w, most=8) == 1  # never below one thread


def test_max_power_watts_caps_the_rule_and_the_dispatcher():
    if veda.max_threads() < 2:
        pytest.skip("one worker thread: nothing to cap")
    from veda.scheduler import decide, dispatcher

    with veda.config(target="parallel", static_watts=20.0, watts_per_core=10.0):
        assert decide(10**6, veda.get_config(), None).threads == veda.max_threads()
        with veda.config(max_power_watts=35.0):  # one thread: 30 W; two: 40 W
            assert decide(10**6, veda.get_config(), None).threads == 1
            assert dispatcher.free_cores() == 1
        with veda.config(max_power_watts=35.0, threads=2):  # explicit threads are kept
            assert decide(10**6, veda.get_config(), None).threads == 2
        with pytest.warns(RuntimeWarning, match="below the power of one thread"):
            with veda.config(max_power_watts=5.0):
                assert decide(10**6, veda.get_config(), None).threads == 1


def _thermal_tree(root, *millideg):
    for i, t in enumerate(millideg):
        z = os.path.join(root, "class", "thermal", f"thermal_zone{i}")
        os.makedirs(z, exist_ok=True)
        with open(os.path.join(z, "temp"), "w") as fh:
            fh.write(f"{t}\n")


def test_thermal_reads_the_hottest_zone(tmp_path):
    _thermal_tree(str(tmp_path), 45000, 71500)
    t = energy.Thermal(str(tmp_path))
    assert t.unavailable_reason() is None
    assert t.celsius() == pytest.approx(71.5)
    assert veda.hardware.temperature(str(tmp_path)) == pytest.approx(71.5)
    assert energy.Thermal(str(tmp_path / "none")).celsius() is None


def test_the_thermal_governor_steps_down_and_back_with_hysteresis(tmp_path):
    root = str(tmp_path)
    g = energy.ThermalGovernor(most=4, interval=0.0)
    thermal = energy.Thermal(root)
    _thermal_tree(root, 90000)
    assert [g.allowed(thermal, 80.0) for _ in range(5)] == [3, 2, 1, 1, 1]
    _thermal_tree(root, 77000)  # below the threshold, not yet 5 degrees below: hold
    assert g.allowed(thermal, 80.0) == 1
    _thermal_tree(root, 74000)
    assert [g.allowed(thermal, 80.0) for _ in range(4)] == [2, 3, 4, 4]


def test_the_dispatcher_lends_fewer_threads_while_hot(tmp_path, monkeypatch):
    if veda.max_threads() < 2:
        pytest.skip("one worker thread: nothing to lower")
    from veda.scheduler import dispatcher

    root = str(tmp_path)
    _thermal_tree(root, 95000)
    monkeypatch.setattr(energy, "governor", energy.ThermalGovernor(interval=0.0))
    monkeypatch.setattr(dispatcher.load, "free_cores", lambda: veda.max_threads())
    with veda.config(max_temperature=80.0, sysfs_root=root):
        seen = [dispatcher.free_cores() for _ in range(veda.max_threads())]
    assert seen[-1] == 1 and seen == sorted(seen, reverse=True)
    from veda.scheduler import decide

    with veda.config(max_temperature=80.0, sysfs_root=root, policy="fixed", target="parallel"):
        assert decide(10**6, veda.get_config(), None).threads == 1  # the size rule too
    # a scope without max_temperature neither is limited nor resets the governor's count
    assert decide(10**6, veda.get_config().replace(target="parallel"), None).threads == (
        veda.max_threads()
    )
    assert energy.governor.threads == 1


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("watts_per_core", 0, "watts_per_core=0 must be a positive number"),
        ("watts_per_core", -3.0, "positive"),
        ("static_watts", -1.0, "at least 0"),
        ("max_power_watts", 0.0, "max_power_watts=0.0 must be a positive number"),
        ("max_power_watts", math.nan, "positive"),
        ("max_power_watts", "30", "must be a number"),
        ("gpu_watts", True, "must be a number"),
        ("max_temperature", -5, "positive"),
        ("energy", "joulemeter", "unknown energy='joulemeter'; expected auto, rapl, nvml"),
        ("sysfs_root", "", "sysfs_root must be a folder's path"),
    ],
)
def test_bad_energy_settings_name_the_setting(setting, value, words):
    with pytest.raises(veda.ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        with veda.config(**{setting: value}):
            pass


def test_energy_settings_from_the_environment():
    cfg = veda.Config.from_env(
        {
            "VEDA_ENERGY": "auto",
            "VEDA_WATTS_PER_CORE": "4.5",
            "VEDA_MAX_POWER_WATTS": "none",
            "VEDA_MAX_TEMPERATURE": "85",
            "VEDA_SYSFS_ROOT": "/tmp/fake-sys",
        }
    )
    assert (cfg.energy, cfg.watts_per_core, cfg.max_power_watts, cfg.max_temperature) == (
        "auto",
        4.5,
        None,
        85.0,
    )
    assert cfg.sysfs_root == "/tmp/fake-sys"
    with pytest.raises(veda.ConfigError, match="VEDA_STATIC_WATTS='lots': expected a number"):
        veda.Config.from_env({"VEDA_STATIC_WATTS": "lots"})
    assert veda.Config(max_power_watts=np.float32(30)).max_power_watts == 30.0


def test_what_this_machine_offers():
    found = veda.hardware.energy_sources()
    assert found["model"] is None
    for name in ("rapl", "nvml"):
        assert found[name] is None or isinstance(found[name], str)
    if found["rapl"] is None:
        assert energy.reader("rapl", "/sys").joules() >= 0.0
    t = veda.hardware.temperature()
    # The message says what this machine offers (pytest -rA shows it).
    print(f"energy sources here: {found}; temperature: {t}")
    assert t is None or -50.0 < t < 150.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_meters_launches_while_a_parent_thread_held_the_reader(tmp_path):
    import subprocess
    import sys
    import textwrap

    root = str(tmp_path)
    _zone(root, "intel-rapl:0", "package-0", 1)
    code = textwrap.dedent(
        f"""
        import os, threading, numpy as np, veda
        @veda.kernel
        def k(i, x):
            x[i] += 1.0
        x, y, z = np.zeros(1000), np.zeros(1000), np.zeros(1000)
        cfg = dict(sysfs_root={root!r}, energy="rapl", target="cpu")
        with veda.config(**cfg):
            k[1000](x)
        def loop():
            with veda.config(**cfg):
                while True:
                    k[1000](y)
        threading.Thread(target=loop, daemon=True).start()
        for _ in range(10):
            pid = os.fork()
            if pid == 0:
                with veda.config(**cfg):
                    k[1000](z)
                os._exit(0 if z[0] == 1.0 else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
