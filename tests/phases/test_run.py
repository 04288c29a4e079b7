"""A text phase end to end against the scripted server on loopback: the record the operator stores."""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import pytest

from buildstudio.adapters.modelservice.textrun import run_phase, run_text_phase
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core.review import Verdict
from buildstudio.core.source import ReviewSource
from buildstudio.protocol.records import DiffStat, Outcome, ResultRecord, dump, parse_line

PROMPT = "Plan a `subtract` feature.\n  Keep \"quotes\", $(no shell), tabs\tand ünïcødé ✓\n"
DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1 +1,3 @@\n"
    " def add(a, b): ...\n+def sub(a, b):\n+    return a - b\n"
)
SOURCE = ReviewSource(dispatch="build-1", diff=DIFF, diff_stat=DiffStat(files=1, additions=2), final_text="Added sub.",
                      sha256=hashlib.sha256(DIFF.encode()).hexdigest())


async def run(script: list[dict[str, Any]], phase: str = "plan", **kw: Any) -> tuple[ScriptedServer, ResultRecord]:
    async with ScriptedServer(script, no_aux=True) as srv:
        kw.setdefault("context", 8192)
        record = await run_text_phase(phase, PROMPT, base_url=srv.base_url, model="qwen3-coder", **kw)
    assert parse_line(dump(record)) == record  # a valid protocol line
    return srv, record


@pytest.mark.parametrize("phase", ["ideate", "plan"])
async def test_completed_with_text_tokens_and_the_prompt_verbatim(phase: str) -> None:
    answer = "## Plan\n" + "1. step\n" * 900  # > 4 KiB: the record keeps it whole
    srv, record = await run([{"text": answer, "usage": {"prompt_tokens": 120, "completion_tokens": 800}}], phase)
    assert record.outcome == Outcome.COMPLETED
    assert record.summary.final_text == answer and len(answer.encode()) > 4096
    assert (record.summary.tokens.input, record.summary.tokens.output, record.summary.tokens.total) == (120, 800, 920)
    assert record.summary.finish_reason == "stop" and record.summary.steps == 1
    assert record.message.startswith(f"{phase}: {len(answer)} characters from qwen3-coder")
    assert record.started_at and record.finished_at and record.duration_seconds > 0
    (body,) = srv.chat_requests()
    assert body["messages"][-1] == {"role": "user", "content": PROMPT}  # verbatim, as the server received it
    assert body["model"] == "qwen3-coder" and body["stream"] is True and body["max_tokens"] == 2048


async def test_review_parses_the_verdict_and_ties_it_to_the_diff() -> None:
    answer = "calc.py: `sub` is right and tested.\n\n**VERDICT: APPROVE**\n"
    async with ScriptedServer([{"text": answer}], no_aux=True) as srv:
        run_ = await run_phase("review", PROMPT, base_url=srv.base_url, model="qwen3-coder", context=8192,
                               source=SOURCE, review_name="review-1", api_key="k")
    assert run_.record.outcome == Outcome.COMPLETED
    assert run_.review is not None
    assert (run_.review.review, run_.review.source, run_.review.verdict) == ("review-1", "build-1", Verdict.APPROVE)
    assert run_.review.diff_sha256 == SOURCE.sha256
    assert run_.record.message.startswith(f"review of build-1: verdict Approve for diff {SOURCE.sha256[:12]}")
    assert [e.type for e in run_.events] == ["step", "review"]
    assert "verdict Approve" in run_.events[1].message
    user = srv.chat_requests()[0]["messages"][1]["content"]
    assert DIFF in user and "Added sub." in user and user.endswith("## Review request\n" + PROMPT)
    assert srv.requests[0]["headers"]["Authorization"] == "Bearer k"


async def test_review_without_a_verdict_line_is_unclear() -> None:
    async with ScriptedServer([{"text": "Looks fine, I think."}], no_aux=True) as srv:
        run_ = await run_phase("review", "review it", base_url=srv.base_url, model="m", context=8192, source=SOURCE)
    assert run_.record.outcome == Outcome.COMPLETED and run_.review is not None
    assert run_.review.verdict == Verdict.UNCLEAR


