"""Admission queue, TTL, child names and conditions: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from buildstudio.core import names
from buildstudio.core.admission import Entry, Limits, State, plan
from buildstudio.core.conditions import set_condition
from buildstudio.core.ttl import seconds_until_expiry

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def e(name: str, state: State, model: str = "m1", engine: str = "opencode") -> Entry:
    created = f"2026-11-25T10:00:0{name[-1]}Z"
    return Entry(key=("ns", name), engine=engine, model=model, created=created, state=state)


def test_limit_one_admits_first_only_and_positions_the_rest() -> None:
    p = plan([e("d3", "waiting"), e("d1", "waiting"), e("d2", "waiting")], {"opencode": Limits(1, 1)})
    assert p.admit == {("ns", "d1")}
    assert p.positions == {("ns", "d2"): 1, ("ns", "d3"): 2}
    assert p.waiting == 2


def test_running_dispatch_holds_the_slot() -> None:
    p = plan([e("d1", "running"), e("d2", "waiting")], {"opencode": Limits(1, 1)})
    assert p.admit == frozenset() and p.positions == {("ns", "d2"): 1}
    p = plan([e("d1", "other"), e("d2", "waiting")], {"opencode": Limits(1, 1)})
    assert p.admit == {("ns", "d2")}


def test_per_model_limit_lets_other_models_pass() -> None:
    entries = [e("d1", "running", "m1"), e("d2", "waiting", "m1"), e("d3", "waiting", "m2")]
    p = plan(entries, {"opencode": Limits(max_running=4, max_running_per_model=1)})
    assert p.admit == {("ns", "d3")} and p.positions == {("ns", "d2"): 1}


def test_engines_are_independent() -> None:
    entries = [e("d1", "running"), e("d2", "waiting", engine="claude")]
    assert plan(entries, {"opencode": Limits(1, 1), "claude": Limits(1, 1)}).admit == {("ns", "d2")}


def test_ttl() -> None:
    finished = {"conditions": [{"type": "Succeeded", "status": "True"}], "finishedAt": "2026-11-25T10:00:00Z"}
    assert seconds_until_expiry(finished, None, T0) is None
    assert seconds_until_expiry({"conditions": []}, 10, T0) is None
    assert seconds_until_expiry(finished, 60, T0 + timedelta(seconds=20)) == 40
    assert seconds_until_expiry(finished, 0, T0) == 0


def test_child_names_are_deterministic_and_bounded() -> None:
    assert names.pod_name("fix-1", 2) == "fix-1-2"
    long = "a" * 80
    n = names.pod_name(long, 1)
    assert len(n) <= 63 and n == names.pod_name(long, 1) and n.endswith("-1")
    assert names.pod_name(long, 1) != names.pod_name("a" * 81, 1)
    assert len(names.egress_name("b" * 63)) <= 63
    assert len(names.label_value("c" * 100)) <= 63


def test_condition_transition_time_moves_only_on_status_change() -> None:
    conds = set_condition([], "Running", "Unknown", "PodPending", "waiting", now=T0, generation=1)
    later = T0 + timedelta(seconds=30)
    same = set_condition(conds, "Running", "Unknown", "ContainerCreating", "multi\nline", now=later, generation=2)
    assert same[0]["lastTransitionTime"] == "2026-11-25T10:00:00Z"
    assert same[0]["reason"] == "ContainerCreating" and same[0]["message"] == "multi line"
    assert same[0]["observedGeneration"] == 2
    moved = set_condition(same, "Running", "True", "PodRunning", "ok", now=later, generation=2)
    assert moved[0]["lastTransitionTime"] == "2026-11-25T10:00:30Z"
