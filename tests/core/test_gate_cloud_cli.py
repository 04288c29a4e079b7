"""The gate for a cloud engine's CLI on the local model service (issue #21, "beyond the anchors"),
and for an engine kind the runner cannot start."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.adapters import registry
from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core.gate import EngineState, decide

SPECS = {e.name: e.spec for e in registry.load()}
SERVICE = {"baseURL": "http://127.0.0.1:11434/v1"}


def on_local_service(name: str, *, present: bool = True, models: list[dict[str, Any]] | None = None) -> EngineState:
    raw = {**SPECS[name].to_api(), "endpoint": "local", "modelService": SERVICE, "credential": None}
    if models is not None:
        raw["models"] = models
    return EngineState(name, BuildEngineSpec.model_validate(raw), present)


def build(model: str, engine: str) -> BuildDispatchSpec:
    return BuildDispatchSpec.model_validate(
        {"prompt": "p", "repo": {"url": "https://git.example/r.git"}, "model": model, "engine": engine}
    )


TOOL_USE = [{"id": "qwen3-coder", "supportsToolUse": True}]
NO_TOOL_USE = [{"id": "qwen3-coder", "supportsToolUse": False}]


@pytest.mark.parametrize(
    ("name", "models", "present", "expected"),
    [
        # Declared API tool use: any of the three CLIs drives the model through its own tools.
        ("claude", TOOL_USE, True, (True, "Admitted", False)),
        ("codex", TOOL_USE, True, (True, "Admitted", False)),
        ("grok", TOOL_USE, True, (True, "Admitted", False)),
        # No (or unknown) API tool use: only grok's chat completions can go through the repair relay.
        ("grok", NO_TOOL_USE, True, (True, "Admitted", True)),
        ("grok", None, True, (True, "Admitted", True)),
        ("claude", NO_TOOL_USE, True, (False, "LocalModelsUnsupported", False)),
        ("codex", None, True, (False, "LocalModelsUnsupported", False)),
        ("claude", TOOL_USE, False, (False, "EngineNotPresent", False)),
    ],
)
def test_a_cloud_cli_on_the_local_model_service(
    name: str, models: list[dict[str, Any]] | None, present: bool, expected: tuple[bool, str, bool]
) -> None:
    d = decide([on_local_service(name, present=present, models=models)], build("qwen3-coder", name))
    assert (d.admit, d.reason, d.tool_call_repair) == expected, d.message
    assert d.local and d.engine == name and d.model == "qwen3-coder"
    if d.reason == "LocalModelsUnsupported":
        assert "which the relay does not repair" in d.message


def test_opencode_without_local_models_is_still_refused() -> None:
    raw = {**SPECS["opencode"].to_api(), "capabilities": ["apiToolCalls"], "models": TOOL_USE}
    d = decide([EngineState("opencode", BuildEngineSpec.model_validate(raw), True)], build("qwen3-coder", "opencode"))
    assert (d.admit, d.reason) == (False, "LocalModelsUnsupported")


def test_an_engine_kind_without_a_runner_adapter_is_refused() -> None:
    raw = {**SPECS["claude"].to_api(), "engine": "aider"}
    d = decide([EngineState("aider", BuildEngineSpec.model_validate(raw), True)], build("m", "aider"))
    assert (d.admit, d.reason) == (False, "EngineUnsupported")
    assert "'aider'" in d.message and "claude" in d.message
