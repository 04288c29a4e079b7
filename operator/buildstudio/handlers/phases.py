"""Reads for the review and ship phases: the source dispatch, its stored patch, its reviews.

The decisions themselves are pure (``core.ship.decide_ship``, ``core.source_dispatch``); this
module only gathers their inputs from the API.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from buildstudio.adapters.kube import Kube
from buildstudio.api.dispatch import BuildDispatchStatus
from buildstudio.core.review import latest_review
from buildstudio.core.ship import ShipDecision, SourceFacts, decide_ship
from buildstudio.core.source_dispatch import Source, review_facts


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


async def ship_decision(kube: Kube, namespace: str, source: Source, spec_approval: Any) -> ShipDecision:
    """The governed gate over the source's stored patch, its latest review and the approval."""
    facts = SourceFacts.from_status(source.name, source.status, source.patch_annotations)
    reviews = [r for obj in await kube.list("BuildDispatch", namespace) if (r := review_facts(obj)) is not None]
    return decide_ship(facts, latest_review(reviews, source.name), spec_approval)
