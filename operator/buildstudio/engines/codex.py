"""OpenAI Codex CLI (``@openai/codex``) headless: ``codex exec --json``.

Measured facts this relies on (0.171.0, docs/engines/codex.md):
- only the Responses API: ``POST {base_url}/responses`` (streaming SSE), through a custom provider
  in ``$CODEX_HOME/config.toml``; ``Authorization: Bearer $<env_key>``;
- ``-`` as the prompt reads it from stdin, verbatim and unbounded;
- stdout events: ``thread.started``, ``turn.started``, ``item.started`` / ``item.completed``
  (item types ``agent_message``, ``reasoning``, ``command_execution``, ``file_change``,
  ``mcp_tool_call``, ``web_search``, ``todo_list``, ``error`` = a warning), ``error`` (a
  ``Reconnecting... n/m (…)`` retry, or the fatal error), ``turn.completed`` (usage of the whole
  turn) or ``turn.failed``;
- there is no event per model request, so ``steps`` counts turns; a tool call codex could not
  dispatch (unknown tool, a patch that does not apply) prints no item at all (stderr only).
"""

from __future__ import annotations

import json
import re
from typing import Any

from buildstudio.engines.base import (
    FileSpec,
    Launch,
    RunRequest,
    StreamParser,
    check_model,
    dict_of,
    int_of,
    loopback_origin,
    str_of,
)
from buildstudio.pins import CODEX_NPM_PACKAGE, CODEX_VERSION
from buildstudio.protocol.records import EventRecord, TokenUsage

NAME = "codex"
VERSION = CODEX_VERSION
PACKAGE = CODEX_NPM_PACKAGE
VENDOR_BASE_URL = "https://api.openai.com/v1"
AUTH_HEADER = "authorization"
KEY_ENV = "BUILDSTUDIO_MODEL_KEY"  # the provider's env_key: holds the placeholder only
PROVIDER = "buildstudio"
CODEX_DIR = ".codex"
RETRY = re.compile(r"^Reconnecting\.\.\. (\d+)/(\d+)")
STATUS = re.compile(r"unexpected status (\d{3})")
OVERFLOW_MARKERS = ("context window", "context_length_exceeded", "maximum context length")
TOOL_ITEMS = {
    "command_execution": "shell",
    "file_change": "apply_patch",
    "mcp_tool_call": "mcp",
    "web_search": "web_search",
    "todo_list": "todo_list",
}


def _toml(value: str) -> str:
    # A JSON string (ASCII-only escapes) is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def config_toml(request: RunRequest) -> str:
    """``$CODEX_HOME/config.toml`` for one run: our provider only, nothing fetched at start."""
    origin = loopback_origin(request.base_url)
    timeout_ms = max(1, request.request_timeout_s) * 1000
    return "\n".join(
        [
            f"model = {_toml(check_model(request.model))}",
            f"model_provider = {_toml(PROVIDER)}",
            'approval_policy = "never"',
            'sandbox_mode = "danger-full-access"',  # the pod is the sandbox; codex's own needs privileges
            "check_for_update_on_startup = false",
            # With these off no DNS lookup of chatgpt.com, ab.chatgpt.com, github.com was seen.
            "features.plugins = false",
            "features.remote_plugin = false",
            "",
            "[analytics]",
            "enabled = false",
            "",
            f"[model_providers.{PROVIDER}]",
            'name = "Build Studio relay"',
            f"base_url = {_toml(origin + '/v1')}",
            'wire_api = "responses"',  # "chat" is refused by this version
            f"env_key = {_toml(KEY_ENV)}",
            f"request_max_retries = {max(0, request.max_retries)}",
            f"stream_max_retries = {max(0, request.max_retries)}",
            # Gap between SSE events; a request that never gets response headers is NOT covered
            # (measured: it waits as long as the server holds the connection).
            f"stream_idle_timeout_ms = {timeout_ms}",
            "",
        ]
    )


class CodexAdapter:
    name = NAME
    version = VERSION
    package = PACKAGE
    binary = "codex"
    vendor_base_url = VENDOR_BASE_URL
    auth_header = AUTH_HEADER
    strip_request_fields: tuple[str, ...] = ()
    live_stdout = True
    wire_api = "responses"

    @property
    def version_command(self) -> tuple[str, ...]:
        return (self.binary, "--version")

    def version_matches(self, output: str) -> bool:
        # `codex-cli 0.171.0`
        return output.strip().split()[-1:] == [self.version]

    def launch(self, request: RunRequest) -> Launch:
        codex_home = f"{request.home.rstrip('/')}/{CODEX_DIR}"
        argv = (
            self.binary,
            "exec",
            "--json",
            "--dangerously-bypass-approvals-and-sandbox",
            "--cd",
            request.workspace,
            "--model",
            check_model(request.model),
            "--ephemeral",  # no session files kept under CODEX_HOME
            "-",  # the prompt comes from stdin
        )
        env = {"HOME": request.home, "CODEX_HOME": codex_home, KEY_ENV: request.api_key}
        files = (FileSpec("home", f"{CODEX_DIR}/config.toml", config_toml(request)),)
        return Launch(argv=argv, env=env, cwd=request.workspace, stdin=request.prompt, files=files)

    def parser(self, workspace: str | None = None) -> CodexParser:
        return CodexParser(workspace)


