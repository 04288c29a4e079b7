"""Grok CLI (``@vibe-kit/grok-cli``) headless: ``grok -p PROMPT``.

Measured facts this relies on (package 0.0.34, binary says 1.0.1; docs/engines/grok.md):
- OpenAI chat completions, NOT streamed in headless mode: ``POST {GROK_BASE_URL}/chat/completions``
  with ``Authorization: Bearer $GROK_API_KEY``; the openai SDK retries 5xx/429/connection errors
  twice and waits up to 360 s per request;
- stdout is printed only at the very end: one chat message per line (``user``, ``assistant``
  with ``tool_calls``, ``tool`` results, the final ``assistant``); no usage, no timestamps;
- a model error is NOT an exit code: exit 0 and an assistant line
  ``Sorry, I encountered an error: Grok API error: <status> <message>`` — and the messages of
  the steps before it are not printed at all;
- SIGTERM prints ``\\nGracefully shutting down...`` and exits 0;
- the prompt is only accepted as an argument (no stdin): over the argv limit it goes to a file.
"""

from __future__ import annotations

import re
from typing import Any

from buildstudio.engines.base import (
    FileSpec,
    Launch,
    RunRequest,
    StreamParser,
    _Pending,
    check_model,
    dict_of,
    fits_argv,
    loopback_origin,
    str_of,
)
from buildstudio.engines.opencode_stream import loads
from buildstudio.pins import GROK_CLI_BINARY_VERSION, GROK_CLI_NPM_PACKAGE, GROK_CLI_VERSION
from buildstudio.protocol.records import EventRecord

NAME = "grok"
VERSION = GROK_CLI_BINARY_VERSION  # what `grok --version` prints for the pinned package
PACKAGE_VERSION = GROK_CLI_VERSION
PACKAGE = GROK_CLI_NPM_PACKAGE
VENDOR_BASE_URL = "https://api.x.ai/v1"
AUTH_HEADER = "authorization"
# xAI-only request field: OpenAI-compatible servers other than xAI may refuse it; the relay drops it.
STRIP_REQUEST_FIELDS = ("search_parameters",)
PROMPT_FILE = "buildstudio-task.md"  # under HOME, when the prompt is too long for argv
ERROR_PREFIX = "Sorry, I encountered an error: "
API_ERROR = re.compile(r"^Grok API error: (?:(\d{3}) )?(.*)$", re.S)
ROUNDS_TEXT = "Maximum tool execution rounds reached."
PLACEHOLDER_TEXTS = ("Using tools to help you...", "I understand, but I don't have a specific response.")
# A failed tool returns its error text as the tool message (no flag): these are its prefixes
# in dist/tools/*.js of 0.0.34.
TOOL_ERROR_PREFIXES = (
    "Error",
    "File not found",
    "File or directory not found",
    "String not found",
    "Command failed",
    "Cannot change directory",
    "Unknown tool",
    "Tool execution error",
    "Invalid ",
    "Could not find",
    "Todo with id",
    "Search error",
    "Confirmation error",
    "Morph Fast Apply not available",
)
INVALID_PREFIXES = ("Unknown tool", "Tool execution error")
OVERFLOW_MARKERS = ("context length", "context_length", "context window", "too many tokens", "prompt is too long")
FILE_TOOLS = {"create_file", "str_replace_editor", "edit_file"}
# grok creates <cwd>/.grok/settings.json on every run (cwd = the -d directory): not the agent's work.
GIT_EXCLUDES = (".grok/settings.json",)


def pointer_prompt(path: str) -> str:
    return (
        f"Your task is longer than a command line allows; it is in the file {path}. "
        "Read the whole file with view_file first, then do exactly what it says."
    )


