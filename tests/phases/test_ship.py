"""The governed ship gate: every reason, and what an allowed ship says it would apply."""

from __future__ import annotations

from dataclasses import replace

import pytest

from buildstudio.api.dispatch import Approval, BuildDispatchStatus
from buildstudio.core.review import ReviewFacts, Verdict
from buildstudio.core.ship import NOT_PUSHED, ShipReason, SourceFacts, decide_ship, ship_record
from buildstudio.protocol.records import DiffStat, Outcome

SHA = "5e" * 32
OTHER = "0f" * 32
SOURCE = SourceFacts(
    name="build-1",
    succeeded=True,
    diff_stat=DiffStat(files=2, additions=10, deletions=3),
    diff_bytes=1234,
    patch_config_map="build-1-patch",
    patch_sha256=SHA,
)
REVIEW = ReviewFacts(review="review-1", source="build-1", verdict=Verdict.APPROVE, diff_sha256=SHA)
APPROVAL = Approval(approved_by="alice", comment="ship it")

TABLE = [
    ("source failed", replace(SOURCE, succeeded=False), REVIEW, APPROVAL, ShipReason.SOURCE_NOT_SUCCEEDED),
    ("no changes", replace(SOURCE, diff_bytes=0, diff_stat=DiffStat()), REVIEW, APPROVAL, ShipReason.NO_DIFF),
    ("no patch ConfigMap", replace(SOURCE, patch_config_map=""), REVIEW, APPROVAL, ShipReason.NO_DIFF),
    ("no patch digest", replace(SOURCE, patch_sha256=""), replace(REVIEW, diff_sha256=""), APPROVAL,
     ShipReason.NO_DIFF),
    ("patch capped", replace(SOURCE, patch_truncated=True), REVIEW, APPROVAL, ShipReason.PATCH_TRUNCATED),
    ("never reviewed", SOURCE, None, APPROVAL, ShipReason.REVIEW_MISSING),
    ("review of another dispatch", SOURCE, replace(REVIEW, source="build-2"), APPROVAL, ShipReason.REVIEW_MISSING),
    ("unclear verdict", SOURCE, replace(REVIEW, verdict=Verdict.UNCLEAR), APPROVAL, ShipReason.REVIEW_MISSING),
    ("review of another diff", SOURCE, replace(REVIEW, diff_sha256=OTHER), APPROVAL, ShipReason.REVIEW_STALE),
    ("review without digest", SOURCE, replace(REVIEW, diff_sha256=""), APPROVAL, ShipReason.REVIEW_STALE),
    ("stale beats its verdict", SOURCE, replace(REVIEW, verdict=Verdict.REQUEST_CHANGES, diff_sha256=OTHER),
     APPROVAL, ShipReason.REVIEW_STALE),
    ("changes requested", SOURCE, replace(REVIEW, verdict=Verdict.REQUEST_CHANGES), APPROVAL,
     ShipReason.REVIEW_REQUESTED_CHANGES),
    ("no approval", SOURCE, REVIEW, None, ShipReason.APPROVAL_REQUIRED),
    ("blank approver", SOURCE, REVIEW, Approval(approved_by="  "), ShipReason.APPROVAL_REQUIRED),
    ("all there", SOURCE, REVIEW, APPROVAL, ShipReason.APPROVED),
]


@pytest.mark.parametrize(("case", "source", "review", "approval", "reason"), TABLE, ids=[t[0] for t in TABLE])
def test_ship_gate_table(
    case: str, source: SourceFacts, review: ReviewFacts | None, approval: Approval | None, reason: ShipReason
) -> None:
    decision = decide_ship(source, review, approval)
    assert decision.reason == reason
    assert decision.allow is (reason == ShipReason.APPROVED)
    assert decision.message and "\n" not in decision.message
    assert (decision.plan is not None) is decision.allow
    assert (ship_record(decision) is not None) is decision.allow


def test_every_reason_is_covered_and_camel_case() -> None:
    assert {t[4] for t in TABLE} == set(ShipReason)
    assert all(r.value[0].isupper() and r.value.isalnum() for r in ShipReason)


def test_stale_review_names_both_digests() -> None:
    msg = decide_ship(SOURCE, replace(REVIEW, diff_sha256=OTHER), APPROVAL).message
    assert OTHER[:12] in msg and SHA[:12] in msg


def test_allowed_record_says_exactly_what_would_be_applied_and_that_nothing_is_pushed() -> None:
    decision = decide_ship(SOURCE, REVIEW, APPROVAL)
    assert decision.plan is not None and decision.plan.approved_by == "alice" and decision.plan.review == "review-1"
    record = ship_record(decision, started_at="2026-11-25T10:00:00Z", finished_at="2026-11-25T10:00:01Z")
    assert record is not None
    assert record.outcome == Outcome.COMPLETED
    for part in ("alice", "review-1", "build-1-patch", SHA, "2 files, +10/-3", NOT_PUSHED):
        assert part in record.message
    assert "does not push" in NOT_PUSHED and NOT_PUSHED not in decision.message  # the cluster pushes
    assert record.patch.sha256 == SHA and record.diff_stat.additions == 10 and record.diff_bytes == 1234


def test_source_facts_from_status_and_patch_annotations() -> None:
    status = BuildDispatchStatus.model_validate({
        "phase": "Succeeded", "diffBytes": 1234, "diffStat": {"files": 2, "additions": 10, "deletions": 3},
        "patchConfigMap": "build-1-patch",
    })
    ann = {"buildstudio.dpf.dev/patch-sha256": SHA, "buildstudio.dpf.dev/patch-truncated": "false"}
    assert SourceFacts.from_status("build-1", status, ann) == SOURCE
    assert decide_ship(SourceFacts.from_status("build-1", status, ann), REVIEW, APPROVAL).allow
    missing_cm = SourceFacts.from_status("build-1", status, None)
    assert decide_ship(missing_cm, REVIEW, APPROVAL).reason == ShipReason.NO_DIFF
    capped = SourceFacts.from_status("build-1", status, {**ann, "buildstudio.dpf.dev/patch-truncated": "true"})
    assert decide_ship(capped, REVIEW, APPROVAL).reason == ShipReason.PATCH_TRUNCATED
    running = SourceFacts.from_status("build-1", status.model_copy(update={"phase": "Running"}), ann)
    assert decide_ship(running, REVIEW, APPROVAL).reason == ShipReason.SOURCE_NOT_SUCCEEDED
