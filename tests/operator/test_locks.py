"""Issue #14, finding 6 ("A dispatch author can override what the admin set"): the admin's locks.

A ``spec.sandbox`` that asks for more than the chart allows (runtime class, image, tolerations,
node selection, resources) is refused at admission, before any child object exists, with
``SandboxOverrideRefused`` and a message naming the field.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import locks as lk
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core.gate import GateDecision
from buildstudio.core.refusal import admin_refusal
from buildstudio.core.settings import SandboxDefaults, SandboxLocks, Settings, from_env
from tests.kube.client import CONFIGMAPS, NETWORKPOLICIES, PODS
from tests.operator.conftest import Cluster

T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)
L = SandboxLocks()
GVISOR = SandboxDefaults(runtime_class_name="gvisor", image="registry.example/sandbox@sha256:" + "a" * 64)
PLAIN = SandboxDefaults(gpu_toleration=False)  # the admin set no runtime class and no toleration
CP = "node-role.kubernetes.io/control-plane"


def refused(sandbox: dict[str, Any], locks: SandboxLocks = L, defaults: SandboxDefaults = GVISOR) -> str:
    why = lk.check_sandbox_overrides(sandbox, locks, defaults)
    assert why is not None, f"{sandbox} was accepted"
    return why


def accepted(sandbox: dict[str, Any], locks: SandboxLocks = L, defaults: SandboxDefaults = GVISOR) -> None:
    assert lk.check_sandbox_overrides(sandbox, locks, defaults) is None


def test_runtime_class_set_by_the_admin_cannot_be_swapped() -> None:
    why = refused({"runtimeClassName": "runc"})
    assert why.startswith("spec.sandbox.runtimeClassName: may not be set by a dispatch (the admin set gvisor")
    accepted({"runtimeClassName": "gvisor"})  # the admin's own value is no override
    accepted({"runtimeClassName": "kata"}, defaults=PLAIN)  # auto: the admin set none
    assert "runtimeClassName" in refused({"runtimeClassName": "kata"}, replace(L, runtime_class_name="deny"), PLAIN)
    accepted({"runtimeClassName": "runc"}, replace(L, runtime_class_name="allow"))


def test_image_is_the_admins() -> None:
    assert refused({"image": "evil/sandbox:1"}).startswith("spec.sandbox.image: may not be set by a dispatch")
    accepted({"image": GVISOR.image})
    accepted({"image": "team/sandbox:2"}, replace(L, image="allow"))


def test_tolerations() -> None:
    exists = [{"operator": "Exists"}]
    assert refused({"tolerations": exists}, replace(L, tolerations="allow")) == (
        "spec.sandbox.tolerations[0]: operator Exists without a key tolerates every taint"
    )
    assert CP in refused({"tolerations": [{"key": CP, "operator": "Exists", "effect": "NoSchedule"}]}, defaults=PLAIN)
    pool = [{"key": "pool", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}]
    assert refused({"tolerations": pool}).startswith("spec.sandbox.tolerations: may not be set by a dispatch")
    accepted({"tolerations": pool}, defaults=PLAIN)


def test_node_selection_never_onto_the_control_plane() -> None:
    assert refused({"nodeSelector": {CP: ""}}, defaults=PLAIN) == (
        f"spec.sandbox.nodeSelector: {CP} selects control-plane nodes"
    )
    accepted({"nodeSelector": {"pool": "ci"}}, defaults=PLAIN)  # preferred GPU affinity: not a lock
    required = replace(PLAIN, gpu_affinity="required")
    assert refused({"nodeSelector": {"pool": "ci"}}, defaults=required).startswith("spec.sandbox.nodeSelector:")
    onto = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role.kubernetes.io/master", "operator": "Exists"}]}
    ]}}}  # fmt: skip
    assert "spec.sandbox.affinity: a node-affinity term on node-role.kubernetes.io/master" in refused(
        {"affinity": onto}, replace(L, affinity="allow"), PLAIN
    )
    away = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": CP, "operator": "DoesNotExist"}]}}
    ]}}  # fmt: skip
    accepted({"affinity": away}, defaults=PLAIN)


@pytest.mark.parametrize(
    ("resources", "gpu", "field"),
    [
        ({"requests": {"cpu": "64"}}, False, "spec.sandbox.resources.requests.cpu: 64 exceeds the admin's ceiling 4"),
        ({"limits": {"memory": "1Ti"}}, False, "spec.sandbox.resources.limits.memory: 1Ti exceeds"),
        ({"limits": {"ephemeral-storage": "100Gi"}}, False, "spec.sandbox.resources.limits.ephemeral-storage"),
        ({"limits": {"nvidia.com/gpu": "8"}}, False, "spec.sandbox.resources.limits.nvidia.com/gpu: 8 exceeds"),
        ({"limits": {"hugepages-2Mi": "1Gi"}}, False, "spec.sandbox.resources.limits.hugepages-2Mi: not a resource"),
        ({"requests": {"cpu": "lots"}}, False, "spec.sandbox.resources.requests.cpu: 'lots' is not a resource"),
        ({"requests": {"memory": "6Gi"}}, False, "spec.sandbox.resources: requests.memory 6Gi exceeds limits.memory"),
        ({}, True, None),
    ],
)
def test_resource_ceilings(resources: dict[str, Any], gpu: bool, field: str | None) -> None:
    sandbox = {"resources": resources, "gpu": gpu}
    if field is None:
        accepted(sandbox)
        no_gpu = replace(L, max_resources={**L.max_resources, "gpu": "0"})
        assert refused(sandbox, no_gpu).startswith("spec.sandbox.gpu: the admin allows no nvidia.com/gpu")
    else:
        assert field in refused(sandbox)


def test_allowed_overrides_pass() -> None:
    accepted({"resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "8Gi"}}, "gpu": True})
    accepted({})
    accepted({"gpu": False, "tolerations": [], "nodeSelector": {}})  # empty: the admin's values apply


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("2", "2"), ("1Gi", str(2**30)), ("1.5G", "1.5e9"), ("1e3", "1000"), ("1E", "1e18")],
)
def test_quantity(text: str, value: str) -> None:
    assert lk.quantity(text) == Decimal(value)


def test_chart_locks_reach_settings() -> None:
    env = {"BUILDSTUDIO_SANDBOX_LOCKS": '{"runtimeClassName": "deny", "image": "allow", "maxResources": {"cpu": "8"}}'}
    got = from_env(env).locks
    assert (got.runtime_class_name, got.image, got.tolerations) == ("deny", "allow", "auto")
    assert dict(got.max_resources) == {"cpu": "8"}
    assert from_env({}).locks == SandboxLocks()
    with pytest.raises(ValueError, match="runtimeClassName"):
        from_env({"BUILDSTUDIO_SANDBOX_LOCKS": '{"runtimeClassName": "maybe"}'})


def test_refused_at_admission_before_any_child() -> None:
    spec = BuildDispatchSpec.model_validate(
        {"prompt": "p", "repo": {"url": "https://github.com/o/r.git"}, "sandbox": {"runtimeClassName": "runc"}}
    )
    d = m.Dispatch(name="d", namespace="dev", uid="u", generation=1, created=T0, spec=spec)
    gate = GateDecision(admit=True, reason="Admitted", message="ok", engine="opencode", model="q")
    settings = Settings(sandbox=GVISOR)
    refusal = admin_refusal(d, gate, [], settings)
    assert refusal is not None and refusal[0] == lk.REASON and refusal[1].startswith("spec.sandbox.runtimeClassName")
    step = m.enter(d, gate, None, T0, settings, refusal=refusal)
    done = next(x for x in step.status["conditions"] if x["type"] == "Succeeded")
    assert (done["status"], done["reason"]) == ("False", "SandboxOverrideRefused")
    assert not any(isinstance(a, m.Launch) for a in step.actions)
    assert {e.reason for e in step.emitted()} == {"SandboxOverrideRefused"}
    assert admin_refusal(d, gate, [], Settings(sandbox=PLAIN)) is None


def test_pod_manifest_uses_the_admin_values() -> None:
    owner = mf.Owner(name="fix-1", uid="u", namespace="dev")
    req = mf.SandboxRequest(
        owner=owner,
        attempt=1,
        engine=mf.EngineRuntime(name="opencode"),
        repo_url="https://github.com/o/r.git",
        model_base_url="http://ollama.models.svc:11434/v1",
        sandbox={"resources": {"limits": {"memory": "8Gi"}}},
    )
    accepted(dict(req.sandbox))
    spec = mf.sandbox_pod(req, GVISOR)["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    assert {c["image"] for c in containers} == {GVISOR.image}
    assert any(c["resources"]["limits"].get("memory") == "8Gi" for c in containers)  # the allowed override


async def test_operator_refuses_an_image_override_before_any_child_exists(cluster: Cluster) -> None:
    await cluster.dispatch("swap", sandbox={"image": "evil/sandbox:1", "tolerations": [{"operator": "Exists"}]})
    st = await cluster.wait_phase("swap", "Failed", "Succeeded", timeout=20)
    done = next(x for x in st["conditions"] if x["type"] == "Succeeded")
    assert done["reason"] == "SandboxOverrideRefused", st
    assert done["message"] == "spec.sandbox.tolerations[0]: operator Exists without a key tolerates every taint"
    assert await cluster.k8s.find(PODS, "swap-1") is None
    assert await cluster.k8s.find(CONFIGMAPS, "swap-config") is None
    assert await cluster.k8s.find(NETWORKPOLICIES, "swap-egress") is None
