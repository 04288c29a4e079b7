"""One replay drives any engine: the neutral tool calls (opencode's vocabulary) in each CLI's tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildstudio.engines.replay import patch, translate_call, translate_script

REPLAY = Path(__file__).resolve().parents[2] / "examples" / "replays" / "add-subtract.json"
WS = "/workspace"


@pytest.mark.parametrize(
    ("engine", "call", "expected"),
    [
        ("claude", ("read", {"filePath": "calc.py"}), ("Read", {"file_path": "/workspace/calc.py"})),
        ("claude", ("write", {"filePath": "/abs/t.py", "content": "x\n"}),
         ("Write", {"file_path": "/abs/t.py", "content": "x\n"})),
        ("claude", ("edit", {"filePath": "c.py", "oldString": "a", "newString": "b"}),
         ("Edit", {"file_path": "/workspace/c.py", "old_string": "a", "new_string": "b"})),
        ("claude", ("bash", {"command": "ls"}), ("Bash", {"command": "ls", "description": "ls"})),
        ("codex", ("read", {"filePath": "my file.py"}), ("exec_command", {"cmd": "cat -- 'my file.py'"})),
        ("codex", ("bash", {"command": "make"}), ("exec_command", {"cmd": "make"})),
        ("codex", ("write", {"filePath": "t.py", "content": "a\n\nb\n"}),
         ("apply_patch", patch("Add", "t.py", ["+a", "+", "+b"]))),
        ("codex", ("edit", {"filePath": "c.py", "oldString": "x = 1\n", "newString": "x = 2\ny = 3\n"}),
         ("apply_patch", "*** Begin Patch\n*** Update File: c.py\n@@\n-x = 1\n+x = 2\n+y = 3\n*** End Patch\n")),
        ("grok", ("read", {"filePath": "calc.py"}), ("view_file", {"path": "calc.py"})),
        ("grok", ("write", {"filePath": "t.py", "content": "x"}), ("create_file", {"path": "t.py", "content": "x"})),
        ("grok", ("edit", {"filePath": "c.py", "oldString": "a", "newString": "b"}),
         ("str_replace_editor", {"path": "c.py", "old_str": "a", "new_str": "b"})),
        ("grok", ("bash", {"command": "ls"}), ("bash", {"command": "ls"})),
        ("opencode", ("edit", {"filePath": "c.py"}), ("edit", {"filePath": "c.py"})),
        ("claude", ("websearch", {"q": 1}), ("websearch", {"q": 1})),  # not neutral: unchanged
    ],
)  # fmt: skip
def test_translate_call(engine: str, call: tuple[str, dict[str, object]], expected: tuple[str, object]) -> None:
    assert translate_call(engine, call[0], call[1], WS) == expected


def test_the_quick_start_replay_in_each_engine_s_tools_keeps_texts_and_usage() -> None:
    script = json.loads(REPLAY.read_text())["script"]
    names = {
        engine: [e.get("tool") for e in translate_script(engine, script, WS)] for engine in ("claude", "codex", "grok")
    }
    assert names == {
        "claude": ["Read", "Edit", "Write", None],
        "codex": ["exec_command", "apply_patch", "apply_patch", None],
        "grok": ["view_file", "str_replace_editor", "create_file", None],
    }
    out = translate_script("grok", script, WS)
    assert [e.get("text") for e in out] == [e.get("text") for e in script]
    assert [e.get("usage") for e in out] == [e.get("usage") for e in script]
    assert script[0]["tool"] == "read"  # the input is left alone


def test_tool_calls_lists_and_json_string_arguments() -> None:
    entry = {"tool_calls": [{"name": "write", "arguments": json.dumps({"filePath": "a", "content": "b"})}]}
    assert translate_script("grok", [entry], WS)[0]["tool_calls"] == [
        {"name": "create_file", "arguments": {"path": "a", "content": "b"}}
    ]
