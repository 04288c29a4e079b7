"""The built operator image reconciles on the real control plane (issue 20; tests/controlplane/README.md).

The image's own ENTRYPOINT runs (chroot into the image's rootfs, uid 65532, read-only root, a /tmp and the
chart's engines file as its only mounts: what the chart's Deployment gives the pod) with the args and env of
the chart's rendered Deployment, authenticated as the chart's operator ServiceAccount only (a TokenRequest
token in a kubeconfig; RBAC as rendered). The apiserver is the real one on loopback, the node is the kubelet
fixture (tests/controlplane/node.py), the model service is the scripted server on loopback: the process in
the image shares the host's network. The test applies a BuildEngine and a BuildDispatch and reads back what
the image's operator did: the engine probed, the sandbox pod with its four containers, a status with
conditions, the result read from the reporter through the apiserver; /healthz and /metrics answer; not one
403 in the apiserver's audit log of that account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
import yaml

from buildstudio import pins
from buildstudio.commands.scripted_server import ScriptedServer
from tests.controlplane import chart
from tests.controlplane.controlplane import KUBECTL, ControlPlane, free_port, missing, write_kubeconfig
from tests.controlplane.node import KubeletApi, admin_kube, register_node
from tests.images.conftest import Image, buildah, images_missing
from tests.kube.client import BUILDDISPATCHES, BUILDENGINES, PODS, ApiError, Kube, wait_for
from tests.kube.kubelet import Kubelet, PodScript
from tests.operator.conftest import MODEL, WRITE_SCRIPT, dispatch_object, engine_object, is_probe
from tests.operator.test_operator_flow import canned_run

T = TypeVar("T")

pytestmark = [pytest.mark.images, pytest.mark.controlplane, pytest.mark.slow]

# Names of their own: a control plane reused from tests/controlplane keeps that module's release (`bs`).
RELEASE = "bsimg"
SYSTEM = "bsimg-system"
WORK = "bsimg-work"  # Pod Security `restricted` enforced, as in test_operator_rbac.py
OPERATOR = f"{RELEASE}-build-studio"
OPERATOR_USER = f"system:serviceaccount:{SYSTEM}:{OPERATOR}"
ENGINE = "image-opencode"  # a user-made engine (the seeded `opencode` may exist from another module)
SEEDED = "opencode"  # what the chart's engine registry seeds
DISPATCH = "image-1"
# Inside the image: where the mounts land (the chart mounts the engines ConfigMap at the same path).
KUBE_DIR, ENGINES_DIR = "/etc/kube", "/etc/buildstudio/engines"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane when tests/controlplane already started one (one apiserver on two
    cores, not two); else one of this module's own, stopped after it."""
    absent = missing()
    if absent:
        images_missing(f"control plane {pins.KUBE_CONTROL_PLANE_VERSION}/etcd {pins.ETCD_VERSION} not built "
                       f"(run `make controlplane`; missing {absent[0]})")
    if not (KUBECTL.is_file() and chart.HELM.is_file()):
        images_missing(f"no kubectl/helm in {KUBECTL.parent} (run `make setup`)")
    from tests.controlplane import conftest as session

    for cp in session._STARTED:
        api = cp.processes.get("kube-apiserver")
        if api is not None and api.poll() is None:
            yield cp
            return
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane-image"))
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


