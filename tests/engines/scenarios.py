"""Scripted runs of the real engine CLIs: shared by the CLI tests and the fixture recorder.

    python -m tests.engines.scenarios [claude|codex|grok ...]   # re-record tests/fixtures/engines/

Each scenario is a script (engine-specific tool names, engine-neutral vocabulary) plus run
options; ``run_scenario`` builds the adapter's Launch, writes its files, starts the scripted
vendor server and the real CLI in a fresh git repo, and returns everything a test checks.
Recorded streams have the run's paths replaced by /workspace and /home/run.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.engines.base import EngineAdapter, Launch, RunRequest, StreamParser
from buildstudio.engines.claude import ClaudeAdapter
from buildstudio.engines.codex import CodexAdapter
from buildstudio.engines.grok import GrokAdapter
from tests.engines import harness as h
from tests.engines.anthropic_server import OVERFLOW_BODY as ANTHROPIC_OVERFLOW
from tests.engines.anthropic_server import AnthropicServer
from tests.engines.responses_server import OVERFLOW_BODY as RESPONSES_OVERFLOW
from tests.engines.responses_server import ResponsesServer
from tests.engines.vendor_server import ThreadedServer

FIXTURES = h.REPO_ROOT / "tests" / "fixtures" / "engines"
SUB = "def sub(a, b):\n    return a - b\n"
MODELS = {"claude": "claude-sonnet-4-5", "codex": "gpt-5.5", "grok": "grok-code-fast-1"}
CHAT_OVERFLOW = {
    "error": {
        "message": "This model's maximum context length is 131072 tokens. However, your messages "
        "resulted in 200000 tokens.",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }
}
ADAPTERS: dict[str, Callable[[], EngineAdapter]] = {"claude": ClaudeAdapter, "codex": CodexAdapter, "grok": GrokAdapter}


@dataclass(frozen=True)
class Scenario:
    name: str
    script: list[dict[str, Any]]  # "{ws}" in strings: the workspace path
    prompt: str = "Add a sub(a, b) function in sub.py and swap the operands in calc.py."
    timeout: float = 60.0  # the harness kills the CLI after this (watchdog stand-in)
    max_retries: int = 1
    request_timeout_s: int = 300


def _patch(path: str, body: str, op: str = "Add") -> str:
    return f"*** Begin Patch\n*** {op} File: {path}\n{body}*** End Patch\n"


def write_edit_script(engine: str) -> list[dict[str, Any]]:
    """Write sub.py, edit calc.py, answer: the same three steps in each engine's own tools."""
    u1, u2, u3 = (
        {"prompt_tokens": 5000, "completion_tokens": 300},
        {"prompt_tokens": 5400, "completion_tokens": 60},
        {"prompt_tokens": 6000, "completion_tokens": 40},
    )
    final = {"text": "Added sub() and swapped the operands.", "usage": u3}
    if engine == "claude":
        return [
            {
                "text": "Writing sub.py.",
                "tool": "Write",
                "usage": u1,
                "args": {"file_path": "{ws}/sub.py", "content": SUB},
            },
            # Edit refuses a file that was not Read first in the session (measured).
            {"tool": "Read", "args": {"file_path": "{ws}/calc.py"}, "usage": u1},
            {
                "tool": "Edit",
                "args": {"file_path": "{ws}/calc.py", "old_string": "return a + b", "new_string": "return b + a"},
                "usage": u2,
            },
            final,
        ]
    if engine == "codex":
        return [
            {
                "text": "Writing sub.py.",
                "tool": "apply_patch",
                "args": _patch("sub.py", "".join("+" + line + "\n" for line in SUB.splitlines())),
                "usage": u1,
            },
            {
                "tool": "apply_patch",
                "usage": u2,
                "args": _patch("calc.py", "@@\n def add(a, b):\n-    return a + b\n+    return b + a\n", "Update"),
            },
            final,
        ]
    return [
        {"text": "Writing sub.py.", "tool": "create_file", "args": {"path": "sub.py", "content": SUB}, "usage": u1},
        {
            "tool": "str_replace_editor",
            "usage": u2,
            "args": {"path": "calc.py", "old_str": "return a + b", "new_str": "return b + a"},
        },
        final,
    ]


