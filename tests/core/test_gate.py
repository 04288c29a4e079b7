"""The capability gate and engine auto-detection, table-driven over every branch."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.adapters import registry
from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core.gate import EngineState, GateDecision, decide, detect_engine

SPECS = {e.name: e.spec for e in registry.load()}


def state(name: str, present: bool = True, **changes: Any) -> EngineState:
    spec = SPECS[name] if not changes else BuildEngineSpec.model_validate({**SPECS[name].to_api(), **changes})
    return EngineState(name=name, spec=spec, present=present)


def dispatch(**kw: Any) -> BuildDispatchSpec:
    base: dict[str, Any] = {"prompt": "do it", "repo": {"url": "https://git.example/r.git"}}
    merged = {k: v for k, v in {**base, **kw}.items() if v is not None}
    return BuildDispatchSpec.model_validate(merged)


ALL_PRESENT = [state("opencode"), state("claude"), state("codex"), state("grok")]
NONE_PRESENT = [state(n, present=False) for n in ("opencode", "claude", "codex", "grok")]

CASES: list[tuple[str, list[EngineState], dict[str, Any], tuple[bool, str, str | None, str | None]]] = [
    ("local model auto-detects opencode", ALL_PRESENT, {"model": "qwen3-coder"},
     (True, "Admitted", "opencode", "qwen3-coder")),
    ("model unset takes the strong-tier local model", ALL_PRESENT, {},
     (True, "Admitted", "opencode", "qwen3-coder")),
    ("unlisted model is taken as local", ALL_PRESENT, {"model": "llama3.1:8b"},
     (True, "Admitted", "opencode", "llama3.1:8b")),
    ("cloud model auto-detects its engine", ALL_PRESENT, {"model": "claude-sonnet-4-5"},
     (True, "Admitted", "claude", "claude-sonnet-4-5")),
    ("local model refused when opencode is not present", NONE_PRESENT, {"model": "qwen3-coder"},
     (False, "EngineNotPresent", "opencode", "qwen3-coder")),
    ("explicit unknown engine", ALL_PRESENT, {"engine": "aider", "model": "qwen3-coder"},
     (False, "EngineNotFound", None, None)),
    ("no engines at all", [], {"model": "qwen3-coder"}, (False, "NoEngineForModel", None, None)),
    ("cloud engine without its Secret", [state("claude", present=False)], {"engine": "claude"},
     (False, "EngineNotPresent", "claude", "claude-sonnet-4-5")),
    ("cloud engine present", [state("codex")], {"engine": "codex"}, (True, "Admitted", "codex", "gpt-5.5")),
    ("plan phase is text generation on the strong local model", NONE_PRESENT, {"phase": "plan", "repo": None},
     (True, "Admitted", "opencode", "qwen3-coder")),
    ("plan on a cloud engine is refused", ALL_PRESENT, {"phase": "plan", "engine": "claude"},
     (False, "NoLocalModelService", "claude", "claude-sonnet-4-5")),
    ("review needs a succeeded source", ALL_PRESENT, {"phase": "review", "source": {"dispatch": "a"}},
     (False, "SourceNotReady", "opencode", "qwen3-coder")),
]


@pytest.mark.parametrize(("engines", "spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gate_table(engines: list[EngineState], spec: dict[str, Any],
                    expected: tuple[bool, str, str | None, str | None]) -> None:
    d = decide(engines, dispatch(**spec))
    assert (d.admit, d.reason, d.engine, d.model) == expected, d.message
    assert d.message and "\n" not in d.message


def test_local_engine_without_local_models_capability_is_refused() -> None:
    engine = state("opencode", capabilities=["apiToolCalls"])
    d = decide([engine], dispatch(model="qwen3-coder"))
    assert (d.admit, d.reason) == (False, "LocalModelsUnsupported")
    assert "supportsToolUse: false" in d.message


def test_cloud_engine_without_credential_is_refused() -> None:
    raw = SPECS["claude"].model_copy(update={"credential": None})
    d = decide([EngineState("claude", raw, True)], dispatch(engine="claude"))
    assert (d.admit, d.reason) == (False, "CredentialMissing")


def test_ship_needs_approval_and_source() -> None:
    spec = dispatch(phase="ship", source={"dispatch": "a"})
    assert decide(ALL_PRESENT, spec, source_succeeded=True).reason == "ApprovalRequired"
    assert decide(ALL_PRESENT, spec, source_succeeded=False).reason == "SourceNotReady"
    approved = dispatch(phase="ship", source={"dispatch": "a"}, approval={"approvedBy": "alice"})
    d = decide(ALL_PRESENT, approved, source_succeeded=True)
    assert d.admit and d.text_only


def test_review_is_text_generation_on_the_local_model_service() -> None:
    spec = dispatch(phase="review", source={"dispatch": "a"})
    d = decide(NONE_PRESENT, spec, source_succeeded=True)  # no engine binary needed to review text
    assert (d.admit, d.text_only, d.engine, d.model) == (True, True, "opencode", "qwen3-coder")
    cloud = decide(ALL_PRESENT, dispatch(phase="review", source={"dispatch": "a"}, engine="claude"),
                   source_succeeded=True)
    assert (cloud.admit, cloud.reason) == (False, "NoLocalModelService")


def test_engine_without_models_and_no_model_given() -> None:
    bare = state("opencode", models=[])
    d = decide([bare], dispatch(engine="opencode"))
    assert (d.admit, d.reason, d.engine) == (False, "NoModel", "opencode")


@pytest.mark.parametrize(("mode", "model", "expected"), [
    ("auto", "qwen3-coder", True),  # supportsToolUse: false
    ("auto", "unknown-model", True),
    ("off", "qwen3-coder", False),
    ("on", "qwen3-coder", True),
])
def test_tool_call_repair_choice(mode: str, model: str, expected: bool) -> None:
    d: GateDecision = decide([state("opencode", toolCallRepair=mode)], dispatch(model=model))
    assert d.admit and d.tool_call_repair is expected


def test_repair_off_for_models_with_api_tool_use() -> None:
    engine = state("opencode", models=[{"id": "qwen2.5-coder", "supportsToolUse": True}])
    assert decide([engine], dispatch(model="qwen2.5-coder")).tool_call_repair is False


def test_detection_prefers_present_local_defaults() -> None:
    other_local = EngineState("alt", SPECS["opencode"].model_copy(update={"bake_in_default": False}), True)
    absent_default = state("opencode", present=False)
    assert detect_engine([other_local, absent_default], "qwen3-coder") is other_local
    assert detect_engine([other_local, state("opencode")], "qwen3-coder").name == "opencode"  # type: ignore[union-attr]
    assert detect_engine([state("claude")], None) is None
