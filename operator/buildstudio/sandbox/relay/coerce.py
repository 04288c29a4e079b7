"""Turn a parsed call's raw parameter text into JSON arguments, guided by the tool's schema (pure).

Follows what vLLM's qwen3_coder parser does: a value whose schema allows ``string`` stays
verbatim; ``integer``/``number``/``boolean``/``null`` are parsed; ``object``/``array`` go
through JSON, then Python-literal syntax (models emit ``{'a': 1}``, QwenLM/Qwen3-Coder#480).
A value that does not parse as its schema type is kept as the string: opencode then answers
the model with a schema error it can act on, which beats guessing.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from buildstudio.sandbox.relay.parse import Call

Schema = Mapping[str, Any]

_INT = re.compile(r"[+-]?\d+")


def strip_template_newlines(raw: str) -> str:
    """The chat template puts the value on its own lines: drop one leading and one trailing newline."""
    if raw.startswith("\r\n"):
        raw = raw[2:]
    elif raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\r\n"):
        raw = raw[:-2]
    elif raw.endswith("\n"):
        raw = raw[:-1]
    return raw


def schema_types(schema: Any) -> set[str]:
    """The JSON types a (sub)schema admits; empty when it does not say."""
    if not isinstance(schema, Mapping):
        return set()
    types: set[str] = set()
    t = schema.get("type")
    if isinstance(t, str):
        types.add(t)
    elif isinstance(t, list):
        types.update(x for x in t if isinstance(x, str))
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            types |= schema_types(sub)
    if not types and "enum" in schema and isinstance(schema["enum"], list):
        types.update(_json_type(v) for v in schema["enum"])
    if not types and "properties" in schema:
        types.add("object")
    if not types and "items" in schema:
        types.add("array")
    return types


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _structured(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOPE


_NOPE = object()


def coerce_value(raw: str, schema: Any) -> Any:
    """One parameter's raw text → its JSON value (or the text itself when it does not fit)."""
    types = schema_types(schema)
    if not types or "string" in types:
        return raw
    s = raw.strip()
    if "integer" in types and _INT.fullmatch(s):
        return int(s)
    if "number" in types:
        try:
            f = float(s)
        except ValueError:
            pass
        else:
            if math.isfinite(f):
                return int(f) if _INT.fullmatch(s) else f
    if "integer" in types:  # "5.0" for an integer
        try:
            f = float(s)
        except ValueError:
            pass
        else:
            if math.isfinite(f) and f.is_integer():
                return int(f)
    if "boolean" in types and s.lower() in ("true", "false"):
        return s.lower() == "true"
    if "null" in types and s.lower() in ("null", "none"):
        return None
    if types & {"object", "array"}:
        v = _structured(s)
        if isinstance(v, tuple):
            v = list(v)
        if (isinstance(v, dict) and "object" in types) or (isinstance(v, list) and "array" in types):
            return json.loads(json.dumps(v))  # normalise Python literals to JSON values
    return raw


def call_arguments(call: Call, parameters: Any) -> dict[str, Any]:
    """The call's arguments as a JSON object, coerced against the tool's ``parameters`` schema."""
    props = parameters.get("properties") if isinstance(parameters, Mapping) else None
    props = props if isinstance(props, Mapping) else {}
    if call.json_args is not None:
        # JSON form: already typed; only strings the schema says are not strings get coerced.
        return {k: coerce_value(v, props.get(k)) if isinstance(v, str) else v for k, v in call.json_args.items()}
    return {k: coerce_value(strip_template_newlines(v), props.get(k)) for k, v in call.params.items()}


def tool_schemas(request: Mapping[str, Any]) -> dict[str, Any]:
    """Tool name → its ``parameters`` schema, from a chat-completions request body."""
    out: dict[str, Any] = {}
    tools = request.get("tools")
    if not isinstance(tools, list):
        return out
    for t in tools:
        fn = t.get("function") if isinstance(t, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters") or {}
    return out
