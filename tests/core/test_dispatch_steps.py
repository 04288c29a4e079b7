"""The decisions the dispatch daemon used to make itself, now in ``core.machine``: which ship
refusals end a ship, the entry and queue steps as one write, the pod and containers of an attempt,
the queue deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest

from buildstudio.core import machine as m
from buildstudio.core.ship import ShipDecision, ShipReason
from tests.core.test_machine import ADMIT, READY, T0, S, cond, dispatch

SHIP = dispatch(phase="ship", repo=None, source={"dispatch": "fix"}, approval={"approvedBy": "alice"})
FINAL = {ShipReason.SOURCE_NOT_SUCCEEDED, ShipReason.NO_DIFF, ShipReason.PATCH_TRUNCATED}


@pytest.mark.parametrize("reason", list(ShipReason))
def test_only_refusals_no_review_or_approval_can_lift_are_final(reason: ShipReason) -> None:
    assert m.ship_refusal_is_final(reason) == (reason in FINAL)


@pytest.mark.parametrize("reason", [ShipReason.NO_DIFF, ShipReason.REVIEW_MISSING])
def test_the_ship_gate_ends_a_ship_only_on_a_final_refusal(reason: ShipReason) -> None:
    d = SHIP
    step = m.ship_gate(d, ShipDecision(False, reason, "no"), T0, S)
    expected = m.ship(d, False, reason, "no", T0, S, final=reason in FINAL)
    assert step == expected
    assert m.stage_of(step.status) == ("finished" if reason in FINAL else "entry")


def test_an_allowed_ship_launches_its_pod() -> None:
    d = SHIP
    step = m.ship_gate(d, ShipDecision(True, ShipReason.APPROVED, "ship fix"), T0, S)
    assert any(isinstance(a, m.Launch) for a in step.actions)
    assert cond(step.status, "Admitted")["reason"] == "Approved"


def test_entered_with_a_free_slot_announces_admitted_only() -> None:
    first = m.enter(dispatch(), ADMIT, READY, T0, S)
    second = m.queued(dispatch(first.status), m.Slot(admit=True), T0, S)
    step = m.entered(first, second)
    assert step.status == second.status and step.wake_after == second.wake_after
    assert [e.reason for e in step.emitted()] == ["Admitted"]
    assert sum(isinstance(a, m.Launch) for a in step.actions) == 1


def test_entered_without_a_slot_keeps_the_queued_event() -> None:
    first = m.enter(dispatch(), ADMIT, READY, T0, S)
    second = m.queued(dispatch(first.status), m.Slot(admit=False, position=3), T0, S)
    step = m.entered(first, second)
    assert [e.reason for e in step.emitted()] == ["Queued"]
    assert step.status["queuePosition"] == 3 and step.actions == first.actions + second.actions


def test_the_queue_deadline_counts_from_creation() -> None:
    d = dispatch(timeouts={"queueSeconds": 90})
    assert m.queue_deadline(d) == T0 + timedelta(seconds=90)


def test_the_current_pod_is_the_recorded_one_else_the_first_attempts() -> None:
    assert m.current_pod(dispatch()) == "fix-1-1"
    assert m.current_pod(dispatch({"attempt": 2})) == "fix-1-2"
    assert m.current_pod(dispatch({"attempt": 2, "podName": "elsewhere"})) == "elsewhere"


@pytest.mark.parametrize(
    ("phase", "work", "result"),
    [("build", "agent", "reporter"), ("plan", "reporter", "reporter"), ("ship", "push", "push")],
)
def test_whose_log_shows_progress_and_whose_is_the_result(phase: str, work: str, result: str) -> None:
    assert m.work_container(phase) == work and m.result_container(work) == result


def test_a_pod_counts_as_seen_once_running_moved_past_launching() -> None:
    launching = m.queued(dispatch(), m.Slot(admit=True), T0, S)
    assert not m.pod_was_seen({}) and not m.pod_was_seen(launching.status)
    pending = m.launched(launching, T0, 1)
    assert m.pod_was_seen(pending.status)
