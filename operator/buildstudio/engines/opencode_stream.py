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
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from buildstudio.protocol.lines import DEFAULT_MAX_LINE_BYTES
from buildstudio.protocol.lines import LineSplitter as LineSplitter  # re-exported
from buildstudio.protocol.records import EventRecord, RunSummary, TokenUsage

_raw_decode = json.JSONDecoder().raw_decode


def loads_stdlib(line: bytes | str) -> Any:
    """json.loads without its per-call layers (faster on short lines: bench/README.md); ValueError on bad input."""
    text = (line.decode("utf-8") if isinstance(line, bytes) else line).strip()
    value, end = _raw_decode(text)
    if end != len(text):
        raise ValueError("trailing data")
    return value


try:  # orjson parses faster still (bench/README.md); optional so the runner image may leave it out
    import orjson

    loads: Any = orjson.loads  # its JSONDecodeError is a ValueError, also for bad UTF-8
except ImportError:  # pragma: no cover - depends on the environment
    loads = loads_stdlib

MAX_LINE_BYTES = DEFAULT_MAX_LINE_BYTES
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

# The folder's hot paths inline these checks (`x if type(x) is str else ""` …): a function
# call per field was a large share of the per-event cost. Exact types throughout: a JSON
# true is a bool, not a count; negative counts are nonsense.


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else _EMPTY


def _str(value: Any) -> str:
    return value if type(value) is str else ""


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def relative_path(path: str, workspace: str | None) -> str:
    """`path` relative to `workspace` when it lies inside it; other paths unchanged."""
    if workspace:
        root = workspace.rstrip("/")
        if path.startswith(root):
            cut = len(root)
            if len(path) == cut:
                return "."
            if path[cut] == "/":
                path = path[cut + 1 :]
    while path.startswith("./"):
        path = path[2:]
    return path


def _bump(counter: dict[str, int], key: str) -> None:
    key = key[:64]
    if key not in counter and len(counter) >= MAX_NAMED_COUNTERS:
        key = OTHER
    counter[key] = counter.get(key, 0) + 1


# --------------------------------------------------------------------------- records

def _record(kind: str, message: str, ts: float, limit: int = MAX_MESSAGE_CHARS) -> EventRecord:
    """An EventRecord with ``message`` bounded to one line of ``limit`` characters.

    Built through pydantic's public constructor, its fastest public way (figures: bench/README.md).
    """
    # Fast path: most messages are short single lines already (isprintable rejects \n, \t …).
    if len(message) > limit or not message.isprintable():
        message = _one_line(message, limit)
    return EventRecord(type=kind, message=message, ts=ts)


# --------------------------------------------------------------------------- folder