async def test_review_cut_by_length_does_not_count() -> None:
    async with ScriptedServer([{"text": "VERDICT: APPROVE\nand then", "finish": "length"}], no_aux=True) as srv:
        run_ = await run_phase("review", "review it", base_url=srv.base_url, model="m", context=8192, source=SOURCE)
    assert run_.record.outcome == Outcome.TRUNCATED
    assert run_.review is not None and run_.review.verdict == Verdict.UNCLEAR


@pytest.mark.parametrize(
    ("entry", "outcome", "phrase"),
    [
        ({"status": 500, "body": {"error": {"message": "engine crashed"}}}, Outcome.MODEL_ERROR,
         "HTTP 500: engine crashed"),
        ({"status": 404, "body": {"error": {"message": "model not found"}}}, Outcome.MODEL_ERROR, "HTTP 404"),
        ({"status": 400, "body": {"error": {"message": "This model's maximum context length is 8192 tokens. However, "
          "you requested 12018 tokens", "code": "context_length_exceeded"}}}, Outcome.CONTEXT_OVERFLOW, "8192 tokens"),
        ({"status": 400, "body": {"error": {"message": "bad temperature"}}}, Outcome.MODEL_ERROR, "bad temperature"),
        ({"text": ""}, Outcome.MODEL_ERROR, "empty answer"),
        ({"text": "half a plan", "finish": "length"}, Outcome.TRUNCATED, "max_tokens 2048"),
    ],
    ids=["500", "404", "400-context", "400-other", "empty", "length"],
)
async def test_failures_map_to_outcomes(entry: dict[str, Any], outcome: Outcome, phrase: str) -> None:
    _, record = await run([entry])
    assert record.outcome == outcome and not record.outcome.succeeded
    assert phrase in record.message and "\n" not in record.message
    if outcome != Outcome.TRUNCATED:
        assert record.summary.errors


async def test_hang_ends_timed_out_at_the_deadline() -> None:
    _, record = await run([{"hang": 5}], timeout=0.5)
    assert record.outcome == Outcome.TIMED_OUT and "deadline" in record.message
    assert record.duration_seconds < 3


async def test_unreachable_service_is_a_model_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = await run_text_phase("ideate", "x", base_url=f"http://127.0.0.1:{port}/v1", model="m", context=None,
                                  timeout=5)
    assert record.outcome == Outcome.MODEL_ERROR and "Unreachable" in record.message


async def test_huge_answer_is_bounded_in_the_record() -> None:
    async with ScriptedServer([{"text": "w" * (2 * 1024 * 1024)}], no_aux=True) as srv:
        run_ = await run_phase("plan", "x", base_url=srv.base_url, model="m", context=8192, max_output_bytes=32_768)
    assert run_.record.outcome == Outcome.TRUNCATED and "byte cap" in run_.record.message
    assert len(run_.record.summary.final_text) == 32_768


async def test_an_oversized_prompt_is_sent_whole_with_a_warning_event() -> None:
    async with ScriptedServer([{"text": "ok"}], no_aux=True) as srv:
        run_ = await run_phase("plan", "p" * 50_000, base_url=srv.base_url, model="m", context=4096)
    assert run_.events[0].type == "warning" and "exceeds the input budget" in run_.events[0].message
    assert run_.record.summary.events == len(run_.events) == 2
    assert srv.chat_requests()[0]["messages"][1]["content"] == "p" * 50_000


@pytest.mark.parametrize("phase", ["build", "ship"])
async def test_non_text_phases_are_refused(phase: str) -> None:
    with pytest.raises(ValueError, match="not a text phase"):
        await run_text_phase(phase, "x", base_url="http://127.0.0.1:9/v1", model="m", context=8192)
    with pytest.raises(ValueError, match="source"):
        await run_text_phase("review", "x", base_url="http://127.0.0.1:9/v1", model="m", context=8192)


async def test_the_status_keeps_4_kib_of_the_answer() -> None:
    from buildstudio.core.settings import Settings
    from buildstudio.core.status import result_fields

    answer = "ü" * 10_000
    _, record = await run([{"text": answer}])
    fields = result_fields(record, Settings(), patch_cm="")
    assert record.summary.final_text == answer
    assert answer.startswith(fields["finalText"]) and len(fields["finalText"].encode()) == 4096
    assert fields["summary"]["tokens"]["input"] == 100  # the scripted server's default usage
