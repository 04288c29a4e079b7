"""The sandbox of one attempt (``core.sandbox_request``): the request ``manifests.sandbox_pod``
builds the pod from, and the pod's ConfigMap and egress policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core.gate import EngineState
from buildstudio.core.sandbox_request import (
    build_sandbox_request,
    model_upstream,
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
    # The relay forwards to the vendor's API: the one model destination (relay --upstream, egress).
    assert req.model_base_url == "https://api.anthropic.com/v1"
    assert req.model_api_key is None and req.repo_credentials is None


@pytest.mark.parametrize(
    ("raw", "upstream"),
    [
        (CLOUD, "https://api.anthropic.com/v1"),
        ({**CLOUD, "engine": "codex"}, "https://api.openai.com/v1"),
        ({**CLOUD, "engine": "grok"}, "https://api.x.ai/v1"),
        # A cloud engine given a model service (a proxy, or the local service) goes there instead.
        ({**CLOUD, "engine": "grok", "modelService": {"baseURL": "http://m:1/v1"}}, "http://m:1/v1"),
        (LOCAL, "http://m:1/v1"),
        ({**CLOUD, "engine": "someday"}, ""),  # no adapter: no destination (the gate refuses it)
    ],
)
def test_model_upstream(raw: dict[str, Any], upstream: str) -> None:
    assert model_upstream(BuildEngineSpec.model_validate(raw)) == upstream


@pytest.mark.parametrize("engine", ["claude", "codex", "grok"])
def test_a_cloud_engine_s_runner_json_names_it_and_its_vendor(engine: str) -> None:
    d = dispatch()
    st = state({**CLOUD, "engine": engine, "models": [{"id": "m1", "supportsToolUse": True}]}, engine)
    req = build_sandbox_request(d, st, 1)
    launch = m.Launch(attempt=1, engine=engine, model="m1", context=None)
    cm, _ = sandbox_children_for(d, req, st, launch, POLICY)
    runner = json.loads(cm["data"]["runner.json"])
    assert (runner["engine"], runner["model"], runner["baseUrl"]) == (engine, "m1", model_upstream(st.spec))
    assert runner["baseUrl"].startswith("https://") and runner["relay"] is False
    assert "apiKeyEnv" not in runner  # the key is the relay's, from a Secret volume, never an env name here
    relay = next(c for c in sandbox_pod_for(d, req, st, launch, SandboxDefaults())["spec"]["initContainers"]
                 if c["name"] == "relay")  # fmt: skip
    assert relay["command"][relay["command"].index("--upstream") + 1] == runner["baseUrl"]


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
    assert runner["engine"] == "opencode"


def test_a_text_phase_has_the_text_pod_and_no_relay_repair() -> None:
    d = dispatch(phase="plan", repo=None)
    engine = state(LOCAL)
    req = build_sandbox_request(d, engine, 1)
    assert sandbox_kind("plan") == "text" and sandbox_kind("build") == "build"
    assert sandbox_pod_for(d, req, engine, LAUNCH, SandboxDefaults()) == mf.sandbox_pod(
        req, SandboxDefaults(), phase="text", relay_repair=False
    )
