"""The engine adapter contract shared by claude, codex and grok (docs/engines/<engine>.md).

An adapter is pure: it turns a run request into a ``Launch`` (argv, environment, files to
write, stdin text, git excludes) and reads the CLI's stdout lines into the project's records
(``EventRecord``) and summary (``RunSummary``), shaped so that the existing outcome decision
(``judge``) applies unchanged: ``finishReason`` "stop"/"length" only for a final answer, and
``errors`` entries named ``APIError`` (model service), ``ContextOverflowError`` or anything
else (engine failure). The runner does all IO: it writes the files, starts the process with
the argv (never through a shell), feeds stdout lines to the parser and keeps the watchdog.
"""

from __future__ import annotations

import ipaddress
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from buildstudio.engines.opencode_stream import format_error, loads, relative_path
from buildstudio.protocol.lines import LineSplitter
from buildstudio.protocol.records import EventRecord, RunSummary, TokenUsage

# What the engine is given instead of a key: the credential-injecting relay on loopback swaps in
# the real one, so the agent's process never holds a credential.
PLACEHOLDER_API_KEY = "sk-buildstudio-placeholder"
# Linux caps one argv element (and one environment string) at MAX_ARG_STRLEN = 128 KiB,
# terminating NUL included; exec fails with E2BIG beyond it.
ARG_MAX_BYTES = 128 * 1024 - 1
MAX_LINE_CHARS = 4 * 1024 * 1024  # longer stdout lines are counted as malformed, not parsed
MAX_FILES = 200
MAX_ERRORS = 20
MAX_NAMED = 50
MAX_FINAL_TEXT = 8 * 1024
MAX_MESSAGE = 300
OTHER = "(other)"

Root = Literal["home", "workspace"]


class LaunchError(ValueError):
    """The request cannot be turned into a safe command line (bad model id, non-loopback URL …)."""


@dataclass(frozen=True)
class FileSpec:
    """A file the runner writes before starting the engine: ``root`` / ``path`` (relative)."""

    root: Root
    path: str
    content: str
    mode: int = 0o600


@dataclass(frozen=True)
class RunRequest:
    prompt: str
    model: str
    workspace: str  # absolute path of the git work tree
    home: str  # absolute path of the run's private HOME (writable, empty at start)
    base_url: str  # origin of the model relay on loopback, e.g. http://127.0.0.1:8089 (no path)
    api_key: str = PLACEHOLDER_API_KEY
    max_retries: int = 2  # the CLI's own retries of a failed model request
    request_timeout_s: int = 300  # one model request (where the CLI has such a setting)
    max_output_tokens: int = 16384  # where the CLI lets us set it (grok's default is 1536)
    max_steps: int = 200  # where the CLI has a step/tool-round limit (grok)


@dataclass(frozen=True)
class Launch:
    """How to start the engine: all data, no IO done yet."""

    argv: tuple[str, ...]
    env: Mapping[str, str]  # the whole environment to add to PATH/LANG (HOME included)
    cwd: str
    stdin: str | None = None  # text to write to stdin then close it; None: stdin is /dev/null
    files: tuple[FileSpec, ...] = ()
    # Workspace paths the CLI itself creates (not the agent's work): add them to
    # .git/info/exclude before the run, unless the repository tracks them.
    git_excludes: tuple[str, ...] = ()


