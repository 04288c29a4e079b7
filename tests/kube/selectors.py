"""Label and field selectors, the subset kubectl, kopf and client-go send (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

# One requirement of a label selector; commas inside `in (a,b)` do not split requirements.
_REQUIREMENT = re.compile(r"\s*([^,(]+?(?:\s+(?:in|notin)\s*\([^)]*\))?)\s*(?:,|$)")
_SET_FORM = re.compile(r"^(\S+)\s+(in|notin)\s*\(([^)]*)\)$")


def split_requirements(selector: str) -> list[str]:
    return [m.group(1).strip() for m in _REQUIREMENT.finditer(selector) if m.group(1).strip()]


def _label_requirement(text: str) -> Predicate:
    if m := _SET_FORM.match(text):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if "!=" in text:
        key, value = (part.strip() for part in text.split("!=", 1))
        return lambda labels: labels.get(key) != value
    if "=" in text:
        key, value = (part.strip() for part in text.replace("==", "=").split("=", 1))
        return lambda labels: labels.get(key) == value
    if text.startswith("!"):
        key = text[1:].strip()
        return lambda labels: key not in labels
    return lambda labels: text in labels


def label_selector(selector: str | None) -> Predicate:
    """A predicate over an object's labels: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a)`."""
    requirements = [_label_requirement(r) for r in split_requirements(selector or "")]
    return lambda labels: all(req(labels) for req in requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str | None:
    """The string form of a dotted field (`metadata.name`, `involvedObject.uid`), as selectors compare it."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if node is None or isinstance(node, (Mapping, list)):
        return None
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _field_requirement(text: str) -> Predicate:
    # The real apiserver supports only a few fields per kind; any dotted path is a harmless superset.
    if "!=" in text:
        path, value = (part.strip() for part in text.split("!=", 1))
        return lambda obj: (field_value(obj, path) or "") != value
    path, value = (part.strip() for part in text.replace("==", "=").split("=", 1))
    return lambda obj: (field_value(obj, path) or "") == value


def field_selector(selector: str | None) -> Predicate:
    """A predicate over a whole object: `metadata.name=x,metadata.namespace!=y`."""
    requirements = [_field_requirement(r) for r in (selector or "").split(",") if r.strip()]
    return lambda obj: all(req(obj) for req in requirements)


def object_selector(labels: str | None, fields: str | None) -> Predicate:
    """Both selectors of a LIST/WATCH request combined into one predicate over an object."""
    by_labels = label_selector(labels)
    by_fields = field_selector(fields)

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return by_labels(meta.get("labels") or {}) and by_fields(obj)

    return matches
