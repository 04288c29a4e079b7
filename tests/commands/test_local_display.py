"""What a local run shows: the record table, the views with the whole patch, the progress and gate lines."""

from __future__ import annotations

import base64
import gzip

import pytest

from buildstudio.commands import local_display
from buildstudio.core.gate import GateDecision
from buildstudio.protocol import records


def test_record_table_labels_a_replay_and_patch_round_trips() -> None:
    patch = "diff --git a/x b/x\n+new\n"
    res = records.ResultRecord(
        outcome=records.Outcome.COMPLETED,
        message="1 file changed",
        replay=True,
        patch=records.Patch(data=base64.b64encode(gzip.compress(patch.encode())).decode(), bytes=len(patch)),
    )
    meta = {"model": "m", "modelService": "replay:f", "repo": "r", "workspace": "/w", "replay": True}
    table = local_display.record_table(res, meta)
    assert "REPLAY" in table and "canned" in table and "Completed (succeeded)" in table
    assert local_display.full_patch(res) == patch
    view = local_display.record_view(res, meta)
    assert view["result"]["replay"] is True and "data" not in view["result"]["patch"]
    line = local_display.progress_line(
        records.ProgressRecord(
            stage="running", elapsed_seconds=3.2, steps=2, tool_calls=1, tokens=240, last_tool="write a.py"
        )
    )
    assert "steps 2" in line and "tool calls 1" in line and "tokens 240" in line and "write a.py" in line


def test_gate_line_says_what_really_runs() -> None:
    wants = GateDecision(True, "Admitted", "opencode drives local model m with tool-call repair",
                         engine="opencode", tool_call_repair=True)  # fmt: skip
    assert local_display.gate_line(wants, relay=True, text_phase=False).endswith("with tool-call repair (relay on)")
    off = local_display.gate_line(wants, relay=False, text_phase=False)
    assert "with tool-call repair" not in off and "tool-call repair off" in off


def _rows(table: str) -> dict[str, str]:
    return {line[:14].strip(): line[15:] for line in table.splitlines()}


@pytest.mark.parametrize(
    ("calls", "errors", "by_name", "files", "want_calls", "want_files"),
    [
        (0, 0, {}, 0, "0", "0 files changed, +0 -0"),
        (1, 0, {"edit": 1}, 1, "1: edit x1", "1 file changed, +3 -1"),
        (3, 1, {"read": 2, "edit": 1}, 2, "3 (1 error): read x2, edit x1", "2 files changed, +3 -1"),
        (4, 2, {"bash": 4}, 1, "4 (2 errors): bash x4", "1 file changed, +3 -1"),
    ],
)
def test_counts_read_as_words(
    calls: int, errors: int, by_name: dict[str, int], files: int, want_calls: str, want_files: str
) -> None:
    """"1 file changed", "1 error": singular and plural right, and no dangling separators."""
    summary = records.RunSummary(tool_calls=calls, tool_errors=errors, tools_by_name=by_name)
    stat = records.DiffStat(files=files, additions=3 if files else 0, deletions=1 if files else 0)
    res = records.ResultRecord(outcome=records.Outcome.COMPLETED, message="m", summary=summary, diff_stat=stat)
    table = local_display.record_table(res, {"model": "m", "modelService": "s", "repo": "r", "workspace": "/w"})
    rows = _rows(table)
    assert (rows["TOOL CALLS"], rows["FILES"]) == (want_calls, want_files)
    assert all(line == line.rstrip() for line in table.splitlines())


def test_a_text_phase_shows_only_the_lines_that_apply() -> None:
    """A plan has no steps, tools, files or diff, the replay note claims no real tools, and the answer
    is printed whole under the table (not a second time as an excerpt)."""
    summary = records.RunSummary(final_text="## Plan\n1. Add subtract.\n")
    res = records.ResultRecord(outcome=records.Outcome.COMPLETED, message="plan: 24 characters", phase="plan",
                               replay=True, summary=summary)  # fmt: skip
    rows = _rows(local_display.record_table(res, {"model": "m", "modelService": "s", "phase": "plan"}))
    assert list(rows) == ["OUTCOME", "MESSAGE", "MODEL", "REPLAY", "MODEL SERVICE", "PHASE", "TOKENS", "DURATION"]
    assert rows["REPLAY"] == "yes: the model's words were canned (recorded replies)"
    build = records.ResultRecord(outcome=records.Outcome.COMPLETED, message="m", replay=True, summary=summary)
    rows = _rows(local_display.record_table(build, {"model": "m", "modelService": "s", "repo": "r", "workspace": "/w"}))
    assert {"STEPS", "TOOL CALLS", "FILES", "FINAL ANSWER"} <= set(rows) and "tools and diff are real" in rows["REPLAY"]