def _render() -> list[dict[str, Any]]:
    argv = [str(chart.HELM), "template", RELEASE, str(chart.CHART), "--namespace", SYSTEM,
            "--set", f"sandbox.serviceAccount.namespaces={{{WORK}}}"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _owned_by(path: Path, mode: int) -> Path:
    """Readable by the image's uid only, as the kubelet mounts a projected token (uid 65532, 0600)."""
    os.chown(path, 65532, 65532)
    path.chmod(mode)
    return path


def _operator_mounts(cp: ControlPlane, rendered: list[dict[str, Any]], work: Path) -> list[tuple[str, Path, str]]:
    """/etc/kube (the ServiceAccount's kubeconfig and the cluster CA), the chart's engines ConfigMap, /tmp."""
    kube = work / "kube"
    kube.mkdir()
    shutil.copy(cp.ca, kube / "ca.crt")
    token = cp.kubectl("create", "token", OPERATOR, "-n", SYSTEM, "--duration=1h").stdout.strip()
    write_kubeconfig(kube / "config", cp.server, Path(KUBE_DIR) / "ca.crt", OPERATOR_USER, token)
    for path, mode in ((kube, 0o500), (kube / "config", 0o400), (kube / "ca.crt", 0o444)):
        _owned_by(path, mode)
    engines = work / "engines"
    engines.mkdir()
    configmap = next(d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-engines"))
    for key, text in configmap["data"].items():
        (engines / key).write_text(text, encoding="utf-8")
        (engines / key).chmod(0o444)
    tmp = work / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    return [("ro", kube, KUBE_DIR), ("ro", engines, ENGINES_DIR), ("rw", tmp, "/tmp")]


def _operator_env(rendered: list[dict[str, Any]], model_url: str, metrics: int) -> dict[str, str]:
    """The Deployment's env as rendered; the downward-API fields filled in; the model service and git egress
    of this test (loopback; no DNS here, so the dispatch's remote is allowed by CIDR); quick intervals."""
    container = _deployment(rendered)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    egress = json.loads(env["BUILDSTUDIO_EGRESS"])
    egress["allowCIDRs"] = ["0.0.0.0/0"]
    return {
        **env,
        "POD_ID": "bsimg-operator-0",
        "BUILDSTUDIO_NAMESPACE": SYSTEM,
        "BUILDSTUDIO_MODEL_BASE_URL": model_url,
        "BUILDSTUDIO_EGRESS": json.dumps(egress),
        "BUILDSTUDIO_ALLOW_PLAINTEXT_CREDENTIALS": "true",
        "BUILDSTUDIO_METRICS_PORT": str(metrics),
        "BUILDSTUDIO_STATUS_PATCH_INTERVAL": "0.3",
        "BUILDSTUDIO_PREFLIGHT_INTERVAL": "3",
        "BUILDSTUDIO_QUEUE_POLL_INTERVAL": "0.3",
        "KUBECONFIG": f"{KUBE_DIR}/config",
    }


def _deployment(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in rendered if d["kind"] == "Deployment")


def _operator_args(rendered: list[dict[str, Any]], health: int) -> list[str]:
    """The Deployment's args, with the liveness endpoint on a free loopback port (the machine is shared)."""
    args = _deployment(rendered)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--liveness=") for a in args), args
    return [f"--liveness=http://127.0.0.1:{health}/healthz" if a.startswith("--liveness=") else a for a in args]


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> Iterator[list[dict[str, Any]]]:
    """CRDs, namespaces, the chart's RBAC and ServiceAccounts as rendered; the rendered chart."""
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart.REPO_ROOT / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "crd/builddispatches.buildstudio.dpf.dev",
               "crd/buildengines.buildstudio.dpf.dev", "--timeout=60s", timeout=70)
    for ns in (SYSTEM, WORK):
        cp.kubectl("create", "namespace", ns)
    cp.kubectl("label", "namespace", WORK, "pod-security.kubernetes.io/enforce=restricted")
    rendered = _render()
    chart.apply(cp, chart.of_kinds(rendered, chart.RBAC_KINDS))
    for ns in (SYSTEM, WORK):  # pods need `default` (ServiceAccount admission)
        cp.kubectl("wait", "--for=create", "-n", ns, "serviceaccount/default", "--timeout=60s", timeout=70)
    try:
        yield rendered
    finally:
        for ns in (SYSTEM, WORK):
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        rbac = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in chart.of_kinds(rendered, chart.RBAC_KINDS)
                if d["kind"].startswith("Cluster")]
        cp.kubectl("delete", "--ignore-not-found", "--wait=false", *rbac, check=False)