class StreamParser(ABC):
    """Folds one engine's stdout lines into EventRecords and a bounded RunSummary.

    Never raises on input: malformed lines, unknown types and mistyped fields are counted.
    """

    def __init__(self, workspace: str | None = None) -> None:
        self.workspace = workspace.rstrip("/") if workspace else None
        self.events = 0
        self.malformed = 0
        self.steps = 0
        self.step_retries = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.invalid_tool_calls = 0
        self.tools_by_name: dict[str, int] = {}
        self.unknown_types: dict[str, int] = {}
        self.files: dict[str, None] = {}
        self.errors: list[str] = []
        self.tokens = TokenUsage()
        self.cost = 0.0
        self.finish_reason = ""  # "stop"/"length" only while nothing followed the final answer
        self.final_text = ""
        self.last_event_at: float | None = None
        self.last_tool = ""

    # ------------------------------------------------------------------ input

    def feed(self, line: bytes | str, now: float | None = None) -> list[EventRecord]:
        """Fold one stdout line (newline optional); returns the records it produced."""
        out: list[EventRecord] = []
        if not line or line.isspace():
            return out
        if len(line) > MAX_LINE_CHARS:
            self.malformed += 1
            return out
        try:
            event = loads(line)
        except (ValueError, RecursionError, TypeError):
            self.malformed += 1
            return out
        if not isinstance(event, dict):
            self.malformed += 1
            return out
        self.events += 1
        self.last_event_at = time.monotonic() if now is None else now
        self.handle(event, out, now or 0.0)
        return out

    def feed_lines(self, lines: Iterable[bytes | str]) -> list[EventRecord]:
        out: list[EventRecord] = []
        for line in lines:
            out.extend(self.feed(line))
        return out

    def finish(self, exit_code: int | None = None) -> list[EventRecord]:
        """End of the stream (the process exited, or was killed: ``exit_code`` None)."""
        return []

    @abstractmethod
    def handle(self, event: dict[str, Any], out: list[EventRecord], ts: float) -> None: ...

    # ------------------------------------------------------------------ helpers for subclasses

    def record(self, out: list[EventRecord], kind: str, message: str, ts: float) -> None:
        flat = " ".join(message[: MAX_MESSAGE * 2].split())
        if len(flat) > MAX_MESSAGE:
            flat = flat[: MAX_MESSAGE - 1] + "…"
        out.append(EventRecord(type=kind, message=flat, ts=ts))

    def bump(self, counter: dict[str, int], key: str) -> None:
        key = key[:64] or "?"
        if key not in counter and len(counter) >= MAX_NAMED:
            key = OTHER
        counter[key] = counter.get(key, 0) + 1

    def touch(self, path: str) -> None:
        if not path:
            return
        rel = relative_path(path, self.workspace)[:512]
        if rel not in self.files and len(self.files) < MAX_FILES:
            self.files[rel] = None

    def tool_done(
        self,
        out: list[EventRecord],
        ts: float,
        name: str,
        *,
        ok: bool,
        title: str = "",
        error: str = "",
        invalid: bool = False,
        files: Iterable[str] = (),
    ) -> None:
        self.tool_calls += 1
        self.bump(self.tools_by_name, name)
        self.last_tool = name[:64]
        if not ok:
            self.tool_errors += 1
        if invalid:
            self.invalid_tool_calls += 1
        if ok:
            for path in files:
                self.touch(path)
        title = relative_path(title, self.workspace) if title.startswith("/") else title
        msg = f"{name} {title} {'completed' if ok else 'error'}".replace("  ", " ")
        self.record(out, "tool", msg + (f": {error}" if error and not ok else ""), ts)

    def add_error(self, out: list[EventRecord], ts: float, name: str, message: str, status: int | None = None) -> None:
        entry = format_error(name, message, status)
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(entry)
        else:
            self.errors[-1] = entry
        self.finish_reason = ""
        self.final_text = ""
        self.record(out, "error", entry, ts)

    def set_final(self, text: str, reason: str) -> None:
        self.final_text = text if len(text) <= MAX_FINAL_TEXT else text[:MAX_FINAL_TEXT] + "\n... [truncated]"
        self.finish_reason = reason

    # ------------------------------------------------------------------ output

    @property
    def terminal(self) -> bool:
        return self.finish_reason in ("stop", "length")

    @property
    def summary(self) -> RunSummary:
        return RunSummary(
            steps=self.steps,
            step_retries=self.step_retries,
            tool_calls=self.tool_calls,
            tool_errors=self.tool_errors,
            invalid_tool_calls=self.invalid_tool_calls,
            tools_by_name=dict(self.tools_by_name),
            files_touched=list(self.files),
            tokens=self.tokens.model_copy(),
            cost=self.cost,
            events=self.events,
            malformed_lines=self.malformed,
            unknown_types=dict(self.unknown_types),
            errors=list(self.errors),
            final_text=self.final_text,
            finish_reason=self.finish_reason,
        )


