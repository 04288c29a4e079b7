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


def test_ready_follows_succeeded_and_keeps_its_transition_time() -> None:
    from datetime import UTC, datetime, timedelta

    from buildstudio.core.conditions import find, set_condition, with_ready

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    queued = with_ready([], "Queued", now=t0, generation=1)
    assert find(queued, "Ready") == {
        "type": "Ready",
        "status": "Unknown",
        "reason": "Queued",
        "message": "not finished yet: Queued",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    running = with_ready(queued, "Running", now=t0 + timedelta(minutes=1), generation=1)
    assert find(running, "Ready")["reason"] == "Running"  # type: ignore[index]
    assert find(running, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # type: ignore[index]
    t1 = t0 + timedelta(minutes=2)
    failed = set_condition(running, "Succeeded", "False", "TimedOut", "ran 1800 s", now=t1, generation=1)
    ready = find(with_ready(failed, "Failed", now=t1, generation=1), "Ready")
    assert ready is not None and ready["status"] == "False"
    assert (ready["reason"], ready["message"]) == ("TimedOut", "ran 1800 s")
    assert ready["lastTransitionTime"] == "2026-01-01T00:02:00Z"
    done = set_condition(running, "Succeeded", "True", "Completed", "1 file changed", now=t1, generation=1)
    assert find(with_ready(done, "Succeeded", now=t1, generation=1), "Ready")["status"] == "True"  # type: ignore[index]
