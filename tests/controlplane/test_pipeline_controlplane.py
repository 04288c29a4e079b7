"""A BuildPipeline end to end on the real control plane (issue #16).

The chart's RBAC, ServiceAccounts and approvals ValidatingAdmissionPolicy are applied as rendered; the real
operator runs in kopf as the chart's ServiceAccount (TokenRequest token only); the kubelet fixture is the node
(plan and review run the real runner against the scripted model, the build's result is canned: a real patch
on the real base commit; the ship pod pushes for real to a smart-HTTP git server on loopback). The approval
is written by an impersonated user (`kubectl --as/--as-group`, as an OIDC user would be seen), so the
apiserver's policy checks that identity; the operator's copy of it into the ship step passes the policy only
as the operator's own account. Namespaces of their own: test_operator_rbac.py leaves `bs-system`/`bs-work`
terminating (their pods' node is gone)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import yaml

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.handlers import build_registry
from tests.kube.client import BUILDDISPATCHES, EVENTS, Kube, wait_for
from tests.kube.kopf_runner import fast_settings
from tests.kube.kubelet import Kubelet, PodScript
from tests.operator.conftest import MODEL, is_probe
from tests.operator.smartgit import git, make_remote, smart_git_server
from tests.operator.test_operator_flow import cond, result_line
from tests.operator.test_pipeline_flow import BUILDPIPELINES, PLAN, TASK, pipeline_object
from tests.test_push import FILES, PATCH

from . import chart
from .controlplane import ControlPlane
from .node import KubeletApi, admin_kube, register_node
from .test_approvals_policy import GROUP, POLICY_API
from .test_operator_rbac import Env, chart_settings

pytestmark = pytest.mark.controlplane

SYSTEM = "bsp-system"  # the release namespace
WORK = "bsp-work"  # the pipeline and its steps: Pod Security `restricted`
OPERATOR_USER = f"system:serviceaccount:{SYSTEM}:{chart.RELEASE}-build-studio"
ALICE, MALLORY = "alice@example.com", "mallory@example.com"
TOKEN = "pipeline-push-token"
VALUES = (f"sandbox.serviceAccount.namespaces={{{WORK}}}", "sandbox.credentialSecrets={git-token}")


def _as(user: str, *groups: str) -> list[str]:
    return [f"--as={user}", *(f"--as-group={g}" for g in groups)]


def _approve(cp: ControlPlane, name: str, who: list[str], approved_by: str) -> Any:
    patch = {"spec": {"approval": {"approvedBy": approved_by, "comment": "looks right"}}}
    return cp.kubectl(*who, "patch", "buildpipeline", name, "-n", WORK, "--type=merge", "-p", json.dumps(patch),
                      check=False)


def _wait_enforced(cp: ControlPlane, timeout: float = 30.0) -> None:
    """A new policy takes effect a moment after it is stored: probe (dry run) until a spoofed approval is
    refused."""
    probe = pipeline_object("probe", "https://git.example/calc.git", approval={"approvedBy": "someone-else"})
    probe["metadata"]["namespace"] = WORK
    deadline = time.monotonic() + timeout
    while True:
        done = cp.kubectl(*_as("probe", GROUP), "create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe),
                          check=False)
        if done.returncode != 0 and "ValidatingAdmissionPolicy" in done.stderr:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the approvals policy is not enforced after {timeout:.0f} s: {done.stderr}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, crds: object) -> Iterator[str]:
    """Namespaces; the chart's RBAC, ServiceAccounts and approvals policy; RBAC letting every user patch
    pipelines in WORK (only the policy tells approvers apart). Yields the operator's token."""
    rendered = chart.render(SYSTEM, *VALUES, api_versions=[POLICY_API])
    policies = chart.of_kinds(rendered, ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"))
    assert len(policies) == 2, [d["kind"] for d in rendered]
    for ns in (SYSTEM, WORK):
        control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("label", "namespace", WORK, "pod-security.kubernetes.io/enforce=restricted")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pipeline-users", "namespace": WORK},
            "rules": [{"apiGroups": ["buildstudio.dpf.dev"], "resources": ["buildpipelines"],
                       "verbs": ["create", "get", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "pipeline-users", "namespace": WORK},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pipeline-users"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                             "name": "system:authenticated"}]}
    chart.apply(control_plane, [*chart.of_kinds(rendered, chart.RBAC_KINDS), *policies, role, binding])
    _, token = chart.service_account_kubeconfig(control_plane, SYSTEM, f"{chart.RELEASE}-build-studio",
                                                control_plane.workdir / "pipeline-operator.kubeconfig")
    for ns in (SYSTEM, WORK):
        control_plane.kubectl("wait", "--for=create", "-n", ns, "serviceaccount/default", "--timeout=60s")
    _wait_enforced(control_plane)
    yield token
    listing = {"apiVersion": "v1", "kind": "List", "items": policies}
    control_plane.kubectl("delete", "-f", "-", stdin=json.dumps(listing), check=False)
    for ns in (SYSTEM, WORK):
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


class PipelineEnv(Env):
    """test_operator_rbac's Env in this module's namespaces."""

    def audited(self) -> list[dict[str, Any]]:
        """This account's requests in this module's namespaces (and cluster-scoped ones): the operator is
        cluster-wide and also meets what earlier modules left in their terminating namespaces."""
        return [e for e in self.cp.audit_events(OPERATOR_USER)[self.audit_start:]
                if (e.get("objectRef") or {}).get("namespace") in (None, SYSTEM, WORK)]

    async def operator(self) -> chart.OperatorThread:
        settings = fast_settings()
        settings.scanning.disabled = False  # as deployed: kopf discovers the CRDs
        registry = build_registry(chart_settings(self.rendered, self.model.base_url), namespace=SYSTEM,
                                  kubeconfig=str(self.cp.workdir / "pipeline-operator.kubeconfig"), seed=True)
        op = chart.OperatorThread(registry, settings, server=self.cp.server, ca=self.cp.ca, token=self.token)
        self.operators.append(op)
        await op.start()
        return op


@pytest_asyncio.fixture
async def node(control_plane: ControlPlane, tmp_path: Path) -> AsyncIterator[tuple[Kube, Kubelet]]:
    """The admin's client and the kubelet fixture as a registered Node, for this module's namespaces."""
    kube = admin_kube(control_plane)
    kubelet = Kubelet(kube, workdir=tmp_path / "kubelet", namespaces=(SYSTEM, WORK), separate_uids=None,
                      grace_cap=2.0)
    api = KubeletApi(kubelet, tmp_path / "kubelet-api")
    await api.start()
    await register_node(kube, kubelet.node_name, api.port)
    await kubelet.start()
    kubelet.script(is_probe, PodScript.canned(["1.18.33"]))
    try:
        yield kube, kubelet
    finally:
        await kubelet.stop()
        await api.stop()
        await kube.http.aclose()


async def _status(kube: Kube, name: str) -> dict[str, Any]:
    return dict((await kube.get(BUILDPIPELINES, name, WORK)).get("status") or {})


async def _wait_pipeline(kube: Kube, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:  # noqa: ASYNC109
    async def check() -> dict[str, Any] | None:
        st = await _status(kube, name)
        return st if st.get("phase") in phases else None

    return await wait_for(check, timeout, interval=0.3, message=f"pipeline {name} in phase {phases}")


async def test_a_pipeline_ships_under_the_authenticated_approvers_name(
    control_plane: ControlPlane, installed: str, node: tuple[Kube, Kubelet], tmp_path: Path
) -> None:
    token = installed
    kube, kubelet = node
    root = tmp_path / "srv"
    root.mkdir()
    bare, base = make_remote(root, "calc.git", FILES)
    control_plane.kubectl("create", "secret", "generic", "git-token", "-n", WORK, f"--from-literal=token={TOKEN}")
    review = "subtract is right and NOTES.md says so.\n\nVERDICT: APPROVE"
    async with ScriptedServer([{"text": PLAN}, {"text": review}], model=MODEL, no_aux=True) as model:
        with smart_git_server(root, TOKEN) as server:
            url = server.repo_url("calc.git")
            port = urlsplit(url).port
            # The operator's Settings from the chart's Deployment, rendered with the remote's port allowed.
            rendered = chart.render(SYSTEM, *VALUES, f"egress.gitPorts={{443,22,{port}}}")
            env = PipelineEnv(control_plane, kube, kubelet, model, rendered, token,
                              audit_start=len(control_plane.audit_events(OPERATOR_USER)))
            try:
                await env.operator()
                await env.engine_ready()
                kubelet.script("calc-plan-1", PodScript.run())
                kubelet.script("calc-build-1", PodScript.canned([result_line(PATCH, base_commit=base)]))
                kubelet.script("calc-review-1", PodScript.run())
                creds = {"name": "git-token", "key": "token"}
                obj = pipeline_object("calc", url, phases={"plan": True},
                                      repo={"url": url, "ref": "main", "credentialsSecret": creds},
                                      approvalPolicy={"approvers": [ALICE]})
                obj["metadata"]["namespace"] = WORK
                await kube.create(BUILDPIPELINES, obj, WORK)
                waiting = await _wait_pipeline(kube, "calc", "AwaitingApproval", "Failed")
                assert waiting["phase"] == "AwaitingApproval", waiting
                assert waiting["review"] == {"dispatch": "calc-review", "verdict": "Approve"}

                # Refused by the apiserver, before the operator sees anything: an outsider, and an
                # approver signing as someone else.
                outsider = _approve(control_plane, "calc", _as(MALLORY, "developers"), MALLORY)
                assert outsider.returncode != 0
                assert f"member of the group {GROUP}; {MALLORY} is not" in outsider.stderr, outsider.stderr
                spoofed = _approve(control_plane, "calc", _as(ALICE, GROUP), "bob@example.com")
                assert spoofed.returncode != 0 and f"own user name: {ALICE}" in spoofed.stderr, spoofed.stderr
                assert "approval" not in (await kube.get(BUILDPIPELINES, "calc", WORK))["spec"]

                approved = _approve(control_plane, "calc", _as(ALICE, GROUP), ALICE)
                assert approved.returncode == 0, approved.stderr
                done = await _wait_pipeline(kube, "calc", "Succeeded", "Failed")
                assert done["phase"] == "Succeeded", (done, kubelet.log("calc-ship-1", container="push"))
                print(yaml.safe_dump({"status": done}, sort_keys=False))  # the closing note shows it
                print(control_plane.kubectl("get", "bp", "-n", WORK).stdout)
            finally:
                for op in env.operators:
                    await op.stop()

    heads = git("-C", str(bare), "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
    branches = dict(line.split() for line in heads.splitlines())
    assert done["branch"] == "buildstudio/calc-build"
    assert done["commit"] == branches["refs/heads/buildstudio/calc-build"] and branches["refs/heads/main"] == base
    assert cond(done, "Succeeded")["reason"] == "Shipped" and done["approvedBy"] == ALICE
    assert [(c["stage"], c["phase"]) for c in done["children"]] == [
        ("plan", "Succeeded"), ("build", "Succeeded"), ("review", "Succeeded"), ("ship", "Succeeded")]
    # The operator copied the approval into its ship step (passing the policy as the pipeline's controller).
    ship = await kube.get(BUILDDISPATCHES, "calc-ship", WORK)
    assert ship["spec"]["approval"] == {"approvedBy": ALICE, "comment": "looks right"}, ship["spec"]
    message = git("-C", str(bare), "log", "-1", "--format=%B", done["commit"])
    print(message)
    assert message.splitlines()[0] == f"buildstudio: {TASK}"
    for trailer in ("Build-Studio-Dispatch: calc-build", "Build-Studio-Review: calc-review",
                    f"Build-Studio-Approved-By: {ALICE}"):  # fmt: skip
        assert trailer in message.splitlines(), message
    # The chart's RBAC covers the whole pipeline: the apiserver refused the operator nothing.
    assert env.forbidden() == [], env.forbidden()
    requests = {(e["verb"], e["objectRef"]["resource"], e["objectRef"].get("subresource"))
                for e in env.audited() if "objectRef" in e}
    assert {("create", "builddispatches", None), ("patch", "buildpipelines", "status")} <= requests, requests
    reasons = [e["reason"] for e in await kube.list(EVENTS, WORK) if e["involvedObject"]["name"] == "calc"]
    for reason in ("Planning", "AwaitingApproval", "Approved", "Pushed", "Shipped"):
        assert reasons.count(reason) == 1, (reason, reasons)

