"""One replay drives any engine (pure): a replay's tool calls, written in the neutral vocabulary
(opencode's tools: ``read``, ``write``, ``edit``, ``bash``), become each engine's own tools.

- ``read {filePath}``: claude ``Read {file_path}``, codex ``exec_command {cmd: cat -- PATH}``, grok
  ``view_file {path}``;
- ``write {filePath, content}``: claude ``Write {file_path, content}``, codex ``apply_patch``
  (``*** Add File``), grok ``create_file {path, content}``;
- ``edit {filePath, oldString, newString}``: claude ``Edit {file_path, old_string, new_string}``,
  codex ``apply_patch`` (``*** Update File``, ``-old`` / ``+new`` lines), grok ``str_replace_editor
  {path, old_str, new_str}``;
- ``bash {command}``: claude ``Bash {command, description}``, codex ``exec_command {cmd}``, grok
  ``bash {command}``.

claude wants absolute paths (relative ones are joined to the workspace); codex's patch edits whole
lines, so an ``edit`` whose ``oldString`` is part of a line does not apply there (the tool fails and
the model is told, as with a real model). Other tools, texts, usage and error entries pass unchanged.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Sequence
from typing import Any

NEUTRAL_TOOLS = ("read", "write", "edit", "bash")
Entry = dict[str, Any]


def _args(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _abs(path: str, workspace: str) -> str:
    return path if path.startswith("/") else posixpath.join(workspace, path)


def _lines(text: str) -> list[str]:
    return text.splitlines() if text else []


def patch(op: str, path: str, body: list[str]) -> str:
    """An ``apply_patch`` text (codex's freeform tool)."""
    return "".join(line + "\n" for line in ["*** Begin Patch", f"*** {op} File: {path}", *body, "*** End Patch"])


def translate_call(engine: str, name: str, args: dict[str, Any], workspace: str) -> tuple[str, dict[str, Any] | str]:
    """One neutral tool call as ``engine``'s own (name, arguments); anything else unchanged."""
    if engine == "opencode" or name not in NEUTRAL_TOOLS:
        return name, args
    path = str(args.get("filePath") or args.get("path") or "")
    old, new = str(args.get("oldString", "")), str(args.get("newString", ""))
    content, command = str(args.get("content", "")), str(args.get("command", ""))
    if engine == "claude":
        return {
            "read": ("Read", {"file_path": _abs(path, workspace)}),
            "write": ("Write", {"file_path": _abs(path, workspace), "content": content}),
            "edit": ("Edit", {"file_path": _abs(path, workspace), "old_string": old, "new_string": new}),
            "bash": ("Bash", {"command": command, "description": str(args.get("description") or command[:60])}),
        }[name]
    if engine == "codex":
        if name == "read":
            return "exec_command", {"cmd": f"cat -- {shlex.quote(path)}"}
        if name == "bash":
            return "exec_command", {"cmd": command}
        if name == "write":
            return "apply_patch", patch("Add", path, ["+" + line for line in _lines(content)])
        body = ["@@", *("-" + line for line in _lines(old)), *("+" + line for line in _lines(new))]
        return "apply_patch", patch("Update", path, body)
    if engine == "grok":
        return {
            "read": ("view_file", {"path": path}),
            "write": ("create_file", {"path": path, "content": content}),
            "edit": ("str_replace_editor", {"path": path, "old_str": old, "new_str": new}),
            "bash": ("bash", {"command": command}),
        }[name]
    return name, args


def translate_script(engine: str, script: Sequence[Entry], workspace: str) -> list[Entry]:
    """A replay script for ``engine``: each entry's tool calls in its own tools (a new list)."""
    out: list[Entry] = []
    for entry in script:
        e = dict(entry)
        if "tool" in e:
            e["tool"], e["args"] = translate_call(engine, str(e["tool"]), _args(e.get("args")), workspace)
        if isinstance(e.get("tool_calls"), list):
            calls = []
            for call in e["tool_calls"]:
                c = dict(call) if isinstance(call, dict) else {}
                c["name"], c["arguments"] = translate_call(
                    engine, str(c.get("name", "")), _args(c.get("arguments")), workspace
                )
                calls.append(c)
            e["tool_calls"] = calls
        out.append(e)
    return out
