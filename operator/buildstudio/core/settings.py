"""Operator-wide settings that shape decisions (sandbox defaults, budgets, grace periods).

Plain frozen data so the core stays pure; the operator builds one from its environment
(``from_env``) at start-up, tests build their own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

GpuAffinity = Literal["preferred", "required", "none"]


@dataclass(frozen=True)
class SandboxDefaults:
    image: str = "ghcr.io/dpf-dev/buildstudio-sandbox:latest"
    runner_command: tuple[str, ...] = (
        "python",
        "-m",
        "buildstudio.runner",
        "--spec",
        "/etc/buildstudio/runner.json",
    )
    uid: int = 65532
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
class Settings:
    sandbox: SandboxDefaults = field(default_factory=SandboxDefaults)
    status_budget_bytes: int = 32 * 1024
    diff_excerpt_bytes: int = 16 * 1024
    final_text_bytes: int = 4 * 1024
    recent_events: int = 20
    patch_cap_bytes: int = 1024 * 1024
    status_patch_interval: float = 2.0  # throttle for live progress patches
    image_pull_grace_seconds: float = 120.0  # ImagePullBackOff is only fatal after this
    unschedulable_grace_seconds: float = 600.0
    result_grace_seconds: float = 10.0  # wait for the log's result record after the pod ended
    cancel_grace_seconds: int = 10
    # A pending pod's changes wake its dispatch (watch events); this is only the backstop look.
    pending_recheck_seconds: float = 10.0
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
        runtime_class_name=env.get("BUILDSTUDIO_RUNTIME_CLASS") or None,
        requests=requests,
        limits=limits,
        workspace_size=env.get("BUILDSTUDIO_WORKSPACE_SIZE") or base.workspace_size,
        home_size=env.get("BUILDSTUDIO_HOME_SIZE") or base.home_size,
        tmp_size=env.get("BUILDSTUDIO_TMP_SIZE") or base.tmp_size,
    )
    return Settings(
        sandbox=sandbox,
        status_patch_interval=_env_float(env, "BUILDSTUDIO_STATUS_PATCH_INTERVAL", 2.0),
        image_pull_grace_seconds=_env_float(env, "BUILDSTUDIO_IMAGE_PULL_GRACE", 120.0),
        preflight_interval=_env_float(env, "BUILDSTUDIO_PREFLIGHT_INTERVAL", 30.0),
        queue_poll_interval=_env_float(env, "BUILDSTUDIO_QUEUE_POLL_INTERVAL", 2.0),
        model_base_url=env.get("BUILDSTUDIO_MODEL_BASE_URL") or None,
        model_backend=env.get("BUILDSTUDIO_MODEL_BACKEND") or None,
        max_running=_env_int(env, "BUILDSTUDIO_MAX_RUNNING"),
        max_running_per_model=_env_int(env, "BUILDSTUDIO_MAX_RUNNING_PER_MODEL"),
    )
