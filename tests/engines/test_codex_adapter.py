"""The codex adapter: its command line and config.toml, and its parser on recorded streams."""

from __future__ import annotations

import tomllib

import pytest

from buildstudio.core.outcome import judge
from buildstudio.engines.base import LaunchError, RunRequest
from buildstudio.engines.codex import KEY_ENV, CodexAdapter, CodexParser
from buildstudio.protocol.records import DiffStat, Outcome
from tests.engines.conftest import fixture_lines

REQ = RunRequest(
    prompt="- starts with a dash\n" + "x" * 200_000,
    model="gpt-5.5",
    workspace="/workspace",
    home="/home/run",
    base_url="http://127.0.0.1:8089/",
)


def parse(name: str) -> CodexParser:
    p = CodexParser("/workspace")
    p.feed_lines(fixture_lines("codex", name))
    p.finish(None)
    return p


def test_launch_prompt_on_stdin_and_provider_config() -> None:
    launch = CodexAdapter().launch(REQ)
    assert launch.stdin == REQ.prompt and launch.argv[-1] == "-"
    assert launch.env["CODEX_HOME"] == "/home/run/.codex" and launch.env[KEY_ENV] == REQ.api_key
    (spec,) = launch.files
    assert (spec.root, spec.path) == ("home", ".codex/config.toml")
    config = tomllib.loads(spec.content)
    provider = config["model_providers"][config["model_provider"]]
    assert provider["base_url"] == "http://127.0.0.1:8089/v1" and provider["wire_api"] == "responses"
    assert provider["env_key"] == KEY_ENV and config["model"] == "gpt-5.5"
    assert config["analytics"]["enabled"] is False and config["features"]["plugins"] is False


def test_launch_refuses_a_model_id_that_could_inject_config() -> None:
    with pytest.raises(LaunchError):
        CodexAdapter().launch(
            RunRequest(prompt="x", model='m"\nx = 1', workspace="/w", home="/h", base_url="http://127.0.0.1:1")
        )


def test_write_edit_stream() -> None:
    s = parse("write-edit").summary
    # One turn; two apply_patch items; usage of the turn = sum of the three requests.
    assert (s.steps, s.tool_calls, s.tool_errors) == (1, 2, 0)
    assert s.tools_by_name == {"apply_patch": 2}
    assert sorted(s.files_touched) == ["calc.py", "sub.py"]
    assert (s.tokens.input, s.tokens.output, s.tokens.total) == (16400, 400, 16800)
    assert s.final_text == "Added sub() and swapped the operands." and s.finish_reason == "stop"
    assert judge(s, exit_code=0, stop_reason=None, diff_stat=DiffStat(files=2))[0] is Outcome.COMPLETED


def test_undispatchable_calls_leave_no_item() -> None:
    # A patch that does not apply and an unknown tool print nothing on stdout: only the
    # failing shell command is seen.
    s = parse("tool-errors").summary
    assert (s.tool_calls, s.tool_errors, s.tools_by_name) == (1, 1, {"shell": 1})


@pytest.mark.parametrize(
    ("name", "outcome", "error"),
    [
        ("server-500", Outcome.MODEL_ERROR, "APIError: We\u2019re currently experiencing high demand"),
        ("context-overflow", Outcome.CONTEXT_OVERFLOW, "ContextOverflowError: Codex ran out of room"),
    ],
)
def test_failures_map_to_outcomes(name: str, outcome: Outcome, error: str) -> None:
    s = parse(name).summary
    assert len(s.errors) == 1 and s.errors[0].startswith(error)  # `error` + `turn.failed`: counted once
    assert judge(s, exit_code=1, stop_reason=None, diff_stat=DiffStat())[0] is outcome


def test_retries_are_counted_not_errors() -> None:
    assert parse("server-500").summary.step_retries >= 1


def test_incomplete_response_is_truncated() -> None:
    s = parse("finish-length").summary
    assert s.finish_reason == "length" and s.errors == []


def test_hang_leaves_no_final_answer() -> None:
    # The harness killed codex (no header timeout in codex): only the watchdog can decide.
    s = parse("server-hang").summary
    assert s.finish_reason == "" and s.errors == []
    assert judge(s, exit_code=None, stop_reason="idle", diff_stat=DiffStat())[0] is Outcome.IDLE_TIMEOUT
