"""Seeding BuildEngines from the registry: what to do with each bake-in-default entry given the
object already in the cluster (create it, leave a user's alone, bring ours up to date)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Move = Literal["create", "user-made", "update", "current"]


@dataclass(frozen=True)
class Seed:
    move: Move
    spec_patch: dict[str, Any] | None = None  # for "update": the merge patch of the spec


def merge_patch_between(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys → null)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch_between(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    patch.update({key: None for key in old if key not in new})
    return patch


def seed(existing: Mapping[str, Any] | None, wanted: Mapping[str, Any], managed_label: str) -> Seed:
    """The move for one registry entry: ``wanted`` is its object, ``existing`` the cluster's (None
    when absent). An engine without our ``managed_label`` set to "true" was made by a user."""
    if existing is None:
        return Seed("create")
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if labels.get(managed_label) != "true":
        return Seed("user-made")
    old_spec = existing.get("spec") or {}
    if old_spec == wanted["spec"]:
        return Seed("current")
    return Seed("update", merge_patch_between(old_spec, wanted["spec"]))
