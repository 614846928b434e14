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
        "target": "parallel",
        "threads": veda.max_threads(),
        "schedule": "dynamic",
        "chunk": 97,
        "block": 0,
    }
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
    [
        ("{broken", "not valid JSON"),
        ('{"format": "other"}', "not a veda record"),
        ('{"format": "veda-record", "version": 99, "launches": []}', "newer veda"),
        ('{"format": "veda-record", "version": 1, "launches": [{"kernel": 1}]}', "damaged"),
    ],
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
    path.write_text(
        json.dumps(
            {
                "format": "veda-record",
                "version": 1,
                "deterministic": False,
                "seed": None,
                "launches": [
                    {
                        "kernel": f"{__name__}.inc",
                        "domain": [1000],
                        "decision": ["parallel", 1, "interleaved", 7],
                    }
                ],
            }
        )
    )
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
        "cuda", 1, "grid", 0, block=256
    )
    assert (
        _decision({"target": "cuda", "block": 128, "schedule": "grid", "chunk": 0}, 2).block == 128
    )


GOOD = {"target": "cpu", "threads": 1, "schedule": "static", "chunk": 1, "block": 0}


@pytest.mark.parametrize(
    "change, word",
    [
        ({"decision": ["parallel", "two", "static", 1]}, "not a decision"),
        ({"decision": {"threads": 2}}, "needs a target"),
        ({"decision": "cpu"}, "not a decision"),
        ({"decision": {**GOOD, "threads": -9}}, "at least 1"),
        ({"domain": 50}, "domain is 50"),
        ({"domain": None}, "domain"),
        ({"domain": [4, -1]}, "domain"),
        ({"kernel": 7}, "kernel"),
    ],
)
def test_damaged_launches_are_refused_when_read(tmp_path, change, word):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "format": "veda-record",
                "version": 2,
                "launches": [{"kernel": "m.k", "domain": [4], "decision": GOOD, **change}],
            }
        )
    )
    with pytest.raises(veda.ReplayError, match=f"damaged.*{word}"):
        veda.replay(path)


@pytest.mark.parametrize(
    "header, word",
    [
        ({"version": 0}, "version is 0"),
        ({"version": "2"}, "version is '2'"),
        ({"version": True}, "version is True"),
        ({}, "version is None"),
        ({"version": 2, "deterministic": "no"}, "'deterministic' is 'no'"),
        ({"version": 2, "seed": -1}, "'seed' is -1"),
    ],
)
def test_damaged_headers_are_refused_when_read(tmp_path, header, word):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "veda-record", **header, "launches": []}))
    with pytest.raises(veda.ReplayError, match=word):
        veda.replay(path)


def test_paths_that_cannot_hold_a_record_are_refused(tmp_path):
    with pytest.raises(veda.ReplayError, match="is a directory"):
        with veda.record(tmp_path):
            pass
    with pytest.raises(veda.ReplayError, match="path must be a str"):
        veda.record(123)
    with pytest.raises(veda.ReplayError, match="path must be a str"):
        veda.replay(None)
    scope = veda.record(tmp_path / "twice.json")
    with scope:
        with pytest.raises(veda.ReplayError, match="open already"):
            with scope:
                pass


def test_nested_record_and_replay_both_work(tmp_path):
    """A record inside a replay notes the forced launches; a replay inside a record forces
    them and the record notes them."""
    x = np.zeros(1000)
    first, inner, outer = tmp_path / "first.json", tmp_path / "inner.json", tmp_path / "outer.json"
    with veda.record(first):
        veda.launch(inc, 1000, x, target="parallel", threads=1, schedule="interleaved", chunk=7)
    recorded = json.loads(first.read_text())["launches"]
    with veda.replay(first), veda.record(inner):
        inc[1000](x)
    with veda.record(outer), veda.replay(first):
        inc[1000](x)
    for path in (inner, outer):
        assert [e["decision"] for e in json.loads(path.read_text())["launches"]] == [
            e["decision"] for e in recorded
        ]


def test_a_decision_this_machine_cannot_run_is_a_clear_error(tmp_path):
    path = tmp_path / "far.json"
    x = np.zeros(1000)
    launches = [
        {
            "kernel": f"{__name__}.inc",
            "domain": [1000],
            "decision": {
                "target": "parallel",
                "threads": veda.max_threads() + 1,
                "schedule": "static",
                "chunk": 1,
                "block": 0,
            },
        },
        {
            "kernel": f"{__name__}.inc",
            "domain": [1000],
            "decision": {
                "target": "tpu",
                "threads": 1,
                "schedule": "static",
                "chunk": 1,
                "block": 0,
            },
        },
    ]
    for entry, word in zip(launches, ("threads", "unknown target='tpu'")):
        path.write_text(json.dumps({"format": "veda-record", "version": 2, "launches": [entry]}))
        with pytest.raises(veda.LaunchError, match=word):
            with veda.replay(path):
                inc[1000](x)


def test_a_launch_refused_by_its_checks_is_neither_recorded_nor_replayed(tmp_path):
    """Both sides count a launch when it starts running: one refused before (a read-only
    output) takes no place in the record, and none in the replay."""
    path = tmp_path / "run.json"
    readonly = np.zeros(1000)
    readonly.flags.writeable = False
    x = np.zeros(1000)
    for scope in (veda.record, veda.replay):
        with scope(path):
            with pytest.raises(veda.LaunchError, match="read-only"):
                inc[1000](readonly)
            inc[1000](x)
    assert len(json.loads(path.read_text())["launches"]) == 1
    np.testing.assert_array_equal(x, 2.0)


def test_an_interceptor_that_forces_what_is_not_a_decision_is_refused():
    from veda._launch import Interceptor, add_interceptor, remove_interceptor

    class Bad(Interceptor):
        def redirect(self, kernel, dims):
            return "cpu"

    bad = add_interceptor(Bad())
    try:
        with pytest.raises(veda.LaunchError, match="redirect.*'cpu', not a veda.targets.Decision"):
            inc[10](np.zeros(10))
    finally:
        remove_interceptor(bad)
    x = np.zeros(10)
    inc[10](x)  # uninstalled: launches as before
    assert x.sum() == 10
