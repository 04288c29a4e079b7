"""The pure preflight decision: Observation + floors → a `ModelReady` condition and fix advice.

Only an unreachable/erroring endpoint, a missing model, or an allocated context below the hard
minimum refuse a dispatch. A context that is merely below the advisory floor, or not knowable
from the server, is admitted with a warning (docs/model-endpoints.md §0.4, §2).
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

from buildstudio.core.observation import UNREACHABLE_KINDS, Backend, FailureKind, Observation, clip

DEFAULT_FLOOR = 65536  # Ollama's opencode integration doc: "64k or higher"
DEFAULT_HARD_MINIMUM = 16384  # opencode's first request is ~10k tokens (system prompt + tool schemas)


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(enum.StrEnum):
    READY = "Ready"
    ENDPOINT_UNREACHABLE = "EndpointUnreachable"
    AUTH_REQUIRED = "AuthRequired"
    ENDPOINT_ERROR = "EndpointError"
    MODEL_NOT_FOUND = "ModelNotFound"
    CONTEXT_TOO_SMALL = "ContextTooSmall"
    CONTEXT_BELOW_FLOOR = "ContextBelowFloor"
    CONTEXT_UNKNOWN = "ContextUnknown"


class Verdict(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    status: ConditionStatus
    reason: Reason
    message: str
    advice: str = ""
    admit: bool
    warning: bool = False
    context_for_config: int | None = Field(
        None,
        alias="contextForConfig",
        description="Write into opencode's limit.context (it cannot learn it).",
    )

    def to_condition(self) -> dict[str, str]:
        """The `ModelReady` condition body (without transition time, which the caller owns)."""
        return {
            "type": "ModelReady",
            "status": self.status.value,
            "reason": self.reason.value,
            "message": self.message,
        }


def _k(tokens: int) -> str:
    return f"{tokens} ({tokens / 1024:g}k)" if tokens % 1024 == 0 else str(tokens)


def context_advice(backend: Backend | None, model: str, wanted: int) -> str:
    """How to give `model` a context of `wanted` tokens on the server (opencode cannot set it)."""
    if backend is Backend.OLLAMA:
        return (
            f"Ollama ignores num_ctx over /v1: bake it into the model (Modelfile 'FROM {model}' + "
            f"'PARAMETER num_ctx {wanted}', then 'ollama create <name> -f Modelfile', or POST /api/create) or set "
            f"OLLAMA_CONTEXT_LENGTH={wanted} on the server and reload the model"
        )
    if backend is Backend.DMR:
        return (
            f"docker model configure --context-size {wanted} {model} (Compose: models.<x>.context_size), "
            f"or repackage: docker model package --from {model} --context-size {wanted} <new-name>"
        )
    if backend is Backend.VLLM:
        return f"restart vLLM with --max-model-len {wanted} (needs KV-cache memory for it)"
    if backend is Backend.SGLANG:
        return f"restart SGLang with --context-length {wanted}"
    if backend is Backend.LLAMACPP:
        return f"restart llama-server with -c {wanted} (and mind --parallel, which splits it across slots)"
    if backend is Backend.LLAMACPP_PYTHON:
        return f"restart llama_cpp.server with --n_ctx {wanted}"
    if backend is Backend.LMSTUDIO:
        return f"load the model with a larger context: lms load {model} --context-length {wanted}"
    return f"configure the server to allocate at least {wanted} tokens of context for {model}"


def _missing_advice(backend: Backend | None, model: str) -> str:
    if backend is Backend.OLLAMA:
        return f"ollama pull {model}, or use one of the listed ids"
    if backend is Backend.DMR:
        return f"docker model pull {model}, or use a listed id (DMR ids look like ai/<name>:<tag>)"
    if backend in (Backend.VLLM, Backend.SGLANG):
        return "use the server's --served-model-name (listed ids), or restart it serving this model"
    if backend in (Backend.LLAMACPP, Backend.LLAMACPP_PYTHON):
        return "use the listed id (the server's alias or GGUF path), or restart it with this model/alias"
    if backend is Backend.LMSTUDIO:
        return f"lms get {model}, or use one of the listed model keys"
    return "use one of the listed model ids"


def _failure(obs: Observation) -> Verdict:
    kind = obs.failure
    if kind in UNREACHABLE_KINDS:
        return Verdict(
            status=ConditionStatus.FALSE,
            reason=Reason.ENDPOINT_UNREACHABLE,
            message=clip(f"{obs.base_url} unreachable ({kind}): {obs.detail}"),
            advice="check the model service is running and that baseURL (ending in /v1; DMR /engines/v1) "
            "resolves and is allowed by network policy from the operator",
            admit=False,
        )
    if kind is FailureKind.HTTP_STATUS and obs.http_status in (401, 403):
        return Verdict(
            status=ConditionStatus.FALSE,
            reason=Reason.AUTH_REQUIRED,
            message=clip(f"{obs.base_url}/models answered HTTP {obs.http_status}: {obs.detail}"),
            advice="give the engine the model service's API key (LM Studio LM_API_TOKEN, vLLM --api-key) "
            "through its secret reference",
            admit=False,
        )
    advice = "check the server logs; a 404 usually means baseURL lacks /v1 (DMR: /engines/v1)"
    if kind is FailureKind.INVALID_URL:
        advice = "fix baseURL: an http(s) URL of the OpenAI base, e.g. http://ollama.models:11434/v1"
    if kind is FailureKind.TOO_LARGE:
        advice = "baseURL does not look like a model listing (body far too large); check it points at /v1"
    return Verdict(
        status=ConditionStatus.FALSE,
        reason=Reason.ENDPOINT_ERROR,
        message=clip(f"{obs.base_url}/models failed ({kind}): {obs.detail}"),
        advice=advice,
        admit=False,
    )


def decide(
    obs: Observation,
    *,
    floor: int = DEFAULT_FLOOR,
    hard_minimum: int = DEFAULT_HARD_MINIMUM,
    context_override: int | None = None,
) -> Verdict:
    """The `ModelReady` verdict for `obs`.

    `context_override` is the context the user declares for the model; it counts only when the server
    reports no allocated context, because a measured value is what the server will enforce.
    """
    if obs.failure is not None or not obs.reachable:
        return _failure(obs)
    backend, model = obs.backend, obs.matched_id or obs.model  # advice names the id the server knows
    if not obs.model_present:
        listed = ", ".join(obs.models[:5]) + (" …" if obs.models_total > 5 else "")
        return Verdict(
            status=ConditionStatus.FALSE,
            reason=Reason.MODEL_NOT_FOUND,
            message=clip(f"model {obs.model!r} not among the {obs.models_total} listed by {backend}: {listed}"),
            advice=_missing_advice(backend, model),
            admit=False,
        )
    ctx = obs.context
    where = f"{obs.matched_id} on {backend}"
    if ctx.allocated is not None:
        context, source = ctx.allocated, str(ctx.allocated_source)
    elif context_override is not None:
        context, source = context_override, "declared override"
    else:
        known = [f"trained max {_k(ctx.trained)} ({ctx.trained_source})"] if ctx.trained else []
        if ctx.assumed_default:
            known.append(f"engine default {_k(ctx.assumed_default)} applies unless configured")
        if backend is Backend.OLLAMA:
            known.append("Ollama's server default (OLLAMA_CONTEXT_LENGTH or 4k/32k/256k by VRAM) is not visible")
        return Verdict(
            status=ConditionStatus.UNKNOWN,
            reason=Reason.CONTEXT_UNKNOWN,
            message=clip(
                f"{where}: allocated context not reported ({'; '.join(known) or 'no context information'}); "
                f"floor {_k(floor)}"
            ),
            advice=context_advice(backend, model, floor) + "; or declare the context to skip this check",
            admit=True,
            warning=True,
        )
    measured = f"{where}: context {_k(context)} from {source}"
    if ctx.trained:
        measured += f", trained max {ctx.trained}"
    if context < hard_minimum:
        return Verdict(
            status=ConditionStatus.FALSE,
            reason=Reason.CONTEXT_TOO_SMALL,
            message=clip(f"{measured} < hard minimum {_k(hard_minimum)} (opencode's first request is ~10k)"),
            advice=context_advice(backend, model, floor),
            admit=False,
            context_for_config=context,
        )
    if context < floor:
        return Verdict(
            status=ConditionStatus.TRUE,
            reason=Reason.CONTEXT_BELOW_FLOOR,
            message=clip(f"{measured} < advisory floor {_k(floor)}; long tasks will compact or fail"),
            advice=context_advice(backend, model, floor),
            admit=True,
            warning=True,
            context_for_config=context,
        )
    return Verdict(
        status=ConditionStatus.TRUE,
        reason=Reason.READY,
        message=clip(f"{measured} >= floor {_k(floor)}"),  # no latency: a stable message avoids status churn
        admit=True,
        context_for_config=context,
    )
