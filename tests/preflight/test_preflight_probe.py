"""Probe details: transport failure kinds, auth header, hints, bounds; pure backend functions."""

from __future__ import annotations

import json
import socket
import time

import pytest

from buildstudio.adapters.modelservice.probe import probe
from buildstudio.core import backends
from buildstudio.core.observation import MAX_MODELS, Backend, FailureKind, ProbeTarget
from buildstudio.core.preflight import Reason, decide
from tests.preflight.scripted import Reply, ScriptedServer, ServeFn, scenario_routes


async def test_tls_to_a_plain_http_port_is_a_tls_failure(serve: ServeFn) -> None:
    server = await serve(scenario_routes("vllm", "ready"))
    obs = await probe(ProbeTarget(base_url=f"https://127.0.0.1:{server.port}/v1"), "qwen3-coder")
    assert (obs.failure, obs.reachable) == (FailureKind.TLS, False)
    assert decide(obs).reason is Reason.ENDPOINT_UNREACHABLE


async def test_blackholed_connect_times_out_within_connect_timeout() -> None:
    # A listener whose accept queue is full and never drained: further SYNs are dropped on Linux.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            started = time.monotonic()
            obs = await probe(ProbeTarget(base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=0.5), "m")
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert obs.failure is FailureKind.TIMEOUT, obs.detail
    assert 0.4 <= elapsed < 1.5
    assert decide(obs).reason is Reason.ENDPOINT_UNREACHABLE


@pytest.mark.parametrize("base_url", ["ftp://127.0.0.1:1/v1", "http://127.0.0.1:99999/v1", "127.0.0.1:8000/v1"])
async def test_invalid_url_is_an_endpoint_error(base_url: str) -> None:
    obs = await probe(ProbeTarget(base_url=base_url), "m")
    assert obs.failure is FailureKind.INVALID_URL, obs.detail
    assert decide(obs).reason is Reason.ENDPOINT_ERROR


async def test_api_key_is_sent_as_bearer_token() -> None:
    server = ScriptedServer(scenario_routes("vllm", "ready"), require_token="s3cret")
    await server.start()
    try:
        denied = await probe(ProbeTarget(base_url=server.url + "/v1"), "qwen3-coder")
        allowed = await probe(ProbeTarget(base_url=server.url + "/v1", api_key="s3cret"), "qwen3-coder")
    finally:
        await server.stop()
    assert decide(denied).reason is Reason.AUTH_REQUIRED
    assert decide(allowed).reason is Reason.READY
    assert "s3cret" not in repr(ProbeTarget(base_url="x", api_key="s3cret"))


async def test_hint_skips_identification(serve: ServeFn) -> None:
    server = await serve(scenario_routes("ollama", "ready"))
    obs = await probe(ProbeTarget(base_url=server.url + "/v1", backend=Backend.OLLAMA), "qwen3-coder")
    assert (obs.backend, obs.backend_evidence) == (Backend.OLLAMA, "backend hint")
    assert server.hits["GET /"] == 0 and server.hits["GET /api/ps"] == 1


async def test_ollama_identified_by_root_banner_when_owned_by_is_a_namespace(serve: ServeFn) -> None:
    routes = scenario_routes("ollama", "ready")
    routes["GET /v1/models"] = Reply(
        json={"object": "list", "data": [{"id": "hf.co/unsloth/qwen3-coder:q4", "owned_by": "hf.co"}]}
    )
    server = await serve(routes)
    obs = await probe(ProbeTarget(base_url=server.url + "/v1"), "hf.co/unsloth/qwen3-coder:q4")
    assert obs.backend is Backend.OLLAMA and "Ollama is running" in obs.backend_evidence


async def test_dmr_on_the_v1_alias(serve: ServeFn) -> None:
    routes = scenario_routes("dmr", "ready")
    routes["GET /v1/models"] = routes.pop("GET /engines/v1/models")
    server = await serve(routes)
    obs = await probe(ProbeTarget(base_url=server.url + "/v1"), "qwen3-coder")
    assert obs.backend is Backend.DMR and obs.context.allocated == 131072