def classify(message: str) -> tuple[str, int | None]:
    """(error name, HTTP status) of a codex error message."""
    match = STATUS.search(message)
    status = int(match.group(1)) if match else None
    if any(m in message.lower() for m in OVERFLOW_MARKERS):
        return "ContextOverflowError", status
    return "APIError", status


class CodexParser(StreamParser):
    def __init__(self, workspace: str | None = None) -> None:
        super().__init__(workspace)
        self._last_error = ""
        self._turn_text = ""
        self.warnings: list[str] = []

    def handle(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        kind = event.get("type")
        if kind == "item.completed":
            self._item(dict_of(event.get("item")), out, ts)
        elif kind == "turn.started":
            self.steps += 1
            self.finish_reason = ""
            self._turn_text = ""
        elif kind == "turn.completed":
            self._completed(dict_of(event.get("usage")), out, ts)
        elif kind == "error":
            self._error(str_of(event.get("message")), out, ts)
        elif kind == "turn.failed":
            message = str_of(dict_of(event.get("error")).get("message"))
            if message != self._last_error:  # the same text came as an `error` event just before
                name, status = classify(message)
                self.add_error(out, ts, name, message or "turn failed", status)
        elif kind not in ("thread.started", "item.started", "item.updated"):
            self.bump(self.unknown_types, str_of(kind) or "?")

    def _item(self, item: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        itype = str_of(item.get("type"))
        if itype == "agent_message":
            text = str_of(item.get("text"))
            self._turn_text = text  # the answer is the turn's last message
            if text:
                self.record(out, "text", text, ts)
        elif itype in TOOL_ITEMS:
            ok = str_of(item.get("status")) == "completed"
            files: list[str] = []
            title = str_of(item.get("command")) or str_of(item.get("tool")) or str_of(item.get("query"))
            if itype == "file_change":
                changes = item.get("changes")
                files = [str_of(dict_of(c).get("path")) for c in changes] if isinstance(changes, list) else []
                title = ", ".join(f for f in files if f)
            error = ""
            if itype == "command_execution" and not ok:
                error = f"exit code {item.get('exit_code')}"
            self.tool_done(out, ts, TOOL_ITEMS[itype], ok=ok, title=title, error=error, files=files)
        elif itype == "error":
            # Warnings such as "Model metadata for `x` not found": the run goes on.
            message = str_of(item.get("message"))
            if len(self.warnings) < 10:
                self.warnings.append(message)
            self.record(out, "text", "codex warning: " + message, ts)
        elif itype != "reasoning":
            self.bump(self.unknown_types, "item:" + (itype or "?"))

    def _completed(self, usage: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        inp, outp = int_of(usage.get("input_tokens")), int_of(usage.get("output_tokens"))
        cached, reasoning = int_of(usage.get("cached_input_tokens")), int_of(usage.get("reasoning_output_tokens"))
        write = int_of(usage.get("cache_write_input_tokens"))
        t = self.tokens
        # input_tokens includes the cached ones (OpenAI's convention): the total is input + output.
        self.tokens = TokenUsage(
            input=t.input + inp,
            output=t.output + outp,
            reasoning=t.reasoning + reasoning,
            cache_read=t.cache_read + cached,
            cache_write=t.cache_write + write,
            total=t.total + inp + outp,
        )
        self.set_final(self._turn_text, "stop")
        self.record(out, "step", f"turn {self.steps} finished: {inp + outp} tokens (in {inp}, out {outp})", ts)

    def _error(self, message: str, out: list[EventRecord], ts: float) -> None:
        retry = RETRY.match(message)
        if retry:
            self.step_retries += 1
            self.record(out, "step", f"model request retried: {message}", ts)
            return
        self._last_error = message
        if "max_output_tokens" in message:
            # "Incomplete response returned, reason: max_output_tokens": the answer was cut (exit 1).
            self.set_final(self._turn_text, "length")
            self.record(out, "step", f"turn {self.steps} cut: {message}", ts)
            return
        name, status = classify(message)
        self.add_error(out, ts, name, message or "error", status)
