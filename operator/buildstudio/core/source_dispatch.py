"""The source dispatch a review or a ship works on, as read from the API: what the reviewer
reads of it, and which dispatches count as its reviews. (``handlers/phases.py`` reads them.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildstudio.api.common import API_GROUP
from buildstudio.api.dispatch import BuildDispatchStatus
from buildstudio.core.review import ReviewFacts, Verdict
from buildstudio.core.source import decode_patch, from_status
from buildstudio.protocol.spec import ReviewInput

# The review prompt is bounded by the model's context anyway; this keeps runner.json well inside
# a ConfigMap's 1 MiB.
REVIEW_DIFF_BYTES = 512 * 1024


@dataclass(frozen=True)
class Source:
    name: str
    status: BuildDispatchStatus
    patch_annotations: dict[str, str] | None  # None: no patch ConfigMap
    patch_b64: str

    @property
    def succeeded(self) -> bool:
        return self.status.phase == "Succeeded"


def review_input(source: Source) -> ReviewInput:
    """What the reviewer reads: the whole stored patch when it decodes, else the status excerpt."""
    ann = source.patch_annotations or {}
    patch: str | None = None
    cut = False
    if source.patch_b64:
        try:
            patch, cut = decode_patch(source.patch_b64, max_bytes=REVIEW_DIFF_BYTES)
        except ValueError:
            patch = None
    src = from_status(
        source.name,
        source.status,
        patch=patch,
        patch_sha256=ann.get(f"{API_GROUP}/patch-sha256", ""),
        patch_truncated=cut or ann.get(f"{API_GROUP}/patch-truncated") == "true",
    )
    return ReviewInput(
        source=src.dispatch,
        diff=src.diff,
        diff_bytes=src.total_bytes,
        diff_truncated=src.diff_truncated,
        files=src.diff_stat.files,
        additions=src.diff_stat.additions,
        deletions=src.diff_stat.deletions,
        final_text=src.final_text,
        sha256=src.digest,
    )


def review_facts(obj: Mapping[str, Any]) -> tuple[str, ReviewFacts] | None:
    """(finishedAt, facts) of a dispatch object that counts as a review, else None. A review counts
    only from a succeeded dispatch whose spec says it is a review of the source its status names:
    a status is written from a sandbox's record, a spec by its author."""
    status = obj.get("status") or {}
    review = status.get("review") or {}
    spec = obj.get("spec") or {}
    if not review.get("source") or status.get("phase") != "Succeeded":
        return None
    if spec.get("phase") != "review" or (spec.get("source") or {}).get("dispatch") != review.get("source"):
        return None
    raw = str(review.get("verdict") or "")
    verdict = Verdict(raw) if raw in Verdict.__members__.values() else Verdict.UNCLEAR
    facts = ReviewFacts(
        review=str((obj.get("metadata") or {}).get("name")),
        source=str(review["source"]),
        verdict=verdict,
        diff_sha256=str(review.get("diffSha256") or ""),
    )
    return str(status.get("finishedAt") or ""), facts