def tool_errors_script(engine: str) -> list[dict[str, Any]]:
    """A failing edit, a failing shell command (that still writes ran.txt), an unknown tool."""
    final = {"text": "Some tools failed."}
    if engine == "claude":
        return [
            {"tool": "Edit", "args": {"file_path": "{ws}/calc.py", "old_string": "NOPE", "new_string": "x"}},
            {"tool": "Bash", "args": {"command": "echo hi > ran.txt; exit 3", "description": "fail"}},
            {"tool": "Nonexistent", "args": {"a": 1}},
            final,
        ]
    if engine == "codex":
        return [
            {"tool": "apply_patch", "args": _patch("nope.py", "@@\n-x\n+y\n", "Update")},
            {"tool": "exec_command", "args": {"cmd": "echo hi > ran.txt; exit 3"}},
            {"tool": "nonexistent_tool", "args": {"a": 1}},
            final,
        ]
    return [
        {"tool": "str_replace_editor", "args": {"path": "calc.py", "old_str": "NOPE", "new_str": "x"}},
        {"tool": "bash", "args": {"command": "echo hi > ran.txt; exit 3"}},
        {"tool": "nonexistent", "args": {}},
        final,
    ]


def overflow_entry(engine: str) -> dict[str, Any]:
    body = {"claude": ANTHROPIC_OVERFLOW, "codex": RESPONSES_OVERFLOW}.get(engine, CHAT_OVERFLOW)
    return {"status": 400, "body": body}


def scenarios(engine: str) -> dict[str, Scenario]:
    out = [
        Scenario("write-edit", write_edit_script(engine)),
        Scenario("tool-errors", tool_errors_script(engine)),
        Scenario("server-500", [{"status": 500}], max_retries=1, timeout=120),
        Scenario("context-overflow", [overflow_entry(engine)]),
        Scenario("finish-length", [{"text": "This answer was cut", "finish": "length"}]),
        # The server accepts and never answers: each CLI's own timeout, else the harness kills it.
        Scenario("server-hang", [{"hang": 60}], request_timeout_s=3, max_retries=0, timeout=12),
    ]
    return {s.name: s for s in out}


def _subst(value: Any, ws: str) -> Any:
    if isinstance(value, str):
        return value.replace("{ws}", ws)
    if isinstance(value, list):
        return [_subst(v, ws) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, ws) for k, v in value.items()}
    return value


def make_server(engine: str, script: list[dict[str, Any]]) -> Any:
    if engine == "claude":
        return AnthropicServer(script)
    if engine == "codex":
        return ResponsesServer(script)
    return ScriptedServer(script, model=MODELS["grok"])


def server_origin(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}"


@dataclass
class Outcome:
    run: h.Run
    launch: Launch
    parser: StreamParser
    requests: list[dict[str, Any]]
    changed: list[str]
    repo: Path
    home: Path
    extra: dict[str, Any] = field(default_factory=dict)


