"""The grok adapter: its command line and configuration, and its parser on recorded streams."""

from __future__ import annotations

import pytest

from buildstudio.core.outcome import judge
from buildstudio.engines.base import RunRequest
from buildstudio.engines.grok import PROMPT_FILE, GrokAdapter, GrokParser
from buildstudio.protocol.records import DiffStat, Outcome
from tests.engines.conftest import fixture_lines


def request(prompt: str) -> RunRequest:
    return RunRequest(
        prompt=prompt,
        model="grok-code-fast-1",
        workspace="/workspace",
        home="/home/run",
        base_url="http://127.0.0.1:8089",
    )


def parse(name: str) -> GrokParser:
    p = GrokParser("/workspace")
    p.feed_lines(fixture_lines("grok", name))
    p.finish(None)
    return p


def test_launch_short_prompt_is_one_argv_element() -> None:
    launch = GrokAdapter().launch(request('say "hi"; $(id)'))
    assert launch.argv[-2:] == ("--prompt", 'say "hi"; $(id)') and launch.files == ()
    assert launch.env["GROK_BASE_URL"] == "http://127.0.0.1:8089/v1"
    assert "--api-key" not in launch.argv  # it would be saved to ~/.grok/user-settings.json
    assert launch.cwd == "/home/run" and launch.git_excludes == (".grok/settings.json",)


def test_launch_long_prompt_goes_to_a_file() -> None:
    prompt = "y" * 200_000
    launch = GrokAdapter().launch(request(prompt))
    (spec,) = launch.files
    assert (spec.root, spec.path, spec.content) == ("home", PROMPT_FILE, prompt)
    assert f"/home/run/{PROMPT_FILE}" in launch.argv[-1] and len(launch.argv[-1]) < 300


def test_version_guard_compares_the_binary_not_the_package() -> None:
    assert GrokAdapter().version_matches("1.0.1\n") and not GrokAdapter().version_matches("0.0.34")


def test_write_edit_stream() -> None:
    s = parse("write-edit").summary
    assert (s.steps, s.tool_calls, s.tool_errors) == (3, 2, 0)
    assert s.tools_by_name == {"create_file": 1, "str_replace_editor": 1}
    assert s.files_touched == ["sub.py", "calc.py"]
    assert s.tokens.total == 0  # grok prints no usage: the relay has to count
    assert s.final_text == "Added sub() and swapped the operands." and s.finish_reason == "stop"
    assert judge(s, exit_code=0, stop_reason=None, diff_stat=DiffStat(files=2))[0] is Outcome.COMPLETED


def test_tool_errors_recognised_by_their_text() -> None:
    s = parse("tool-errors").summary
    assert (s.tool_calls, s.tool_errors, s.invalid_tool_calls) == (3, 3, 1)


@pytest.mark.parametrize(
    ("name", "outcome", "error"),
    [
        ("server-500", Outcome.MODEL_ERROR, "APIError [HTTP 500]"),
        ("context-overflow", Outcome.CONTEXT_OVERFLOW, "ContextOverflowError [HTTP 400]"),
    ],
)
def test_errors_exit_0_but_are_failures(name: str, outcome: Outcome, error: str) -> None:
    s = parse(name).summary
    assert s.errors[-1].startswith(error) and s.finish_reason == ""
    assert judge(s, exit_code=0, stop_reason=None, diff_stat=DiffStat())[0] is outcome


def test_sigterm_notice_is_not_an_answer() -> None:
    p = parse("server-hang")
    assert p.shutdown_notice and p.summary.finish_reason == "" and p.summary.events == 0