async def test_failing_context_route_is_a_note_not_a_failure(serve: ServeFn) -> None:
    routes = scenario_routes("llamacpp", "unknown")
    routes["GET /props"] = Reply(status=500, text="boom")
    server = await serve(routes)
    obs = await probe(ProbeTarget(base_url=server.url + "/v1"), "qwen3-coder")
    assert obs.failure is None and obs.notes == ["GET /props: HTTP 500"]
    assert decide(obs).reason is Reason.CONTEXT_UNKNOWN


async def test_observation_stays_small_with_thousands_of_models(serve: ServeFn) -> None:
    cards = [{"id": f"org/model-{i}-" + "x" * 300, "owned_by": "vllm"} for i in range(3000)]
    server = await serve({"GET /v1/models": Reply(json={"object": "list", "data": cards})})
    obs = await probe(ProbeTarget(base_url=server.url + "/v1"), "org/model-2999-" + "x" * 300)
    status = obs.to_status()
    assert obs.model_present is True  # matched against all ids, not only the kept ones
    assert obs.models_total == 3000 and len(obs.models) == MAX_MODELS
    assert len(json.dumps(status)) < 16 * 1024
    assert status["modelsTotal"] == 3000 and "observedAt" in status and "baseUrl" in status


@pytest.mark.parametrize(
    ("base", "root"),
    [
        ("http://h:11434/v1", "http://h:11434"),
        ("http://h:12434/engines/v1/", "http://h:12434"),
        ("http://h:12434/engines/llama.cpp/v1", "http://h:12434"),
        ("http://h/prefix/v1", "http://h/prefix"),
        ("http://h:8000", "http://h:8000"),
    ],
)
def test_root_url(base: str, root: str) -> None:
    assert backends.root_url(base) == root


@pytest.mark.parametrize(
    ("backend", "name", "normalised"),
    [
        (Backend.DMR, "qwen3-coder", "ai/qwen3-coder:latest"),
        (Backend.DMR, "ai/qwen3-coder", "ai/qwen3-coder:latest"),
        (Backend.DMR, "hf.co/bartowski/model:Q4_K_M", "hf.co/bartowski/model:q4_k_m"),
        (Backend.OLLAMA, "qwen3-coder", "qwen3-coder:latest"),
        (Backend.OLLAMA, "registry.ollama.ai/library/qwen3-coder:30b", "qwen3-coder:30b"),
        (Backend.OLLAMA, "localhost:5000/me/model", "localhost:5000/me/model:latest"),
        (Backend.VLLM, "Qwen/Qwen3-Coder", "Qwen/Qwen3-Coder"),
        (Backend.LMSTUDIO, "Qwen/Qwen3-Coder-30B", "qwen/qwen3-coder-30b"),
    ],
)
def test_normalise_id(backend: Backend, name: str, normalised: str) -> None:
    assert backends.normalise_id(backend, name) == normalised


def test_vllm_names_are_exact() -> None:
    assert not backends.match_model(Backend.VLLM, "qwen3-coder:latest", ["qwen3-coder"]).present
    assert not backends.match_model(Backend.VLLM, "Qwen3-Coder", ["qwen3-coder"]).present


def test_positive_int_rejects_junk() -> None:
    assert [backends.positive_int(v) for v in (4096, "4096", 4096.0, 0, -1, True, "4k", None, 1.5)] == [
        4096, 4096, 4096, None, None, None, None, None, None,
    ]  # fmt: skip


async def test_slow_context_routes_share_one_budget(serve: ServeFn) -> None:
    routes = scenario_routes("ollama", "unknown")
    routes["GET /api/ps"].delay = 5.0
    routes["POST /api/show"].delay = 5.0
    server = await serve(routes)
    target = ProbeTarget(base_url=server.url + "/v1", connect_timeout=0.2, read_timeout=0.3)
    started = time.monotonic()
    obs = await probe(target, "qwen3-coder")
    elapsed = time.monotonic() - started
    assert elapsed < 0.2 + 2 * 0.3 + 0.3, elapsed  # connect + 2 * read, plus slack
    assert obs.failure is None and obs.context.allocated is None
    assert len(obs.notes) == 2 and all("timeout" in note for note in obs.notes)
    assert decide(obs).reason is Reason.CONTEXT_UNKNOWN


def test_target_accepts_backend_names_from_specs() -> None:
    assert ProbeTarget(base_url="http://h/v1", backend="ollama").backend is Backend.OLLAMA  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ProbeTarget(base_url="http://h/v1", backend="tgi")  # type: ignore[arg-type]
