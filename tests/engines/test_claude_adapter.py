"""The claude adapter: its command line and configuration, and its parser on recorded streams."""

from __future__ import annotations

import pytest

from buildstudio.core.outcome import judge
from buildstudio.engines.base import LaunchError, RunRequest
from buildstudio.engines.claude import ClaudeAdapter, ClaudeParser
from buildstudio.protocol.records import DiffStat, Outcome
from tests.engines.conftest import fixture_lines

REQ = RunRequest(
    prompt='fix "it" $(rm -rf /)',
    model="claude-sonnet-4-5",
    workspace="/workspace",
    home="/home/run",
    base_url="http://127.0.0.1:8089",
)


def parse(name: str) -> ClaudeParser:
    p = ClaudeParser("/workspace")
    p.feed_lines(fixture_lines("claude", name))
    p.finish(None)
    return p


def test_launch_prompt_on_stdin_and_env_points_at_the_relay() -> None:
    launch = ClaudeAdapter().launch(REQ)
    assert launch.stdin == REQ.prompt and REQ.prompt not in launch.argv
    assert launch.argv[:2] == ("claude", "-p") and "--dangerously-skip-permissions" in launch.argv
    assert launch.argv[launch.argv.index("--setting-sources") + 1] == "user"
    assert launch.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8089"
    assert launch.env["ANTHROPIC_API_KEY"] == REQ.api_key
    assert launch.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert launch.cwd == "/workspace" and launch.files == ()


@pytest.mark.parametrize("url", ["http://10.0.0.1:80", "https://api.anthropic.com", "http://127.0.0.1:1/v1"])
def test_launch_refuses_a_base_url_that_is_not_the_loopback_relay(url: str) -> None:
    with pytest.raises(LaunchError):
        ClaudeAdapter().launch(RunRequest(prompt="x", model="m", workspace="/w", home="/h", base_url=url))


def test_version_guard() -> None:
    assert ClaudeAdapter().version_matches("2.1.332 (Claude Code)\n")
    assert not ClaudeAdapter().version_matches("2.1.331 (Claude Code)")


def test_write_edit_stream() -> None:
    p = parse("write-edit")
    s = p.summary
    # Write, Read, Edit, answer: four model responses; the result line's totals.
    assert (s.steps, s.tool_calls, s.tool_errors) == (4, 3, 0)
    assert s.tools_by_name == {"Write": 1, "Read": 1, "Edit": 1}
    assert s.files_touched == ["sub.py", "calc.py"]
    assert (s.tokens.input, s.tokens.output, s.tokens.total) == (
        5000 + 5000 + 5400 + 6000,
        300 + 300 + 60 + 40,
        21400 + 700,
    )
    assert s.final_text == "Added sub() and swapped the operands." and s.finish_reason == "stop"
    assert judge(s, exit_code=0, stop_reason=None, diff_stat=DiffStat(files=2))[0] is Outcome.COMPLETED


def test_tool_errors_are_counted_not_fatal() -> None:
    s = parse("tool-errors").summary
    assert (s.tool_calls, s.tool_errors, s.invalid_tool_calls) == (3, 3, 1)
    assert s.files_touched == [] and s.finish_reason == "stop"


@pytest.mark.parametrize(
    ("name", "outcome", "error"),
    [
        ("server-500", Outcome.MODEL_ERROR, "APIError [HTTP 500]"),
        ("context-overflow", Outcome.CONTEXT_OVERFLOW, "ContextOverflowError [HTTP 400]"),
        ("server-hang", Outcome.MODEL_ERROR, "APIError: Request timed out"),
    ],
)
def test_failures_map_to_outcomes(name: str, outcome: Outcome, error: str) -> None:
    s = parse(name).summary
    assert s.errors and s.errors[-1].startswith(error)
    assert judge(s, exit_code=1, stop_reason=None, diff_stat=DiffStat())[0] is outcome


def test_server_500_retries_are_counted() -> None:
    # CLAUDE_CODE_MAX_RETRIES=1: one api_retry line before the error.
    assert parse("server-500").summary.step_retries == 1


def test_output_token_limit_is_truncated_not_a_model_error() -> None:
    s = parse("finish-length").summary
    assert s.finish_reason == "length" and s.errors == []
    assert judge(s, exit_code=1, stop_reason=None, diff_stat=DiffStat())[0] is Outcome.TRUNCATED


def test_garbage_lines_are_counted() -> None:
    p = ClaudeParser()
    assert p.feed("not json") == [] and p.feed("[1]") == []
    p.feed('{"type":"brand_new"}')
    assert (p.summary.malformed_lines, p.summary.unknown_types) == (2, {"brand_new": 1})
