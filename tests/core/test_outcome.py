"""The run outcome (`core/outcome.py`): every branch from plain summaries, and each captured stream end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildstudio.core.outcome import judge, looks_like_text_tool_call
from buildstudio.engines.opencode_stream import StreamFolder, format_error
from buildstudio.protocol.records import DiffStat, Outcome, RunSummary, TokenUsage

FIXTURES = Path(__file__).parents[1] / "fixtures" / "opencode"
NO_DIFF = DiffStat()
DIFF = DiffStat(files=2, additions=3, deletions=1)


def summary(**kw: object) -> RunSummary:
    base: dict[str, object] = {"steps": 3, "tool_calls": 2, "events": 9, "tokens": TokenUsage(total=360)}
    base.update(kw)
    return RunSummary.model_validate(base)


STOP = summary(finish_reason="stop", final_text="Done.")
API_404 = format_error("APIError", "The model `m` does not exist.", 404)

# (id, summary, exit_code, stop_reason, diff, cancelled, expected outcome, words in the message)
CASES: list[tuple[str, RunSummary, int | None, str | None, DiffStat, bool, Outcome, list[str]]] = [
    ("completed", STOP, 0, None, DIFF, False, Outcome.COMPLETED, ["2 files changed (+3 -1)", "3 steps"]),
    (
        "completed-binary",
        STOP,
        0,
        None,
        DiffStat(files=1, binary_files=1),
        False,
        Outcome.COMPLETED,
        ["1 binary"],
    ),
    ("no-changes", STOP, 0, None, NO_DIFF, False, Outcome.NO_CHANGES, ["no changes", "360 tokens"]),
    (
        "no-changes-text-tool-call",
        summary(finish_reason="stop", final_text="<tool_call>\n<function=write>"),
        0,
        None,
        NO_DIFF,
        False,
        Outcome.TOOL_CALLS_NOT_EXECUTED,
        ["text-format tool call", "--relay on", "tool parser"],
    ),
    (
        "no-changes-tool-errors",
        summary(finish_reason="stop", tool_errors=2, invalid_tool_calls=1),
        0,
        None,
        NO_DIFF,
        False,
        Outcome.NO_CHANGES,
        ["2 tool errors, 1 invalid tool call"],
    ),
    (
        "truncated",
        summary(finish_reason="length"),
        0,
        None,
        DIFF,
        False,
        Outcome.TRUNCATED,
        ["'length'", "2 files changed"],
    ),
    ("exit-timer-is-success", STOP, 143, "exit-timer", DIFF, False, Outcome.COMPLETED, ["exit-timer"]),
    ("idle-after-final-answer", STOP, 143, "idle", NO_DIFF, False, Outcome.NO_CHANGES, ["stopped by the runner"]),
    ("cancelled-wins", STOP, 143, "timeout", DIFF, True, Outcome.CANCELLED, ["cancelled after 3 steps"]),
    ("timeout", summary(), 143, "timeout", DIFF, False, Outcome.TIMED_OUT, ["timed out", "3 steps"]),
    ("idle", summary(events=0, steps=0), 143, "idle", NO_DIFF, False, Outcome.IDLE_TIMEOUT, ["no event"]),
    ("steps", summary(steps=51), 143, "steps", DIFF, False, Outcome.STEP_BUDGET_EXCEEDED, ["51 steps"]),
    (
        "loop-compaction",
        summary(errors=[format_error("ContextOverflowError", "too long")]),
        143,
        "loop",
        NO_DIFF,
        False,
        Outcome.LOOP_DETECTED,
        ["compaction loop", "last error: ContextOverflowError"],
    ),
    (
        "loop-cut-stream",
        summary(finish_reason="unknown"),
        143,
        "loop",
        NO_DIFF,
        False,
        Outcome.LOOP_DETECTED,
        ["cut-stream loop"],
    ),
    ("unknown-watchdog-reason", summary(), 143, "gremlins", NO_DIFF, False, Outcome.RUNNER_ERROR, ["gremlins"]),
    (
        "api-error",
        summary(errors=[API_404], events=1, steps=0),
        1,
        None,
        NO_DIFF,
        False,
        Outcome.MODEL_ERROR,
        ["HTTP 404", "does not exist", "exit 1"],
    ),
    (
        "context-overflow",
        summary(errors=[format_error("ContextOverflowError", "max 8192 tokens")]),
        1,
        None,
        NO_DIFF,
        False,
        Outcome.CONTEXT_OVERFLOW,
        ["context window exceeded", "8192"],
    ),
    (
        "unknown-error",
        summary(errors=[format_error("UnknownError", "Unexpected server error.")]),
        1,
        None,
        NO_DIFF,
        False,
        Outcome.ENGINE_FAILED,
        ["UnknownError"],
    ),
    (
        "other-error-name",
        summary(errors=[format_error("ProviderAuthError", "no key")]),
        1,
        None,
        NO_DIFF,
        False,
        Outcome.ENGINE_FAILED,
        ["ProviderAuthError"],
    ),
    (
        "last-error-decides",
        summary(errors=[format_error("ContextOverflowError", "x"), API_404]),
        1,
        None,
        NO_DIFF,
        False,
        Outcome.MODEL_ERROR,
        ["404"],
    ),
    (
        "startup-failure",
        RunSummary(),
        1,
        None,
        NO_DIFF,
        False,
        Outcome.ENGINE_FAILED,
        ["no event", "exit 1", "start-up"],
    ),
    ("no-events-exit-0", RunSummary(), 0, None, NO_DIFF, False, Outcome.ENGINE_FAILED, ["no event", "exit 0"]),
    (
        "exit-0-without-answer",
        summary(finish_reason="tool-calls"),
        0,
        None,
        DIFF,  # even with changes: the agent never said it was done
        False,
        Outcome.ENGINE_FAILED,
        ["without a final answer", "'tool-calls'"],
    ),
    (
        "killed-from-outside",
        summary(),
        143,
        None,
        NO_DIFF,
        False,
        Outcome.ENGINE_FAILED,
        ["exit 143 (killed)", "did not finish"],
    ),
]


@pytest.mark.parametrize(
    ("s", "exit_code", "stop_reason", "diff", "cancelled", "expected", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_judge_table(
    s: RunSummary,
    exit_code: int | None,
    stop_reason: str | None,
    diff: DiffStat,
    cancelled: bool,
    expected: Outcome,
    words: list[str],
) -> None:
    outcome, message = judge(s, exit_code=exit_code, stop_reason=stop_reason, diff_stat=diff, cancelled=cancelled)
    assert outcome is expected, message
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_every_outcome_reachable_from_a_stream_is_covered() -> None:
    covered = {c[6] for c in CASES}
    # WorkspaceError is decided by the runner before opencode runs, DiffCaptureFailed by the
    # reporter after it; never from a stream.
    assert covered == set(Outcome) - {Outcome.WORKSPACE_ERROR, Outcome.DIFF_CAPTURE_FAILED}


# Each captured stream → what the run should be judged, given the exit code it had and the
# diff its README describes. Streams cut by `timeout` are judged as our watchdog would stop them.
FIXTURE_CASES: list[tuple[str, int | None, str | None, DiffStat, Outcome]] = [
    ("text-only.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
    ("api-tool-write-edit.jsonl", 0, None, DiffStat(files=2, additions=2, deletions=1), Outcome.COMPLETED),
    ("api-tool-write.jsonl", 0, None, DiffStat(files=1, additions=1), Outcome.COMPLETED),
    ("bash-tool-allowed.jsonl", 0, None, DiffStat(files=1, additions=1), Outcome.COMPLETED),
    ("bash-tool-timeout-120s.jsonl", 0, None, DiffStat(files=1, additions=1), Outcome.COMPLETED),
    ("tools-read-edit-error-bash.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
    ("reasoning-thinking-flag.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
    ("text-format-toolcall-not-parsed.jsonl", 0, None, NO_DIFF, Outcome.TOOL_CALLS_NOT_EXECUTED),
    ("outside-git-repo.jsonl", 0, None, DiffStat(files=1, additions=1), Outcome.COMPLETED),
    ("model-404.jsonl", 1, None, NO_DIFF, Outcome.MODEL_ERROR),
    ("server-500.jsonl", 1, None, NO_DIFF, Outcome.MODEL_ERROR),
    ("server-500-once-then-ok.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
    ("server-unreachable.jsonl", 1, None, NO_DIFF, Outcome.MODEL_ERROR),
    ("server-hang.jsonl", None, "idle", NO_DIFF, Outcome.IDLE_TIMEOUT),
    ("server-hang.jsonl", 124, None, NO_DIFF, Outcome.ENGINE_FAILED),
    ("server-hang-headerTimeout5s.jsonl", 1, None, NO_DIFF, Outcome.MODEL_ERROR),
    ("context-overflow-400.jsonl", 1, None, NO_DIFF, Outcome.CONTEXT_OVERFLOW),
    ("context-overflow-400-autocompact-disabled.jsonl", 1, None, NO_DIFF, Outcome.CONTEXT_OVERFLOW),
    ("context-overflow-compaction-loop.head.jsonl", None, "loop", NO_DIFF, Outcome.LOOP_DETECTED),
    ("context-overflow-compaction-loop.head.jsonl", 124, None, NO_DIFF, Outcome.CONTEXT_OVERFLOW),
    ("model-not-in-config.jsonl", 1, None, NO_DIFF, Outcome.ENGINE_FAILED),
    ("unknown-provider.jsonl", 1, None, NO_DIFF, Outcome.ENGINE_FAILED),
    ("text-and-tool-same-step.jsonl", 0, None, DiffStat(files=1, additions=1), Outcome.COMPLETED),
    ("parallel-tool-calls.jsonl", 0, None, DiffStat(files=2, additions=2), Outcome.COMPLETED),
    ("finish-length.jsonl", 0, None, NO_DIFF, Outcome.TRUNCATED),
    ("denied-tool-called-invalid.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
    # The captured stream stops after the rejected call's tool-calls step: no final answer.
    ("permission-ask-autorejected.jsonl", 0, None, NO_DIFF, Outcome.ENGINE_FAILED),
    ("stream-dropped-midway.head.jsonl", None, "loop", NO_DIFF, Outcome.LOOP_DETECTED),
    ("stream-stall-chunkTimeout5s.jsonl", 1, None, NO_DIFF, Outcome.MODEL_ERROR),
    ("invalid-tool-calls.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
    ("empty-response.jsonl", 0, None, NO_DIFF, Outcome.NO_CHANGES),
]


@pytest.mark.parametrize(
    ("name", "exit_code", "stop_reason", "diff", "expected"),
    FIXTURE_CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in FIXTURE_CASES],
)
def test_fixture_verdicts(
    name: str, exit_code: int | None, stop_reason: str | None, diff: DiffStat, expected: Outcome
) -> None:
    folder = StreamFolder("/workspace")
    folder.feed_bytes((FIXTURES / name).read_bytes())
    folder.finish()
    outcome, message = judge(folder.summary, exit_code=exit_code, stop_reason=stop_reason, diff_stat=diff)
    assert outcome is expected, message


def test_all_fixtures_have_a_verdict_case() -> None:
    assert {c[0] for c in FIXTURE_CASES} == {p.name for p in FIXTURES.glob("*.jsonl")}


def test_text_tool_call_hint_from_the_fixture() -> None:
    folder = StreamFolder("/workspace")
    folder.feed_bytes((FIXTURES / "text-format-toolcall-not-parsed.jsonl").read_bytes())
    _, message = judge(folder.summary, exit_code=0, stop_reason=None, diff_stat=NO_DIFF)
    assert "text-format tool call that was never executed" in message
    assert looks_like_text_tool_call("<function=bash>") and not looks_like_text_tool_call("all done")
