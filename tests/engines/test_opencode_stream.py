"""The opencode event folder against the captured opencode 1.18.33 streams and bad input."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from buildstudio.engines import opencode_stream as events
from buildstudio.engines.opencode_stream import (
    LineSplitter,
    StreamFolder,
    error_name,
    error_status,
    fold_lines,
    iter_lines,
)
from buildstudio.protocol.records import EventRecord, RunSummary, parse_line

FIXTURES = Path(__file__).parents[1] / "fixtures" / "opencode"
WS = "/workspace"


def fold_fixture(name: str, chunk: int = 97) -> tuple[StreamFolder, list[Any]]:
    """Feed a fixture in odd-sized chunks, as a pipe would deliver it."""
    folder = StreamFolder(WS)
    data = (FIXTURES / name).read_bytes()
    records = []
    for i in range(0, len(data), chunk):
        records += folder.feed_bytes(data[i : i + chunk], now=float(i))
    records += folder.finish()
    return folder, records


def ev(kind: str, **part: Any) -> str:
    return json.dumps({"type": kind, "timestamp": 1_700_000_000_000, "sessionID": "s", "part": part})


def err(name: str, **data: Any) -> str:
    return json.dumps({"type": "error", "timestamp": 1, "sessionID": "s", "error": {"name": name, "data": data}})


def finish(reason: str, msg: str = "m1", **tokens: int) -> str:
    return ev("step_finish", messageID=msg, reason=reason, tokens=tokens, cost=0)


# --------------------------------------------------------------------------- fixtures


def test_every_fixture_folds_without_malformed_lines() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.jsonl"))
    assert len(names) == 29
    for name in names:
        folder, records = fold_fixture(name)
        lines = [line for line in (FIXTURES / name).read_bytes().splitlines() if line.strip()]
        assert folder.events == len(lines), name
        assert folder.malformed_lines == 0, name
        assert folder.summary.unknown_types == {}, name
        for rec in records:  # each record is one protocol line that round-trips
            assert "\n" not in rec.message and len(rec.message) <= events.MAX_MESSAGE_CHARS
            assert parse_line(rec.model_dump_json(by_alias=True)) == rec


def test_write_edit_run() -> None:
    folder, records = fold_fixture("api-tool-write-edit.jsonl")
    s = folder.summary
    assert (s.steps, s.tool_calls, s.tool_errors) == (3, 2, 0)
    assert s.tools_by_name == {"write": 1, "edit": 1}
    # Absolute /workspace/hello.py and relative calc.py both end up workspace-relative, once each.
    assert s.files_touched == ["hello.py", "calc.py"]
    assert s.tokens.total == 360 and s.tokens.input == 300 and s.tokens.output == 60
    assert s.final_text == "Created hello.py and changed calc.py."
    assert s.finish_reason == "stop" and folder.terminal
    assert [r.type for r in records] == ["tool", "step", "tool", "step", "text", "step"]
    assert records[0].message == "write hello.py completed 22ms"
    assert records[1].message == "step 1 finished: tool-calls, 120 tokens (in 100, out 20)"
    assert records[0].ts == pytest.approx(1795549038.291)


def test_tokens_are_summed_per_step() -> None:
    s = fold_fixture("text-and-tool-same-step.jsonl")[0].summary
    assert (s.tokens.input, s.tokens.output, s.tokens.total) == (10400, 312, 10712)
    # The text of a tool-calls step is not the final answer.
    assert s.final_text == "Created notes.md."


def test_tool_error_and_bash() -> None:
    folder, records = fold_fixture("tools-read-edit-error-bash.jsonl")
    s = folder.summary
    assert (s.tool_calls, s.tool_errors, s.invalid_tool_calls) == (3, 1, 0)
    assert s.files_touched == []  # read does not touch; the failed edit changed nothing
    edit = next(r for r in records if r.message.startswith("edit"))
    assert edit.message.startswith("edit calc.py error 22ms: Could not find oldString")


def test_invalid_tool_calls() -> None:
    folder, records = fold_fixture("invalid-tool-calls.jsonl")
    s = folder.summary
    assert (s.tool_calls, s.invalid_tool_calls, s.tool_errors) == (3, 2, 1)
    assert s.tools_by_name == {"invalid": 2, "write": 1}
    assert s.files_touched == []
    assert records[0].message.startswith("invalid call to write_file: Model tried to call unavailable tool")


def test_reasoning_is_not_final_text() -> None:
    s = fold_fixture("reasoning-thinking-flag.jsonl")[0].summary
    assert s.final_text == "calc.py defines add." and s.unknown_types == {}


def test_empty_reply_has_no_text_but_is_terminal() -> None:
    folder, _ = fold_fixture("empty-response.jsonl")
    assert folder.terminal and folder.summary.final_text == "" and folder.summary.steps == 1


def test_finish_length_is_terminal() -> None:
    folder, _ = fold_fixture("finish-length.jsonl")
    assert folder.terminal and folder.summary.finish_reason == "length"
    assert folder.summary.final_text == "This answer was cut"


def test_error_only_streams() -> None:
    s = fold_fixture("model-404.jsonl")[0].summary
    assert s.errors == ["APIError [HTTP 404]: The model `qwen3-coder` does not exist."]
    assert error_name(s.errors[0]) == "APIError" and error_status(s.errors[0]) == 404
    s = fold_fixture("server-hang-headerTimeout5s.jsonl")[0].summary
    assert s.errors[0].startswith("APIError [ProviderHeaderTimeoutError]: Provider response headers timed out")
    assert error_status(s.errors[0]) is None
    s = fold_fixture("unknown-provider.jsonl")[0].summary
    assert error_name(s.errors[0]) == "UnknownError" and s.finish_reason == ""


def test_retried_step_start_counts_as_retry() -> None:
    folder, records = fold_fixture("stream-stall-chunkTimeout5s.jsonl")
    s = folder.summary
    assert (s.steps, s.step_retries) == (1, 5)
    assert records[-1].type == "error" and "SSE read timed out" in records[-1].message
    assert not folder.terminal


def test_cut_stream_loop_signal() -> None:
    folder, _ = fold_fixture("stream-dropped-midway.head.jsonl")
    assert folder.unknown_finish_streak == 4 and folder.last_finish_reason == "unknown"
    assert not folder.terminal and folder.summary.final_text == ""
    folder.feed(ev("step_start", messageID="x"))
    folder.feed(finish("tool-calls", "x"))
    assert folder.unknown_finish_streak == 0


def test_compaction_loop_signal_and_no_false_final_answer() -> None:
    folder, _ = fold_fixture("context-overflow-compaction-loop.head.jsonl")
    # 8 overflow → compaction → continue cycles in the 40 captured lines.
    assert folder.compaction_cycles == 8 and folder.compaction_texts == 8
    # The compaction summary ends with step_finish stop, but the run went on: not final.
    assert not folder.terminal
    assert folder.summary.final_text == "" and folder.summary.finish_reason == ""
    assert folder.last_finish_reason == "stop"


def test_overflow_without_continuation_is_not_a_cycle() -> None:
    folder, _ = fold_fixture("context-overflow-400.jsonl")
    assert folder.compaction_cycles == 0 and len(folder.summary.errors) == 2


def test_error_after_stop_cancels_the_answer() -> None:
    folder = fold_lines([ev("step_start", messageID="a"), ev("text", text="answer"), finish("stop", "a")])
    assert folder.terminal and folder.summary.final_text == "answer"
    folder.feed(err("APIError", message="boom", statusCode=500))
    assert not folder.terminal and folder.summary.final_text == ""


def test_new_step_after_stop_is_not_terminal_but_keeps_the_last_answer() -> None:
    folder = fold_lines([ev("step_start", messageID="a"), ev("text", text="answer"), finish("stop", "a")])
    folder.feed(ev("step_start", messageID="b"))
    assert not folder.terminal and folder.summary.final_text == "answer"


def test_last_event_time_and_watchdog_fields() -> None:
    folder = StreamFolder()
    folder.feed(ev("step_start", messageID="a"), now=10.0)
    folder.feed(b"garbage", now=99.0)  # malformed lines are not events
    assert folder.last_event_at == 10.0 and folder.steps == 1
    folder.feed(ev("tool_use", tool="bash", state={"status": "completed", "input": {"command": "ls"}}))
    assert folder.last_event_at is not None and folder.last_event_at > 10.0
    assert folder.last_tool == "bash"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"{",
        b"\xff\xfe{}",
        b"[1, 2]",
        b"42",
        b'"a string"',
        b"null",
        b'{"no_type": 1}',
        b'{"type": 5}',
        b'{"type": null}',
    ],
)
def test_malformed_lines_are_counted(line: bytes) -> None:
    folder = StreamFolder()
    assert folder.feed(line) == []
    assert folder.summary.malformed_lines == 1 and folder.summary.events == 0


def test_wrong_field_types_never_raise() -> None:
    weird: list[dict[str, Any]] = [
        {"type": "step_start", "part": "x"},
        {"type": "step_start", "part": {"messageID": 7}},
        {"type": "text", "part": {"text": ["a"], "synthetic": "yes"}},
        {"type": "tool_use", "part": {"tool": 1, "state": []}},
        {
            "type": "tool_use",
            "part": {"tool": "write", "state": {"status": "completed", "input": {"filePath": 3}}},
        },
        {
            "type": "tool_use",
            "part": {"tool": "edit", "state": {"status": "completed", "metadata": {"filediff": 1}}},
        },
        {"type": "tool_use", "part": {"tool": "invalid", "state": {"status": "completed", "input": None}}},
        {"type": "step_finish", "part": {"reason": 3, "tokens": {"input": "9", "cache": [], "total": True}}},
        {"type": "step_finish", "part": {"tokens": None, "cost": "free"}},
        {"type": "error", "error": "boom"},
        {"type": "error", "error": {"name": 5, "data": {"statusCode": "500", "metadata": 3}}},
        {"type": "error"},
        {"type": "text", "timestamp": "yesterday"},
    ]
    folder = StreamFolder(WS)
    for obj in weird:
        folder.feed(json.dumps(obj))
    s = folder.summary
    assert s.events == len(weird) and s.malformed_lines == 0
    assert s.tokens.total == 0 and s.cost == 0.0
    assert s.tool_calls == 4 and s.invalid_tool_calls == 1
    assert s.finish_reason == ""  # the last event was a text after errors
    RunSummary.model_validate(s.model_dump(by_alias=True))


def test_unknown_types_are_counted_bounded() -> None:
    folder = StreamFolder()
    for i in range(events.MAX_NAMED_COUNTERS + 30):
        folder.feed(json.dumps({"type": f"new_kind_{i}"}))
    folder.feed(json.dumps({"type": "new_kind_0"}))
    unknown = folder.summary.unknown_types
    assert len(unknown) == events.MAX_NAMED_COUNTERS + 1
    assert unknown["new_kind_0"] == 2 and unknown[events.OTHER] == 30
    assert folder.summary.malformed_lines == 0


def test_bounded_files_errors_and_final_text() -> None:
    folder = StreamFolder(WS)
    for i in range(events.MAX_FILES + 50):
        folder.feed(ev("tool_use", tool="write", state={"status": "completed", "input": {"filePath": f"{WS}/f{i}"}}))
    for i in range(events.MAX_ERRORS + 5):
        folder.feed(err("APIError", message=f"e{i} " + "x" * 5000))
    folder.feed(ev("step_start", messageID="z"))
    for _ in range(10):
        folder.feed(ev("text", text="y" * 2000))
    folder.feed(finish("stop", "z"))
    s = folder.summary
    assert len(s.files_touched) == events.MAX_FILES and folder.files_dropped == 50
    assert s.files_touched[0] == "f0"
    assert len(s.errors) == events.MAX_ERRORS and folder.error_count == events.MAX_ERRORS + 5
    assert s.errors[0].startswith("APIError: e0 ") and s.errors[-1].startswith("APIError: e24 ")
    assert all(len(e) <= events.MAX_ERROR_CHARS for e in s.errors)
    assert s.final_text.endswith(events.FINAL_TEXT_CUT_MARKER)
    assert len(s.final_text) == events.MAX_FINAL_TEXT + len(events.FINAL_TEXT_CUT_MARKER)


def test_paths_outside_the_workspace_stay_absolute() -> None:
    folder = StreamFolder("/workspace/")
    for path in ("/workspace/a/b.py", "./c.py", "/etc/passwd", "/workspace2/x"):
        folder.feed(ev("tool_use", tool="write", state={"status": "completed", "input": {"filePath": path}}))
    assert folder.summary.files_touched == ["a/b.py", "c.py", "/etc/passwd", "/workspace2/x"]


def test_synthetic_text_is_not_part_of_the_answer() -> None:
    folder = fold_lines(
        [
            ev("step_start", messageID="a"),
            ev("text", text="real"),
            ev("text", text="injected", synthetic=True, metadata={}),
            finish("stop", "a"),
        ]
    )
    assert folder.summary.final_text == "real" and folder.compaction_texts == 0


def test_million_events_keep_state_small() -> None:
    cycle = []
    for msg in ("m0", "m1"):  # alternating message ids: every step_start is a new step
        cycle += [
            ev("step_start", messageID=msg),
            ev("tool_use", tool="edit", state={"status": "completed", "input": {"filePath": f"{WS}/a.py"}}),
            ev("text", text="t" * 100),
            finish("tool-calls", msg, input=10, output=2, total=12),
            "garbage",
        ]
    folder = StreamFolder(WS)
    for i in range(1_000_000):
        folder.feed(cycle[i % 10])
    s = folder.summary
    assert s.events == 800_000 and s.malformed_lines == 200_000
    assert s.steps == 200_000 and s.tokens.total == 2_400_000
    assert s.files_touched == ["a.py"]
    size = sum(sys.getsizeof(v) for v in vars(folder).values())
    assert size < 20_000, size


# --------------------------------------------------------------------------- lines


def test_splitter_handles_any_chunking() -> None:
    data = b"a\nbb\r\n\nccc\nlast"
    for size in range(1, len(data) + 1):
        splitter = LineSplitter()
        got: list[bytes] = []
        for i in range(0, len(data), size):
            got += splitter.feed(data[i : i + size])
        got += splitter.close()
        assert got == [b"a", b"bb\r", b"", b"ccc", b"last"], size


def test_overlong_line_is_dropped_without_buffering() -> None:
    splitter = LineSplitter(max_line_bytes=100)
    out = splitter.feed(b"ok1\n" + b"x" * 60)
    for _ in range(1000):  # 1000 x 64 KiB of one line
        out += splitter.feed(b"y" * 65536)
        assert len(splitter._buf) <= 100
    out += splitter.feed(b"z\nok2\n" + b"w" * 500 + b"\nok3")
    out += splitter.close()
    assert out == [b"ok1", b"ok2", b"ok3"]
    assert splitter.overlong == 2


def test_overlong_counts_as_malformed_in_the_folder() -> None:
    folder = StreamFolder(max_line_bytes=1000)
    line = ev("text", text="x" * 5000).encode()
    folder.feed_bytes(line + b"\n" + ev("text", text="ok").encode() + b"\n")
    assert folder.summary.malformed_lines == 1 and folder.summary.events == 1


def test_iter_lines_from_file_and_chunks() -> None:
    data = (FIXTURES / "text-only.jsonl").read_bytes()
    from_file = list(iter_lines(io.BytesIO(data), chunk_size=7))
    from_chunks = list(iter_lines([data[:10], data[10:]]))
    assert from_file == from_chunks == data.splitlines()
    splitter = LineSplitter(max_line_bytes=10)
    assert list(iter_lines([b"short\n", b"x" * 50, b"\nend"], splitter=splitter)) == [b"short", b"end"]
    assert splitter.overlong == 1


def test_records_are_plain_event_records() -> None:
    """Records are built through pydantic's public API; they equal keyword-built ones in every way."""
    _, records = fold_fixture("tools-read-edit-error-bash.jsonl")
    assert records
    for rec in records:
        validated = EventRecord(type=rec.type, message=rec.message, ts=rec.ts)
        assert type(rec) is EventRecord and rec == validated
        assert rec.model_fields_set == validated.model_fields_set
        assert rec.model_dump_json(by_alias=True) == validated.model_dump_json(by_alias=True)
    rec = records[0]
    rec.message = "changed"  # the runner's writer reassigns messages
    assert parse_line(rec.model_dump_json(by_alias=True)) == EventRecord(type=rec.type, message="changed", ts=rec.ts)


