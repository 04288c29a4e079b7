"""What the apiserver does to an object on create and update (pure functions over plain dicts)."""

from __future__ import annotations

import base64
import copy
import datetime
from collections.abc import Mapping
from typing import Any

# Fields the apiserver owns: a client cannot change them with a patch.
_SERVER_OWNED = ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion")


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_created(
    body: Mapping[str, Any],
    *,
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str,
    uid: str,
    resource_version: int,
    timestamp: str,
    drop_status: bool,
) -> dict[str, Any]:
    """The stored form of a newly created object: identity, version and time filled in."""
    obj = copy.deepcopy(dict(body))
    obj.setdefault("apiVersion", api_version)
    obj.setdefault("kind", kind)
    meta = dict(obj.get("metadata") or {})
    meta.update(name=name, uid=uid, resourceVersion=str(resource_version), creationTimestamp=timestamp,
                generation=1)
    meta.pop("deletionTimestamp", None)
    if namespace is None:
        meta.pop("namespace", None)
    else:
        meta["namespace"] = namespace
    obj["metadata"] = meta
    if drop_status:  # the status subresource: status is never taken from a create
        obj.pop("status", None)
    return obj


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def settle_update(
    old: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    subresource: str | None,
    has_status_subresource: bool,
) -> dict[str, Any]:
    """Combine the stored object and a client's patched candidate the way the apiserver does.

    A write to `/status` changes only status; a write to the main resource of a kind with
    the status subresource leaves status alone. Server-owned metadata is kept; generation
    bumps only when something outside metadata and status changed. The resourceVersion
    is left as it was: the caller bumps it only if the result differs from `old`.
    """
    if subresource == "status":
        result = copy.deepcopy(dict(old))
        if "status" in candidate:
            result["status"] = copy.deepcopy(candidate["status"])
        else:
            result.pop("status", None)
        return result
    result = copy.deepcopy(dict(candidate))
    if has_status_subresource:
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
    old_meta = old.get("metadata") or {}
    meta = dict(result.get("metadata") or {})
    for key in _SERVER_OWNED:
        if key in old_meta:
            meta[key] = old_meta[key]
    # deletionTimestamp can be set only by DELETE and never be unset.
    meta.pop("deletionTimestamp", None)
    if "deletionTimestamp" in old_meta:
        meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
    result["metadata"] = meta
    result["apiVersion"] = old.get("apiVersion", result.get("apiVersion"))
    result["kind"] = old.get("kind", result.get("kind"))
    if _spec_part(result) != _spec_part(old):
        meta["generation"] = int(old_meta.get("generation", 1)) + 1
    return result


def with_resource_version(obj: Mapping[str, Any], resource_version: int) -> dict[str, Any]:
    result = dict(obj)
    result["metadata"] = dict(result.get("metadata") or {}, resourceVersion=str(resource_version))
    return result


def owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {str(ref["uid"]) for ref in refs if isinstance(ref, Mapping) and ref.get("uid")}


def fold_string_data(secret: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret's write-only `stringData` merged into `data` (base64), as the apiserver stores it."""
    result = dict(secret)
    string_data = result.pop("stringData", None) or {}
    if string_data:
        data = dict(result.get("data") or {})
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in string_data.items()})
        result["data"] = data
    return result
