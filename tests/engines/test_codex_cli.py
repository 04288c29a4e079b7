"""The real codex CLI against the scripted Responses API server, in a real git repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildstudio.protocol.records import Outcome
from tests.engines import cli_cases as c
from tests.engines.scenarios import run_scenario, scenarios

pytestmark = pytest.mark.engines


@pytest.fixture(autouse=True)
def _installed() -> None:
    c.need("codex")


def test_apply_patch_ends_in_the_diff(tmp_path: Path) -> None:
    o = c.write_edit("codex", tmp_path, expected_steps=1, expected_tools=2)
    assert [r["path"] for r in o.requests] == ["/v1/responses"] * 3
    assert o.requests[0]["headers"]["Authorization"] == "Bearer sk-buildstudio-placeholder"
    assert o.parser.summary.tokens.total == 16800


def test_model_error_ends_with_model_error(tmp_path: Path) -> None:
    assert c.model_error("codex", tmp_path).run.exit_code == 1


def test_context_overflow(tmp_path: Path) -> None:
    assert c.overflow("codex", tmp_path).run.exit_code == 1


def test_hang_needs_the_watchdog(tmp_path: Path) -> None:
    # No request/header timeout in codex: it waits as long as the server holds the connection.
    o = run_scenario("codex", scenarios("codex")["server-hang"], tmp_path)
    assert o.run.exit_code is None
    assert c.verdict(o, stop_reason="idle") is Outcome.IDLE_TIMEOUT


def test_200kb_prompt_arrives_verbatim_through_stdin(tmp_path: Path) -> None:
    o = run_scenario("codex", scenarios("codex")["write-edit"], tmp_path, prompt=c.BIG_PROMPT)
    user = [m for m in o.requests[0]["body"]["input"] if m.get("role") == "user"]
    assert user[-1]["content"][-1]["text"] == c.BIG_PROMPT