class GrokAdapter:
    name = NAME
    version = VERSION
    package = PACKAGE
    binary = "grok"
    vendor_base_url = VENDOR_BASE_URL
    auth_header = AUTH_HEADER
    strip_request_fields: tuple[str, ...] = STRIP_REQUEST_FIELDS
    live_stdout = False
    wire_api = "chat"

    @property
    def version_command(self) -> tuple[str, ...]:
        return (self.binary, "--version")

    def version_matches(self, output: str) -> bool:
        return output.strip() == self.version

    def launch(self, request: RunRequest) -> Launch:
        origin = loopback_origin(request.base_url)
        files: tuple[FileSpec, ...] = ()
        prompt = request.prompt
        if not fits_argv(prompt) or prompt.startswith("-"):
            # No stdin mode: hand the text over as a file and point at it. (A prompt starting
            # with "-" would also be taken for an option by commander.)
            files = (FileSpec("home", PROMPT_FILE, prompt),)
            prompt = pointer_prompt(f"{request.home.rstrip('/')}/{PROMPT_FILE}")
        argv = (
            self.binary,
            "--directory",
            request.workspace,
            "--model",
            check_model(request.model),
            "--max-tool-rounds",
            str(max(1, request.max_steps)),
            "--prompt",
            prompt,
        )
        env = {
            "HOME": request.home,
            # Via the environment, not --api-key/--base-url: those are saved to ~/.grok/user-settings.json.
            "GROK_API_KEY": request.api_key,
            "GROK_BASE_URL": origin + "/v1",
            "GROK_MAX_TOKENS": str(request.max_output_tokens),  # default 1536
        }
        # cwd = HOME: grok loads `.env` from its start directory (dotenv), which must not be the repo's.
        return Launch(argv=argv, env=env, cwd=request.home, files=files, git_excludes=GIT_EXCLUDES)

    def parser(self, workspace: str | None = None) -> GrokParser:
        return GrokParser(workspace)


def tool_failed(text: str) -> bool:
    return text.startswith(TOOL_ERROR_PREFIXES)


class GrokParser(StreamParser):
    def __init__(self, workspace: str | None = None) -> None:
        super().__init__(workspace)
        self._pending: dict[str, _Pending] = {}
        self.shutdown_notice = False  # the SIGTERM handler's line was seen

    def feed(self, line: bytes | str, now: float | None = None) -> list[EventRecord]:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if text.strip() == "Gracefully shutting down...":
            self.shutdown_notice = True
            return []
        return super().feed(line, now)

    def handle(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        role = event.get("role")
        if role == "assistant":
            self._assistant(event, out, ts)
        elif role == "tool":
            self._tool(event, out, ts)
        elif role != "user":
            self.bump(self.unknown_types, str_of(role) or "?")

    def _assistant(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        content = str_of(event.get("content"))
        calls = event.get("tool_calls")
        if content.startswith(ERROR_PREFIX):
            self._api_error(content[len(ERROR_PREFIX) :], out, ts)
            return
        if content == ROUNDS_TEXT:
            self.add_error(out, ts, "StepLimitError", content)
            return
        self.steps += 1
        if content and content not in PLACEHOLDER_TEXTS:
            self.record(out, "text", content, ts)
        if isinstance(calls, list) and calls:
            self.finish_reason = ""
            for call in calls:
                call = dict_of(call)
                fn = dict_of(call.get("function"))
                name = str_of(fn.get("name")) or "?"
                try:
                    args = dict_of(loads(str_of(fn.get("arguments")) or "{}"))
                except (ValueError, RecursionError, TypeError):
                    args = {}
                path = str_of(args.get("path")) or str_of(args.get("target_file"))
                title = path or str_of(args.get("command")) or str_of(args.get("query"))
                files = [path] if path and name in FILE_TOOLS else []
                self._pending[str_of(call.get("id"))] = _Pending(name, title, files)
            return
        self.set_final("" if content in PLACEHOLDER_TEXTS else content, "stop")

    def _tool(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None:
        pending = self._pending.pop(str_of(event.get("tool_call_id")), None) or _Pending("?")
        text = str_of(event.get("content"))
        failed = tool_failed(text)
        files = [p if p.startswith("/") or not self.workspace else f"{self.workspace}/{p}" for p in pending.files]
        self.tool_done(
            out,
            ts,
            pending.name,
            ok=not failed,
            title=pending.title,
            error=text,
            invalid=text.startswith(INVALID_PREFIXES),
            files=files,
        )

    def _api_error(self, text: str, out: list[EventRecord], ts: float) -> None:
        match = API_ERROR.match(text)
        status = int(match.group(1)) if match and match.group(1) else None
        message = match.group(2) if match else text
        overflow = any(m in message.lower() for m in OVERFLOW_MARKERS)
        name = "ContextOverflowError" if overflow else ("APIError" if match else "GrokError")
        self.add_error(out, ts, name, message, status)
