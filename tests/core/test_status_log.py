"""The result channel's whole log folded into the attempt's live state (``core.status``)."""

from __future__ import annotations

from buildstudio.core.status import LiveState, fold_line, fold_log, with_followed, with_result_log
from buildstudio.protocol.records import EventRecord, ProgressRecord, dump
from tests.core.test_machine import result

PROGRESS = dump(ProgressRecord(stage="editing", steps=2))
EVENT = dump(EventRecord(type="tool", message="edit calc.py"))
RESULT = dump(result())


def test_fold_log_reads_every_line_and_the_result() -> None:
    got = fold_log("\n".join([PROGRESS, "not json", EVENT, RESULT]), keep_events=5)
    assert got.lines == 4 and got.malformed == 1 and got.results == 1 and got.result is not None
    assert got.events == ("tool: edit calc.py",)


def test_a_stream_never_supplies_results() -> None:
    followed = LiveState(result=fold_log(RESULT).result, results=1)
    live = fold_line(LiveState(), RESULT, accept_results=False)
    merged = with_followed(followed, live)
    assert merged.result == followed.result and merged.results == 1 and merged.lines == 1


def test_the_reporters_log_follows_the_agents() -> None:
    agent = fold_log("\n".join([PROGRESS, EVENT]))
    reporter = fold_log("\n".join([EVENT, RESULT]))
    state = with_result_log(agent, reporter, whole_log=False, conflict="", keep_events=1)
    assert state.lines == 4 and state.events == ("tool: edit calc.py",) and state.events_seen == 2
    assert state.progress == agent.progress and state.result == reporter.result and state.results == 1


def test_a_text_phase_log_is_the_result_channel_itself() -> None:
    streamed = fold_line(LiveState(), PROGRESS, accept_results=False)
    whole = fold_log("\n".join([PROGRESS, RESULT]))
    state = with_result_log(streamed, whole, whole_log=True, conflict="sha256 mismatch")
    assert state == LiveState(
        lines=2, progress=whole.progress, result=whole.result, results=1, conflict="sha256 mismatch"
    )
