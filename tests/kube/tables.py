"""Server-side Table output for kinds with printer columns (what `kubectl get` prints), pure.

kubectl asks for `as=Table`; the apiserver answers with rows built from the CRD's
`additionalPrinterColumns` (JSONPath into each object). Only the JSONPath forms printer
columns use are supported: `.a.b`, `[n]`, `[*]`, `[?(@.k=="v")]`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

Body = dict[str, Any]

_TOKEN = re.compile(
    r"""\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\*\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*(==|!=)\s*["']([^"']*)["']\)\]"""
)


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in str(accept)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """All values at `path` (a printer-column JSONPath) in `obj`."""
    nodes: list[Any] = [obj]
    position = 0
    path = path.strip().removeprefix("{").removesuffix("}").strip()
    while position < len(path):
        m = _TOKEN.match(path, position)
        if m is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {position}")
        position = m.end()
        field, index, key, op, value = m.groups()
        found: list[Any] = []
        for node in nodes:
            if field is not None:
                if isinstance(node, Mapping) and field in node:
                    found.append(node[field])
            elif index is not None:
                if isinstance(node, list) and int(index) < len(node):
                    found.append(node[int(index)])
            elif key is not None:
                if isinstance(node, list):
                    found.extend(item for item in node if isinstance(item, Mapping)
                                 and (str(_lookup(item, key)) == value) == (op == "=="))
            elif isinstance(node, list):  # [*]
                found.extend(node)
        nodes = found
    return nodes


def _lookup(item: Mapping[str, Any], dotted: str) -> Any:
    node: Any = item
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def human_age(timestamp: str, now: datetime.datetime) -> str:
    """kubectl's AGE form (apimachinery's HumanDuration) of an RFC 3339 timestamp."""
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 2920 else f"{days // 365}y"


def column_definitions(columns: Sequence[Mapping[str, Any]]) -> list[Body]:
    """Name first, then the printer columns (or Age alone when the kind declares none)."""
    declared = list(columns) or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}] + [
        {"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
         "description": c.get("description", ""), "priority": int(c.get("priority", 0))}
        for c in declared
    ]


def _cell(obj: Mapping[str, Any], column: Mapping[str, Any], now: datetime.datetime) -> Any:
    values = jsonpath(obj, column["jsonPath"])
    if not values or values[0] is None:
        return None
    value = values[0]
    kind = column.get("type", "string")
    if kind == "date":
        return human_age(str(value), now)
    if kind == "integer" and isinstance(value, int | float):
        return int(value)
    if kind == "number" and isinstance(value, int | float):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    return value if isinstance(value, str) else str(value)


def table(objs: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]], resource_version: str,
          now: datetime.datetime) -> Body:
    """A `meta.k8s.io/v1` Table of `objs` (rows carry the objects' metadata, as by default)."""
    declared = list(columns) or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    rows = [
        {"cells": [obj["metadata"]["name"], *(_cell(obj, c, now) for c in declared)],
         "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": dict(obj["metadata"])}}
        for obj in objs
    ]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": column_definitions(columns), "rows": rows}