def test_fold_lines_without_records_folds_alike() -> None:
    """fold_lines skips building records; its summary is the one of feeding the lines one by one."""
    for path in sorted(FIXTURES.glob("*.jsonl")):
        lines = path.read_bytes().splitlines()
        by_line = StreamFolder(WS)
        for line in lines:
            by_line.feed(line)
        folded = fold_lines(lines, WS)
        assert folded.summary == by_line.summary, path.name
        assert (folded.terminal, folded.compaction_cycles, folded.unknown_finish_streak) == (
            by_line.terminal,
            by_line.compaction_cycles,
            by_line.unknown_finish_streak,
        ), path.name


async def test_usable_from_asyncio_stream() -> None:
    import asyncio

    reader = asyncio.StreamReader()
    reader.feed_data((FIXTURES / "api-tool-write-edit.jsonl").read_bytes())
    reader.feed_eof()
    folder = StreamFolder(WS)
    while chunk := await reader.read(1000):
        folder.feed_bytes(chunk)
    folder.finish()
    assert folder.summary.steps == 3 and folder.terminal


@pytest.fixture(params=["default", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the default JSON decoder (orjson when installed) and the stdlib fallback."""
    if request.param == "stdlib":
        monkeypatch.setattr(events, "loads", events.loads_stdlib)
    return str(request.param)


def test_both_decoders_fold_fixtures_alike(decoder: str) -> None:
    s = fold_fixture("api-tool-write-edit.jsonl")[0].summary
    assert (s.steps, s.tool_calls, s.tokens.total, s.malformed_lines) == (3, 2, 360, 0), decoder


@pytest.mark.parametrize("line", [b"{} trailing", b"\xc3\x28{}", b"[" * 100_000, b'{"type": "text"', b"  {}  x"])
def test_both_decoders_reject_bad_lines(decoder: str, line: bytes) -> None:
    folder = StreamFolder()
    folder.feed(line)
    assert folder.summary.malformed_lines == 1 and folder.summary.events == 0, decoder


def test_stdlib_decoder_tolerates_surrounding_whitespace() -> None:
    assert events.loads_stdlib(b'  {"type": "x"}\r') == {"type": "x"}
    assert events.loads_stdlib('{"a": 1}') == {"a": 1}
