"""Sandbox manifests: hardened, owned, deterministic; pinned by golden YAML.

Regenerate the golden files after an intended change with ``BUILDSTUDIO_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path
from typing import Any

import yaml

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import manifests as mf
from buildstudio.core.settings import SandboxDefaults
from buildstudio.protocol.spec import RunnerSpec

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
OWNER = mf.Owner(name="fix-1", uid="0b0e5a4c-1111-4222-8333-444455556666", namespace="dev")
LOCAL = mf.EngineRuntime(name="opencode", endpoint="local")
D = SandboxDefaults()


def req(**kw: Any) -> mf.SandboxRequest:
    base: dict[str, Any] = dict(
        owner=OWNER,
        attempt=1,
        engine=LOCAL,
        repo_url="https://github.com/o/r.git",
        model_base_url="http://ollama.models.svc:11434/v1",
    )
    base.update(kw)
    return mf.SandboxRequest(**base)


def golden(name: str, obj: Any) -> None:
    path = GOLDEN / name
    text = yaml.safe_dump(obj, sort_keys=False)
    if os.environ.get("BUILDSTUDIO_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"


def test_pod_is_restricted_owned_and_gpu_affine_without_gpu_request() -> None:
    pod = mf.sandbox_pod(req(), D)
    golden("sandbox-pod.yaml", pod)
    spec = pod["spec"]
    meta = pod["metadata"]
    assert meta["name"] == "fix-1-1" and meta["namespace"] == "dev"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "buildstudio.dpf.dev/v1alpha1",
            "kind": "BuildDispatch",
            "name": "fix-1",
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "buildstudio"
    assert meta["labels"]["buildstudio.dpf.dev/dispatch"] == "fix-1"
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False and spec["terminationGracePeriodSeconds"] == 30
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 65532
    containers = {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}
    assert list(containers) == ["clone", "relay", "agent", "reporter"]
    for c in containers.values():
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any("valueFrom" in e for e in c["env"])  # no container sees a secret as env
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert "ephemeral-storage" in c["resources"]["limits"]
    c = containers["agent"]
    assert all(v["emptyDir"]["sizeLimit"] for v in spec["volumes"] if "emptyDir" in v)
    assert {m["mountPath"] for m in c["volumeMounts"]} == {
        "/etc/buildstudio",
        "/workspace",
        "/home/runner",
        "/tmp",
        "/var/run/buildstudio/agent-out",
        "/var/run/buildstudio/relay",
    }
    pref = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref[0]["preference"]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_overrides_gpu_request_selector_and_runtime_class() -> None:
    sandbox = {
        "gpu": True,
        "nodeSelector": {"pool": "a"},
        "runtimeClassName": "gvisor",
        "resources": {"limits": {"memory": "8Gi"}},
        "image": "my/sandbox:1",
    }
    spec = mf.sandbox_pod(req(sandbox=sandbox), D)["spec"]
    c = next(c for c in spec["initContainers"] if c["name"] == "agent")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["resources"]["limits"]["memory"] == "8Gi"
    assert spec["nodeSelector"] == {"pool": "a"} and "affinity" not in spec
    assert spec["runtimeClassName"] == "gvisor" and c["image"] == "my/sandbox:1"
    required = mf.sandbox_pod(req(), SandboxDefaults(gpu_affinity="required"))["spec"]["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in required["nodeAffinity"]


def test_cloud_engine_credential_never_reaches_the_agent() -> None:
    """A cloud engine's credential is mounted into the relay container only (issue #21; more in
    tests/engines/test_cloud_pod.py): the agent holds a placeholder key."""
    cloud = mf.EngineRuntime(
        name="claude",
        engine="claude",
        endpoint="cloud",
        credential=mf.SecretKey("anthropic", "key"),
        credential_env="ANTHROPIC_API_KEY",
    )
    pod = mf.sandbox_pod(req(engine=cloud), D)
    containers = {c["name"]: c for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]}
    relay = containers.pop("relay")
    assert any(m["name"] == "model-credential" for m in relay["volumeMounts"])
    assert "anthropic" not in json.dumps(list(containers.values()))


# The egress policy's tests (and its golden file) are in test_egress.py.


def test_baseline_policy_denies_every_sandbox_pod_everything() -> None:
    """Policies add up: the baseline plus an attempt's egress policy allow what the latter allows,
    the baseline alone allows nothing — the state of a pod whose own policy has not applied yet."""
    pol = mf.baseline_policy("dev")
    golden("baseline-networkpolicy.yaml", pol)
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in pol["spec"] and "ingress" not in pol["spec"]
    assert "ownerReferences" not in pol["metadata"] and pol["metadata"]["namespace"] == "dev"
    req = mf.SandboxRequest(
        owner=OWNER, attempt=1, engine=mf.EngineRuntime(name="opencode"), repo_url="https://g/r.git", model_base_url=""
    )
    pod_labels = mf.sandbox_pod(req, D)["metadata"]["labels"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    probe = mf.probe_pod(OWNER, "img:1", ["opencode", "--version"], "f" * 16, D)
    assert not pol["spec"]["podSelector"]["matchLabels"].items() <= probe["metadata"]["labels"].items()
    own = mf.egress_policy(
        OWNER, "http://ollama.models.svc:11434/v1", "https://github.com/o/r.git", D, git_addresses=["140.82.121.4"]
    )
    assert own["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_config_map_carries_a_valid_runner_spec_and_opencode_config() -> None:
    spec = BuildDispatchSpec.model_validate(
        {"prompt": "fix it", "repo": {"url": "https://github.com/o/r.git"}, "model": "qwen3-coder", "stepBudget": 40}
    )
    runner, config = mf.sandbox_files(
        spec, model="qwen3-coder", base_url="http://ollama.models.svc:11434/v1", context=32768, relay=True
    )
    cm = mf.config_map(OWNER, runner, config)
    golden("config-configmap.yaml", cm)
    import json

    parsed = RunnerSpec.model_validate(json.loads(cm["data"]["runner.json"]))
    assert parsed.prompt == "fix it" and parsed.context_limit == 32768 and parsed.limits.step_budget == 40
    assert parsed.relay is True and parsed.output_limit == 8192
    oc = json.loads(cm["data"]["opencode.json"])
    assert oc["provider"]["local"]["models"]["qwen3-coder"]["limit"] == {"context": 32768, "output": 8192}


def test_patch_config_map_holds_gzip_and_marks_truncation() -> None:
    data = base64.b64encode(gzip.compress(b"+hello\n")).decode()
    cm = mf.patch_config_map(OWNER, data, size=7, sha256="ab", truncated=False, cap_bytes=1024)
    assert gzip.decompress(base64.b64decode(cm["binaryData"]["patch.gz"])) == b"+hello\n"
    assert cm["metadata"]["annotations"]["buildstudio.dpf.dev/patch-truncated"] == "false"
    big = base64.b64encode(os.urandom(4096)).decode()
    cm = mf.patch_config_map(OWNER, big, size=9999, sha256="cd", truncated=False, cap_bytes=1024)
    assert "binaryData" not in cm and "exceeds the 1024-byte cap" in cm["data"]["TRUNCATED"]
    assert cm["metadata"]["annotations"]["buildstudio.dpf.dev/patch-truncated"] == "true"


def test_probe_pod_is_hardened_and_short() -> None:
    owner = mf.Owner(name="opencode", uid="u-e", namespace="buildstudio-system", kind="BuildEngine")
    pod = mf.probe_pod(owner, "img:1", ["opencode", "--version"], "abcdef0123456789", D)
    golden("probe-pod.yaml", pod)
    assert pod["spec"]["activeDeadlineSeconds"] == 120
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "BuildEngine"