class ImageProcess:
    """The image's entry point under `unshare`/`chroot` (conftest.Image.argv), leading its own process group
    so that stop() ends exactly it and what it started; its output goes to a file (no pipe to fill)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "RO_ROOT": "1"})

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait(self, predicate: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:  # noqa: ASYNC109
        """`wait_for`, bounded; a timeout names the operator's last log lines."""
        try:
            return await wait_for(predicate, timeout, interval=0.3, message=what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- the image's operator:\n{self.tail()}") from None

    def stop(self, grace: float = 20.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@pytest_asyncio.fixture
async def node(control_plane: ControlPlane, installed: object, tmp_path: Path) -> AsyncIterator[Kubelet]:
    """The kubelet fixture as the node, for the two namespaces of this module; probes answer the pin."""
    kube = admin_kube(control_plane)
    kubelet = Kubelet(kube, workdir=tmp_path / "kubelet", namespaces=(SYSTEM, WORK), separate_uids=None,
                      grace_cap=2.0)
    api = KubeletApi(kubelet, tmp_path / "kubelet-api")
    await api.start()
    try:
        await register_node(kube, kubelet.node_name, api.port)
        await kubelet.start()
        kubelet.script(is_probe, PodScript.canned([pins.OPENCODE_VERSION]))
        yield kubelet
    finally:
        await kubelet.stop()
        await api.stop()
        await kube.http.aclose()


def _config(image: Image) -> dict[str, Any]:
    """The image's OCI config (buildah 1.28's --format has no `json` function: the whole inspect it is)."""
    return dict(json.loads(buildah("inspect", "--type", "image", image.name))["OCIv1"]["config"])


async def test_the_operator_image_reconciles_on_the_real_control_plane(
    operator_image: Image, control_plane: ControlPlane, installed: list[dict[str, Any]], node: Kubelet,
    tmp_path: Path,
) -> None:
    cp, rendered, kube = control_plane, installed, node.kube
    audit_start = len(cp.audit_events(OPERATOR_USER))
    # The operator seeds the registry's `opencode` engine; it goes afterwards unless it was there before.
    seeded = [SEEDED] if await kube.find(BUILDENGINES, SEEDED) is None else []
    health, metrics = free_port(), free_port()
    async with ScriptedServer(WRITE_SCRIPT, model=MODEL) as model:
        # A user's BuildEngine, applied before the operator starts: the operator probes it in the image
        # named by the chart (the kubelet fixture answers the probe) and marks it present.
        engine = engine_object(model.base_url)
        engine["metadata"]["name"] = ENGINE
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(engine))
        # The image's own ENTRYPOINT, USER and WORKDIR: the chart's Deployment sets args only.
        config = _config(operator_image)
        assert config["Entrypoint"] and config["User"] == "65532:65532", config
        operator = ImageProcess(
            operator_image.argv(
                [*config["Entrypoint"], *_operator_args(rendered, health)],
                uid=65532,
                mounts=_operator_mounts(cp, rendered, tmp_path),
                env=_operator_env(rendered, model.base_url, metrics),
                cwd=config.get("WorkingDir") or "/",
            ),
            tmp_path / "operator.log",
        )
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:

                async def healthy() -> httpx.Response | None:
                    assert operator.proc.poll() is None, f"the operator exited:\n{operator.tail()}"
                    with contextlib.suppress(httpx.TransportError):
                        answer = await http.get(f"http://127.0.0.1:{health}/healthz")
                        return answer if answer.status_code == 200 else None
                    return None

                await operator.wait(healthy, 90, "/healthz of the image's operator")
                scraped = await http.get(f"http://127.0.0.1:{metrics}/metrics")
                assert scraped.status_code == 200 and "# TYPE" in scraped.text

                async def present() -> bool:
                    obj = await kube.find(BUILDENGINES, ENGINE)
                    return bool(((obj or {}).get("status") or {}).get("present"))

                await operator.wait(present, 60, f"engine {ENGINE} present")

                node.script(DISPATCH, PodScript.canned(canned_run(), line_interval=0.05))
                await kube.create(BUILDDISPATCHES, _dispatch(), WORK)

                async def finished() -> dict[str, Any] | None:
                    obj = await kube.find(BUILDDISPATCHES, DISPATCH, WORK)
                    st = dict((obj or {}).get("status") or {})
                    return st if st.get("phase") in ("Succeeded", "Failed") else None

                st = await operator.wait(finished, 90, f"{DISPATCH} finished")
                pod = await kube.find(PODS, st.get("podName") or f"{DISPATCH}-1", WORK)
                # The operator must still be healthy after the whole flow.
                assert (await http.get(f"http://127.0.0.1:{health}/healthz")).status_code == 200
        finally:
            await _delete_while_the_operator_runs(kube, [ENGINE, *seeded])
            code = await asyncio.to_thread(operator.stop)

    assert st["phase"] == "Succeeded", (st, operator.tail())
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert {"ModelReady", "Admitted", "Running", "Succeeded"} <= set(conditions), conditions
    assert conditions["Succeeded"] == "True" and st["reason"] == "Completed", st
    assert st["diff"] == "+print('hello')\n"  # the result, read from the reporter's log through the apiserver
    assert pod is not None, "no sandbox pod"
    spec = pod["spec"]
    assert [c["name"] for c in [*spec["initContainers"], *spec["containers"]]] == ["clone", "relay", "agent",
                                                                                 "reporter"]
    sandbox_image = _operator_env(rendered, "", 0)["BUILDSTUDIO_SANDBOX_IMAGE"]  # the chart's reference
    assert {c["image"] for c in [*spec["initContainers"], *spec["containers"]]} == {sandbox_image}
    assert spec["serviceAccountName"] == f"{OPERATOR}-sandbox" and spec["nodeName"] == node.node_name
    # Authenticated as the chart's ServiceAccount, and its RBAC was enough: not one 403.
    audited = cp.audit_events(OPERATOR_USER)[audit_start:]
    assert {("create", "pods"), ("patch", "builddispatches")} <= {
        (e["verb"], e["objectRef"]["resource"]) for e in audited if "objectRef" in e}
    assert [e["requestURI"] for e in audited if (e.get("responseStatus") or {}).get("code") == 403] == []
    assert code in (0, -signal.SIGTERM), f"the operator exited {code} on SIGTERM:\n{operator.tail()}"


def _dispatch() -> dict[str, Any]:
    body = dispatch_object(DISPATCH, engine=ENGINE)
    body["metadata"]["namespace"] = WORK
    return body


async def _delete_while_the_operator_runs(kube: Kube, engines: list[str]) -> None:
    """The dispatch and the engines carry the operator's finalizer: delete them before it stops (a reused
    control plane keeps no stuck cluster-scoped engine). Best effort, bounded."""
    with contextlib.suppress(ApiError):
        await kube.delete(BUILDDISPATCHES, DISPATCH, WORK)
    for name in engines:
        with contextlib.suppress(ApiError):
            await kube.delete(BUILDENGINES, name)

    async def gone() -> bool:
        return all([await kube.find(BUILDENGINES, name) is None for name in engines])

    with contextlib.suppress(AssertionError):
        await wait_for(gone, 15, interval=0.3, message=f"engines {engines} deleted")
