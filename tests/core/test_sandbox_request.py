"""The sandbox of one attempt (``core.sandbox_request``): the request ``manifests.sandbox_pod``
builds the pod from, and the pod's ConfigMap and egress policy."""

from __future__ import annotations

from typing import Any

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core.gate import EngineState
from buildstudio.core.sandbox_request import (
    build_sandbox_request,
    owner_of,
    sandbox_children_for,
    sandbox_kind,
    sandbox_pod_for,
)
from buildstudio.core.settings import SandboxDefaults
from tests.core.test_machine import dispatch

LOCAL: dict[str, Any] = {
    "engine": "opencode",
    "endpoint": "local",
    "version": "1",
    "command": ["opencode", "run"],
    "image": "engine:1",
    "modelService": {"baseURL": "http://m:1/v1", "apiKeySecret": {"name": "model-key", "key": "token"}},
    "models": [{"id": "qwen3-coder", "supportsToolUse": False}],
}
CLOUD: dict[str, Any] = {
    "engine": "claude",
    "endpoint": "cloud",
    "version": "1",
    "command": ["claude"],
    "credential": {"secretRef": {"name": "anthropic", "key": "apiKey"}, "env": "ANTHROPIC_API_KEY"},
}
LAUNCH = m.Launch(attempt=2, engine="opencode", model="qwen3-coder", context=65536)
POLICY = {"kind": "NetworkPolicy", "metadata": {"name": "p"}}


def state(raw: dict[str, Any], name: str = "opencode") -> EngineState:
    return EngineState(name, BuildEngineSpec.model_validate(raw), present=True)


def test_the_request_of_a_local_build_with_its_credentials() -> None:
    repo = {"url": "https://example.com/r.git", "credentialsSecret": {"name": "git-token", "key": "token"}}
    d = dispatch(repo=repo, sandbox={"runtimeClassName": "gvisor"})
    req = build_sandbox_request(d, state(LOCAL), 2)
    assert req == mf.SandboxRequest(
        owner=mf.Owner(name="fix-1", uid="u-1", namespace="dev"),
        attempt=2,
        engine=mf.EngineRuntime(name="opencode", engine="opencode", endpoint="local", image="engine:1"),
        repo_url="https://example.com/r.git",
        model_base_url="http://m:1/v1",
        sandbox=d.spec.sandbox.to_api() if d.spec.sandbox else {},
        repo_credentials=mf.SecretKey("git-token", "token"),
        model_api_key=mf.SecretKey("model-key", "token"),
    )
    assert req.owner == owner_of(d) and req.sandbox["runtimeClassName"] == "gvisor"


def test_the_request_of_a_cloud_engine_carries_its_credential_only() -> None:
    req = build_sandbox_request(dispatch(), state(CLOUD, "claude"), 1)
    assert req.engine == mf.EngineRuntime(
        name="claude",
        engine="claude",
        endpoint="cloud",
        image=None,
        credential=mf.SecretKey("anthropic", "apiKey"),
        credential_env="ANTHROPIC_API_KEY",
    )
    assert req.model_base_url == "" and req.model_api_key is None and req.repo_credentials is None


def test_the_pod_and_its_companions() -> None:
    d = dispatch()
    engine = state(LOCAL)
    req = build_sandbox_request(d, engine, LAUNCH.attempt)
    defaults = SandboxDefaults()
    # The model has no tool use, so the relay repairs tool calls in a build.
    assert sandbox_pod_for(d, req, engine, LAUNCH, defaults) == mf.sandbox_pod(
        req, defaults, phase="build", relay_repair=True
    )
    cm, policy = sandbox_children_for(d, req, engine, LAUNCH, POLICY)
    runner, config = mf.sandbox_files(
        d.spec, model="qwen3-coder", base_url="http://m:1/v1", context=65536, relay=True, review=None
    )
    assert cm == mf.config_map(req.owner, runner, config) and policy == POLICY


def test_a_text_phase_has_the_text_pod_and_no_relay_repair() -> None:
    d = dispatch(phase="plan", repo=None)
    engine = state(LOCAL)
    req = build_sandbox_request(d, engine, 1)
    assert sandbox_kind("plan") == "text" and sandbox_kind("build") == "build"
    assert sandbox_pod_for(d, req, engine, LAUNCH, SandboxDefaults()) == mf.sandbox_pod(
        req, SandboxDefaults(), phase="text", relay_repair=False
    )
