"""Argument coercion against the JSON schema opencode sends."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.sandbox.relay.coerce import (
    call_arguments,
    coerce_value,
    schema_types,
    strip_template_newlines,
    tool_schemas,
)
from buildstudio.sandbox.relay.parse import Call
from tests.sandbox.relay.helpers import opencode_schemas, opencode_tools


@pytest.mark.parametrize(
    ("raw", "schema", "want"),
    [
        ("42", {"type": "integer"}, 42),
        (" -7 ", {"type": "integer"}, -7),
        ("5.0", {"type": "integer"}, 5),
        ("5.5", {"type": "integer"}, "5.5"),  # does not fit: kept, opencode reports it to the model
        ("abc", {"type": "integer"}, "abc"),
        ("30.5", {"type": "number"}, 30.5),
        ("30", {"type": "number"}, 30),
        ("nan", {"type": "number"}, "nan"),
        ("True", {"type": "boolean"}, True),
        ("false", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, "yes"),
        ('{"a": [1, 2]}', {"type": "object"}, {"a": [1, 2]}),
        ("{'a': None}", {"type": "object"}, {"a": None}),
        ("[1, 'two']", {"type": "array"}, [1, "two"]),
        ("(1, 2)", {"type": "array"}, [1, 2]),
        ("[1, 2]", {"type": "object"}, "[1, 2]"),
        ("null", {"type": ["integer", "null"]}, None),
        ("12", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, 12),
        ("12", {"type": ["string", "integer"]}, "12"),  # string allowed: verbatim
        ("markdown", {"type": "string", "enum": ["text", "markdown"]}, "markdown"),
        ("3", {"enum": [1, 2, 3]}, 3),
        ("x", {}, "x"),
        ("x", None, "x"),
        ("{}", {"properties": {}}, {}),
    ],
)
def test_coerce_value(raw: str, schema: Any, want: Any) -> None:
    got = coerce_value(raw, schema)
    assert got == want and type(got) is type(want)


def test_template_newlines() -> None:
    assert strip_template_newlines("\nx\n") == "x"
    assert strip_template_newlines("\n\nx\n\n") == "\nx\n"
    assert strip_template_newlines("\r\nx\r\n") == "x"
    assert strip_template_newlines("x") == "x"
    assert strip_template_newlines("  x  ") == "  x  "  # indentation is content


def test_opencode_schemas_are_read_from_the_request() -> None:
    schemas = tool_schemas({"tools": opencode_tools()})
    assert sorted(schemas) == [
        "bash",
        "edit",
        "glob",
        "grep",
        "read",
        "skill",
        "task",
        "todowrite",
        "webfetch",
        "write",
    ]
    assert schema_types(schemas["read"]["properties"]["limit"]) == {"integer"}
    assert tool_schemas({"tools": "nope"}) == {} and tool_schemas({}) == {}


def test_call_arguments_uses_the_tools_schema() -> None:
    s = opencode_schemas()
    call = Call("read", {"filePath": "\n/a.py\n", "offset": "\n3\n", "extra": "\n9\n"})
    assert call_arguments(call, s["read"]) == {"filePath": "/a.py", "offset": 3, "extra": "9"}
    js = Call("read", json_args={"filePath": "/a.py", "limit": "20", "offset": 4})
    assert call_arguments(js, s["read"]) == {"filePath": "/a.py", "limit": 20, "offset": 4}
