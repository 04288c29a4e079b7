"""The preflight verdict (`core/preflight.py`): observations built directly, every boundary and rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from buildstudio.core.observation import Backend, ContextReport, ContextSource, FailureKind, Observation
from buildstudio.core.preflight import ConditionStatus, Reason, decide


def ready_obs(allocated: int | None, backend: Backend = Backend.VLLM, trained: int | None = None) -> Observation:
    return Observation(
        base_url="http://127.0.0.1:8000/v1",
        model="qwen3-coder",
        reachable=True,
        http_status=200,
        backend=backend,
        models=["qwen3-coder"],
        models_total=1,
        model_present=True,
        matched_id="qwen3-coder",
        context=ContextReport(
            allocated=allocated,
            allocatedSource=ContextSource.VLLM_MAX_MODEL_LEN if allocated else None,
            trained=trained,
            trainedSource=ContextSource.LLAMACPP_TRAINED if trained else None,
        ),
        latency_ms=3,
        observed_at=datetime(2026, 11, 25, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("allocated", "reason", "admit"),
    [
        (16383, Reason.CONTEXT_TOO_SMALL, False),
        (16384, Reason.CONTEXT_BELOW_FLOOR, True),
        (65535, Reason.CONTEXT_BELOW_FLOOR, True),
        (65536, Reason.READY, True),
    ],
)
def test_floor_boundaries(allocated: int, reason: Reason, admit: bool) -> None:
    verdict = decide(ready_obs(allocated))
    assert (verdict.reason, verdict.admit, verdict.context_for_config) == (reason, admit, allocated)
    assert str(allocated) in verdict.message and "\n" not in verdict.message


def test_custom_floor_and_minimum() -> None:
    assert decide(ready_obs(32768), floor=32768).reason is Reason.READY
    assert decide(ready_obs(32768), floor=131072, hard_minimum=65536).reason is Reason.CONTEXT_TOO_SMALL


def test_measured_context_wins_over_a_declared_override() -> None:
    verdict = decide(ready_obs(4096), context_override=131072)
    assert (verdict.reason, verdict.context_for_config) == (Reason.CONTEXT_TOO_SMALL, 4096)


def test_trained_maximum_alone_is_never_ready_and_never_refused() -> None:
    verdict = decide(ready_obs(None, Backend.LLAMACPP, trained=262144))
    assert (verdict.status, verdict.reason) == (ConditionStatus.UNKNOWN, Reason.CONTEXT_UNKNOWN)
    assert verdict.admit and verdict.warning and verdict.context_for_config is None
    assert "trained max 262144" in verdict.message and "-c 65536" in verdict.advice


def test_dmr_unknown_mentions_the_4096_default() -> None:
    obs = ready_obs(None, Backend.DMR)
    obs.context.assumed_default = 4096
    verdict = decide(obs)
    assert verdict.reason is Reason.CONTEXT_UNKNOWN and "engine default 4096" in verdict.message
    assert "docker model configure --context-size 65536 qwen3-coder" in verdict.advice


def test_ollama_advice_bakes_num_ctx() -> None:
    verdict = decide(ready_obs(4096, Backend.OLLAMA))
    assert "PARAMETER num_ctx 65536" in verdict.advice and "OLLAMA_CONTEXT_LENGTH=65536" in verdict.advice


def failed(kind: FailureKind, status: int | None = None) -> Observation:
    return Observation(
        base_url="http://127.0.0.1:1/v1",
        model="m",
        reachable=kind not in (FailureKind.REFUSED, FailureKind.DNS, FailureKind.TIMEOUT),
        failure=kind,
        http_status=status,
        detail="x",
        observed_at=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        (FailureKind.REFUSED, None, Reason.ENDPOINT_UNREACHABLE),
        (FailureKind.DNS, None, Reason.ENDPOINT_UNREACHABLE),
        (FailureKind.TLS, None, Reason.ENDPOINT_UNREACHABLE),
        (FailureKind.CONNECT, None, Reason.ENDPOINT_UNREACHABLE),
        (FailureKind.HTTP_STATUS, 401, Reason.AUTH_REQUIRED),
        (FailureKind.HTTP_STATUS, 403, Reason.AUTH_REQUIRED),
        (FailureKind.HTTP_STATUS, 404, Reason.ENDPOINT_ERROR),
        (FailureKind.HTTP_STATUS, 503, Reason.ENDPOINT_ERROR),
        (FailureKind.PROTOCOL, None, Reason.ENDPOINT_ERROR),
    ],
)
def test_failures_refuse(kind: FailureKind, status: int | None, reason: Reason) -> None:
    verdict = decide(failed(kind, status))
    assert (verdict.reason, verdict.status, verdict.admit) == (reason, ConditionStatus.FALSE, False)
    assert verdict.advice and verdict.to_condition()["type"] == "ModelReady"


def test_verdict_json_is_camel_case() -> None:
    dumped = decide(ready_obs(65536)).model_dump(mode="json", by_alias=True)
    assert dumped["contextForConfig"] == 65536 and dumped["reason"] == "Ready" and dumped["status"] == "True"


def test_condition_message_is_stable_across_probes() -> None:
    # The operator rewrites the condition on every probe; latency/time must not change its text.
    first, second = ready_obs(131072), ready_obs(131072)
    second.latency_ms, second.observed_at = 250, datetime(2026, 11, 26, tzinfo=UTC)
    assert decide(first).to_condition() == decide(second).to_condition()
