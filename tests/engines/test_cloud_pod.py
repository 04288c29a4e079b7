"""The sandbox pod of a cloud engine: its credential Secret is mounted into the relay container only;
the relay speaks the engine's vendor protocol (``--engine``) towards the vendor's API."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.core import manifests as mf
from buildstudio.core.settings import SandboxDefaults
from buildstudio.engines.adapters import adapter_for


def _pod(engine: str, **kw: Any) -> dict[str, dict[str, Any]]:
    req = mf.SandboxRequest(
        owner=mf.Owner(name="d1", uid="u1", namespace="team"),
        attempt=1,
        engine=mf.EngineRuntime(
            name=engine,
            engine=engine,
            endpoint="cloud",
            credential=mf.SecretKey(f"buildstudio-{engine}", "api-key"),
            credential_env="X_API_KEY",
        ),
        repo_url="https://git.example.com/r.git",
        model_base_url=kw.pop("model_base_url", ""),
        repo_credentials=mf.SecretKey("git-token", "token"),
        **kw,
    )
    pod = mf.sandbox_pod(req, SandboxDefaults())
    spec = pod["spec"]
    containers = {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}
    containers["_volumes"] = {"list": spec["volumes"]}
    return containers


@pytest.mark.parametrize("engine", ["claude", "codex", "grok"])
def test_the_cloud_credential_is_mounted_in_the_relay_only(engine: str) -> None:
    cs = _pod(engine)
    volumes = {v["name"]: v for v in cs.pop("_volumes")["list"]}
    assert volumes["model-credential"]["secret"]["secretName"] == f"buildstudio-{engine}"
    holders = [n for n, c in cs.items() if any(m["name"] == "model-credential" for m in c["volumeMounts"])]
    assert holders == ["relay"]
    relay = cs["relay"]["command"]
    adapter = adapter_for(engine)
    assert adapter is not None
    assert relay[relay.index("--upstream") + 1] == adapter.vendor_base_url  # https: no plaintext needed
    assert relay[relay.index("--engine") + 1] == engine
    assert "--api-key-file" in relay
    for c in cs.values():  # no Secret reaches any container as an environment variable
        assert all("valueFrom" not in e for e in c["env"])
    assert not any("credential" in m["name"] for m in cs["agent"]["volumeMounts"])


def test_a_model_service_url_given_for_a_cloud_engine_wins() -> None:
    relay = _pod("grok", model_base_url="https://grok-proxy.example.com/v1")["relay"]["command"]
    assert relay[relay.index("--upstream") + 1] == "https://grok-proxy.example.com/v1"


def test_opencode_pods_are_unchanged() -> None:
    req = mf.SandboxRequest(
        owner=mf.Owner(name="d1", uid="u1", namespace="team"),
        attempt=1,
        engine=mf.EngineRuntime(name="opencode"),
        repo_url="https://git.example.com/r.git",
        model_base_url="https://models.example.com/v1",
    )
    relay = next(c for c in mf.sandbox_pod(req, SandboxDefaults())["spec"]["initContainers"] if c["name"] == "relay")
    assert "--engine" not in relay["command"]
    assert relay["command"][relay["command"].index("--upstream") + 1] == "https://models.example.com/v1"
