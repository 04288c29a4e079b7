"""Claude Code (``@anthropic-ai/claude-code``) headless: ``claude -p --output-format stream-json``.

Measured facts this relies on (2.1.332, docs/engines/claude.md):
- the prompt is read from stdin when no positional prompt is given (verbatim, any size);
- every model call is ``POST {ANTHROPIC_BASE_URL}/v1/messages?beta=true`` with ``x-api-key``;
- stdout is one JSON object per line: ``system`` (``init``, ``api_retry``), ``assistant``
  (one line per content block, all with the message id of that model response), ``user``
  (tool results), and one ``result`` at the end with the run's total usage;
- model errors end in a synthetic ``assistant`` message (model ``<synthetic>``, ``error``) and a
  ``result`` with ``is_error: true``, exit 1; retryable errors are retried
  ``CLAUDE_CODE_MAX_RETRIES`` times (default 10, ≈ 3 min) with ``api_retry`` lines.
"""

from __future__ import annotations

from typing import Any

from buildstudio.engines.base import (
    Launch,
    RunRequest,
    StreamParser,
    _Pending,
    check_model,
    dict_of,
    int_of,
    loopback_origin,
    str_of,
)
from buildstudio.pins import CLAUDE_CODE_NPM_PACKAGE, CLAUDE_CODE_VERSION
from buildstudio.protocol.records import EventRecord, TokenUsage