_Records = list[EventRecord] | None  # None: the caller wants no records (skip formatting them)


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
        self._touched: tuple[str, str | None] = ("", None)  # last path found in `files`, its workspace

    # ------------------------------------------------------------------ input

    def feed_bytes(self, chunk: bytes, now: float | None = None) -> list[EventRecord]:
        """Feed raw stdout bytes (any chunking); lines are split here."""
        out: list[EventRecord] = []
        lines = self._splitter.feed(chunk)
        if lines:
            self._fold(lines, now, out)
        return out

    def finish(self, now: float | None = None) -> list[EventRecord]:
        """End of stream: fold a last line that had no trailing newline."""
        out: list[EventRecord] = []
        self._fold(self._splitter.close(), now, out)
        return out

    def feed(self, line: bytes | str, now: float | None = None) -> list[EventRecord]:
        """Fold one line (no newline needed). Returns the compact records it produced."""
        out: list[EventRecord] = []
        self._fold((line,), now, out)
        return out

    def _fold(self, lines: Iterable[bytes | str], now: float | None, out: _Records) -> None:
        """Fold lines, appending their records to `out` (unless None).

        The one per-line loop, kept flat on purpose (it runs for every event). The lines of
        one call are in memory already, so `last_event_at` is stamped once, after them.
        """
        decode = loads  # looked up per call: tests and the benchmark swap the decoder
        handlers = _HANDLERS
        count = 0  # events folded here, added to self.events once (a local is cheaper)
        limit = self._splitter.max_line_bytes  # also for lines given whole to feed() / fold_lines
        try:
            for line in lines:
                if not line or line.isspace():
                    continue
                if len(line) > limit:
                    self.malformed += 1
                    continue
                try:
                    event = decode(line)
                # JSONDecodeError and UnicodeDecodeError are ValueErrors; json nests by recursion
                # (RecursionError), orjson has a depth limit (a ValueError); TypeError: not text.
                except (ValueError, RecursionError, TypeError):
                    self.malformed += 1
                    continue
                if not isinstance(event, dict):
                    self.malformed += 1
                    continue
                kind = event.get("type")
                if not isinstance(kind, str):
                    self.malformed += 1
                    continue
                count += 1
                handler = handlers.get(kind)
                if handler is not None:
                    stamp = event.get("timestamp")
                    handler(self, event, stamp / 1000.0 if type(stamp) is int or type(stamp) is float else 0.0, out)
                elif kind != "reasoning":
                    _bump(self.unknown_types, kind)
        finally:
            if count:
                self.events += count
                self.last_event_at = time.monotonic() if now is None else now

    # ------------------------------------------------------------------ event kinds
    # Each takes the whole event, its timestamp in seconds and the record list (or None).

    def _step_start(self, event: dict[str, Any], ts: float, out: _Records) -> None:
        if self._overflow_pending:
            self._overflow_pending = False
            self.overflow_continuations += 1
        self.finish_reason = ""
        part = event.get("part")
        message_id = part.get("messageID") if type(part) is dict else ""
        if type(message_id) is not str:
            message_id = ""
        if message_id and message_id == self._message_id:
            self.step_retries += 1
            self._attempt += 1
            if out is not None:
                msg = f"step {self.steps}: model request retried (attempt {self._attempt})"
                out.append(_record("step", msg, ts))
            return
        self._message_id = message_id
        self._attempt = 1
        self.steps += 1
        self._step_text.clear()
        self._step_text_len = 0
        self._step_text_cut = False

    def _step_finish(self, event: dict[str, Any], ts: float, out: _Records) -> None:
        part = event.get("part")
        if type(part) is not dict:
            part = _EMPTY
        reason = part.get("reason")
        if type(reason) is not str or not reason:
            reason = "unknown"
        tokens = part.get("tokens")
        inp = outp = rsn = total = 0
        if type(tokens) is dict:
            value = tokens.get("input")
            inp = value if type(value) is int and value > 0 else 0
            value = tokens.get("output")
            outp = value if type(value) is int and value > 0 else 0
            value = tokens.get("reasoning")
            rsn = value if type(value) is int and value > 0 else 0
            value = tokens.get("total")
            total = value if type(value) is int and value > 0 else inp + outp + rsn
            cache = tokens.get("cache")
            if type(cache) is dict:
                self.cache_read += _int(cache.get("read"))
                self.cache_write += _int(cache.get("write"))
        self.input_tokens += inp
        self.output_tokens += outp
        self.reasoning_tokens += rsn
        self.total_tokens += total
        cost = part.get("cost")
        cost = float(cost) if (type(cost) is int or type(cost) is float) and cost > 0 else 0.0
        self.cost += cost
        self.last_finish_reason = reason
        self.finish_reason = reason
        self.unknown_finish_streak = self.unknown_finish_streak + 1 if reason == "unknown" else 0
        if reason in TERMINAL_REASONS:
            text = "".join(self._step_text)
            self._final_text = text + FINAL_TEXT_CUT_MARKER if self._step_text_cut else text
        if out is not None:
            msg = f"step {self.steps} finished: {reason}, {total} tokens (in {inp}, out {outp})"
            if cost:
                msg += f", cost {cost:.4f}"
            out.append(_record("step", msg, ts))

    def _text(self, event: dict[str, Any], ts: float, out: _Records) -> None:
        if self._overflow_pending:
            self._overflow_pending = False
            self.overflow_continuations += 1
        part = event.get("part")
        if type(part) is not dict:
            part = _EMPTY
        text = part.get("text")
        if type(text) is not str:
            text = ""
        if part.get("synthetic") is True:
            # Injected by opencode (e.g. after compaction): the run goes on, so whatever
            # answer came before is not final.
            if _dict(part.get("metadata")).get("compaction_continue") is True:
                self.compaction_texts += 1
            self.finish_reason = ""
            self._final_text = ""
            if out is not None:
                out.append(_record("text", "opencode: " + text, ts, MAX_TEXT_EXCERPT))
            return
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
            if out is not None:
                out.append(_record("text", text, ts, MAX_TEXT_EXCERPT))

    def _tool(self, event: dict[str, Any], ts: float, out: _Records) -> None:
        part = event.get("part")
        if type(part) is not dict:
            part = _EMPTY
        name = part.get("tool")
        if type(name) is not str or not name:
            name = "?"
        state = part.get("state")
        if type(state) is not dict:
            state = _EMPTY
        status = state.get("status")
        if type(status) is not str or not status:
            status = "?"
        tool_input = state.get("input")
        if type(tool_input) is not dict:
            tool_input = _EMPTY
        duration = 0
        timing = state.get("time")
        if type(timing) is dict:
            end = timing.get("end")
            if type(end) is int and end > 0:
                start = timing.get("start")
                duration = max(0, end - (start if type(start) is int and start > 0 else 0))
        self.tool_calls += 1
        key = name[:64]
        count = self.tools_by_name.get(key)
        if count is None:
            _bump(self.tools_by_name, key)  # a new name: the cap applies
        else:
            self.tools_by_name[key] = count + 1
        self.last_tool = key
        if status == "error":
            self.tool_errors += 1
        if name == "invalid":
            self.invalid_tool_calls += 1
            if out is not None:
                target = _str(tool_input.get("tool")) or "?"
                detail = _str(tool_input.get("error")) or _str(state.get("output"))
                out.append(_record("tool", f"invalid call to {target}: {detail}", ts))
            return
        file_path = tool_input.get("filePath")
        if type(file_path) is not str:
            file_path = ""
        if status == "completed" and name in _FILE_TOOLS:
            if file_path:
                self._touch(file_path)
            metadata = state.get("metadata")
            if type(metadata) is dict:
                self._touch(_str(metadata.get("filepath")))
                self._touch(_str(_dict(metadata.get("filediff")).get("file")))
        if out is None:
            return
        title = state.get("title")
        if type(title) is not str or not title:
            title = file_path or _str(tool_input.get("command"))
        workspace = self.workspace
        # Titles are mostly relative already: relative_path can only change one that starts
        # with "/" or "." (or any, when the workspace itself is relative).
        if title[:1] in ("/", ".") or (workspace and workspace[:1] != "/"):
            title = relative_path(title, workspace)
        msg = f"{name} {title} {status} {duration}ms" if title else f"{name} {status} {duration}ms"
        if status == "error":
            error = state.get("error")
            if type(error) is str and error:
                msg += ": " + error
        out.append(_record("tool", msg, ts))

    def _error(self, event: dict[str, Any], ts: float, out: _Records) -> None:
        error = _dict(event.get("error"))
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
        if out is not None:
            out.append(_record("error", entry, ts))

    def _touch(self, path: str) -> None:
        if not path:
            return
        # A write/edit names its file twice (input.filePath, metadata.filepath): skip the
        # second lookup when this very path is known to be recorded already.
        if path == self._touched[0] and self.workspace is self._touched[1]:
            return
        rel = relative_path(path, self.workspace)[:512]
        if rel not in self.files:
            if len(self.files) >= MAX_FILES:
                self.files_dropped += 1
                return
            self.files[rel] = None
        self._touched = (path, self.workspace)

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


def fold_lines(lines: Iterable[bytes | str], workspace: str | None = None) -> StreamFolder:
    """Fold a whole stream (tests, `run --local` replays); returns the folder."""
    folder = StreamFolder(workspace)
    folder._fold(lines, None, None)  # nobody reads the records: skip building them
    return folder


# Dispatch on the event `type`; "reasoning" carries nothing the summary needs.
_Handler = Callable[[StreamFolder, dict[str, Any], float, _Records], None]
_HANDLERS: dict[str, _Handler] = {
    "tool_use": StreamFolder._tool,
    "step_finish": StreamFolder._step_finish,
    "step_start": StreamFolder._step_start,
    "text": StreamFolder._text,
    "error": StreamFolder._error,
}
