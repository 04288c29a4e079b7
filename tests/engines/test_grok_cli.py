"""The real grok CLI against the scripted chat-completions server, in a real git repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildstudio.engines.grok import PROMPT_FILE
from buildstudio.protocol.records import Outcome
from tests.engines import cli_cases as c
from tests.engines.scenarios import Scenario, run_scenario, scenarios

pytestmark = pytest.mark.engines


@pytest.fixture(autouse=True)
def _installed() -> None:
    c.need("grok")


def test_create_and_replace_end_in_the_diff(tmp_path: Path) -> None:
    o = c.write_edit("grok", tmp_path, expected_steps=3, expected_tools=2)
    assert [r["path"] for r in o.requests] == ["/v1/chat/completions"] * 3
    assert o.requests[0]["headers"]["Authorization"] == "Bearer sk-buildstudio-placeholder"
    assert o.requests[0]["body"]["max_tokens"] == 16384  # GROK_MAX_TOKENS, not its 1536 default
    # grok wrote .grok/settings.json into the repo; the git exclude keeps it out of the diff.
    assert (o.repo / ".grok" / "settings.json").exists()


def test_model_error_exits_0_yet_is_a_model_error(tmp_path: Path) -> None:
    o = c.model_error("grok", tmp_path)
    assert o.run.exit_code == 0 and len(o.requests) == 3  # the openai SDK's 2 retries


def test_context_overflow(tmp_path: Path) -> None:
    assert c.overflow("grok", tmp_path).run.exit_code == 0


def test_hang_needs_the_watchdog(tmp_path: Path) -> None:
    o = run_scenario("grok", scenarios("grok")["server-hang"], tmp_path)
    assert o.run.exit_code is None and o.run.stdout.strip() == "Gracefully shutting down..."
    assert c.verdict(o, stop_reason="idle") is Outcome.IDLE_TIMEOUT


def test_200kb_prompt_reaches_the_model_through_a_file(tmp_path: Path) -> None:
    read = Scenario(
        "big", [{"tool": "view_file", "args": {"path": str(tmp_path / "home" / PROMPT_FILE)}}, {"text": "read it"}]
    )
    o = run_scenario("grok", read, tmp_path, prompt=c.BIG_PROMPT)
    first, second = (r["body"]["messages"] for r in o.requests[:2])
    assert PROMPT_FILE in first[-1]["content"] and len(first[-1]["content"]) < 300
    assert 'END "quoted" $(id) `tick`' in second[-1]["content"]  # the tool result holds the prompt