NAME = "claude"
VERSION = CLAUDE_CODE_VERSION
PACKAGE = CLAUDE_CODE_NPM_PACKAGE
# Where the relay forwards by default (the vendor API; the relay adds the key as x-api-key).
VENDOR_BASE_URL = "https://api.anthropic.com/v1"
AUTH_HEADER = "x-api-key"
# Tools that change a file named by ``file_path`` (NotebookEdit: ``notebook_path``).
FILE_TOOLS = {"Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}
# Tool results that mean the CLI could not dispatch the call at all.
INVALID_MARKERS = ("No such tool available", "InputValidationError")
OVERFLOW_MARKERS = ("prompt is too long", "prompt_too_long", "context window", "context_length")


class ClaudeAdapter:
    name = NAME
    version = VERSION
    package = PACKAGE
    binary = "claude"
    vendor_base_url = VENDOR_BASE_URL
    auth_header = AUTH_HEADER
    strip_request_fields: tuple[str, ...] = ()
    live_stdout = True
    wire_api = "messages"

    @property
    def version_command(self) -> tuple[str, ...]:
        return (self.binary, "--version")

    def version_matches(self, output: str) -> bool:
        # `2.1.332 (Claude Code)`
        return output.strip().split(" ", 1)[0] == self.version

    def launch(self, request: RunRequest) -> Launch:
        origin = loopback_origin(request.base_url)
        argv = (
            self.binary,
            "-p",  # no positional prompt: it is read from stdin, verbatim and unbounded
            "--output-format",
            "stream-json",
            "--verbose",  # required by stream-json in print mode
            "--model",
            check_model(request.model),
            "--dangerously-skip-permissions",
            # Only our (user) settings: a repository's .claude/settings.json can set env
            # (ANTHROPIC_BASE_URL) and hooks that run commands at start (measured).
            "--setting-sources",
            "user",
            "--strict-mcp-config",
            "--no-session-persistence",
        )
        env = {
            "HOME": request.home,
            "ANTHROPIC_BASE_URL": origin,
            "ANTHROPIC_API_KEY": request.api_key,
            # Lifts the root check of --dangerously-skip-permissions (tests run as root; the
            # sandbox runs as a non-root uid, where it changes nothing).
            "IS_SANDBOX": "1",
            # No DNS lookup of api.anthropic.com, no HEAD /api/hello connectivity probe (measured).
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            # Default 10 retries with back-off up to ≈ 38 s: ≈ 3 min on a failing service.
            "CLAUDE_CODE_MAX_RETRIES": str(max(0, request.max_retries)),
            # A hung request otherwise waits 600 s per attempt.
            "API_TIMEOUT_MS": str(max(1, request.request_timeout_s) * 1000),
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(request.max_output_tokens),
        }
        return Launch(argv=argv, env=env, cwd=request.workspace, stdin=request.prompt)

    def parser(self, workspace: str | None = None) -> ClaudeParser:
        return ClaudeParser(workspace)


class ClaudeParser(StreamParser):
    def __init__(self, workspace: str | None = None) -> None:
        super().__init__(workspace)
        self._message_id = ""
        self._pending: dict[str, _Pending] = {}
        self._pending_error: tuple[str, str, int | None] | None = None
        self._texts: list[str] = []
        self.model = ""

    def handle(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        kind = event.get("type")
        if kind == "system":
            self._system(event, out, ts)
        elif kind == "assistant":
            self._assistant(event, out, ts)
        elif kind == "user":
            self._user(event, out, ts)
        elif kind == "result":
            self._result(event, out, ts)
        elif kind not in ("stream_event", "rate_limit_event"):
            self.bump(self.unknown_types, str_of(kind) or "?")

    def _system(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        subtype = str_of(event.get("subtype"))
        if subtype == "init":
            self.model = str_of(event.get("model"))
            self.record(out, "step", f"claude started: model {self.model}", ts)
        elif subtype == "api_retry":
            self.step_retries += 1
            status = event.get("error_status")
            what = f"HTTP {status}" if type(status) is int else str_of(event.get("error")) or "error"
            attempt, limit = int_of(event.get("attempt")), int_of(event.get("max_retries"))
            msg = f"model request retried (attempt {attempt}/{limit}: {what})"
            self.record(out, "step", msg, ts)

    def _assistant(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        message = dict_of(event.get("message"))
        content = message.get("content")
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        if event.get("error") or message.get("model") == "<synthetic>":
            # The CLI's own message about a failed request: the result line follows.
            text = " ".join(str_of(b.get("text")) for b in blocks).strip()
            status = event.get("api_error_status")
            self._pending_error = (str_of(event.get("error")), text, status if type(status) is int else None)
            return
        if event.get("parent_tool_use_id"):
            return  # a sub-agent's message: its tool calls are not ours to count
        message_id = str_of(message.get("id"))
        if message_id != self._message_id or not message_id:
            self._message_id = message_id
            self.steps += 1
            self._texts = []
            self.finish_reason = ""
        for block in blocks:
            btype = block.get("type")
            if btype == "text":
                text = str_of(block.get("text"))
                if text:
                    self._texts.append(text)
                    self.record(out, "text", text, ts)
            elif btype == "tool_use":
                name = str_of(block.get("name")) or "?"
                tool_input = dict_of(block.get("input"))
                key = FILE_TOOLS.get(name)
                path = str_of(tool_input.get(key)) if key else ""
                title = path or str_of(tool_input.get("file_path"))  # Read names its file too (not a change)
                title = title or str_of(tool_input.get("command")) or str_of(tool_input.get("pattern"))
                self._pending[str_of(block.get("id"))] = _Pending(name, title, [path] if path else [])

    def _user(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        if event.get("parent_tool_use_id"):
            return
        content = dict_of(event.get("message")).get("content")
        if not isinstance(content, list):
            return
        detail = event.get("tool_use_result")
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            pending = self._pending.pop(str_of(block.get("tool_use_id")), None) or _Pending("?")
            result = block.get("content")
            text = (
                result
                if isinstance(result, str)
                else " ".join(str_of(dict_of(p).get("text")) for p in result)
                if isinstance(result, list)
                else ""
            )
            failed = block.get("is_error") is True
            files = list(pending.files)
            if isinstance(detail, dict) and str_of(detail.get("filePath")) and pending.name in FILE_TOOLS:
                files.append(str_of(detail.get("filePath")))
            self.tool_done(
                out,
                ts,
                pending.name,
                ok=not failed,
                title=pending.title,
                error=text.replace("<tool_use_error>", "").replace("</tool_use_error>", ""),
                invalid=failed and any(m in text for m in INVALID_MARKERS),
                files=files,
            )

    def _result(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        usage = dict_of(event.get("usage"))
        inp, outp = int_of(usage.get("input_tokens")), int_of(usage.get("output_tokens"))
        read, write = int_of(usage.get("cache_read_input_tokens")), int_of(usage.get("cache_creation_input_tokens"))
        thinking = int_of(dict_of(usage.get("output_tokens_details")).get("thinking_tokens"))
        # The result carries the run's totals: it replaces anything summed before.
        self.tokens = TokenUsage(
            input=inp,
            output=outp,
            reasoning=thinking,
            cache_read=read,
            cache_write=write,
            total=inp + outp + read + write,
        )
        cost = event.get("total_cost_usd")
        self.cost = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost > 0 else 0.0
        text = str_of(event.get("result"))
        if event.get("is_error") is True:
            self._fail(event, text, out, ts)
            return
        self._pending_error = None
        stop = str_of(event.get("stop_reason"))
        self.set_final(text, "length" if stop == "max_tokens" else "stop")
        self.record(
            out,
            "step",
            f"finished: {stop or 'end_turn'}, {self.tokens.total} tokens "
            f"(in {inp}, out {outp}), {int_of(event.get('num_turns'))} turns",
            ts,
        )

    def _fail(self, event: dict[str, Any], text: str, out: list[EventRecord], ts: float) -> None:
        status = event.get("api_error_status")
        code = status if type(status) is int else None
        reason = str_of(event.get("terminal_reason"))
        if self._pending_error and not text:
            text = self._pending_error[1]
        self._pending_error = None
        lowered = (text + " " + reason).lower()
        if "output token maximum" in lowered:
            # stop_reason max_tokens: the CLI asked the model to go on (3 times) and then gave up.
            self.set_final(text, "length")
            self.record(out, "step", f"finished: output token limit ({text})", ts)
            return
        if reason == "prompt_too_long" or any(m in lowered for m in OVERFLOW_MARKERS):
            name = "ContextOverflowError"
        elif reason == "api_error" or code is not None:
            name = "APIError"
        else:
            name = f"ClaudeError({reason or str_of(event.get('subtype')) or 'unknown'})"
        self.add_error(out, ts, name, text or reason or "failed", code)

    def finish(self, exit_code: int | None = None) -> list[EventRecord]:
        out: list[EventRecord] = []
        if self._pending_error is not None:  # killed between the error message and the result
            kind, text, status = self._pending_error
            self._pending_error = None
            overflow = any(m in text.lower() for m in OVERFLOW_MARKERS)
            self.add_error(out, 0.0, "ContextOverflowError" if overflow else "APIError", text or kind, status)
        return out
