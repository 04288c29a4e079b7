"""The dispatch's finalizer: when a dispatch needs a daemon (and so the finalizer that stops the
daemon before the object goes), and when ours may ride on kopf's own write after the create handler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from buildstudio.api.common import API_GROUP
from buildstudio.core.dispatch import stage_of

FINALIZER = f"{API_GROUP}/finalizer"


def daemon_wanted(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Queued and running dispatches, and finished ones waiting for their TTL."""
    stage = stage_of(dict(status))
    if stage == "finished":
        return spec.get("ttlSecondsAfterFinished") is not None
    return stage != "entry"


def finalizers_with_ours(
    finalizers: Sequence[str] | None, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> list[str] | None:
    """The finalizer list to merge-patch along with kopf's own write after the create handler,
    or None to leave it alone.

    kopf adds the finalizer a daemon needs by itself, but as a JSON patch tested against the
    resourceVersion, which the handler's status write has just changed: it fails (422) and is
    retried on a later event (extra writes per dispatch). Riding on kopf's annotation patch costs
    none. Only while the list is empty, so that a merge patch cannot drop another controller's
    finalizer; otherwise kopf adds ours as usual."""
    if finalizers or not daemon_wanted(spec, status):
        return None
    return [FINALIZER]
