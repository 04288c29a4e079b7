"""The one runner-spec builder: the operator's and the local run's output-limit rules, chat-only phases."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.core.runner_spec import output_limit, runner_spec
from buildstudio.protocol.spec import RepoSource, ReviewInput


@pytest.mark.parametrize(("context", "limit"), [(65536, 8192), (16384, 4096), (512, 256), (1 << 20, 8192)])
def test_operator_rule_is_a_quarter_of_the_context_within_256_to_8192(context: int, limit: int) -> None:
    assert output_limit(context) == limit


@pytest.mark.parametrize(
    ("context", "requested", "limit"), [(65536, 8192, 8192), (8192, 8192, 4096), (65536, 100, 100)]
)
def test_local_rule_is_the_request_at_most_half_the_context(context: int, requested: int, limit: int) -> None:
    assert output_limit(context, requested) == limit


def test_build_and_chat_only_phases() -> None:
    repo = RepoSource(url="https://g/r.git", ref="main")
    review = ReviewInput(source="fix")
    common = {"prompt": "p", "model": "m", "base_url": "http://m/v1", "run_seconds": 60, "idle_seconds": 30}
    build = runner_spec(**common, context=None, repo=repo, relay=True, step_budget=7, review=review)
    assert (build.phase, build.repo, build.relay, build.review) == ("build", repo, True, None)
    assert (build.context_limit, build.output_limit, build.limits.step_budget) == (65536, 8192, 7)
    assert build.timeouts.run_seconds == 60.0 and build.timeouts.idle_seconds == 30.0
    for phase in ("ideate", "plan", "review"):
        chat = runner_spec(**common, context=32768, phase=phase, repo=repo, relay=True, review=review)
        assert (chat.phase, chat.repo, chat.relay) == (phase, None, False)
        assert chat.review == (review if phase == "review" else None)
    local = runner_spec(**common, context=8192, requested_output=8192, replay=True)
    assert (local.output_limit, local.replay, local.limits.step_budget) == (4096, True, 200)


@pytest.mark.parametrize("engine", ["opencode", "claude", "codex", "grok"])
def test_the_engine_reaches_the_spec(engine: str) -> None:
    spec = runner_spec(prompt="p", model="m", base_url="https://api.example.com/v1", context=None,
                       run_seconds=60, idle_seconds=30, engine=engine)  # fmt: skip
    assert spec.engine == engine and spec.base_url == "https://api.example.com/v1"


def test_the_default_engine_is_opencode_and_an_unknown_one_is_refused() -> None:
    common: dict[str, Any] = {"prompt": "p", "model": "m", "base_url": "http://m/v1", "context": None,
                              "run_seconds": 60, "idle_seconds": 30}  # fmt: skip
    assert runner_spec(**common).engine == "opencode"
    with pytest.raises(ValueError, match="no runner adapter"):
        runner_spec(**common, engine="aider")


def test_the_runner_spec_names_exactly_the_engines_that_have_an_adapter() -> None:
    from typing import get_args

    from buildstudio.engines.adapters import ENGINES
    from buildstudio.protocol.spec import RunnerEngine

    assert set(get_args(RunnerEngine)) == set(ENGINES)
