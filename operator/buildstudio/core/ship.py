"""The governed ship gate (pure): a diff is applied only after a review of that very diff and a human approval.

Checks, in order, each refusal with a stable CamelCase reason (the dispatch condition's reason):
``SourceNotSucceeded`` → ``NoDiff`` → ``PatchTruncated`` → ``ReviewMissing`` → ``ReviewStale`` →
``ReviewRequestedChanges`` → ``ApprovalRequired``; all passed: ``Approved``. A review counts only
when it judged this source and its diff sha256 equals the source patch's sha256: a review of an
earlier or different diff is stale, whatever it said. A review whose verdict is unclear is no
review (``ReviewMissing``).

Allowed means the message says exactly what is applied (patch ConfigMap, sha256, +a/-d). In the
cluster the operator then pushes it from a ship pod (``core/shippod.py``, ``runner/push.py``); the
local record (``ship_record``) still only says what would be applied, and that it was not pushed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from buildstudio.api.common import API_GROUP
from buildstudio.api.dispatch import Approval, BuildDispatchStatus
from buildstudio.core.review import ReviewFacts, Verdict
from buildstudio.protocol.records import DiffStat, Outcome, Patch, ResultRecord

NOT_PUSHED = "not pushed: local mode does not push to the git remote in this version"


class ShipReason(enum.StrEnum):
    SOURCE_NOT_SUCCEEDED = "SourceNotSucceeded"
    NO_DIFF = "NoDiff"
    PATCH_TRUNCATED = "PatchTruncated"
    REVIEW_MISSING = "ReviewMissing"
    REVIEW_STALE = "ReviewStale"
    REVIEW_REQUESTED_CHANGES = "ReviewRequestedChanges"
    APPROVAL_REQUIRED = "ApprovalRequired"
    APPROVED = "Approved"


@dataclass(frozen=True)
class SourceFacts:
    """What the gate needs of the dispatch to ship."""

    name: str
    succeeded: bool
    diff_stat: DiffStat
    diff_bytes: int
    patch_config_map: str  # the owned ConfigMap holding the whole patch
    patch_sha256: str  # its patch-sha256 annotation
    patch_truncated: bool = False  # its patch-truncated annotation: only a prefix was stored

    @classmethod
    def from_status(
        cls, name: str, status: BuildDispatchStatus, patch_annotations: Mapping[str, str] | None = None
    ) -> SourceFacts:
        """From the source's status and its patch ConfigMap's annotations (None: no ConfigMap found)."""
        ann = patch_annotations or {}
        stat = status.diff_stat
        return cls(
            name=name,
            succeeded=status.phase == "Succeeded",
            diff_stat=DiffStat(
                files=stat.files, additions=stat.additions, deletions=stat.deletions, binary_files=stat.binary_files
            )
            if stat is not None
            else DiffStat(),
            diff_bytes=status.diff_bytes,
            patch_config_map=status.patch_config_map if patch_annotations is not None else "",
            patch_sha256=ann.get(f"{API_GROUP}/patch-sha256", ""),
            patch_truncated=ann.get(f"{API_GROUP}/patch-truncated", "false") == "true",
        )


@dataclass(frozen=True)
class ShipPlan:
    """Exactly what would be applied."""

    source: str
    patch_config_map: str
    sha256: str
    diff_stat: DiffStat
    diff_bytes: int
    review: str
    approved_by: str
    comment: str = ""


@dataclass(frozen=True)
class ShipDecision:
    allow: bool
    reason: ShipReason
    message: str  # one line, for humans
    plan: ShipPlan | None = None


def _short(sha: str) -> str:
    return sha[:12] if sha else "none"


def _size(stat: DiffStat) -> str:
    return f"{stat.files} files, +{stat.additions}/-{stat.deletions}"


def decide_ship(source: SourceFacts, review: ReviewFacts | None, approval: Approval | None) -> ShipDecision:
    """Allow or refuse shipping ``source``'s diff under the latest ``review`` of it and ``approval``."""

    def refuse(reason: ShipReason, message: str) -> ShipDecision:
        return ShipDecision(False, reason, message)

    if not source.succeeded:
        return refuse(ShipReason.SOURCE_NOT_SUCCEEDED, f"source dispatch {source.name} has not succeeded")
    if source.diff_bytes <= 0 and source.diff_stat.files == 0:
        return refuse(ShipReason.NO_DIFF, f"source dispatch {source.name} changed nothing: no diff to ship")
    if not source.patch_config_map or not source.patch_sha256:
        return refuse(
            ShipReason.NO_DIFF,
            f"source dispatch {source.name} has no stored patch (ConfigMap or sha256 "
            "missing): nothing that could be applied",
        )
    if source.patch_truncated:
        return refuse(
            ShipReason.PATCH_TRUNCATED,
            f"the patch of {source.name} in ConfigMap "
            f"{source.patch_config_map} is truncated: a partial patch is never applied",
        )
    if review is None or review.source != source.name:
        return refuse(ShipReason.REVIEW_MISSING, f"no review of {source.name}: run a review dispatch on it first")
    if review.diff_sha256 != source.patch_sha256:
        return refuse(
            ShipReason.REVIEW_STALE,
            f"review {review.review} judged diff {_short(review.diff_sha256)}, "
            f"not the patch of {source.name} ({_short(source.patch_sha256)}): review it again",
        )
    if review.verdict == Verdict.REQUEST_CHANGES:
        return refuse(ShipReason.REVIEW_REQUESTED_CHANGES, f"review {review.review} requested changes to {source.name}")
    if review.verdict != Verdict.APPROVE:
        return refuse(
            ShipReason.REVIEW_MISSING, f"review {review.review} of {source.name} gave no clear verdict: review it again"
        )
    if approval is None or not approval.approved_by.strip():
        return refuse(
            ShipReason.APPROVAL_REQUIRED,
            f"review {review.review} approved {source.name}; shipping "
            "also needs spec.approval (approvedBy) from a human",
        )
    plan = ShipPlan(
        source=source.name,
        patch_config_map=source.patch_config_map,
        sha256=source.patch_sha256,
        diff_stat=source.diff_stat,
        diff_bytes=source.diff_bytes,
        review=review.review,
        approved_by=approval.approved_by.strip(),
        comment=approval.comment,
    )
    return ShipDecision(True, ShipReason.APPROVED, plan_message(plan), plan)


def plan_message(plan: ShipPlan) -> str:
    return (
        f"approved by {plan.approved_by} after review {plan.review}: patch ConfigMap "
        f"{plan.patch_config_map} (sha256 {plan.sha256}, {_size(plan.diff_stat)}) of {plan.source}"
    )


def ship_record(decision: ShipDecision, *, started_at: str = "", finished_at: str = "") -> ResultRecord | None:
    """The ship dispatch's result record when allowed (None when refused: the reason is the condition)."""
    plan = decision.plan
    if not decision.allow or plan is None:
        return None
    return ResultRecord(
        outcome=Outcome.COMPLETED,
        message=f"{decision.message}; {NOT_PUSHED}",
        diff_stat=plan.diff_stat,
        diff_bytes=plan.diff_bytes,
        patch=Patch(sha256=plan.sha256, bytes=plan.diff_bytes),
        started_at=started_at,
        finished_at=finished_at,
    )
