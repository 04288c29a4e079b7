"""Fixtures of the operator-integration tests: the emulator, the kubelet, the real operator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest_asyncio

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core.settings import EgressSettings, SandboxDefaults, Settings
from buildstudio.handlers import build_registry
from tests.kube.client import BUILDDISPATCHES, BUILDENGINES, Kube, wait_for
from tests.kube.kopf_runner import KopfOperator
from tests.kube.kubelet import Kubelet, PodScript
from tests.kube.plugin import KopfOperatorFactory, k8s, kopf_operator, kubectl, kubelet  # noqa: F401  (fixtures)

MODEL = "qwen3-coder"
FAST = Settings(
    status_patch_interval=0.3,
    image_pull_grace_seconds=1.0,
    unschedulable_grace_seconds=1.0,
    result_grace_seconds=2.0,
    cancel_grace_seconds=5,
    preflight_interval=3.0,
    queue_poll_interval=0.3,
    # The schema's smallest runSeconds is 30: the backstop fires 27 s early so a test sees it in ~3 s.
    run_timeout_slack=-27.0,
    # No DNS here: the dispatches' remote (example.com) is reached through an admin allow-list
    # rather than resolved at launch (tests/operator/test_egress.py covers resolution).
    egress=EgressSettings(allow_cidrs=("0.0.0.0/0",)),
    # Every model service here is plain http on loopback (the refusal itself: test_trust_boundary.py).
    sandbox=SandboxDefaults(allow_plaintext_credentials=True),
)
WRITE_SCRIPT = [
    {"tool": "write", "args": {"filePath": "hello.py", "content": "print('hello')\n"}},
    {"text": "Added hello.py."},
]


def engine_object(base_url: str, *, max_running: int = 4, per_model: int = 2, context: int = 65536) -> dict[str, Any]:
    return {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildEngine",
        "metadata": {"name": "opencode"},
        "spec": {
            "engine": "opencode",
            "endpoint": "local",
            "capabilities": ["localModels", "apiToolCalls", "fileEdits", "shell"],
            "version": "1.18.33",
            "command": ["opencode", "run"],
            "versionCommand": ["opencode", "--version"],
            "modelService": {"baseURL": base_url, "backend": "auto"},
            "models": [{"id": MODEL, "tier": "strong", "supportsToolUse": True, "contextOverride": context}],
            "toolCallRepair": "off",
            "concurrency": {"maxRunning": max_running, "maxRunningPerModel": per_model},
        },
    }


def dispatch_object(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "add a hello.py", "repo": {"url": "https://example.com/r.git"}, "model": MODEL}
    body.update(spec)
    return {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildDispatch",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }


def is_probe(pod: Any) -> bool:
    return (pod.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component") == "probe"


@dataclass
class Cluster:
    k8s: Kube
    kubelet: Kubelet
    model: ScriptedServer
    operator: KopfOperator
    start_operator: KopfOperatorFactory

    async def dispatch(self, name: str, **spec: Any) -> dict[str, Any]:
        return await self.k8s.create(BUILDDISPATCHES, dispatch_object(name, **spec))

    async def status(self, name: str) -> dict[str, Any]:
        obj = await self.k8s.find(BUILDDISPATCHES, name)
        return dict((obj or {}).get("status") or {})

    async def wait_phase(self, name: str, *phases: str, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        async def check() -> dict[str, Any] | None:
            st = await self.status(name)
            return st if st.get("phase") in phases else None

        return await wait_for(check, timeout, interval=0.1, message=f"{name} in phase {phases}")


def new_operator(factory: KopfOperatorFactory, settings: Settings = FAST) -> Any:
    return factory(build_registry(settings, namespace="default", seed=False))


async def start_cluster(
    api: Kube,
    node: Kubelet,
    factory: KopfOperatorFactory,
    model: ScriptedServer,
    *,
    settings: Settings = FAST,
    **engine: Any,
) -> Cluster:
    """Register the engine (its probe pod answers 1.18.33), start the operator, wait for `present`."""
    node.script(is_probe, PodScript.canned(["1.18.33"]))
    await api.create(BUILDENGINES, engine_object(model.base_url, **engine))
    operator = await new_operator(factory, settings)

    async def present() -> bool:
        obj = await api.find(BUILDENGINES, "opencode")
        return bool(((obj or {}).get("status") or {}).get("present"))

    await wait_for(present, 20, interval=0.1, message="engine opencode present")
    return Cluster(api, node, model, operator, factory)


@pytest_asyncio.fixture
async def model_server() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer(WRITE_SCRIPT, model=MODEL) as srv:
        yield srv


@pytest_asyncio.fixture
async def cluster(
    k8s: Kube,  # noqa: F811
    kubelet: Kubelet,  # noqa: F811
    kopf_operator: KopfOperatorFactory,  # noqa: F811
    model_server: ScriptedServer,
) -> Cluster:
    return await start_cluster(k8s, kubelet, kopf_operator, model_server)
