"""What a local run shows: the record table, the views with the whole patch, the progress and gate lines."""

from __future__ import annotations

import base64
import gzip

from buildstudio.commands import local_display
from buildstudio.core.gate import GateDecision
from buildstudio.protocol import records


def test_record_table_labels_a_replay_and_patch_round_trips() -> None:
    patch = "diff --git a/x b/x\n+new\n"
    res = records.ResultRecord(
        outcome=records.Outcome.COMPLETED,
        message="1 files changed",
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
