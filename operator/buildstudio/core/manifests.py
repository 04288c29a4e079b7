"""Builders of the sandbox's Kubernetes objects: plain dicts in, plain dicts out.

Pod (restricted Pod Security, GPU-node affinity without a GPU request by default), the
config ConfigMap (``runner.json`` + ``opencode.json``), the egress NetworkPolicy, the
patch ConfigMap and an engine's presence probe pod. Golden YAML in
``tests/fixtures/golden/`` pins their shape.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import names
from buildstudio.core.settings import SandboxDefaults
from buildstudio.opencode_config import build_config
from buildstudio.pins import API_GROUP, API_VERSION
from buildstudio.runner.spec import LoopLimits, RepoSource, ReviewInput, RunnerSpec, RunnerTimeouts

CONFIG_MOUNT = "/etc/buildstudio"
WORKSPACE = "/workspace"
HOME = "/home/runner"
PATCH_KEY = "patch.gz"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The object that owns a child (garbage collection + ``kopf`` adoption)."""

    name: str
    uid: str
    namespace: str | None = None
    kind: str = "BuildDispatch"
    api_version: str = f"{API_GROUP}/{API_VERSION}"

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


MODEL_API_KEY_ENV = "BUILDSTUDIO_MODEL_API_KEY"  # opencode reads it through "{env:…}" in its config


@dataclass(frozen=True)
class EngineRuntime:
    """What the sandbox needs to know about the resolved engine."""

    name: str  # BuildEngine object name
    engine: str = "opencode"
    endpoint: str = "local"  # local | cloud
    image: str | None = None
    credential: SecretKey | None = None  # cloud engines only
    credential_env: str | None = None


@dataclass(frozen=True)
class SandboxRequest:
    """Everything one attempt's pod is built from."""

    owner: Owner
    attempt: int
    engine: EngineRuntime
    repo_url: str
    model_base_url: str
    sandbox: Mapping[str, Any] = field(default_factory=dict)  # BuildDispatch spec.sandbox
    repo_credentials: SecretKey | None = None
    model_api_key: SecretKey | None = None  # the model service's apiKeySecret, if it has one


def _meta(name: str, owner: Owner, component: str, extra_labels: Mapping[str, str] | None = None) -> Manifest:
    labels = names.dispatch_labels(owner.name, component)
    labels.update(extra_labels or {})
    meta: Manifest = {"name": name, "labels": labels, "ownerReferences": [owner.reference()]}
    if owner.namespace:
        meta["namespace"] = owner.namespace
    return meta


def _gpu_affinity(defaults: SandboxDefaults) -> Manifest | None:
    term = {"matchExpressions": [{"key": defaults.gpu_node_label, "operator": "In", "values": ["true"]}]}
    if defaults.gpu_affinity == "required":
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    if defaults.gpu_affinity == "preferred":
        return {
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]}
        }
    return None


