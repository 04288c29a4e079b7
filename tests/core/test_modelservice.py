"""What the operator concludes from a model service observation (``core.modelservice``)."""

from __future__ import annotations

from datetime import UTC, datetime

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core import modelservice as ms
from buildstudio.core.gate import EngineState
from buildstudio.core.observation import Backend, ContextReport, ContextSource, FailureKind, Observation

T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)


def engine(**service: object) -> EngineState:
    raw = {
        "engine": "opencode",
        "endpoint": "local",
        "version": "1",
        "command": ["opencode", "run"],
        "modelService": {"baseURL": "http://m:1/v1", **service},
        "models": [{"id": "q", "tier": "strong"}, {"id": "big", "contextOverride": 131072}],
    }
    return EngineState("opencode", BuildEngineSpec.model_validate(raw), present=True)


def obs(allocated: int | None, *, reachable: bool = True) -> Observation:
    return Observation(
        base_url="http://m:1/v1",
        model="q",
        reachable=reachable,
        failure=None if reachable else FailureKind.REFUSED,
        backend=Backend.VLLM if reachable else None,
        models=["q", "big"],
        model_present=reachable,
        matched_id="q" if reachable else None,
        context=ContextReport(
            allocated=allocated, allocatedSource=ContextSource.VLLM_MAX_MODEL_LEN if allocated else None
        ),
        latency_ms=4,
        observed_at=T0,
    )


def test_probe_target_of_a_local_engine_and_none_for_a_cloud_one() -> None:
    target = ms.probe_target(engine(backend="vllm"), "key")
    assert target is not None and target.base_url == "http://m:1/v1" and target.backend == Backend.VLLM
    assert target.api_key == "key"
    cloud = EngineState("c", engine().spec.model_copy(update={"model_service": None}), present=True)
    assert ms.probe_target(cloud) is None


def test_a_ready_model_is_admitted_with_its_context_and_source() -> None:
    check = ms.check_model(engine(), "q", obs(131072))
    assert check.admit and not check.retryable and check.context == 131072
    assert check.backend == "vllm" and check.matched_model == "q"
    assert check.context_source == ContextSource.VLLM_MAX_MODEL_LEN.value


def test_an_unreachable_service_is_retryable_and_not_admitted() -> None:
    check = ms.check_model(engine(), "q", obs(None, reachable=False))
    assert not check.admit and check.retryable and check.reason == "EndpointUnreachable"


def test_below_the_floor_is_admitted_with_a_warning() -> None:
    check = ms.check_model(engine(), "q", obs(32768))
    assert check.admit and check.warning and check.reason == "ContextBelowFloor"


def test_the_engine_status_names_the_observation_and_the_verdict() -> None:
    status = ms.model_service_status({"present": True}, engine(), "q", obs(131072), T0)
    assert status["present"] and status["modelService"]["reachable"] and status["modelService"]["latencyMs"] == 4
    assert status["modelService"]["reason"] == "Ready"
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("ModelServiceReady", "True", "Ready")
