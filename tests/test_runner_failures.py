"""Engine integration, failure side: model errors and every watchdog limit, with the real opencode.

opencode retries 500s and connection errors for ≈ 70-80 s with back-off; those cases are ended by
the runner's watchdog (idle / run timeout) here, which is exactly what the runner must do."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.protocol import records
from tests.runner_harness import OPENCODE, SKIP_REASON, make_repo, run_runner, spec

pytestmark = [pytest.mark.opencode, pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)]

Outcome = records.Outcome


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scripted_run(tmp_path: Path, script: list[dict[str, Any]], **spec_extra: Any) -> records.ResultRecord:
    ws = tmp_path / "ws"
    make_repo(ws)
    async with ScriptedServer(script) as srv:
        run = await run_runner(tmp_path, spec(srv.base_url, **spec_extra), ws=ws)
    return run.result


async def test_model_not_found_404(tmp_path: Path) -> None:
    res = await scripted_run(
        tmp_path,
        [
            {
                "status": 404,
                "body": {
                    "error": {"message": "The model `qwen3-coder` does not exist.", "type": "invalid_request_error"}
                },
            }
        ],
    )
    assert res.outcome is Outcome.MODEL_ERROR, res.message
    assert "404" in res.message and "does not exist" in res.message
    assert res.exit_code == 1


async def test_context_overflow(tmp_path: Path) -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 4096 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    res = await scripted_run(tmp_path, [{"status": 400, "body": body}])
    # OPENCODE_DISABLE_AUTOCOMPACT=1: one ContextOverflowError instead of the endless compaction loop.
    assert res.outcome is Outcome.CONTEXT_OVERFLOW, res.message
    assert res.summary.errors and res.summary.errors[-1].startswith("ContextOverflowError")


async def test_hung_model_hits_the_idle_watchdog(tmp_path: Path) -> None:
    res = await scripted_run(tmp_path, [{"hang": 120}], timeouts={"idleSeconds": 4})
    assert res.outcome is Outcome.IDLE_TIMEOUT, res.message
    assert res.duration_seconds < 30


async def test_unreachable_model_service_is_stopped_by_the_watchdog(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_repo(ws)
    run = await run_runner(tmp_path, spec(f"http://127.0.0.1:{closed_port()}/v1", timeouts={"idleSeconds": 4}), ws=ws)
    assert run.result.outcome is Outcome.IDLE_TIMEOUT, run.result.message


async def test_server_500_retries_end_at_the_run_timeout(tmp_path: Path) -> None:
    res = await scripted_run(
        tmp_path,
        [{"status": 500, "body": {"error": {"message": "internal boom"}}}],
        timeouts={"runSeconds": 6, "idleSeconds": 60},
    )
    assert res.outcome is Outcome.TIMED_OUT, res.message
    assert 6 <= res.duration_seconds < 30


async def test_step_budget_and_bounded_output(tmp_path: Path) -> None:
    # The last entry repeats: a model that calls a tool for ever (opencode has no step limit).
    ws = tmp_path / "ws"
    make_repo(ws)
    async with ScriptedServer([{"tool": "read", "args": {"filePath": "calc.py"}}]) as srv:
        run = await run_runner(
            tmp_path, spec(srv.base_url, limits={"stepBudget": 3}, output={"maxEventRecords": 4}), ws=ws
        )
    res = run.result
    assert res.outcome is Outcome.STEP_BUDGET_EXCEEDED, res.message
    # Stopped at the 4th step; a step already in the pipe when the kill lands may still be counted.
    assert 4 <= res.summary.steps <= 6 and res.summary.tool_calls >= 3
    # Event records stop at the cap; the cap and the count left out are announced.
    printed = [e for e in run.events() if e.type != "watchdog"]
    notes = [e.message for e in run.events("watchdog")]
    assert len(printed) == 4
    assert any("capped after 4 events" in n for n in notes)
    assert any("event records not printed" in n for n in notes)


async def test_cut_stream_loop(tmp_path: Path) -> None:
    res = await scripted_run(
        tmp_path, [{"text": "I will now edit the file", "drop": True}], limits={"unknownFinishes": 3}
    )
    assert res.outcome is Outcome.LOOP_DETECTED, res.message
    assert "stream cut" in res.message


async def test_text_format_tool_call_is_not_executed(tmp_path: Path) -> None:
    """opencode 1.18.33 prints qwen3-coder text-format tool calls as text: nothing is written, exit 0."""
    markup = (
        "<tool_call>\n<function=write>\n<parameter=filePath>\nx.py\n</parameter>\n"
        "<parameter=content>\nprint(1)\n</parameter>\n</function>\n</tool_call>"
    )
    res = await scripted_run(tmp_path, [{"text": markup}])
    assert res.outcome is Outcome.TOOL_CALLS_NOT_EXECUTED, res.message
    assert "text-format tool call" in res.message
    assert not (tmp_path / "ws" / "x.py").exists()
