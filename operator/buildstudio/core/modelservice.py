"""What the operator concludes from an engine's model service: what to probe, the preflight's
verdict for one of its models, that verdict flattened for the state machine, and the engine's
``status.modelService`` (the observation itself is ``adapters/modelservice``' to make)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from buildstudio.core import conditions as c
from buildstudio.core.gate import EngineState
from buildstudio.core.machine import ModelCheck
from buildstudio.core.observation import Backend, Observation, ProbeTarget
from buildstudio.core.preflight import Reason, Verdict, decide

MODEL_LIST_LIMIT = 32  # model ids kept in an engine's status


def probe_target(engine: EngineState, api_key: str | None = None) -> ProbeTarget | None:
    """The engine's model service as the probe addresses it; None for a cloud engine."""
    ms = engine.spec.model_service
    if ms is None:
        return None
    try:
        backend = Backend(ms.backend)
    except ValueError:
        backend = Backend.AUTO
    return ProbeTarget(base_url=ms.base_url, backend=backend, api_key=api_key)


def preflight_verdict(engine: EngineState, model: str, obs: Observation) -> Verdict:
    """The preflight's verdict for ``model`` under the engine's context floors and overrides."""
    entry = engine.model(model)
    return decide(
        obs,
        floor=engine.spec.context_floor,
        hard_minimum=engine.spec.hard_minimum_context,
        context_override=entry.context_override if entry else None,
    )


def model_check(verdict: Verdict, obs: Observation) -> ModelCheck:
    """The preflight's verdict flattened for the state machine."""
    ctx = obs.context
    if ctx.allocated_source is not None:
        source = ctx.allocated_source.value
    elif verdict.context_for_config is not None:
        source = "BuildEngine spec.models[].contextOverride"  # the server did not report it
    else:
        source = ""
    return ModelCheck(
        admit=verdict.admit,
        reason=verdict.reason.value,
        message=verdict.message + (f" — {verdict.advice}" if verdict.advice and not verdict.admit else ""),
        warning=(verdict.message + (f" — {verdict.advice}" if verdict.advice else "")) if verdict.warning else "",
        retryable=verdict.reason == Reason.ENDPOINT_UNREACHABLE,
        context=verdict.context_for_config,
        backend=obs.backend.value if obs.backend is not None else "",
        matched_model=obs.matched_id or "",
        context_source=source,
    )


def check_model(engine: EngineState, model: str, obs: Observation) -> ModelCheck:
    """A dispatch's preflight: the verdict for its model on this observation, for the machine."""
    return model_check(preflight_verdict(engine, model, obs), obs)


def model_service_status(
    status: Mapping[str, Any], engine: EngineState, model: str, obs: Observation, now: datetime
) -> dict[str, Any]:
    """The engine's status with ``modelService`` and the ModelServiceReady condition from one
    observation of its strongest model."""
    verdict = preflight_verdict(engine, model, obs)
    out = dict(status)
    out["modelService"] = {
        "reachable": obs.reachable,
        "backend": obs.backend.value if obs.backend is not None else "",
        "models": obs.models[:MODEL_LIST_LIMIT],
        "context": obs.context.allocated,
        "contextSource": obs.context.allocated_source.value if obs.context.allocated_source else "",
        "reason": verdict.reason.value,
        "message": c.one_line(verdict.message),
        "latencyMs": obs.latency_ms,
        "observedAt": c.timestamp(now),
    }
    out["conditions"] = c.set_condition(
        status.get("conditions"),
        c.MODEL_SERVICE_READY,
        "True" if verdict.admit else "False",
        verdict.reason.value,
        verdict.message,
        now=now,
        generation=None,
    )
    return out
