"""Record and replay: decisions are saved and forced; divergence and bad files are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import veda


@veda.kernel
def inc(i, x):
    x[i] += 1.0


@veda.kernel(reduce="sum")
def total(i, x):
    return x[i]


def _program(x, y):
    inc[x.size](x)
    veda.launch(inc, x.size, x, target="parallel", schedule="dynamic", chunk=97)
    return veda.launch(total, y.size, y, threads=1, schedule="guided")


def test_record_then_replay_forces_the_same_decisions(tmp_path):
    path = tmp_path / "run.json"
    x, y = np.zeros(100_000), np.random.default_rng(0).random(50_000)
    with veda.deterministic(seed=9):
        with veda.record(path):
            first = _program(x, y)
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and doc["deterministic"] is True and doc["seed"] == 9
    assert [e["kernel"].rsplit(".", 1)[-1] for e in doc["launches"]] == ["inc", "inc", "total"]
    assert doc["launches"][1]["decision"] == {
        "target": "parallel", "threads": veda.max_threads(), "schedule": "dynamic", "chunk": 97,
        "block": 0}
    # replay restores the mode and seed for its duration and forces each decision
    seen = []

    class Watch:
        def on_launch_end(self, e):
            seen.append(veda.targets.Decision(e.target, e.threads, e.schedule, e.chunk, e.block))

    watch = veda.telemetry.add_listener(Watch())
    try:
        with veda.replay(path):
            assert veda.get_config().deterministic and veda.get_config().seed == 9
            again = _program(x, y)
    finally:
        veda.telemetry.remove_listener(watch)
    assert not veda.get_config().deterministic
    assert seen == [veda.targets.Decision(**e["decision"]) for e in doc["launches"]]
    assert again.tobytes() == first.tobytes()


def test_divergence_names_the_first_launch_that_differs(tmp_path):
    path = tmp_path / "run.json"
    x = np.zeros(1000)
    with veda.record(path):
        inc[1000](x)
        inc[1000](x)
    with pytest.raises(veda.ReplayError, match=r"launch #2 diverges.*\(1000,\).*\(500,\)"):
        with veda.replay(path):
            inc[1000](x)
            inc[500](x)
    with pytest.raises(veda.ReplayError, match="only 1 of 2"):
        with veda.replay(path):
            inc[1000](x)
    with pytest.raises(veda.ReplayError, match="launch #3"):
        with veda.replay(path):
            for _ in range(3):
                inc[1000](x)


@pytest.mark.parametrize(
    "content, word",
    [("{broken", "not valid JSON"), ('{"format": "other"}', "not a veda record"),
     ('{"format": "veda-record", "version": 99, "launches": []}', "newer veda"),
     ('{"format": "veda-record", "version": 1, "launches": [{"kernel": 1}]}', "damaged")],
)
def test_bad_record_files_are_refused(tmp_path, content, word):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(veda.ReplayError, match=word):
        veda.replay(path)


def test_unwritable_record_path():
    with pytest.raises(veda.ReplayError, match="cannot write"):
        with veda.record("/nonexistent-dir/run.json"):
            pass


def test_version_1_records_still_replay(tmp_path):
    """Version 1 wrote decisions as (target, threads, schedule, chunk) lists, with a GPU launch's
    block size in the threads field."""
    from veda._record import _decision

    path = tmp_path / "v1.json"
    x = np.zeros(1000)
    path.write_text(json.dumps({
        "format": "veda-record", "version": 1, "deterministic": False, "seed": None,
        "launches": [{"kernel": f"{__name__}.inc", "domain": [1000],
                      "decision": ["parallel", 1, "interleaved", 7]}]}))
    seen = []

    class Watch(veda.telemetry.Listener):
        def on_launch_end(self, e):
            seen.append((e.target, e.threads, e.schedule, e.chunk))

    watch = veda.telemetry.add_listener(Watch())
    try:
        with veda.replay(path):
            inc[1000](x)
    finally:
        veda.telemetry.remove_listener(watch)
    assert seen == [("parallel", 1, "interleaved", 7)]
    assert _decision(["cuda", 256, "grid", 0], 1) == veda.targets.Decision(
        "cuda", 1, "grid", 0, block=256)
    assert _decision({"target": "cuda", "block": 128, "schedule": "grid", "chunk": 0}, 2).block \
        == 128


@pytest.mark.parametrize(
    "decision, word",
    [(["parallel", "two", "static", 1], "damaged"), ({"threads": 2}, "damaged"),
     ("cpu", "damaged")],
)
def test_damaged_decisions_are_refused_when_read(tmp_path, decision, word):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "veda-record", "version": 2, "launches": [
        {"kernel": "m.k", "domain": [4], "decision": decision}]}))
    with pytest.raises(veda.ReplayError, match=word):
        veda.replay(path)


def test_a_decision_this_machine_cannot_run_is_a_clear_error(tmp_path):
    path = tmp_path / "far.json"
    x = np.zeros(1000)
    launches = [{"kernel": f"{__name__}.inc", "domain": [1000],
                 "decision": {"target": "parallel", "threads": veda.max_threads() + 1,
                              "schedule": "static", "chunk": 1, "block": 0}},
                {"kernel": f"{__name__}.inc", "domain": [1000],
                 "decision": {"target": "tpu", "threads": 1, "schedule": "static", "chunk": 1,
                              "block": 0}}]
    for entry, word in zip(launches, ("threads", "unknown target='tpu'")):
        path.write_text(json.dumps({"format": "veda-record", "version": 2,
                                    "launches": [entry]}))
        with pytest.raises(veda.LaunchError, match=word):
            with veda.replay(path):
                inc[1000](x)
