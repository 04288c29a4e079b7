"""Reads for the review and ship phases: the source dispatch, its stored patch, its reviews.

The decisions themselves are pure (``phases.ship.decide_ship``, ``phases.source``); this
module only gathers their inputs from the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from buildstudio.api.dispatch import BuildDispatchStatus
from buildstudio.kube import Kube
from buildstudio.phases import ReviewFacts, SourceFacts, decide_ship, decode_patch, from_status, latest_review
from buildstudio.phases.review import Verdict
from buildstudio.phases.ship import ShipDecision
from buildstudio.pins import API_GROUP
from buildstudio.runner.spec import ReviewInput

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


async def read_source(kube: Kube, namespace: str, name: str) -> Source | None:
    obj = await kube.get("BuildDispatch", name, namespace)
    if obj is None:
        return None
    try:
        status = BuildDispatchStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        status = BuildDispatchStatus()
    annotations: dict[str, str] | None = None
    data = ""
    if status.patch_config_map:
        cm = await kube.get("ConfigMap", status.patch_config_map, namespace)
        if cm is not None:
            annotations = dict((cm.get("metadata") or {}).get("annotations") or {})
            data = str((cm.get("binaryData") or {}).get("patch.gz") or "")
    return Source(name, status, annotations, data)


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


def _review_of(obj: dict[str, Any]) -> tuple[str, ReviewFacts] | None:
    """A review counts only from a succeeded dispatch whose spec says it is a review of the
    source its status names: a status is written from a sandbox's record, a spec by its author."""
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


async def ship_decision(kube: Kube, namespace: str, source: Source, spec_approval: Any) -> ShipDecision:
    """The governed gate over the source's stored patch, its latest review and the approval."""
    facts = SourceFacts.from_status(source.name, source.status, source.patch_annotations)
    reviews = [r for obj in await kube.list("BuildDispatch", namespace) if (r := _review_of(obj)) is not None]
    return decide_ship(facts, latest_review(reviews, source.name), spec_approval)