def _resources(defaults: SandboxDefaults, sandbox: Mapping[str, Any]) -> Manifest:
    wanted = sandbox.get("resources") or {}
    requests = {**defaults.requests, **(wanted.get("requests") or {})}
    limits = {**defaults.limits, **(wanted.get("limits") or {})}
    if sandbox.get("gpu"):
        # Opt-in only: the agent is a client of the model service and rarely needs a device.
        limits[defaults.gpu_resource] = "1"
    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security(uid: int) -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def sandbox_pod(req: SandboxRequest, defaults: SandboxDefaults) -> Manifest:
    """The attempt's pod: hardened, owned, deterministic name ``<dispatch>-<attempt>``."""
    sandbox = req.sandbox
    env: list[Manifest] = [
        {"name": "HOME", "value": HOME},
        {"name": "BUILDSTUDIO_WORKSPACE", "value": WORKSPACE},
        # The runner sets opencode's XDG dirs and flags itself; this one also guards a
        # hand-run opencode: the cloned repo must not redirect the model with its own config.
        {"name": "OPENCODE_DISABLE_PROJECT_CONFIG", "value": "1"},
    ]
    cred = req.engine.credential
    if req.engine.endpoint == "cloud" and cred is not None:
        # Only cloud engines' pods see a credential, and only by reference.
        env.append(
            {
                "name": req.engine.credential_env or "BUILDSTUDIO_ENGINE_CREDENTIAL",
                "valueFrom": {"secretKeyRef": {"name": cred.name, "key": cred.key}},
            }
        )
    if req.model_api_key is not None:
        env.append(
            {
                "name": MODEL_API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": req.model_api_key.name, "key": req.model_api_key.key}},
            }
        )
    if req.repo_credentials is not None:
        env.append(
            {
                "name": "BUILDSTUDIO_GIT_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": req.repo_credentials.name, "key": req.repo_credentials.key}},
            }
        )
    container: Manifest = {
        "name": "runner",
        "image": sandbox.get("image") or req.engine.image or defaults.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(defaults.runner_command),
        "env": env,
        "resources": _resources(defaults, sandbox),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "home", "mountPath": HOME},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": defaults.termination_grace_seconds,
        "securityContext": _pod_security(defaults.uid),
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_name(req.owner.name)}},
            {"name": "workspace", "emptyDir": {"sizeLimit": defaults.workspace_size}},
            {"name": "home", "emptyDir": {"sizeLimit": defaults.home_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": defaults.tmp_size}},
        ],
    }
    gpu_taint = {"key": defaults.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
    tolerations = list(sandbox.get("tolerations") or []) or ([gpu_taint] if defaults.gpu_toleration else [])
    if tolerations:
        spec["tolerations"] = tolerations
    if defaults.service_account_name:
        spec["serviceAccountName"] = defaults.service_account_name
    user_selector = sandbox.get("nodeSelector") or {}
    # A user's nodeSelector or affinity replaces the default GPU-node affinity.
    affinity = sandbox.get("affinity") or (None if user_selector else _gpu_affinity(defaults))
    if affinity:
        spec["affinity"] = affinity
    node_selector = {**defaults.node_selector, **user_selector}
    if node_selector:
        spec["nodeSelector"] = node_selector
    runtime_class = sandbox.get("runtimeClassName") or defaults.runtime_class_name
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    extra = {names.LABEL_ATTEMPT: str(req.attempt), names.LABEL_ENGINE: names.label_value(req.engine.name)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(names.pod_name(req.owner.name, req.attempt), req.owner, "sandbox", extra),
        "spec": spec,
    }


def config_map(owner: Owner, runner_spec: Mapping[str, Any], opencode_config: Mapping[str, Any]) -> Manifest:
    """The ConfigMap mounted at /etc/buildstudio: the runner's spec and opencode's config."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.config_name(owner.name), owner, "config"),
        "data": {
            "runner.json": json.dumps(runner_spec, indent=2, sort_keys=True),
            "opencode.json": json.dumps(opencode_config, indent=2, sort_keys=True),
        },
    }


def patch_config_map(
    owner: Owner, data_b64: str, *, size: int, sha256: str, truncated: bool, cap_bytes: int
) -> Manifest:
    """The whole patch (gzip) in ``binaryData``; past ``cap_bytes`` it is dropped and marked."""
    compressed = len(base64.b64decode(data_b64)) if data_b64 else 0
    over = compressed > cap_bytes
    meta = _meta(names.patch_name(owner.name), owner, "patch")
    meta["annotations"] = {
        f"{API_GROUP}/patch-bytes": str(size),
        f"{API_GROUP}/patch-sha256": sha256,
        f"{API_GROUP}/patch-truncated": "true" if (truncated or over) else "false",
        f"{API_GROUP}/patch-encoding": "gzip",
    }
    manifest: Manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    if data_b64 and not over:
        manifest["binaryData"] = {PATCH_KEY: data_b64}
    else:
        manifest["data"] = {
            "TRUNCATED": f"patch of {size} bytes ({compressed} compressed) exceeds the {cap_bytes}-byte cap"
            if over
            else "empty patch"
        }
    return manifest


@dataclass(frozen=True)
class Peer:
    """One allowed egress destination; ``None`` fields mean "any"."""

    port: int | None
    cidr: str | None = None
    namespace: str | None = None


def model_service_peer(base_url: str) -> Peer | None:
    """Where the model service lives, as a NetworkPolicy peer.

    - an IP literal → that /32 (/128) and the URL's port;
    - a cluster service name (``svc.ns``, ``svc.ns.svc[.cluster.local]``) → every pod of its
      namespace, any port: NetworkPolicy sees the pod's targetPort after the service's DNAT,
      which the URL does not tell;
    - any other host name (resolved outside the cluster) → the URL's port to anywhere;
    - loopback → no rule (never leaves the pod's network namespace).
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_loopback:
            return None
        return Peer(port=port, cidr=f"{ip}/{32 if ip.version == 4 else 128}")
    if host in ("localhost",):
        return None
    labels = host.split(".")
    if len(labels) == 2 or (len(labels) >= 3 and labels[2] == "svc"):
        return Peer(port=None, namespace=labels[1])
    return Peer(port=port)


def git_port(repo_url: str) -> int:
    """The git remote's port: explicit, else by scheme (https 443, ssh 22, git 9418, http 80)."""
    if "://" not in repo_url:
        return 22  # scp-like git@host:path
    parts = urlsplit(repo_url)
    if parts.port:
        return parts.port
    return {"https": 443, "http": 80, "ssh": 22, "git": 9418}.get(parts.scheme, 443)


def _rule(peer: Peer, protocol: str = "TCP") -> Manifest:
    rule: Manifest = {}
    if peer.cidr:
        rule["to"] = [{"ipBlock": {"cidr": peer.cidr}}]
    elif peer.namespace:
        rule["to"] = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": peer.namespace}}}]
    if peer.port is not None:
        rule["ports"] = [{"protocol": protocol, "port": peer.port}]
    return rule


def egress_policy(owner: Owner, model_base_url: str, repo_url: str, defaults: SandboxDefaults) -> Manifest:
    """Egress of the attempt's pods: DNS, the model service, the git remote; nothing else."""
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": defaults.dns_namespace}},
                "podSelector": {"matchLabels": dict(defaults.dns_pod_labels)},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    egress = [dns]
    model = model_service_peer(model_base_url)
    if model is not None:
        egress.append(_rule(model))
    egress.append(_rule(Peer(port=git_port(repo_url))))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(names.egress_name(owner.name), owner, "egress"),
        "spec": {
            "podSelector": {
                "matchLabels": {
                    names.LABEL_DISPATCH: names.label_value(owner.name),
                    names.LABEL_COMPONENT: "sandbox",
                }
            },
            "policyTypes": ["Ingress", "Egress"],  # no ingress rules: nothing may connect in
            "egress": egress,
        },
    }


def baseline_policy(namespace: str) -> Manifest:
    """The namespace's deny-all policy for sandbox pods (no owner: shared by every dispatch there).

    NetworkPolicies add up: a sandbox pod selected by this one and by its attempt's egress
    policy may reach exactly what the latter allows. The per-attempt policy can then be created
    together with the pod (not before it) without a window of open egress: until it applies,
    the pod can reach nothing."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names.BASELINE_POLICY,
            "namespace": namespace,
            "labels": {**names.common_labels(), names.LABEL_COMPONENT: "sandbox-baseline"},
        },
        "spec": {
            "podSelector": {"matchLabels": {**names.common_labels(), names.LABEL_COMPONENT: "sandbox"}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def probe_pod(
    owner: Owner, image: str, command: Sequence[str], fingerprint: str, defaults: SandboxDefaults
) -> Manifest:
    """A short, hardened pod that runs an engine's version command in its image."""
    labels = {
        **names.common_labels(),
        names.LABEL_COMPONENT: "probe",
        names.LABEL_ENGINE: names.label_value(owner.name),
    }
    meta: Manifest = {
        "name": names.probe_pod_name(owner.name, fingerprint),
        "labels": labels,
        "annotations": {f"{API_GROUP}/probe-fingerprint": fingerprint},
        "ownerReferences": [owner.reference()],
    }
    if owner.namespace:
        meta["namespace"] = owner.namespace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "activeDeadlineSeconds": 120,
            "securityContext": _pod_security(defaults.uid),
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": list(command),
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "256Mi", "ephemeral-storage": "256Mi"},
                    },
                    "securityContext": _container_security(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "128Mi"}}],
            "tolerations": [{"key": defaults.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def output_limit(context: int) -> int:
    """Completion budget: opencode sends it as max_tokens on every request, so keep it well below."""
    return max(256, min(8192, context // 4))


def sandbox_files(
    spec: BuildDispatchSpec,
    *,
    model: str,
    base_url: str,
    context: int | None,
    relay: bool,
    api_key_env: str | None = None,
    review: ReviewInput | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``runner.json`` (the runner's ``RunnerSpec``) and ``opencode.json`` for one attempt.

    Every phase runs in the sandbox; ideate/plan/review are one chat completion there (no repo).
    """
    text = spec.phase in ("ideate", "plan", "review")
    ctx = context or 65536
    out = output_limit(ctx)
    repo = None
    if spec.repo is not None and not text:
        repo = RepoSource(url=spec.repo.url, ref=spec.repo.ref)
    runner = RunnerSpec(
        prompt=spec.prompt,
        repo=repo,
        model=model,
        base_url=base_url,
        context_limit=ctx,
        output_limit=out,
        api_key_env=api_key_env,
        timeouts=RunnerTimeouts(
            run_seconds=float(spec.timeouts.run_seconds), idle_seconds=float(spec.timeouts.idle_seconds)
        ),
        limits=LoopLimits(step_budget=spec.step_budget) if spec.step_budget else LoopLimits(),
        relay=relay and not text,
        phase="build" if not text else spec.phase,
        review=review if spec.phase == "review" else None,
    )
    config = build_config(base_url=base_url, model=model, context=ctx, output=out, api_key_env=api_key_env)
    return runner.model_dump(by_alias=True, exclude_none=True, mode="json"), config
