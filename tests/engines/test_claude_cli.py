"""The real claude CLI against the scripted Anthropic server, in a real git repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildstudio.protocol.records import Outcome
from tests.engines import cli_cases as c
from tests.engines.scenarios import run_scenario, scenarios

pytestmark = pytest.mark.engines


@pytest.fixture(autouse=True)
def _installed() -> None:
    c.need("claude")


def test_write_read_edit_end_in_the_diff(tmp_path: Path) -> None:
    o = c.write_edit("claude", tmp_path, expected_steps=4, expected_tools=3)
    agent = [r for r in o.requests if r["method"] == "POST"]
    assert len(agent) == 4 and all(r["path"] == "/v1/messages?beta=true" for r in agent)
    assert agent[0]["headers"]["x-api-key"] == "sk-buildstudio-placeholder"
    # CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: no HEAD /api/hello probe.
    assert all(r["method"] == "POST" for r in o.requests)


def test_model_error_ends_with_model_error(tmp_path: Path) -> None:
    o = c.model_error("claude", tmp_path)
    assert o.run.exit_code == 1 and o.parser.summary.step_retries == 1


def test_context_overflow(tmp_path: Path) -> None:
    assert c.overflow("claude", tmp_path).run.exit_code == 1


def test_hang_ends_by_api_timeout(tmp_path: Path) -> None:
    o = run_scenario("claude", scenarios("claude")["server-hang"], tmp_path)
    assert o.run.exit_code == 1 and o.run.seconds < 10  # API_TIMEOUT_MS=3000, no retry
    assert c.verdict(o) is Outcome.MODEL_ERROR


def test_200kb_prompt_arrives_verbatim_through_stdin(tmp_path: Path) -> None:
    o = run_scenario("claude", scenarios("claude")["write-edit"], tmp_path, prompt=c.BIG_PROMPT)
    first = next(r for r in o.requests if r["method"] == "POST")["body"]
    texts = [b["text"] for b in first["messages"][0]["content"] if b.get("type") == "text"]
    assert texts[-1] == c.BIG_PROMPT
