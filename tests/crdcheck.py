"""Validate custom resources against the generated CRDs the way the apiserver would (tests only).

Schema: openapi-schema-validator (OpenAPI 3.0 keywords, `nullable`), with
`additionalProperties: false` added wherever the CRD does not preserve unknown fields,
since the apiserver prunes and `kubectl apply --validate=strict` rejects unknown fields.
CEL: buildstudio.core.cel (cel-python), after structural defaulting.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from openapi_schema_validator import OAS30Validator

from buildstudio.api import crdgen
from buildstudio.core.cel import apply_defaults, cel_violations


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def schema_for(kind: str) -> dict[str, Any]:
    for crd in crdgen.all_crds().values():
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise KeyError(kind)


def errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every message the apiserver would give for creating `obj` (or updating `old` to it)."""
    schema = schema_for(obj["kind"])
    body = apply_defaults(schema, copy.deepcopy(obj))
    validator = OAS30Validator(_strict(schema))
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    if found:
        return found  # the apiserver stops at schema errors before CEL
    return [str(v) for v in cel_violations(schema, obj, old)]
