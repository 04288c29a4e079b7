"""A BuildEngine's presence and its seeding from the registry (``core.presence``, ``core.seeding``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core import presence as pr
from buildstudio.core.gate import EngineState
from buildstudio.core.seeding import Seed, merge_patch_between, seed

T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)
RAW = {
    "engine": "opencode",
    "endpoint": "local",
    "version": "1.18.33",
    "command": ["opencode", "run"],
    "modelService": {"baseURL": "http://m:1/v1"},
    "models": [{"id": "q", "tier": "strong"}],
}
SPEC = BuildEngineSpec.model_validate(RAW)


def test_engine_state_from_the_object() -> None:
    state = pr.engine_state("opencode", RAW, {"present": True})
    assert state == EngineState("opencode", SPEC, present=True)
    assert pr.engine_state("broken", {"engine": 3}, {}) is None


def test_probe_once_per_image_and_generation() -> None:
    engine = EngineState("opencode", SPEC, present=False)
    image, command, fp = pr.probe_plan(engine, 1, "img:1")
    assert command == ["opencode", "--version"] and image == "img:1"
    assert pr.probe_plan(engine, 2, "img:1")[2] != fp
    done = {
        "present": True,
        "presence": {
            "method": "probe-pod",
            "image": "img:1",
            "observedGeneration": 1,
            "checkedAt": "2026-11-25T10:00:00Z",
        },
    }
    assert not pr.needs_probe(done, 1, "img:1", T0)
    assert pr.needs_probe(done, 2, "img:1", T0) and pr.needs_probe(done, 1, "img:2", T0)
    failed = {**done, "present": False}
    assert not pr.needs_probe(failed, 1, "img:1", T0 + timedelta(seconds=10))
    assert pr.needs_probe(failed, 1, "img:1", T0 + timedelta(seconds=301))
    assert pr.parse_version("opencode 1.18.33\n") == "1.18.33"


def test_probe_outcome() -> None:
    assert pr.probe_outcome("Succeeded", "opencode 1.2.3", "img", ["oc", "-v"]) == (
        True,
        "1.2.3",
        "`oc -v` in img printed 1.2.3",
    )
    present, version, message = pr.probe_outcome("Failed", "", "img", ["oc", "-v"])
    assert not present and version == "" and message == "`oc -v` failed in img: Failed"


def test_presence_status_and_what_changed() -> None:
    status = pr.presence_status(
        {}, present=True, method="credential-secret", message="m", image="", version="1", generation=3, now=T0
    )
    assert status["present"] and status["observedGeneration"] == 3
    assert status["conditions"][0]["type"] == "Present" and status["conditions"][0]["status"] == "True"
    assert pr.presence_unchanged(status, True, "m") and not pr.presence_unchanged(status, False, "m")
    assert pr.credential_message("ns/key", False) == "credential Secret ns/key not found"
    assert pr.changed_fields(status, {**status, "version": "2"}) == {"version": "2"}


def test_merge_patch_between_removes_and_changes() -> None:
    old = {"a": 1, "b": {"c": 1, "d": 2}, "gone": True}
    new = {"a": 1, "b": {"c": 3}, "added": [1]}
    assert merge_patch_between(old, new) == {"b": {"c": 3, "d": None}, "added": [1], "gone": None}


def test_seeding_creates_updates_ours_and_leaves_users_alone() -> None:
    label = "managed"
    wanted = {"metadata": {"labels": {label: "true"}}, "spec": {"a": 1}}
    assert seed(None, wanted, label) == Seed("create")
    assert seed({"metadata": {}, "spec": {"a": 2}}, wanted, label) == Seed("user-made")
    assert seed(wanted, wanted, label) == Seed("current")
    ours = {"metadata": {"labels": {label: "true"}}, "spec": {"a": 2, "b": 1}}
    assert seed(ours, wanted, label) == Seed("update", {"a": 1, "b": None})
