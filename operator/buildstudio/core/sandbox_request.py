"""The sandbox of one attempt, from the dispatch, its engine and the machine's ``Launch``: the
``SandboxRequest`` that ``manifests.sandbox_pod`` turns into the pod, and the pod's companions
(the runner ConfigMap, then the egress policy the handler resolved).

The request's ``model_base_url`` is where the relay sidecar forwards the model calls, so the one
URL the egress policy names (``handlers/launch.py``): the engine's model service, else for a cloud
engine its vendor's API (``model_upstream``)."""

from __future__ import annotations

from typing import Any

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core import manifests as mf
from buildstudio.core.gate import EngineState, wants_repair
from buildstudio.core.machine import Dispatch, Launch
from buildstudio.core.settings import SandboxDefaults
from buildstudio.engines.adapters import adapter_for
from buildstudio.protocol.spec import ReviewInput

Manifest = dict[str, Any]


def owner_of(d: Dispatch) -> mf.Owner:
    """The dispatch as the owner of its children (garbage-collected with it)."""
    return mf.Owner(name=d.name, uid=d.uid, namespace=d.namespace)


def model_upstream(spec: BuildEngineSpec) -> str:
    """Where the sandbox's model calls go (pure): the engine's model service when it has one,
    else a cloud engine's vendor API (its adapter's ``vendor_base_url``), else nowhere ("")."""
    if spec.model_service is not None:
        return spec.model_service.base_url
    adapter = adapter_for(spec.engine) if spec.endpoint == "cloud" else None
    return adapter.vendor_base_url if adapter is not None else ""


def build_sandbox_request(d: Dispatch, engine: EngineState, attempt: int) -> mf.SandboxRequest:
    """What the sandbox pod of ``attempt`` is made of: the engine's runtime and credentials, the
    repository and its credentials, the model service and its key, the spec's sandbox overrides."""
    spec = engine.spec
    service = spec.model_service
    key_ref = service.api_key_secret if service is not None else None
    credential = None
    if spec.credential is not None:
        credential = mf.SecretKey(spec.credential.secret_ref.name, spec.credential.secret_ref.key)
    repo_creds = None
    if d.spec.repo is not None and d.spec.repo.credentials_secret is not None:
        ref = d.spec.repo.credentials_secret
        repo_creds = mf.SecretKey(ref.name, ref.key)
    return mf.SandboxRequest(
        owner=owner_of(d),
        attempt=attempt,
        engine=mf.EngineRuntime(
            name=engine.name,
            engine=spec.engine,
            endpoint=spec.endpoint,
            image=spec.image or None,
            credential=credential,
            credential_env=spec.credential.env if spec.credential else None,
        ),
        repo_url=d.spec.repo.url if d.spec.repo else "",
        model_base_url=model_upstream(spec),
        sandbox=d.spec.sandbox.to_api() if d.spec.sandbox else {},
        repo_credentials=repo_creds,
        model_api_key=mf.SecretKey(key_ref.name, key_ref.key) if key_ref is not None else None,
    )


def sandbox_kind(phase: str) -> str:
    """The pod's shape: a build (clone, agent, relay) or a text phase (one chat completion)."""
    return "build" if phase == "build" else "text"


def sandbox_pod_for(
    d: Dispatch, request: mf.SandboxRequest, engine: EngineState, launch: Launch, defaults: SandboxDefaults
) -> Manifest:
    """The attempt's pod; the relay repairs tool calls in a build when the engine wants it."""
    kind = sandbox_kind(d.spec.phase)
    repair = wants_repair(engine, launch.model)
    return mf.sandbox_pod(request, defaults, phase=kind, relay_repair=repair and kind == "build")


def sandbox_children_for(
    d: Dispatch,
    request: mf.SandboxRequest,
    engine: EngineState,
    launch: Launch,
    policy: Manifest,
    review: ReviewInput | None = None,
) -> list[Manifest]:
    """The pod's ConfigMap (runner.json naming the engine to start, opencode.json) and its egress
    ``policy``; ``review``: what a review reads of its source."""
    runner, config = mf.sandbox_files(
        d.spec,
        model=launch.model,
        base_url=request.model_base_url,
        context=launch.context,
        relay=wants_repair(engine, launch.model),
        review=review,
        engine=engine.spec.engine,
    )
    return [mf.config_map(request.owner, runner, config), policy]
