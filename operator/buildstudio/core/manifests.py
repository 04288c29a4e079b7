"""Builders of the sandbox's Kubernetes objects: plain dicts in, plain dicts out.

Pod (restricted Pod Security, GPU-node affinity without a GPU request by default), the
config ConfigMap (``runner.json`` + ``opencode.json``), the egress NetworkPolicy (built in
``core/egress.py``), the patch ConfigMap and an engine's presence probe pod. Golden YAML in
``tests/fixtures/golden/`` pins their shape.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from buildstudio.api.common import API_GROUP, API_VERSION
from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import names, runner_spec
from buildstudio.core.egress import egress_policy as egress_policy  # moved; kept importable here
from buildstudio.core.settings import SandboxDefaults
from buildstudio.engines.adapters import adapter_for
from buildstudio.engines.opencode_config import build_config
from buildstudio.protocol.spec import RepoSource, ReviewInput

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
    # fsGroup: every container may read the shared emptyDirs (the agent's files are 0644 by its
    # umask); writing is decided per container by readOnly mounts and by file ownership.
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# Where each container sees what (docs/security.md has the picture).
BASE_MOUNT = "/var/run/buildstudio/base"
AGENT_OUT_MOUNT = "/var/run/buildstudio/agent-out"
RELAY_MOUNT = "/var/run/buildstudio/relay"
GIT_CREDENTIAL_MOUNT = "/var/run/buildstudio/git-credential"
MODEL_CREDENTIAL_MOUNT = "/var/run/buildstudio/model-credential"
REPORTER_TMP = "/tmp"
SPEC_FILE = f"{CONFIG_MOUNT}/runner.json"
CLAIM_FILE = f"{AGENT_OUT_MOUNT}/report.json"
RELAY_URL_FILE = f"{RELAY_MOUNT}/url"
RELAY_COUNTERS_FILE = f"{RELAY_MOUNT}/counters.json"
CREDENTIAL_MODE = 0o440  # root:fsGroup; only the one container that mounts the volume sees it


def _mount(name: str, path: str, *, read_only: bool = False) -> Manifest:
    m: Manifest = {"name": name, "mountPath": path}
    if read_only:
        m["readOnly"] = True
    return m


def _secret_volume(name: str, ref: SecretKey, path: str) -> Manifest:
    return {
        "name": name,
        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": path}], "defaultMode": CREDENTIAL_MODE},
    }


def sandbox_pod(
    req: SandboxRequest, defaults: SandboxDefaults, *, phase: str = "build", relay_repair: bool = False
) -> Manifest:
    """The attempt's pod, deterministic name ``<dispatch>-<attempt>``: one container per trust role.

    ``clone`` (init, holds the git credential) → ``relay`` (native sidecar, holds the model key) →
    ``agent`` (init, no credential, the untrusted engine) → ``reporter`` (main, its own uid: the
    result channel). Text phases have only the relay and the reporter.
    """
    sandbox = req.sandbox
    image = sandbox.get("image") or req.engine.image or defaults.image
    python = list(defaults.python)
    build = phase == "build"
    has_repo = build and bool(req.repo_url)

    def container(name: str, args: list[str], mounts: list[Manifest], uid: int, **extra: Any) -> Manifest:
        c: Manifest = {
            "name": name,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": [*python, *args],
            "env": [{"name": "HOME", "value": REPORTER_TMP if name != "agent" else HOME}],
            "resources": _resources(defaults, sandbox) if name == "agent" else _helper_resources(),
            "securityContext": {**_container_security(), "runAsUser": uid, "runAsGroup": uid},
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        c.update(extra)
        return c

    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": names.config_name(req.owner.name)}},
        {"name": "relay-run", "emptyDir": {"sizeLimit": "1Mi"}},
        {"name": "relay-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "reporter-tmp", "emptyDir": {"sizeLimit": defaults.workspace_size if build else "64Mi"}},
    ]
    init: list[Manifest] = []
    config_ro = _mount("config", CONFIG_MOUNT, read_only=True)
    if build:
        volumes += [
            {"name": "workspace", "emptyDir": {"sizeLimit": defaults.workspace_size}},
            {"name": "base", "emptyDir": {"sizeLimit": defaults.workspace_size}},
            {"name": "home", "emptyDir": {"sizeLimit": defaults.home_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": defaults.tmp_size}},
            {"name": "agent-out", "emptyDir": {"sizeLimit": "16Mi"}},
        ]
        clone_args = ["-m", "buildstudio.sandbox.runner", "clone", "--spec", SPEC_FILE, "--workspace", WORKSPACE]
        clone_args += ["--base", BASE_MOUNT]
        clone_mounts = [
            config_ro,
            _mount("workspace", WORKSPACE),
            _mount("base", BASE_MOUNT),
            _mount("tmp", "/tmp"),
        ]
        if has_repo and req.repo_credentials is not None:
            volumes.append(_secret_volume("git-credential", req.repo_credentials, "token"))
            clone_mounts.append(_mount("git-credential", GIT_CREDENTIAL_MOUNT, read_only=True))
            clone_args += ["--credential-file", f"{GIT_CREDENTIAL_MOUNT}/token"]
        if defaults.allow_plaintext_credentials:
            clone_args.append("--allow-plaintext-credentials")
        init.append(container("clone", clone_args, clone_mounts, defaults.uid))

    # A cloud engine's CLI talks to the relay in its vendor's protocol; its credential Secret is
    # mounted here, in the relay container only (the agent gets a placeholder key).
    cloud = adapter_for(req.engine.engine) if req.engine.endpoint == "cloud" else None
    upstream = req.model_base_url or (cloud.vendor_base_url if cloud is not None else "")
    relay_key = req.engine.credential if cloud is not None and req.engine.credential else req.model_api_key
    relay_args = ["-m", "buildstudio.sandbox.relay", "--upstream", upstream, "--url-file", RELAY_URL_FILE]
    relay_args += ["--counters-file", RELAY_COUNTERS_FILE]
    cli = adapter_for(req.engine.engine)  # its wire protocol, on the vendor's API or a model service
    if cli is not None:
        relay_args += ["--engine", cli.name]
    relay_mounts = [_mount("relay-run", RELAY_MOUNT), _mount("relay-tmp", "/tmp")]
    if relay_key is not None:
        volumes.append(_secret_volume("model-credential", relay_key, "key"))
        relay_mounts.append(_mount("model-credential", MODEL_CREDENTIAL_MOUNT, read_only=True))
        relay_args += ["--api-key-file", f"{MODEL_CREDENTIAL_MOUNT}/key"]
    if defaults.allow_plaintext_credentials:
        relay_args.append("--allow-plaintext-credentials")
    if not relay_repair:
        relay_args.append("--no-repair")
    # A native sidecar: started before the agent, ended by the kubelet after the reporter.
    init.append(container("relay", relay_args, relay_mounts, defaults.relay_uid, restartPolicy="Always"))

    if build:
        agent_args = ["-m", "buildstudio.sandbox.runner", "agent", "--spec", SPEC_FILE, "--workspace", WORKSPACE]
        agent_args += ["--home", HOME, "--report", CLAIM_FILE, "--relay-url-file", RELAY_URL_FILE]
        agent = container(
            "agent",
            agent_args,
            [
                config_ro,
                _mount("workspace", WORKSPACE),
                _mount("home", HOME),
                _mount("tmp", "/tmp"),
                _mount("agent-out", AGENT_OUT_MOUNT),
                _mount("relay-run", RELAY_MOUNT, read_only=True),
            ],
            defaults.uid,
        )
        # A hand-run opencode must not let the cloned repo redirect the model with its own config.
        agent["env"].append({"name": "OPENCODE_DISABLE_PROJECT_CONFIG", "value": "1"})
        init.append(agent)
        report_args = ["-m", "buildstudio.sandbox.runner", "report", "--spec", SPEC_FILE, "--workspace", WORKSPACE]
        report_args += ["--base", BASE_MOUNT, "--agent-report", CLAIM_FILE, "--scratch", f"{REPORTER_TMP}/report"]
        report_args += ["--relay-counters", RELAY_COUNTERS_FILE]
        report_mounts = [
            config_ro,
            _mount("workspace", WORKSPACE, read_only=True),
            _mount("base", BASE_MOUNT, read_only=True),
            _mount("agent-out", AGENT_OUT_MOUNT, read_only=True),
            _mount("relay-run", RELAY_MOUNT, read_only=True),
            _mount("reporter-tmp", REPORTER_TMP),
        ]
    else:
        report_args = ["-m", "buildstudio.sandbox.runner", "report", "--spec", SPEC_FILE, "--base", BASE_MOUNT]
        report_args += ["--relay-url-file", RELAY_URL_FILE]
        report_mounts = [
            config_ro,
            _mount("relay-run", RELAY_MOUNT, read_only=True),
            _mount("reporter-tmp", REPORTER_TMP),
        ]
    reporter = container("reporter", report_args, report_mounts, defaults.reporter_uid)
    spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": defaults.termination_grace_seconds,
        "securityContext": _pod_security(defaults.uid),
        "initContainers": init,
        "containers": [reporter],
        "volumes": volumes,
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


def _helper_resources() -> Manifest:
    """The clone, relay and reporter: small, bounded; the agent gets the dispatch's resources."""
    return {
        "requests": {"cpu": "50m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
        "limits": {"memory": "1Gi", "ephemeral-storage": "1Gi"},
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


def sandbox_files(
    spec: BuildDispatchSpec,
    *,
    model: str,
    base_url: str,
    context: int | None,
    relay: bool,
    api_key_env: str | None = None,
    review: ReviewInput | None = None,
    engine: str = "opencode",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``runner.json`` (the runner's ``RunnerSpec``) and ``opencode.json`` for one attempt.

    Every phase runs in the sandbox; ideate/plan/review are one chat completion there (no repo).
    The runner spec is ``core.runner_spec``'s, with the operator's output-limit rule.
    """
    runner = runner_spec.runner_spec(
        prompt=spec.prompt,
        model=model,
        base_url=base_url,
        context=context,
        run_seconds=spec.timeouts.run_seconds,
        idle_seconds=spec.timeouts.idle_seconds,
        phase=spec.phase,
        repo=RepoSource(url=spec.repo.url, ref=spec.repo.ref) if spec.repo is not None else None,
        step_budget=spec.step_budget,
        relay=relay,
        api_key_env=api_key_env,
        review=review,
        engine=engine,
    )
    config = build_config(
        base_url=base_url,
        model=model,
        context=runner.context_limit,
        output=runner.output_limit,
        api_key_env=api_key_env,
    )
    return runner.model_dump(by_alias=True, exclude_none=True, mode="json"), config