class EngineAdapter(Protocol):
    name: str
    version: str  # what ``version_command`` prints for the pinned package
    package: str  # npm package spec of the pin
    binary: str  # the command name on PATH
    # For the credential-injecting relay: the vendor API it forwards to by default, the header that
    # carries the key there ("authorization": Bearer; "x-api-key"), request fields it drops.
    vendor_base_url: str
    auth_header: str
    strip_request_fields: tuple[str, ...]
    # False: stdout stays silent until the end (grok), so the runner's idle watchdog counts the
    # relay's model traffic as activity instead.
    live_stdout: bool
    # The model API it speaks: "messages" (Anthropic), "responses" (OpenAI Responses) or "chat"
    # (OpenAI chat completions, the one the relay can repair text-format tool calls in).
    wire_api: str

    @property
    def version_command(self) -> tuple[str, ...]: ...

    def version_matches(self, output: str) -> bool: ...

    def launch(self, request: RunRequest) -> Launch: ...

    def parser(self, workspace: str | None = None) -> StreamParser: ...


class ParsedStream:
    """A ``StreamParser`` behind the interface the runner drives opencode's ``StreamFolder`` with:
    raw stdout bytes in any chunking, the watchdog's signals, the summary.

    ``last_event_at`` is the time of the last line that was *work* (a retry notice — claude's
    ``api_retry``, codex's ``Reconnecting…`` — is not): an engine retrying a dead service for
    minutes is idle.
    """

    def __init__(self, parser: StreamParser, max_line_bytes: int = MAX_LINE_CHARS) -> None:
        self.parser = parser
        self._splitter = LineSplitter(max_line_bytes)
        self.last_event_at: float | None = None  # monotonic, as given by the caller
        # Loop signals of opencode's folder that no adapter has (their CLIs end such loops themselves).
        self.unknown_finish_streak = 0
        self.compaction_cycles = 0

    def feed_bytes(self, chunk: bytes, now: float | None = None) -> list[EventRecord]:
        out: list[EventRecord] = []
        for line in self._splitter.feed(chunk):
            self._one(line, now, out)
        return out

    def finish(self, now: float | None = None) -> list[EventRecord]:
        """End of stdout: a last line without its newline."""
        out: list[EventRecord] = []
        for line in self._splitter.close():
            self._one(line, now, out)
        return out

    def end(self, exit_code: int | None) -> list[EventRecord]:
        """The process is gone (``exit_code`` None: killed, or never known)."""
        return self.parser.finish(exit_code)

    def _one(self, line: bytes, now: float | None, out: list[EventRecord]) -> None:
        p = self.parser
        events, retries = p.events, p.step_retries
        out.extend(p.feed(line, time.time()))  # record timestamps are wall-clock
        if p.events > events and p.step_retries == retries:
            self.last_event_at = time.monotonic() if now is None else now

    @property
    def steps(self) -> int:
        return self.parser.steps

    @property
    def tool_calls(self) -> int:
        return self.parser.tool_calls

    @property
    def input_tokens(self) -> int:
        return self.parser.tokens.input

    @property
    def output_tokens(self) -> int:
        return self.parser.tokens.output

    @property
    def terminal(self) -> bool:
        return self.parser.terminal

    @property
    def summary(self) -> RunSummary:
        s = self.parser.summary
        s.malformed_lines += self._splitter.overlong
        return s


# --------------------------------------------------------------------------- shared checks


def loopback_origin(base_url: str) -> str:
    """``base_url`` without a trailing slash, refused unless it is http(s) on a loopback address.

    The engine only ever talks to the relay beside it; a URL elsewhere would bypass the relay.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.username:
        raise LaunchError(f"base URL must be a bare http origin on loopback, got {base_url!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LaunchError(f"base URL must be on loopback (the relay), got host {host!r}")
    return f"{parts.scheme}://{parts.netloc}"


def check_model(model: str) -> str:
    """A model id is one printable token: it lands in argv and config files."""
    if not model or len(model) > 200 or any(c.isspace() or not c.isprintable() for c in model):
        raise LaunchError(f"invalid model id {model!r}")
    return model


def fits_argv(text: str) -> bool:
    return len(text.encode("utf-8")) <= ARG_MAX_BYTES and "\0" not in text


def dict_of(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def str_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def int_of(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


@dataclass
class _Pending:
    """A tool call seen in the model's output, waiting for its result."""

    name: str
    title: str = ""
    files: list[str] = field(default_factory=list)
