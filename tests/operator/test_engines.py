"""BuildEngine handling: registry seeding, presence for real, the model-service observation."""

from __future__ import annotations

from typing import Any

from buildstudio.adapters.registry import MANAGED_LABEL
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.handlers import build_registry
from tests.kube.client import BUILDDISPATCHES, BUILDENGINES, EVENTS, PODS, SECRETS, Kube, wait_for
from tests.kube.kubelet import Kubelet, PodScript
from tests.kube.plugin import KopfOperatorFactory
from tests.operator.conftest import FAST, Cluster, engine_object, is_probe


async def status_of(k8s: Kube, name: str) -> dict[str, Any]:
    obj = await k8s.find(BUILDENGINES, name)
    return dict((obj or {}).get("status") or {})


async def test_seeds_defaults_restores_ours_and_leaves_user_made_alone(
    k8s: Kube, kubelet: Kubelet, kopf_operator: KopfOperatorFactory
) -> None:
    kubelet.script(is_probe, PodScript.canned(["opencode 1.18.33"]))
    await kopf_operator(build_registry(FAST, namespace="default", seed=True))
    seeded = await wait_for(lambda: k8s.find(BUILDENGINES, "opencode"), 10, message="seeded opencode")
    assert seeded["metadata"]["labels"][MANAGED_LABEL] == "true"
    assert await k8s.find(BUILDENGINES, "claude") is None  # not bakeInDefault
    st = await wait_for(lambda: _with(k8s, "opencode", "presence"), 20, message="presence recorded")
    assert st["present"] is True and st["version"] == "1.18.33"
    assert st["presence"]["method"] == "probe-pod" and st["presence"]["observedGeneration"] == 1
    assert next(c for c in st["conditions"] if c["type"] == "Present")["status"] == "True"
    probes = [p for p in await k8s.list(PODS, "default") if is_probe(p)]
    assert probes == []  # the probe pod is deleted once read


async def test_user_made_engine_is_left_alone(k8s: Kube, kubelet: Kubelet, kopf_operator: KopfOperatorFactory) -> None:
    kubelet.script(is_probe, PodScript.canned(["1.18.33"]))
    await k8s.create(BUILDENGINES, engine_object("http://10.1.2.3:8000/v1"))
    await kopf_operator(build_registry(FAST, namespace="default", seed=True))
    await wait_for(lambda: _with(k8s, "opencode", "presence"), 20, message="presence recorded")
    kept = await k8s.get(BUILDENGINES, "opencode")
    assert kept["spec"]["modelService"]["baseURL"] == "http://10.1.2.3:8000/v1"
    assert MANAGED_LABEL not in (kept["metadata"].get("labels") or {})


async def _with(k8s: Kube, name: str, key: str) -> dict[str, Any] | None:
    st = await status_of(k8s, name)
    return st if key in st else None


async def test_restores_edited_seeded_engine(k8s: Kube, kubelet: Kubelet, kopf_operator: KopfOperatorFactory) -> None:
    kubelet.script(is_probe, PodScript.canned(["1.18.33"]))
    op = await kopf_operator(build_registry(FAST, namespace="default", seed=True))
    await wait_for(lambda: k8s.find(BUILDENGINES, "opencode"), 10, message="seeded")
    await op.stop()
    await k8s.patch(BUILDENGINES, "opencode", {"spec": {"contextFloor": 32768, "displayName": None}})
    op = await kopf_operator(build_registry(FAST, namespace="default", seed=True))
    restored = await k8s.get(BUILDENGINES, "opencode")
    assert restored["spec"]["contextFloor"] == 65536 and restored["spec"]["displayName"]
    await op.stop()


async def test_cloud_presence_is_the_secret_and_model_service_is_observed(
    k8s: Kube, kubelet: Kubelet, kopf_operator: KopfOperatorFactory
) -> None:
    cloud = {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildEngine",
        "metadata": {"name": "claude"},
        "spec": {
            "engine": "claude",
            "endpoint": "cloud",
            "version": "2.1.331",
            "command": ["claude", "-p"],
            "credential": {"secretRef": {"name": "anthropic", "key": "apiKey"}, "env": "ANTHROPIC_API_KEY"},
        },
    }
    await k8s.create(BUILDENGINES, cloud)
    kubelet.script(is_probe, PodScript.canned(["1.18.33"]))
    async with ScriptedServer([{"text": "x"}], model="qwen3-coder") as srv:
        await k8s.create(BUILDENGINES, engine_object(srv.base_url))
        await kopf_operator(build_registry(FAST, namespace="default", seed=False))
        st = await wait_for(lambda: _with(k8s, "claude", "presence"), 10, message="cloud presence")
        assert st["present"] is False and st["presence"]["method"] == "credential-secret"
        assert "not found" in st["presence"]["message"]
        await k8s.create(
            SECRETS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "anthropic"},
                "data": {"apiKey": "c2VjcmV0LXZhbHVl"},
            },
        )

        async def present() -> dict[str, Any] | None:
            s = await status_of(k8s, "claude")
            return s if s.get("present") else None

        st = await wait_for(present, 10, message="cloud engine present once its Secret exists")
        assert "c2VjcmV0" not in str(st) and "secret-value" not in str(st)
        local = await wait_for(lambda: _with(k8s, "opencode", "modelService"), 10, message="model service observed")
        ms = local["modelService"]
        assert ms["reachable"] is True and "qwen3-coder" in ms["models"]
        ready = next(c for c in local["conditions"] if c["type"] == "ModelServiceReady")
        assert ready["status"] == "True" and ready["reason"] == "Ready"


async def test_spec_edit_after_admission_is_reported(cluster: Cluster) -> None:
    cluster.kubelet.script("edit", PodScript.hang())
    await cluster.dispatch("edit")
    await cluster.wait_phase("edit", "Running")
    await cluster.k8s.patch(BUILDDISPATCHES, "edit", {"spec": {"prompt": "something else"}})

    async def warned() -> bool:
        events = await cluster.k8s.list(EVENTS, "default")
        return any(e.get("reason") == "SpecChangeIgnored" and e["involvedObject"]["name"] == "edit" for e in events)

    await wait_for(warned, 10, message="SpecChangeIgnored event")
    cm = await cluster.k8s.get("v1/configmaps", "edit-config")
    assert "add a hello.py" in cm["data"]["runner.json"]  # the attempt keeps the admitted prompt
