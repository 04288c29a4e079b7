"""Fold opencode's `--format json` event stream into compact records and a bounded summary.

Shared by the sandbox runner (reading opencode's stdout through asyncio) and the operator
(reading pod logs). Everything here is synchronous, pure Python over bytes/str: the caller
owns the IO. Memory stays bounded whatever the stream length: over-long lines are skipped
without being buffered, and every list/dict in the state has a cap.

Stream facts this relies on (opencode 1.18.33, see the captured fixtures):
- one JSON object per line, dispatched on `type`: step_start, text, reasoning, tool_use,
  step_finish, error; anything else is counted as unknown;
- a step is step_start, its parts, step_finish; a retried model request repeats step_start
  with the same messageID and no step_finish;
- tokens are per step (sum them); the final answer is the text of the last step whose
  step_finish reason is stop/length, unless an error or a synthetic continuation text
  (opencode's compaction) follows it; the run is *terminal* only while nothing at all
  (error, new step, continuation) followed that step_finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from buildstudio.records import EventRecord, RunSummary, TokenUsage

_raw_decode = json.JSONDecoder().raw_decode


def loads_stdlib(line: bytes | str) -> Any:
    """json.loads without its per-call layers (≈ 2x faster on short lines); ValueError on bad input."""
    text = (line.decode("utf-8") if isinstance(line, bytes) else line).strip()
    value, end = _raw_decode(text)
    if end != len(text):
        raise ValueError("trailing data")
    return value


try:  # orjson parses ≈ 2-3x faster still; optional so the runner image may leave it out
    import orjson

    loads: Any = orjson.loads  # its JSONDecodeError is a ValueError, also for bad UTF-8
except ImportError:  # pragma: no cover - depends on the environment
    loads = loads_stdlib

MAX_LINE_BYTES = 1 << 20
MAX_FILES = 200
MAX_ERRORS = 20
MAX_ERROR_CHARS = 400
MAX_FINAL_TEXT = 8 * 1024
MAX_MESSAGE_CHARS = 300
MAX_TEXT_EXCERPT = 200
MAX_NAMED_COUNTERS = 50  # tool names / unknown types; the rest is counted under OTHER
OTHER = "(other)"
FINAL_TEXT_CUT_MARKER = "\n... [final text truncated]"
TERMINAL_REASONS = frozenset({"stop", "length"})
_FILE_TOOLS = frozenset({"write", "edit"})


# --------------------------------------------------------------------------- lines


class LineSplitter:
    """Incremental newline splitter for bytes arriving in arbitrary chunks.

    A line longer than `max_line_bytes` is dropped and counted in `overlong`; its bytes are
    never accumulated beyond the cap (a 50 MB line costs at most one chunk of memory).
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.overlong = 0
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: skip to the next newline

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        parts = chunk.split(b"\n")
        tail = parts.pop()  # bytes after the last newline (maybe empty)
        limit = self.max_line_bytes
        lines: list[bytes] = []
        if parts:
            head = parts[0]
            if self._discarding:
                self._discarding = False
            elif self._buf:
                if len(self._buf) + len(head) > limit:
                    self.overlong += 1
                else:
                    self._buf += head
                    lines.append(bytes(self._buf))
                self._buf.clear()
            elif len(head) > limit:
                self.overlong += 1
            else:
                lines.append(head)
            for part in parts[1:]:
                if len(part) > limit:
                    self.overlong += 1
                else:
                    lines.append(part)
        if tail and not self._discarding:
            if len(self._buf) + len(tail) > limit:
                self.overlong += 1
                self._buf.clear()
                self._discarding = True
            else:
                self._buf += tail
        return lines

    def close(self) -> list[bytes]:
        """The last line when the stream did not end with a newline."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._discarding = False
        return [rest] if rest else []


def iter_lines(
    source: BinaryIO | Iterable[bytes],
    max_line_bytes: int = MAX_LINE_BYTES,
    chunk_size: int = 1 << 16,
    splitter: LineSplitter | None = None,
) -> Iterator[bytes]:
    """Lines of a binary stream or an iterable of chunks, without the newline.

    Pass your own `splitter` to read its `overlong` count afterwards.
    """
    split = splitter or LineSplitter(max_line_bytes)
    if hasattr(source, "read"):
        read = source.read
        while chunk := read(chunk_size):
            yield from split.feed(chunk)
    else:
        for chunk in source:
            yield from split.feed(chunk)
    yield from split.close()


# --------------------------------------------------------------------------- errors


def format_error(name: str, message: str, status: int | None = None, code: str = "") -> str:
    """`APIError [HTTP 404, code]: message` — the form stored in RunSummary.errors."""
    tags = [f"HTTP {status}"] if status is not None else []
    if code:
        tags.append(code)
    tag = f" [{', '.join(tags)}]" if tags else ""
    return _one_line(f"{name or 'Error'}{tag}: {message}", MAX_ERROR_CHARS)


def error_name(entry: str) -> str:
    """The error class name of a RunSummary.errors entry (inverse of format_error)."""
    for i, ch in enumerate(entry):
        if ch in " :[":
            return entry[:i]
    return entry


def error_status(entry: str) -> int | None:
    """The HTTP status of a RunSummary.errors entry, if it had one."""
    head = entry.split(":", 1)[0]
    marker = head.find("[HTTP ")
    if marker < 0:
        return None
    digits = head[marker + 6 : marker + 9]
    return int(digits) if digits.isdigit() else None


# --------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text[: limit * 2].split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_EMPTY: dict[str, Any] = {}  # shared, read-only stand-in for a missing object


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else _EMPTY


def _str(value: Any) -> str:
    return value if type(value) is str else ""


def _int(value: Any) -> int:
    # Exact type: a JSON true is a bool, not a count; negative counts are nonsense.
    return value if type(value) is int and value > 0 else 0


def _num(value: Any) -> float:
    return float(value) if (type(value) is int or type(value) is float) and value > 0 else 0.0


def relative_path(path: str, workspace: str | None) -> str:
    """`path` relative to `workspace` when it lies inside it; other paths unchanged."""
    if workspace:
        root = workspace.rstrip("/")
        if path == root:
            return "."
        if path.startswith(root + "/"):
            path = path[len(root) + 1 :]
    while path.startswith("./"):
        path = path[2:]
    return path


def _bump(counter: dict[str, int], key: str) -> None:
    key = key[:64]
    if key not in counter and len(counter) >= MAX_NAMED_COUNTERS:
        key = OTHER
    counter[key] = counter.get(key, 0) + 1


# --------------------------------------------------------------------------- folder


class StreamFolder:
    """Folds opencode events into EventRecords (returned) and a RunSummary (`summary`).

    Never raises on bad input: malformed JSON, non-UTF-8 bytes, non-object values, missing
    or mistyped fields are counted and skipped. State is bounded by the MAX_* constants.
    """

    def __init__(self, workspace: str | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.workspace = workspace.rstrip("/") if workspace else None
        self._splitter = LineSplitter(max_line_bytes)
        self.events = 0
        self.malformed = 0
        self.steps = 0
        self.step_retries = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.invalid_tool_calls = 0
        self.tools_by_name: dict[str, int] = {}
        self.unknown_types: dict[str, int] = {}
        self.files: dict[str, None] = {}  # insertion-ordered set
        self.files_dropped = 0
        self.error_count = 0
        self.errors: list[str] = []
        self.input_tokens = 0
        self.output_tokens = 0
        self.reasoning_tokens = 0
        self.cache_read = 0
        self.cache_write = 0
        self.total_tokens = 0
        self.cost = 0.0
        # Watchdog signals.
        self.last_finish_reason = ""  # reason of the last step_finish, whatever came after
        self.finish_reason = ""  # same, but cleared by an error / new step / continuation after it
        self.unknown_finish_streak = 0  # consecutive step_finish reason "unknown" (cut-stream loop)
        self.overflow_continuations = 0  # ContextOverflowError followed by more activity
        self.compaction_texts = 0  # synthetic texts with metadata.compaction_continue
        self.last_event_at: float | None = None  # monotonic
        self.last_tool = ""
        self._overflow_pending = False
        self._message_id = ""
        self._attempt = 0
        self._step_text: list[str] = []
        self._step_text_len = 0
        self._step_text_cut = False
        self._final_text = ""

    # ------------------------------------------------------------------ input

    def feed_bytes(self, chunk: bytes, now: float | None = None) -> list[EventRecord]:
        """Feed raw stdout bytes (any chunking); lines are split here."""
        out: list[EventRecord] = []
        for line in self._splitter.feed(chunk):
            out.extend(self.feed(line, now))
        return out

    def finish(self, now: float | None = None) -> list[EventRecord]:
        """End of stream: fold a last line that had no trailing newline."""
        out: list[EventRecord] = []
        for line in self._splitter.close():
            out.extend(self.feed(line, now))
        return out

    def feed(self, line: bytes | str, now: float | None = None) -> list[EventRecord]:
        """Fold one line (no newline needed). Returns the compact records it produced."""
        if not line or line.isspace():
            return []
        try:
            event = loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
            self.malformed += 1
            return []
        if not isinstance(event, dict):
            self.malformed += 1
            return []
        kind = event.get("type")
        if not isinstance(kind, str):
            self.malformed += 1
            return []
        self.events += 1
        self.last_event_at = time.monotonic() if now is None else now
        stamp = event.get("timestamp")
        ts = stamp / 1000.0 if type(stamp) is int or type(stamp) is float else 0.0
        part = event.get("part")
        if type(part) is not dict:
            part = {}
        if kind == "tool_use":
            return self._tool(part, ts)
        if kind == "step_finish":
            return self._step_finish(part, ts)
        if kind == "step_start":
            return self._step_start(part, ts)
        if kind == "text":
            return self._text(part, ts)
        if kind == "error":
            return self._error(_dict(event.get("error")), ts)
        if kind == "reasoning":
            return []
        _bump(self.unknown_types, kind)
        return []

    # ------------------------------------------------------------------ event kinds

    def _activity_after_overflow(self) -> None:
        if self._overflow_pending:
            self._overflow_pending = False
            self.overflow_continuations += 1

    def _step_start(self, part: dict[str, Any], ts: float) -> list[EventRecord]:
        self._activity_after_overflow()
        self.finish_reason = ""
        message_id = _str(part.get("messageID"))
        if message_id and message_id == self._message_id:
            self.step_retries += 1
            self._attempt += 1
            msg = f"step {self.steps}: model request retried (attempt {self._attempt})"
            return [_record("step", msg, ts)]
        self._message_id = message_id
        self._attempt = 1
        self.steps += 1
        self._step_text.clear()
        self._step_text_len = 0
        self._step_text_cut = False
        return []

    def _step_finish(self, part: dict[str, Any], ts: float) -> list[EventRecord]:
        reason = _str(part.get("reason")) or "unknown"
        tokens = _dict(part.get("tokens"))
        cache = _dict(tokens.get("cache"))
        inp, out, rsn = _int(tokens.get("input")), _int(tokens.get("output")), _int(tokens.get("reasoning"))
        total = _int(tokens.get("total")) or inp + out + rsn
        self.input_tokens += inp
        self.output_tokens += out
        self.reasoning_tokens += rsn
        self.cache_read += _int(cache.get("read"))
        self.cache_write += _int(cache.get("write"))
        self.total_tokens += total
        cost = _num(part.get("cost"))
        self.cost += cost
        self.last_finish_reason = reason
        self.finish_reason = reason
        self.unknown_finish_streak = self.unknown_finish_streak + 1 if reason == "unknown" else 0
        if reason in TERMINAL_REASONS:
            text = "".join(self._step_text)
            self._final_text = text + FINAL_TEXT_CUT_MARKER if self._step_text_cut else text
        msg = f"step {self.steps} finished: {reason}, {total} tokens (in {inp}, out {out})"
        if cost:
            msg += f", cost {cost:.4f}"
        return [_record("step", msg, ts)]

    def _text(self, part: dict[str, Any], ts: float) -> list[EventRecord]:
        self._activity_after_overflow()
        text = _str(part.get("text"))
        if part.get("synthetic") is True:
            # Injected by opencode (e.g. after compaction): the run goes on, so whatever
            # answer came before is not final.
            if _dict(part.get("metadata")).get("compaction_continue") is True:
                self.compaction_texts += 1
            self.finish_reason = ""
            self._final_text = ""
            return [_record("text", "opencode: " + text, ts, MAX_TEXT_EXCERPT)]
        if text:
            room = MAX_FINAL_TEXT - self._step_text_len
            if len(text) > room:
                text_kept = text[: max(room, 0)]
                self._step_text_cut = True
            else:
                text_kept = text
            if text_kept:
                self._step_text.append(text_kept)
                self._step_text_len += len(text_kept)
        return [_record("text", text, ts, MAX_TEXT_EXCERPT)] if text else []

    def _tool(self, part: dict[str, Any], ts: float) -> list[EventRecord]:
        name = _str(part.get("tool")) or "?"
        state = _dict(part.get("state"))
        status = _str(state.get("status")) or "?"
        tool_input = _dict(state.get("input"))
        timing = _dict(state.get("time"))
        duration = max(0, _int(timing.get("end")) - _int(timing.get("start")))
        self.tool_calls += 1
        _bump(self.tools_by_name, name)
        self.last_tool = name[:64]
        if status == "error":
            self.tool_errors += 1
        if name == "invalid":
            self.invalid_tool_calls += 1
            target = _str(tool_input.get("tool")) or "?"
            detail = _str(tool_input.get("error")) or _str(state.get("output"))
            return [_record("tool", f"invalid call to {target}: {detail}", ts)]
        if status == "completed" and name in _FILE_TOOLS:
            self._touch(_str(tool_input.get("filePath")))
            metadata = _dict(state.get("metadata"))
            self._touch(_str(metadata.get("filepath")))
            self._touch(_str(_dict(metadata.get("filediff")).get("file")))
        title = relative_path(
            _str(state.get("title")) or _str(tool_input.get("filePath")) or _str(tool_input.get("command")),
            self.workspace,
        )
        msg = f"{name} {title} {status} {duration}ms" if title else f"{name} {status} {duration}ms"
        error = _str(state.get("error"))
        if status == "error" and error:
            msg += ": " + error
        return [_record("tool", msg, ts)]

    def _error(self, error: dict[str, Any], ts: float) -> list[EventRecord]:
        name = _str(error.get("name")) or "Error"
        data = _dict(error.get("data"))
        status = _int(data.get("statusCode")) or None
        code = _str(_dict(data.get("metadata")).get("code"))
        entry = format_error(name, _str(data.get("message")), status, code)
        self.error_count += 1
        # Keep the first ones (the cause) and always the latest (what ended the run).
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(entry)
        else:
            self.errors[-1] = entry
        self.finish_reason = ""
        self._final_text = ""
        self._overflow_pending = name == "ContextOverflowError"
        return [_record("error", entry, ts)]

    def _touch(self, path: str) -> None:
        if not path:
            return
        rel = relative_path(path, self.workspace)[:512]
        if rel in self.files:
            return
        if len(self.files) >= MAX_FILES:
            self.files_dropped += 1
            return
        self.files[rel] = None

    # ------------------------------------------------------------------ output

    @property
    def terminal(self) -> bool:
        """The run reached a final stop/length step with no error or new step after it."""
        return self.finish_reason in TERMINAL_REASONS

    @property
    def compaction_cycles(self) -> int:
        """How often the run carried on after a context overflow (compaction-loop signal)."""
        return max(self.overflow_continuations, self.compaction_texts)

    @property
    def malformed_lines(self) -> int:
        return self.malformed + self._splitter.overlong

    @property
    def summary(self) -> RunSummary:
        """The summary so far.

        `finishReason` is the last step_finish reason only while nothing (error, new step,
        synthetic continuation) followed it; `finalText` is the text of the last stop/length
        step, cleared by a later error or continuation.
        """
        return RunSummary(
            steps=self.steps,
            step_retries=self.step_retries,
            tool_calls=self.tool_calls,
            tool_errors=self.tool_errors,
            invalid_tool_calls=self.invalid_tool_calls,
            tools_by_name=dict(self.tools_by_name),
            files_touched=list(self.files),
            tokens=TokenUsage(
                input=self.input_tokens,
                output=self.output_tokens,
                reasoning=self.reasoning_tokens,
                cache_read=self.cache_read,
                cache_write=self.cache_write,
                total=self.total_tokens,
            ),
            cost=self.cost,
            events=self.events,
            malformed_lines=self.malformed_lines,
            unknown_types=dict(self.unknown_types),
            errors=list(self.errors),
            final_text=self._final_text,
            finish_reason=self.finish_reason,
        )


def _record(kind: str, message: str, ts: float, limit: int = MAX_MESSAGE_CHARS) -> EventRecord:
    # Fast path: most messages are short single lines already (isprintable rejects \n, \t …).
    if len(message) > limit or not message.isprintable():
        message = _one_line(message, limit)
    return EventRecord(type=kind, message=message, ts=ts)


def fold_lines(lines: Iterable[bytes | str], workspace: str | None = None) -> StreamFolder:
    """Fold a whole stream (tests, `run --local` replays); returns the folder."""
    folder = StreamFolder(workspace)
    for line in lines:
        folder.feed(line)
    return folder
