"""Evaluate a CRD's defaults and CEL rules on an object, the way the apiserver would.

Used by the registry loader and `run --local` (so a bad file fails the same way
`kubectl apply` would) and by the tests. It covers the CEL subset our rules use; the
Kubernetes CEL libraries (url(), quantity(), …) are not available here, and our rules
do not use them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

Schema = dict[str, Any]
_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


@dataclass(frozen=True)
class RuleViolation:
    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Return `value` with schema defaults filled in (structural defaulting, recursive)."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _program(rule: str) -> Any:
    prog = _PROGRAMS.get(rule)
    if prog is None:
        prog = _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return prog


def _walk(schema: Schema, value: Any, old: Any, path: str) -> Iterator[RuleViolation]:
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        transition = "oldSelf" in rule
        if transition and old is None:
            continue  # the apiserver skips transition rules on create
        activation = {"self": json_to_cel(value)}
        if transition:
            activation["oldSelf"] = json_to_cel(old)
        try:
            result = _program(rule).evaluate(activation)
        except CELEvalError as exc:  # e.g. no such key: the apiserver reports it as invalid too
            yield RuleViolation(path, rule, f"{entry['message']} ({exc.args[0] if exc.args else exc})")
            continue
        if not bool(result):
            yield RuleViolation(path + entry.get("fieldPath", ""), rule, entry["message"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                old_sub = old.get(name) if isinstance(old, dict) else None
                yield from _walk(sub, value[name], old_sub, f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, None, f"{path}[{i}]")


def cel_violations(schema: Schema, value: Any, old: Any = None, *, path: str = "") -> list[RuleViolation]:
    """Every CEL rule of `schema` that `value` breaks (defaults applied first)."""
    value = apply_defaults(schema, value)
    if old is not None:
        old = apply_defaults(schema, old)
    return list(_walk(schema, value, old, path))
