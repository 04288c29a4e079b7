"""A BuildDispatch object read into the machine's view: the spec parsed (or why it cannot be),
the fields changed after admission, the source dispatch the phase works on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from buildstudio.api.dispatch import IMMUTABLE_FIELDS, SOURCE_PHASES, BuildDispatchSpec
from buildstudio.core.conditions import parse_time
from buildstudio.core.dispatch import Dispatch, Stage

PLACEHOLDER_SPEC = BuildDispatchSpec(prompt="-")  # stands in for a spec the models refuse


def parse_dispatch(
    body: Mapping[str, Any], now: datetime, known: Dispatch | None = None
) -> tuple[Dispatch | None, str]:
    """The machine's view of the object, or ``(None, error)`` when the spec is invalid. ``now``
    stands in for a missing creationTimestamp. ``known``: a view parsed before; its spec is
    reused when the object's generation says the spec is the same (the API server bumps it on
    every spec change), so a daemon's look does not validate the spec again."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    if known is not None and generation is not None and (known.generation, known.uid) == (generation, meta.get("uid")):
        return _view(meta, known.spec, body.get("status"), known.created), ""
    try:
        spec = BuildDispatchSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        return None, f"spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return _view(meta, spec, body.get("status"), parse_time(meta.get("creationTimestamp")) or now), ""


def placeholder_dispatch(body: Mapping[str, Any], now: datetime) -> Dispatch:
    """The dispatch of an invalid spec, enough to write its terminal status (created ``now``)."""
    return _view(body.get("metadata") or {}, PLACEHOLDER_SPEC, body.get("status"), now)


def _view(meta: Mapping[str, Any], spec: BuildDispatchSpec, status: Any, created: datetime) -> Dispatch:
    return Dispatch(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        uid=str(meta.get("uid") or ""),
        generation=meta.get("generation"),
        created=created,
        spec=spec,
        status=dict(status or {}),
    )


def ignored_spec_changes(diff: Iterable[tuple[Any, ...]] | None, stage: Stage) -> list[str]:
    """Immutable spec fields changed after admission (kopf's diff): reported, never applied."""
    if stage == "entry":
        return []
    fields: set[str] = set()
    for _op, path, _old, _new in diff or ():
        if len(path) >= 2 and path[0] == "spec" and path[1] in IMMUTABLE_FIELDS:
            fields.add(str(path[1]))
        elif len(path) == 1 and path[0] == "spec":
            fields.update(IMMUTABLE_FIELDS)
    return sorted(fields)


def source_to_read(spec: BuildDispatchSpec) -> str | None:
    """The dispatch whose result this one works on (review, ship), or None."""
    if spec.phase in SOURCE_PHASES and spec.source is not None:
        return spec.source.dispatch
    return None
