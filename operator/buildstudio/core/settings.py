"""Operator-wide settings that shape decisions (sandbox defaults, budgets, grace periods).

Plain frozen data so the core stays pure; the operator builds one from its environment
(``from_env``) at start-up, tests build their own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

GpuAffinity = Literal["preferred", "required", "none"]


@dataclass(frozen=True)
class SandboxDefaults:
    image: str = "ghcr.io/dpf-dev/buildstudio-sandbox:latest"
    python: tuple[str, ...] = ("python",)  # the sandbox image's interpreter; the roles are modules
    uid: int = 65532  # the agent (and the clone before it); also the pod's fsGroup
    relay_uid: int = 65533  # the relay sidecar: holds the model service's key
    reporter_uid: int = 65530  # the reporter: recomputes the diff, prints the result record
    # Credentials (git token, model key) over plain http:// only when the admin allows it.
    allow_plaintext_credentials: bool = False
    # Secrets a dispatch may name (core/credentials.py): "name" (any namespace) or "namespace/name".
    credential_secrets: frozenset[str] = frozenset()
    gpu_affinity: GpuAffinity = "preferred"
    gpu_node_label: str = "nvidia.com/gpu.present"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_toleration: bool = True  # tolerate the nvidia.com/gpu taint unless the spec gives tolerations
    service_account_name: str | None = None  # a ServiceAccount with no RBAC (the chart makes one)
    termination_grace_seconds: int = 30
    requests: Mapping[str, str] = field(
        default_factory=lambda: {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"}
    )
    limits: Mapping[str, str] = field(default_factory=lambda: {"memory": "4Gi", "ephemeral-storage": "8Gi"})
    workspace_size: str = "4Gi"
    home_size: str = "1Gi"
    tmp_size: str = "1Gi"
    runtime_class_name: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    dns_namespace: str = "kube-system"
    dns_pod_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})


@dataclass(frozen=True)
class ModelPeer:
    """The pods behind an in-cluster model service, as the admin names them (the operator reads
    no Service: no extra RBAC). ``service`` empty: any service of the namespace."""

    namespace: str
    service: str = ""
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # the pods' (target) port; None: the URL's port


@dataclass(frozen=True)
class EgressSettings:
    """What a sandbox pod may reach besides DNS (core/egress.py); no dispatch can widen it."""

    git_ports: tuple[int, ...] = (443, 22)
    # The git allow-list: when either is set, git traffic goes only there (remotes are not resolved).
    allow_cidrs: tuple[str, ...] = ()
    allow_namespaces: tuple[str, ...] = ()
    # Excepted from every ipBlock, besides link-local (always): the node network, the API server.
    node_cidrs: tuple[str, ...] = ()
    api_server_cidrs: tuple[str, ...] = ()
    model_peers: tuple[ModelPeer, ...] = ()
    cluster_domain: str = "cluster.local"
    resolve_timeout_seconds: float = 5.0


LockMode = Literal["auto", "allow", "deny"]


@dataclass(frozen=True)
class SandboxLocks:
    """Which ``spec.sandbox`` fields a dispatch may set (core/locks.py). ``auto``: only while the
    admin left the field unset; ``allow`` / ``deny``: always / never."""

    runtime_class_name: LockMode = "auto"
    image: LockMode = "auto"
    tolerations: LockMode = "auto"
    node_selector: LockMode = "auto"
    affinity: LockMode = "auto"
    # The most a dispatch may request or limit, per resource; "gpu" stands for the GPU resource.
    max_resources: Mapping[str, str] = field(
        default_factory=lambda: {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "20Gi", "gpu": "1"}
    )


@dataclass(frozen=True)
class Settings:
    sandbox: SandboxDefaults = field(default_factory=SandboxDefaults)
    egress: EgressSettings = field(default_factory=EgressSettings)
    locks: SandboxLocks = field(default_factory=SandboxLocks)
    status_budget_bytes: int = 32 * 1024
    diff_excerpt_bytes: int = 16 * 1024
    final_text_bytes: int = 4 * 1024
    recent_events: int = 20
    patch_cap_bytes: int = 1024 * 1024
    # Throttle for live progress patches (BUILDSTUDIO_STATUS_PATCH_INTERVAL). With the runner's 2 s
    # progress records, 2 s keeps status within ~2 s of the log (p95) at ~30 writes per running
    # dispatch a minute; 5 s cuts those writes (and kopf's events from them) 2.3x for ~5 s of
    # staleness. Figures: bench/README.md (operator_scale.py --status-interval).
    status_patch_interval: float = 2.0
    # A queued dispatch's new queue position alone is written at most this often
    # (BUILDSTUDIO_QUEUE_POSITION_INTERVAL); its first position, and its admission, go out at once.
    queue_position_interval: float = 10.0
    image_pull_grace_seconds: float = 120.0  # ImagePullBackOff is only fatal after this
    unschedulable_grace_seconds: float = 600.0
    result_grace_seconds: float = 10.0  # wait for the log's result record after the pod ended
    cancel_grace_seconds: int = 10
    # A pending pod's changes wake its dispatch (watch events); this is only the backstop look.
    pending_recheck_seconds: float = 10.0
    # A running pod wakes its dispatch by itself (pod watch events, progress records, spec edits);
    # the clock matters only for the run timeout; this is the backstop look.
    running_recheck_seconds: float = 10.0
    # The runner enforces runSeconds itself; the operator stops the pod this much later as a backstop.
    run_timeout_slack: float = 30.0
    preflight_interval: float = 30.0
    queue_poll_interval: float = 2.0
    # Install-wide overrides of the seeded local engine (the chart's modelService / concurrency values).
    model_base_url: str | None = None
    model_backend: str | None = None
    max_running: int | None = None
    max_running_per_model: int | None = None


def _env_float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    return float(raw) if raw else default


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    return int(raw) if raw else None


def _resources(raw: str | None) -> tuple[Mapping[str, str], Mapping[str, str]]:
    """``BUILDSTUDIO_SANDBOX_RESOURCES``: JSON ``{"requests": {...}, "limits": {...}}``."""
    base = SandboxDefaults()
    if not raw:
        return base.requests, base.limits
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("BUILDSTUDIO_SANDBOX_RESOURCES must be a JSON object with requests and limits")
    requests = {str(k): str(v) for k, v in (value.get("requests") or {}).items()}
    limits = {str(k): str(v) for k, v in (value.get("limits") or {}).items()}
    return requests, limits


def _json_object(raw: str | None, key: str) -> dict[str, Any]:
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a JSON object")
    return value


def _cidrs(values: Any, key: str) -> tuple[str, ...]:
    """CIDRs (or single addresses) in their canonical form; a bad one fails start-up, not a dispatch."""
    try:
        return tuple(str(ipaddress.ip_network(str(v), strict=False)) for v in values or ())
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _egress(raw: str | None, service_host: str | None) -> EgressSettings:
    """``BUILDSTUDIO_EGRESS``: the chart's ``egress`` block as JSON. ``service_host``: the API
    server address the operator itself is given (KUBERNETES_SERVICE_HOST), always excepted."""
    key = "BUILDSTUDIO_EGRESS"
    value = _json_object(raw, key)
    base = EgressSettings()
    api = list(_cidrs(value.get("apiServerCIDRs"), f"{key}.apiServerCIDRs"))
    if service_host:
        with contextlib.suppress(ValueError):  # a host name: nothing to add
            api.append(str(ipaddress.ip_network(ipaddress.ip_address(service_host))))
    peers = tuple(
        ModelPeer(
            namespace=str(p["namespace"]),
            service=str(p.get("service") or ""),
            pod_labels={str(k): str(v) for k, v in (p.get("podSelector") or {}).items()},
            port=int(p["port"]) if p.get("port") else None,
        )
        for p in value.get("modelServices") or ()
    )
    ports = tuple(int(p) for p in value["gitPorts"]) if "gitPorts" in value else base.git_ports
    return EgressSettings(
        git_ports=ports,
        allow_cidrs=_cidrs(value.get("allowCIDRs"), f"{key}.allowCIDRs"),
        allow_namespaces=tuple(str(n) for n in value.get("allowNamespaces") or ()),
        node_cidrs=_cidrs(value.get("nodeCIDRs"), f"{key}.nodeCIDRs"),
        api_server_cidrs=tuple(dict.fromkeys(api)),
        model_peers=peers,
        cluster_domain=str(value.get("clusterDomain") or base.cluster_domain),
        resolve_timeout_seconds=float(value.get("resolveTimeoutSeconds") or base.resolve_timeout_seconds),
    )


def _locks(raw: str | None) -> SandboxLocks:
    """``BUILDSTUDIO_SANDBOX_LOCKS``: the chart's ``sandbox.locks`` block as JSON."""
    key = "BUILDSTUDIO_SANDBOX_LOCKS"
    value = _json_object(raw, key)

    def mode(name: str) -> LockMode:
        got = value.get(name, "auto")
        if got not in ("auto", "allow", "deny"):
            raise ValueError(f"{key}.{name} must be auto|allow|deny, not {got!r}")
        return got  # type: ignore[no-any-return]  # one of the literals, checked above

    ceilings = value.get("maxResources")
    return SandboxLocks(
        runtime_class_name=mode("runtimeClassName"),
        image=mode("image"),
        tolerations=mode("tolerations"),
        node_selector=mode("nodeSelector"),
        affinity=mode("affinity"),
        max_resources=SandboxLocks().max_resources
        if ceilings is None
        else {str(k): str(v) for k, v in ceilings.items()},
    )


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``BUILDSTUDIO_*`` environment variables (the chart sets them)."""
    env = os.environ if env is None else env
    affinity = env.get("BUILDSTUDIO_GPU_AFFINITY", "preferred")
    if affinity not in ("preferred", "required", "none"):
        raise ValueError(f"BUILDSTUDIO_GPU_AFFINITY must be preferred|required|none, not {affinity!r}")
    requests, limits = _resources(env.get("BUILDSTUDIO_SANDBOX_RESOURCES"))
    base = SandboxDefaults()
    sandbox = SandboxDefaults(
        image=env.get("BUILDSTUDIO_SANDBOX_IMAGE", SandboxDefaults.image),
        gpu_affinity=affinity,  # type: ignore[arg-type]  # checked above
        gpu_node_label=env.get("BUILDSTUDIO_GPU_NODE_LABEL") or base.gpu_node_label,
        gpu_toleration=env.get("BUILDSTUDIO_GPU_TOLERATION", "true").lower() != "false",
        service_account_name=env.get("BUILDSTUDIO_SANDBOX_SERVICE_ACCOUNT") or None,
        allow_plaintext_credentials=env.get("BUILDSTUDIO_ALLOW_PLAINTEXT_CREDENTIALS", "false").lower() == "true",
        credential_secrets=frozenset(
            s.strip() for s in env.get("BUILDSTUDIO_CREDENTIAL_SECRETS", "").split(",") if s.strip()
        ),
        runtime_class_name=env.get("BUILDSTUDIO_RUNTIME_CLASS") or None,
        requests=requests,
        limits=limits,
        workspace_size=env.get("BUILDSTUDIO_WORKSPACE_SIZE") or base.workspace_size,
        home_size=env.get("BUILDSTUDIO_HOME_SIZE") or base.home_size,
        tmp_size=env.get("BUILDSTUDIO_TMP_SIZE") or base.tmp_size,
    )
    return Settings(
        sandbox=sandbox,
        egress=_egress(env.get("BUILDSTUDIO_EGRESS"), env.get("KUBERNETES_SERVICE_HOST")),
        locks=_locks(env.get("BUILDSTUDIO_SANDBOX_LOCKS")),
        status_patch_interval=_env_float(env, "BUILDSTUDIO_STATUS_PATCH_INTERVAL", 2.0),
        queue_position_interval=_env_float(env, "BUILDSTUDIO_QUEUE_POSITION_INTERVAL", 10.0),
        image_pull_grace_seconds=_env_float(env, "BUILDSTUDIO_IMAGE_PULL_GRACE", 120.0),
        preflight_interval=_env_float(env, "BUILDSTUDIO_PREFLIGHT_INTERVAL", 30.0),
        queue_poll_interval=_env_float(env, "BUILDSTUDIO_QUEUE_POLL_INTERVAL", 2.0),
        model_base_url=env.get("BUILDSTUDIO_MODEL_BASE_URL") or None,
        model_backend=env.get("BUILDSTUDIO_MODEL_BACKEND") or None,
        max_running=_env_int(env, "BUILDSTUDIO_MAX_RUNNING"),
        max_running_per_model=_env_int(env, "BUILDSTUDIO_MAX_RUNNING_PER_MODEL"),
    )