def run_scenario(engine: str, scenario: Scenario, root: Path, *, prompt: str | None = None) -> Outcome:
    adapter = ADAPTERS[engine]()
    repo = h.make_repo(root)
    home = root / "home"
    home.mkdir()
    script = _subst(scenario.script, str(repo))
    server = make_server(engine, script)
    with ThreadedServer(server):
        request = RunRequest(
            prompt=prompt if prompt is not None else scenario.prompt,
            model=MODELS[engine],
            workspace=str(repo),
            home=str(home),
            base_url=server_origin(server),
            max_retries=scenario.max_retries,
            request_timeout_s=scenario.request_timeout_s,
        )
        launch = adapter.launch(request)
        h.write_files(launch.files, {"home": home, "workspace": repo})
        excludes = repo / ".git" / "info" / "exclude"
        with excludes.open("a", encoding="utf-8") as f:
            f.writelines(p + "\n" for p in launch.git_excludes)
        argv = [str(h.engine_binary(launch.argv[0]) or launch.argv[0]), *launch.argv[1:]]
        run = h.run_cli(
            argv,
            env=h.base_env(home) | dict(launch.env),
            cwd=Path(launch.cwd),
            timeout=scenario.timeout,
            stdin_text=launch.stdin,
        )
        requests = list(server.requests)
    parser = adapter.parser(str(repo))
    parser.feed_lines(run.lines)
    parser.finish(run.exit_code)
    return Outcome(run, launch, parser, requests, h.changed_files(repo), repo, home)


def normalise(text: str, outcome: Outcome) -> str:
    return text.replace(str(outcome.repo), "/workspace").replace(str(outcome.home), "/home/run")


def digest(body: Any) -> Any:
    """A request body without its bulky constant parts: sizes, tool names, the last message."""
    if not isinstance(body, dict):
        return body
    out: dict[str, Any] = {
        k: v
        for k, v in body.items()
        if k not in ("tools", "system", "messages", "input", "instructions", "metadata", "client_metadata")
    }
    out["tools"] = [t.get("name") or dict_of_fn(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, list):
            out[f"{key}_count"] = len(items)
            out[f"{key}_last"] = items[-1] if items else None
    return out


def dict_of_fn(tool: dict[str, Any]) -> str:
    fn = tool.get("function")
    return str(fn.get("name")) if isinstance(fn, dict) else str(tool.get("type"))


def record(engine: str, names: list[str] | None = None) -> None:
    """Run the scenarios and store stdout, stderr, requests and a meta file per scenario."""
    target = FIXTURES / engine
    target.mkdir(parents=True, exist_ok=True)
    for name, scenario in scenarios(engine).items():
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory(prefix=f"rec-{engine}-", dir="/var/tmp") as tmp:
            o = run_scenario(engine, scenario, Path(tmp))
            (target / f"{name}.jsonl").write_text(normalise(o.run.stdout, o), encoding="utf-8")
            # The whole first request of write-edit (system prompt, tools); elsewhere a digest.
            reqs = [
                {
                    "method": r["method"],
                    "path": r["path"],
                    "body": r["body"] if name == "write-edit" and i == 0 else digest(r["body"]),
                }
                for i, r in enumerate(o.requests)
            ]
            (target / f"{name}.requests.jsonl").write_text(
                "".join(normalise(json.dumps(r, sort_keys=True), o) + "\n" for r in reqs), encoding="utf-8"
            )
            meta = {
                "exit_code": o.run.exit_code,
                "seconds": round(o.run.seconds, 1),
                "changed": o.changed,
                "stderr": normalise(o.run.stderr, o)[-2000:],
                "argv": [normalise(a, o) for a in o.launch.argv],
                "requests": len(o.requests),
                "killed_by_harness_after_s": None if o.run.exit_code is not None else scenario.timeout,
            }
            (target / f"{name}.meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            s = o.parser.summary
            print(
                f"{engine}/{name}: exit {o.run.exit_code} in {o.run.seconds:.1f}s, {len(o.requests)} requests, "
                f"changed {o.changed}; steps {s.steps} tools {s.tool_calls} errors {s.errors[-1:]} "
                f"finish {s.finish_reason!r}"
            )


if __name__ == "__main__":
    args = sys.argv[1:] or list(ADAPTERS)
    engines = [a for a in args if a in ADAPTERS]
    only = [a for a in args if a not in ADAPTERS] or None
    for e in engines:
        record(e, only)


__all__ = ["Outcome", "Scenario", "record", "replace", "run_scenario", "scenarios"]
