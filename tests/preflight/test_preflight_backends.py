"""Each backend x each outcome, against a scripted server on 127.0.0.1 speaking that backend's shapes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from buildstudio.adapters.modelservice.probe import probe
from buildstudio.core.observation import Backend, ContextSource, FailureKind, ProbeTarget
from buildstudio.core.preflight import ConditionStatus, Reason, decide
from tests.preflight.scripted import Reply, ServeFn, closed_port, load_backend, scenario_routes

BACKENDS = ["dmr", "ollama", "vllm", "sglang", "llamacpp", "lmstudio", "llamacpp-python", "openai"]
R = Reason
S = ContextSource


@dataclass(frozen=True)
class Case:
    backend: str
    scenario: str
    model: str
    reason: Reason
    allocated: int | None  # what the observation must report as allocated
    source: ContextSource | None
    trained: int | None = None
    matched: str | None = None  # defaults to `model`
    override: int | None = None  # declared context passed to decide()

    def __str__(self) -> str:
        return f"{self.backend}-{self.scenario}-{self.reason.value}"


QWEN_HF = "Qwen/Qwen3-Coder-30B-A3B-Instruct"
CONTEXT_CASES = [
    Case("vllm", "ready", "qwen3-coder", R.READY, 131072, S.VLLM_MAX_MODEL_LEN),
    Case("vllm", "below", "qwen3-coder", R.CONTEXT_BELOW_FLOOR, 32768, S.VLLM_MAX_MODEL_LEN),
    Case("vllm", "small", "qwen3-coder", R.CONTEXT_TOO_SMALL, 8192, S.VLLM_MAX_MODEL_LEN),
    Case("vllm", "unknown", "qwen3-coder", R.CONTEXT_UNKNOWN, None, None),
    Case("sglang", "ready", QWEN_HF, R.READY, 65536, S.SGLANG_MAX_MODEL_LEN),
    Case("sglang", "small", QWEN_HF, R.CONTEXT_TOO_SMALL, 4096, S.SGLANG_MAX_MODEL_LEN),
    Case("sglang", "unknown", QWEN_HF, R.CONTEXT_UNKNOWN, None, None),
    Case("llamacpp", "ready", "qwen3-coder", R.READY, 131072, S.LLAMACPP_PROPS, trained=262144),
    Case("llamacpp", "small", "qwen3-coder", R.CONTEXT_TOO_SMALL, 4096, S.LLAMACPP_PROPS, trained=262144),
    Case("llamacpp", "unknown", "qwen3-coder", R.CONTEXT_UNKNOWN, None, None, trained=262144),
    # llama-server single-model mode answers to any name: the one listed model is the match.
    Case("llamacpp", "ready", "any-name", R.READY, 131072, S.LLAMACPP_PROPS, 262144, matched="qwen3-coder"),
    Case("ollama", "ready", "qwen3-coder", R.READY, 65536, S.OLLAMA_PS, matched="qwen3-coder:latest"),
    Case("ollama", "small", "qwen3-coder", R.CONTEXT_TOO_SMALL, 4096, S.OLLAMA_PS, matched="qwen3-coder:latest"),
    Case("ollama", "unknown", "qwen3-coder", R.CONTEXT_UNKNOWN, None, None, 262144, "qwen3-coder:latest"),
    Case(
        "ollama",
        "modelfile",
        "qwen3-coder-32k",
        R.CONTEXT_BELOW_FLOOR,
        32768,
        S.OLLAMA_MODELFILE,
        262144,
        matched="qwen3-coder-32k:latest",
    ),
    Case("dmr", "ready", "qwen3-coder", R.READY, 131072, S.DMR_CONFIGURE, matched="ai/qwen3-coder:latest"),
    Case("dmr", "small", "ai/qwen3-coder", R.CONTEXT_TOO_SMALL, 4096, S.DMR_PACKAGED, matched="ai/qwen3-coder:latest"),
    Case("dmr", "unknown", "qwen3-coder", R.CONTEXT_UNKNOWN, None, None, 262144, "ai/qwen3-coder:latest"),
    Case("lmstudio", "ready", "qwen/qwen3-coder-30b", R.READY, 65536, S.LMSTUDIO_LOADED, trained=262144),
    Case("lmstudio", "small", "qwen/qwen3-coder-30b", R.CONTEXT_TOO_SMALL, 4096, S.LMSTUDIO_LOADED, 262144),
    Case("lmstudio", "unknown", "qwen/qwen3-coder-30b", R.CONTEXT_UNKNOWN, None, None, trained=262144),
    # llama-cpp-python and generic servers report no context: only a declared one can decide.
    Case("llamacpp-python", "ready", "gemma3-270m", R.READY, None, None, override=131072),
    Case("llamacpp-python", "ready", "gemma3-270m", R.CONTEXT_TOO_SMALL, None, None, override=4096),
    Case("llamacpp-python", "ready", "gemma3-270m", R.CONTEXT_UNKNOWN, None, None),
    Case("openai", "ready", "coder-large", R.READY, None, None, override=65536),
    Case("openai", "ready", "coder-large", R.CONTEXT_TOO_SMALL, None, None, override=8192),
    Case("openai", "ready", "coder-large", R.CONTEXT_UNKNOWN, None, None),
]
STATUS = {
    R.READY: (ConditionStatus.TRUE, True, False),
    R.CONTEXT_BELOW_FLOOR: (ConditionStatus.TRUE, True, True),
    R.CONTEXT_UNKNOWN: (ConditionStatus.UNKNOWN, True, True),
    R.CONTEXT_TOO_SMALL: (ConditionStatus.FALSE, False, False),
}


def target_for(backend: str, url: str, **kw: float) -> ProbeTarget:
    return ProbeTarget(base_url=url + load_backend(backend)["basePath"], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CONTEXT_CASES, ids=str)
async def test_context_verdicts(serve: ServeFn, case: Case) -> None:
    server = await serve(scenario_routes(case.backend, case.scenario))
    obs = await probe(target_for(case.backend, server.url), case.model)
    verdict = decide(obs, context_override=case.override)

    assert obs.reachable and obs.failure is None and obs.http_status == 200
    assert obs.backend is Backend(case.backend), obs.backend_evidence
    assert obs.model_present is True
    assert obs.matched_id == (case.matched or case.model)
    assert obs.context.allocated == case.allocated
    assert obs.context.allocated_source == case.source
    assert obs.context.trained == case.trained
    assert verdict.reason is case.reason, verdict.message
    status, admit, warning = STATUS[case.reason]
    assert (verdict.status, verdict.admit, verdict.warning) == (status, admit, warning)
    expected_config = case.allocated or (case.override if case.reason is not R.CONTEXT_UNKNOWN else None)
    assert verdict.context_for_config == expected_config
    for number in (case.allocated, case.override if case.allocated is None else None, case.trained):
        if number is not None:
            assert str(number) in verdict.message
    if case.reason is not R.READY:
        assert verdict.advice
    assert obs.latency_ms >= 0 and obs.duration_ms >= obs.latency_ms


ADVICE_FLAG = {
    "dmr": "docker model configure --context-size 65536",
    "ollama": "OLLAMA_CONTEXT_LENGTH=65536",
    "vllm": "--max-model-len 65536",
    "sglang": "--context-length 65536",
    "llamacpp": "-c 65536",
    "lmstudio": "--context-length 65536",
}


@pytest.mark.parametrize("backend", sorted(ADVICE_FLAG))
async def test_too_small_advice_names_the_backend_fix(serve: ServeFn, backend: str) -> None:
    case = next(c for c in CONTEXT_CASES if c.backend == backend and c.scenario == "small")
    server = await serve(scenario_routes(backend, "small"))
    verdict = decide(await probe(target_for(backend, server.url), case.model))
    assert ADVICE_FLAG[backend] in verdict.advice


@pytest.mark.parametrize("backend", BACKENDS)
async def test_model_missing(serve: ServeFn, backend: str) -> None:
    scenarios = load_backend(backend)["scenarios"]
    server = await serve(scenario_routes(backend, "missing" if "missing" in scenarios else "ready"))
    obs = await probe(target_for(backend, server.url), "no-such-model")
    verdict = decide(obs)
    listed = scenarios.get("missing", scenarios["ready"])[f"GET {load_backend(backend)['basePath']}/models"]
    listed_ids = [card["id"] for card in listed["json"]["data"]]

    assert obs.reachable and obs.model_present is False and obs.matched_id is None
    assert obs.models == listed_ids and obs.models_total == len(listed_ids)
    assert obs.context.allocated is None
    assert (verdict.reason, verdict.status, verdict.admit) == (R.MODEL_NOT_FOUND, ConditionStatus.FALSE, False)
    assert "no-such-model" in verdict.message and listed_ids[0] in verdict.message
    # Context routes are not asked for a model that is not there.
    assert not any(hit.startswith(("GET /props", "GET /api/ps", "GET /engines/_configure")) for hit in server.hits)


FAILURES = ["401", "500", "slow", "refused", "garbage", "not-a-list", "huge", "huge-declared"]
CONNECT, READ = 0.5, 0.3


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_endpoint_failures(serve: ServeFn, backend: str, failure: str) -> None:
    listing = f"GET {load_backend(backend)['basePath']}/models"
    replies = {
        "401": Reply(status=401, json={"error": {"message": "Invalid API key", "type": "invalid_request_error"}}),
        "500": Reply(status=500, text="Internal Server Error"),
        "slow": Reply(delay=5.0, json={"object": "list", "data": []}),
        "garbage": Reply(text="<html><body><h1>It works!</h1></body></html>"),
        "not-a-list": Reply(json={"status": "ok"}),
        "huge": Reply(endless=True),
        "huge-declared": Reply(declared_length=10 * 1024**3),
    }
    routes = scenario_routes(backend, "ready")
    if failure in replies:
        routes[listing] = replies[failure]
    server = await serve(routes)
    url = f"http://127.0.0.1:{closed_port()}" if failure == "refused" else server.url
    target = target_for(backend, url, connect_timeout=CONNECT, read_timeout=READ)

    started = time.monotonic()
    obs = await probe(target, "qwen3-coder")
    elapsed = time.monotonic() - started
    verdict = decide(obs)

    assert not verdict.admit and verdict.status is ConditionStatus.FALSE
    assert obs.backend is None and obs.models == []
    assert elapsed < CONNECT + READ + 0.5, elapsed  # every failure is answered within the timeouts
    expected = {
        "401": (R.AUTH_REQUIRED, FailureKind.HTTP_STATUS, 401, True),
        "500": (R.ENDPOINT_ERROR, FailureKind.HTTP_STATUS, 500, True),
        "slow": (R.ENDPOINT_UNREACHABLE, FailureKind.TIMEOUT, None, False),
        "refused": (R.ENDPOINT_UNREACHABLE, FailureKind.REFUSED, None, False),
        "garbage": (R.ENDPOINT_ERROR, FailureKind.BAD_BODY, None, True),
        "not-a-list": (R.ENDPOINT_ERROR, FailureKind.BAD_BODY, None, True),
        "huge": (R.ENDPOINT_ERROR, FailureKind.TOO_LARGE, None, True),
        "huge-declared": (R.ENDPOINT_ERROR, FailureKind.TOO_LARGE, None, True),
    }[failure]
    assert (verdict.reason, obs.failure, obs.http_status, obs.reachable) == expected, obs.detail
    if failure in ("401", "500"):
        assert f"HTTP {obs.http_status}" in verdict.message
    if failure == "slow":
        assert elapsed >= READ  # it did wait for the read timeout, no longer
    if failure == "huge":
        limit = target.max_body_bytes
        assert f"exceeds {limit} bytes" in obs.detail
        await asyncio.wait_for(server.endless_done.wait(), 5)  # the client hung up ...
        assert server.bytes_sent < limit + 64 * 1024 * 1024  # ... long before the server's cap
    if failure == "huge-declared":
        assert "Content-Length 10737418240" in obs.detail
