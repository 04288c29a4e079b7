"""The real operator on the real control plane, as the chart's ServiceAccount, RBAC enforced as rendered.

The chart is rendered with `helm template`; its ServiceAccounts, ClusterRole(Binding)s and Role(Binding)s are
applied; the operator (kopf in a thread, `build_registry` with the chart Deployment's environment) logs in
with a TokenRequest token of its ServiceAccount and nothing else. The kubelet fixture is the node: it binds
pods through `pods/binding`, writes `pods/status`, and serves `/containerLogs/` over HTTPS, where the
apiserver proxies `pods/log` (node.py). The apiserver's audit log (controlplane.py) records every request
of the operator's account with its response code, so "no 403" and "this 403" are read from the server.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core.settings import from_env
from buildstudio.handlers import build_registry
from tests.kube.client import BUILDDISPATCHES, BUILDENGINES, PODS, Kube, wait_for
from tests.kube.kopf_runner import fast_settings
from tests.kube.kubelet import Kubelet, PodScript
from tests.operator.conftest import FAST, MODEL, WRITE_SCRIPT, dispatch_object, is_probe
from tests.operator.test_operator_flow import canned_run

from . import chart
from .controlplane import ControlPlane
from .node import KubeletApi, admin_kube, register_node

pytestmark = pytest.mark.controlplane

SYSTEM = "bs-system"  # the release namespace: the operator, its probe pods, its Secrets
WORK = "bs-work"  # where dispatches run: Pod Security `restricted` enforced
OPERATOR = f"{chart.RELEASE}-build-studio"
OPERATOR_USER = f"system:serviceaccount:{SYSTEM}:{OPERATOR}"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return chart.render(SYSTEM, f"sandbox.serviceAccount.namespaces={{{WORK}}}")


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, crds: object, rendered: list[dict[str, Any]]) -> Iterator[Path]:
    """Namespaces, the chart's RBAC and ServiceAccounts; the operator's kubeconfig (TokenRequest token)."""
    for ns in (SYSTEM, WORK):
        control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("label", "namespace", WORK, "pod-security.kubernetes.io/enforce=restricted")
    applied = chart.apply(control_plane, chart.of_kinds(rendered, chart.RBAC_KINDS))
    assert f"clusterrole.rbac.authorization.k8s.io/{OPERATOR} serverside-applied" in applied, applied
    path, _ = chart.service_account_kubeconfig(control_plane, SYSTEM, OPERATOR,
                                               control_plane.workdir / "operator.kubeconfig")
    # pods need `default` (ServiceAccount admission) even when they name another account
    for ns in (SYSTEM, WORK):
        control_plane.kubectl("wait", "--for=create", "-n", ns, "serviceaccount/default", "--timeout=60s")
    yield path
    for ns in (SYSTEM, WORK):
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def chart_settings(rendered: list[dict[str, Any]], model_url: str) -> Any:
    """The Settings the chart's Deployment gives the operator (its env), with the test tier's timings,
    the scripted model service, and the egress/plaintext allowances every operator test here needs."""
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
           if "value" in e}
    base = from_env(env)
    timings = {f: getattr(FAST, f) for f in ("status_patch_interval", "image_pull_grace_seconds",
                                             "unschedulable_grace_seconds", "result_grace_seconds",
                                             "cancel_grace_seconds", "preflight_interval", "queue_poll_interval",
                                             "run_timeout_slack")}
    return dataclasses.replace(base, **timings, model_base_url=model_url,
                               egress=dataclasses.replace(base.egress, allow_cidrs=("0.0.0.0/0",)),
                               sandbox=dataclasses.replace(base.sandbox, allow_plaintext_credentials=True))


@dataclasses.dataclass
class Env:
    cp: ControlPlane
    kube: Kube
    kubelet: Kubelet
    model: ScriptedServer
    rendered: list[dict[str, Any]]
    token: str
    operators: list[chart.OperatorThread] = dataclasses.field(default_factory=list)
    audit_start: int = 0  # the operator account's audit events before this test

    def audited(self) -> list[dict[str, Any]]:
        """The operator account's requests during this test, as the apiserver's audit log has them."""
        return self.cp.audit_events(OPERATOR_USER)[self.audit_start:]

    async def operator(self) -> chart.OperatorThread:
        settings = fast_settings()
        settings.scanning.disabled = False  # as deployed: kopf discovers the CRDs (the chart's CRD rule)
        registry = build_registry(chart_settings(self.rendered, self.model.base_url), namespace=SYSTEM,
                                  kubeconfig=str(self.cp.workdir / "operator.kubeconfig"), seed=True)
        op = chart.OperatorThread(registry, settings, server=self.cp.server, ca=self.cp.ca, token=self.token)
        self.operators.append(op)
        await op.start()
        return op

    async def engine_ready(self) -> None:
        """The seeded `opencode` engine, pointed at the scripted model (no context report: declared)."""
        await wait_for(lambda: self.kube.find(BUILDENGINES, "opencode"), 30, message="seeded BuildEngine")
        engine = await self.kube.get(BUILDENGINES, "opencode")
        models = [{**m, "contextOverride": 65536} for m in engine["spec"]["models"]]
        await self.kube.patch(BUILDENGINES, "opencode", {"spec": {"models": models}})

        async def present() -> bool:
            obj = await self.kube.find(BUILDENGINES, "opencode")
            return bool(((obj or {}).get("status") or {}).get("present"))

        await wait_for(present, 30, interval=0.2, message="engine opencode present")

    def op_lines(self) -> list[str]:
        return [line for op in self.operators for line in op.tap.lines]

    def forbidden(self) -> list[str]:
        return [f"{e['verb']} {e.get('objectRef') or e.get('requestURI')}"
                for e in self.audited()
                if (e.get("responseStatus") or {}).get("code") == 403]


@pytest_asyncio.fixture
async def env(control_plane: ControlPlane, installed: Path, rendered: list[dict[str, Any]],
              tmp_path: Path) -> AsyncIterator[Env]:
    token = json.loads(installed.read_text())["users"][0]["user"]["token"]  # noqa: ASYNC240 (a small local file)
    kube = admin_kube(control_plane)
    kubelet = Kubelet(kube, workdir=tmp_path / "kubelet", namespaces=(SYSTEM, WORK), separate_uids=None,
                      grace_cap=2.0)
    api = KubeletApi(kubelet, tmp_path / "kubelet-api")
    await api.start()
    await register_node(kube, kubelet.node_name, api.port)
    await kubelet.start()
    kubelet.script(is_probe, PodScript.canned(["1.18.33"]))
    try:
        async with ScriptedServer(WRITE_SCRIPT, model=MODEL) as model:
            e = Env(control_plane, kube, kubelet, model, rendered, token,
                    audit_start=len(control_plane.audit_events(OPERATOR_USER)))
            try:
                yield e
            finally:
                for op in e.operators:
                    await op.stop()
    finally:
        await kubelet.stop()
        await api.stop()
        await kube.http.aclose()


def _dispatch(name: str, **spec: Any) -> dict[str, Any]:
    body = dispatch_object(name, **spec)
    body["metadata"]["namespace"] = WORK
    return body


async def _phase(kube: Kube, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:  # noqa: ASYNC109
    async def check() -> dict[str, Any] | None:
        obj = await kube.find(BUILDDISPATCHES, name, WORK)
        st = dict((obj or {}).get("status") or {})
        return st if st.get("phase") in phases else None

    return await wait_for(check, timeout, interval=0.2, message=f"{name} in phase {phases}")


async def test_the_chart_rbac_is_enough_for_the_whole_flow(env: Env) -> None:
    """Seed and probe the engine, admit a dispatch in a `restricted` namespace, run its pod, read its result
    from the reporter's log through the apiserver, finish; not one 403. Deleting the dispatch then takes its
    pod, ConfigMaps and NetworkPolicy with it, through the garbage collector."""
    await env.operator()
    await env.engine_ready()
    env.kubelet.script("rbac-1", PodScript.canned(canned_run(), line_interval=0.05))
    await env.kube.create(BUILDDISPATCHES, _dispatch("rbac-1"), WORK)
    st = await _phase(env.kube, "rbac-1", "Succeeded", "Failed")
    assert st["phase"] == "Succeeded", st
    assert st["diff"] == "+print('hello')\n"
    pod = await env.kube.get(PODS, "rbac-1-1", WORK)
    assert pod["spec"]["nodeName"] == env.kubelet.node_name
    assert pod["spec"]["serviceAccountName"] == f"{OPERATOR}-sandbox"
    assert env.forbidden() == [], env.forbidden()
    assert not [line for line in env.op_lines() if "403" in line or "orbidden" in line]
    requests = {(e["verb"], e["objectRef"]["resource"])
                for e in env.audited() if "objectRef" in e}
    assert {("create", "pods"), ("create", "buildengines"), ("create", "networkpolicies")} <= requests, requests

    children = [("pod", "rbac-1-1"), ("configmap", "rbac-1-config"), ("configmap", "rbac-1-patch"),
                ("networkpolicy", "rbac-1-egress")]
    for kind, name in children:
        env.cp.kubectl("get", kind, name, "-n", WORK)
    env.cp.kubectl("delete", "builddispatch", "rbac-1", "-n", WORK, "--wait=false")
    for kind, name in children:
        env.cp.kubectl("wait", "--for=delete", f"{kind}/{name}", "-n", WORK, "--timeout=60s", timeout=70)


def _without(rendered: list[dict[str, Any]], resource: str, verb: str) -> dict[str, Any]:
    role = copy.deepcopy(next(d for d in rendered if d["kind"] == "ClusterRole"))
    rule = next(r for r in role["rules"] if r["apiGroups"] == [""] and r["resources"] == [resource])
    rule["verbs"].remove(verb)
    return role


async def test_one_verb_less_and_the_flow_fails_with_a_visible_403(env: Env) -> None:
    """`create` on pods removed from the chart's ClusterRole: the apiserver refuses the sandbox pod (the
    audit log has that one 403), the operator logs it (kopf retries the admission),
    and no pod exists. The chart's rule is restored afterwards."""
    await env.operator()  # with the full rules: the engine is seeded and present
    await env.engine_ready()
    await env.operators[-1].stop()
    role = next(d for d in env.rendered if d["kind"] == "ClusterRole")
    chart.apply(env.cp, [_without(env.rendered, "pods", "create")])
    try:
        await env.operator()
        await env.kube.create(BUILDDISPATCHES, _dispatch("rbac-2"), WORK)
        refused = f'cannot create resource \\"pods\\" in API group \\"\\" in the namespace \\"{WORK}\\"'

        def logged() -> list[str]:
            return [line for line in env.op_lines() if "403 Forbidden" in line and refused in line]

        lines = await wait_for(logged, 30, interval=0.3, message="the operator logging the 403")
        assert lines[0].startswith("ERROR kopf.objects: Handler 'admit' failed"), lines[0]
        forbidden = [e["objectRef"] for e in env.audited()
                     if (e.get("responseStatus") or {}).get("code") == 403]
        assert forbidden and {(o["resource"], o.get("namespace")) for o in forbidden} <= {
            ("pods", WORK), ("pods", SYSTEM)}, forbidden  # the sandbox pod, and a re-probe of the engine
        assert await env.kube.find(PODS, "rbac-2-1", WORK) is None
        st = dict((await env.kube.get(BUILDDISPATCHES, "rbac-2", WORK)).get("status") or {})
        assert st.get("phase") != "Succeeded", st
    finally:
        chart.apply(env.cp, [role])
        await env.operators[-1].stop()
        env.cp.kubectl("delete", "builddispatch", "rbac-2", "-n", WORK, "--wait=false", check=False)
