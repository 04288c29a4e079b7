"""The engine registry (`engines/build-engines.yaml`): load, validate, render as BuildEngines."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from buildstudio.api.common import API_VERSION_STRING
from buildstudio.api.crdgen import engine_spec_schema
from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core.cel import cel_violations

REGISTRY_KIND = "BuildEngineRegistry"
DEFAULT_REGISTRY = Path(__file__).resolve().parents[3] / "engines" / "build-engines.yaml"
MANAGED_LABEL = "buildstudio.dpf.dev/registry"


class RegistryError(ValueError):
    """A registry file is wrong; the message names the entry and the field."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    spec: BuildEngineSpec


@cache
def _engine_schema() -> dict[str, Any]:
    return engine_spec_schema()


def _loc(parts: tuple[int | str, ...]) -> str:
    out = "spec"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def parse(doc: Any, *, source: str = "<registry>") -> list[RegistryEntry]:
    """Validate a registry document through the BuildEngine models and CEL rules."""
    if not isinstance(doc, dict) or doc.get("kind") != REGISTRY_KIND:
        raise RegistryError(f"{source}: expected kind: {REGISTRY_KIND}")
    if doc.get("apiVersion") != API_VERSION_STRING:
        raise RegistryError(f"{source}: expected apiVersion: {API_VERSION_STRING}")
    raw = doc.get("engines")
    if not isinstance(raw, list) or not raw:
        raise RegistryError(f"{source}: engines must be a non-empty list")
    entries: list[RegistryEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"{source}: engines[{i}]" + (f" ({name})" if name else "")
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{where}: name is required")
        if name in seen:
            raise RegistryError(f"{where}: duplicate engine name")
        seen.add(name)
        spec_raw = item.get("spec")
        try:
            spec = BuildEngineSpec.model_validate(spec_raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise RegistryError(f"{where}: {_loc(first['loc'])}: {first['msg']}") from None
        violations = cel_violations(_engine_schema(), spec_raw, path="spec")
        if violations:
            raise RegistryError(f"{where}: {violations[0]}")
        entries.append(RegistryEntry(name=name, spec=spec))
    return entries


def load(path: Path | None = None) -> list[RegistryEntry]:
    path = path or DEFAULT_REGISTRY
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    return parse(doc, source=str(path))


def with_overrides(
    entry: RegistryEntry,
    *,
    base_url: str | None = None,
    backend: str | None = None,
    max_running: int | None = None,
    max_running_per_model: int | None = None,
) -> RegistryEntry:
    """The entry with the install's own model service and limits (the chart's values) applied to a
    local engine; a cloud engine is returned as it is."""
    spec = entry.spec
    if spec.endpoint != "local":
        return entry
    update: dict[str, Any] = {}
    if (base_url or backend) and spec.model_service is not None:
        service = spec.model_service.to_api() | ({"baseURL": base_url} if base_url else {})
        update["modelService"] = service | ({"backend": backend} if backend else {})
    if max_running or max_running_per_model:
        limits = spec.concurrency.to_api()
        if max_running:
            limits["maxRunning"] = max_running
        if max_running_per_model:
            limits["maxRunningPerModel"] = max_running_per_model
        update["concurrency"] = limits
    if not update:
        return entry
    return RegistryEntry(entry.name, BuildEngineSpec.model_validate(spec.to_api() | update))


def as_object(entry: RegistryEntry) -> dict[str, Any]:
    """The BuildEngine object the operator seeds for a registry entry."""
    return {
        "apiVersion": API_VERSION_STRING,
        "kind": "BuildEngine",
        "metadata": {
            "name": entry.name,
            "labels": {
                MANAGED_LABEL: "true",
                "app.kubernetes.io/managed-by": "buildstudio",
                "app.kubernetes.io/part-of": "build-studio",
            },
        },
        "spec": entry.spec.to_api(),
    }
