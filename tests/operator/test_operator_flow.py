"""The real kopf operator against the emulator, with the kubelet fixture playing the node.

Most runs here are canned runner logs (the record protocol); one test runs the real runner
with the real opencode against a scripted model server.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from buildstudio.adapters.metrics import REGISTRY
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core import names
from buildstudio.core.status import size_of
from buildstudio.handlers import FINALIZER, build_registry
from buildstudio.protocol import records
from buildstudio.protocol.records import DiffStat, EventRecord, Outcome, Patch, ProgressRecord, ResultRecord, RunSummary
from tests.kube.client import (
    BUILDDISPATCHES,
    BUILDENGINES,
    CONFIGMAPS,
    EVENTS,
    NETWORKPOLICIES,
    PODS,
    SECRETS,
    wait_for,
)
from tests.kube.kubelet import PodScript
from tests.operator.conftest import FAST, MODEL, Cluster, engine_object, new_operator

REPO_ROOT = Path(__file__).resolve().parents[2]


def patch_of(diff: str) -> Patch:
    raw = diff.encode()
    data = base64.b64encode(gzip.compress(raw)).decode()
    return Patch(data=data, bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())


def result_line(diff: str = "+print('hello')\n", outcome: Outcome = Outcome.COMPLETED, **kw: Any) -> str:
    return records.dump(
        ResultRecord(
            outcome=outcome,
            message=kw.pop("message", "1 files changed (+1 -0) in 2 steps"),
            summary=RunSummary(steps=2, tool_calls=1, final_text="Added hello.py."),
            diff_stat=DiffStat(files=1, additions=diff.count("\n+") + diff.startswith("+")),
            diff=diff[:16384],
            diff_bytes=len(diff.encode()),
            diff_truncated=len(diff) > 16384,
            patch=patch_of(diff) if diff else Patch(),
            **kw,
        )
    )


def canned_run(diff: str = "+print('hello')\n", outcome: Outcome = Outcome.COMPLETED) -> list[str]:
    return [
        records.dump(ProgressRecord(stage="cloning")),
        records.dump(EventRecord(type="tool", message="write hello.py")),
        records.dump(ProgressRecord(stage="running", steps=2, tool_calls=1, tokens=240, last_tool="write hello.py")),
        result_line(diff, outcome),
    ]


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


async def events_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [e for e in await cluster.k8s.list(EVENTS, "default") if e.get("involvedObject", {}).get("name") == name]


async def test_canned_happy_path(cluster: Cluster) -> None:
    cluster.kubelet.script("fix-1", PodScript.canned(canned_run(), line_interval=0.05))
    await cluster.dispatch("fix-1")
    st = await cluster.wait_phase("fix-1", "Succeeded", "Failed")
    assert st["phase"] == "Succeeded", st
    assert cond(st, "Succeeded")["reason"] == "Completed"
    assert [cond(st, t)["status"] for t in ("ModelReady", "Admitted", "Running", "Succeeded")] == [
        "True",
        "True",
        "False",
        "True",
    ]
    assert st["diff"] == "+print('hello')\n" and st["diffSummary"] == "+1/-0"
    assert st["summary"]["steps"] == 2 and st["finalText"] == "Added hello.py."
    assert st["modelService"]["context"] == 65536 and st["engine"] == "opencode"
    pod = await cluster.k8s.get(PODS, "fix-1-1")
    assert pod["metadata"]["ownerReferences"][0]["uid"]
    cm = await cluster.k8s.get(CONFIGMAPS, "fix-1-config")
    assert json.loads(cm["data"]["runner.json"])["contextLimit"] == 65536
    assert await cluster.k8s.get(NETWORKPOLICIES, "fix-1-egress")
    patch = await cluster.k8s.get(CONFIGMAPS, "fix-1-patch")
    assert gzip.decompress(base64.b64decode(patch["binaryData"]["patch.gz"])) == b"+print('hello')\n"
    reasons = [e["reason"] for e in await events_of(cluster, "fix-1")]
    assert {"Admitted", "Completed"} <= set(reasons)
    assert all("\n" not in e["message"] for e in await events_of(cluster, "fix-1"))

    done = REGISTRY.get_sample_value(
        "buildstudio_dispatches_total", {"engine": "opencode", "model": MODEL, "outcome": "Completed"}
    )
    assert done is not None and done >= 1
    assert (REGISTRY.get_sample_value("buildstudio_dispatch_duration_seconds_count") or 0) >= 1

    # Finished without a TTL: no daemon, so no finalizer: deleting it needs no operator.
    async def no_finalizer() -> bool:
        obj = await cluster.k8s.get(BUILDDISPATCHES, "fix-1")
        return not obj["metadata"].get("finalizers")

    await wait_for(no_finalizer, 10, message="finalizer removed after the dispatch finished")
    # Printed for the closing report: a dispatch's status as kubectl would show it.
    print(json.dumps(st, indent=1)[:6000])


def _creates(cluster: Cluster, *plurals: str) -> list[tuple[str, str]]:
    """(plural, name) of each POST the emulator received for ``plurals``, in arrival order."""
    out = []
    for request in cluster.k8s.emulator:
        if request.resource is None or request.resource.plural not in plurals:
            continue
        if str(request.method).upper().endswith("POST") and isinstance(request.data, dict):
            out.append((request.resource.plural, str(request.data.get("metadata", {}).get("name"))))
    return out


async def test_sandbox_is_fail_closed_from_its_first_packet(cluster: Cluster) -> None:
    """The pod goes out first (its own egress policy and ConfigMap right after), so the namespace's
    deny-all baseline, which selects every sandbox pod, must exist before it."""
    cluster.kubelet.script("closed-1", PodScript.canned(canned_run()))
    await cluster.dispatch("closed-1")
    st = await cluster.wait_phase("closed-1", "Succeeded", "Failed")
    assert st["phase"] == "Succeeded", st
    order = _creates(cluster, "networkpolicies", "pods", "configmaps")
    baseline = ("networkpolicies", names.BASELINE_POLICY)
    pod = ("pods", "closed-1-1")
    assert order.index(baseline) < order.index(pod) < order.index(("configmaps", "closed-1-config"))
    assert order.index(pod) < order.index(("networkpolicies", "closed-1-egress"))
    policy = await cluster.k8s.get(NETWORKPOLICIES, names.BASELINE_POLICY)
    labels = (await cluster.k8s.get(PODS, "closed-1-1"))["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in policy["spec"] and "ingress" not in policy["spec"]  # allows nothing
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert not policy["metadata"].get("ownerReferences")  # shared by the namespace's dispatches
    # A second dispatch in the namespace finds the baseline known: it is not created again.
    cluster.kubelet.script("closed-2", PodScript.canned(canned_run()))
    await cluster.dispatch("closed-2")
    await cluster.wait_phase("closed-2", "Succeeded", "Failed")
    assert _creates(cluster, "networkpolicies").count(baseline) == 1
    # The finalizer the dispatch's daemon needs came with kopf's own write after the create
    # handler (a merge patch), not from a JSON patch racing the status write.
    meta_patches = [
        r.data
        for r in cluster.k8s.emulator
        if r.resource is not None
        and r.resource.plural == "builddispatches"
        and r.name == "closed-1"
        and r.subresource is None
        and str(r.method).upper().endswith("PATCH")
    ]
    assert meta_patches[0]["metadata"]["finalizers"] == [FINALIZER]
    # …and no JSON patch adding it raced that write from the event in between (the one removing
    # it once the dispatch has finished and needs no daemon is expected).
    added = [op for p in meta_patches if isinstance(p, list) for op in p if op["op"] == "add"]
    assert not added, meta_patches


def opencode_bin() -> str | None:
    explicit = os.environ.get("OPENCODE_BIN")
    local = REPO_ROOT / ".tools" / "opencode" / "node_modules" / ".bin" / "opencode"
    for candidate in (explicit, str(local) if local.exists() else None):
        if candidate and Path(candidate).exists():
            return candidate
    from shutil import which

    return which("opencode")


@pytest.mark.opencode
@pytest.mark.slow
async def test_real_runner_and_opencode_to_succeeded(
    k8s: Any, kubelet: Any, kopf_operator: Any, model_server: ScriptedServer, tmp_path: Path
) -> None:
    """The whole sandbox pod for real: clone (init), relay (sidecar), agent (init: real opencode),
    reporter (main), each under its own uid when the test runs as root."""
    binary = opencode_bin()
    if binary is None:
        pytest.skip("opencode binary not found (OPENCODE_BIN, .tools/opencode, PATH)")
    from tests.operator.conftest import start_cluster
    from tests.operator.gitserver import served_repo, settings_for

    async with served_repo(tmp_path, {"README.md": "# demo\n"}) as url:
        cluster = await start_cluster(k8s, kubelet, kopf_operator, model_server, settings=settings_for(url))
        kubelet.script("real-1", PodScript.run(env={"OPENCODE_BIN": binary}))
        await cluster.dispatch("real-1", repo={"url": url, "ref": "main"})
        st = await cluster.wait_phase("real-1", "Succeeded", "Failed", timeout=120)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert "hello.py" in st["diff"] and "+print('hello')" in st["diff"]
    assert st["diffStat"]["files"] == 1 and st["summary"]["toolCalls"] >= 1
    assert st["summary"]["reportedBy"] == "agent"
    assert model_server.chat_requests(with_tools=True), "opencode never reached the scripted model"
    print(json.dumps(st, indent=1)[:6000])


async def test_gate_refusal(cluster: Cluster) -> None:
    await cluster.dispatch("nogate", engine="does-not-exist")
    st = await cluster.wait_phase("nogate", "Failed")
    assert cond(st, "Admitted")["reason"] == "EngineNotFound"
    assert cond(st, "Succeeded")["reason"] == "NotAdmitted"
    assert await cluster.k8s.find(PODS, "nogate-1") is None


async def test_preflight_model_not_found(cluster: Cluster) -> None:
    await cluster.dispatch("nomodel", model="no-such-model")
    st = await cluster.wait_phase("nomodel", "Failed")
    assert cond(st, "ModelReady")["status"] == "False" and cond(st, "ModelReady")["reason"] == "ModelNotFound"
    assert cond(st, "Succeeded")["reason"] == "PreflightFailed"
    assert "no-such-model" in cond(st, "Succeeded")["message"]
    labels = {"engine": st["engine"], "reason": "ModelNotFound"}  # the engine the gate resolved
    failures = REGISTRY.get_sample_value("buildstudio_preflight_failures_total", labels)
    assert failures is not None and failures >= 1


async def test_preflight_context_too_small_and_below_floor(cluster: Cluster) -> None:
    async with ScriptedServer([{"text": "x"}], model="small") as small:
        tiny = engine_object(small.base_url, context=8192)
        tiny["metadata"]["name"] = "tiny"
        tiny["spec"]["models"][0]["id"] = "small"
        await cluster.k8s.create(BUILDENGINES, tiny)
        floor = engine_object(small.base_url, context=32768)
        floor["metadata"]["name"] = "floor"
        floor["spec"]["models"][0]["id"] = "small"
        await cluster.k8s.create(BUILDENGINES, floor)
        await wait_for(lambda: _present(cluster, "tiny"), 20, message="engine tiny present")
        await wait_for(lambda: _present(cluster, "floor"), 20, message="engine floor present")
        cluster.kubelet.script("warned", PodScript.canned(canned_run()))
        await cluster.dispatch("toosmall", engine="tiny", model="small")
        await cluster.dispatch("warned", engine="floor", model="small")
        st = await cluster.wait_phase("toosmall", "Failed")
        assert cond(st, "ModelReady")["reason"] == "ContextTooSmall"
        assert "8192" in cond(st, "ModelReady")["message"] and "16384" in cond(st, "ModelReady")["message"]
        st = await cluster.wait_phase("warned", "Succeeded", "Failed")
        assert st["phase"] == "Succeeded"
        assert cond(st, "ModelReady")["reason"] == "ContextBelowFloor"
        assert "32768" in cond(st, "ModelReady")["message"] and "65536" in cond(st, "ModelReady")["message"]


async def test_model_service_api_key_reaches_the_operators_probes(cluster: Cluster) -> None:
    """An engine whose model service wants a key (vLLM --api-key, LM Studio LM_API_TOKEN): the
    operator's preflight and model-service timer send it from ``modelService.apiKeySecret``;
    with the wrong key the dispatch is refused as AuthRequired."""
    token = base64.b64encode(b"s3cret\n").decode()  # as `kubectl create secret --from-file` keeps a newline
    await cluster.k8s.create(
        SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-key"}, "data": {"token": token}}
    )
    wrong = base64.b64encode(b"nope").decode()
    await cluster.k8s.create(
        SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stale-key"}, "data": {"token": wrong}}
    )
    async with ScriptedServer([{"text": "x"}], model=MODEL, api_key="s3cret") as keyed:
        for name, secret in (("keyed", "model-key"), ("stale", "stale-key")):
            engine = engine_object(keyed.base_url)
            engine["metadata"]["name"] = name
            engine["spec"]["modelService"]["apiKeySecret"] = {"name": secret, "key": "token"}
            await cluster.k8s.create(BUILDENGINES, engine)
            await wait_for(lambda n=name: _present(cluster, n), 20, message=f"engine {name} present")
        cluster.kubelet.script("with-key", PodScript.canned(canned_run()))
        await cluster.dispatch("with-key", engine="keyed")
        await cluster.dispatch("stale-key", engine="stale")
        st = await cluster.wait_phase("with-key", "Succeeded", "Failed")
        assert st["phase"] == "Succeeded" and cond(st, "ModelReady")["reason"] == "Ready", st
        st = await cluster.wait_phase("stale-key", "Failed")
        assert cond(st, "ModelReady")["reason"] == "AuthRequired", st
        assert "401" in cond(st, "ModelReady")["message"]

        async def service_ready() -> dict[str, Any] | None:
            obj = await cluster.k8s.find(BUILDENGINES, "keyed")
            conds = ((obj or {}).get("status") or {}).get("conditions") or []
            ready = next((c for c in conds if c["type"] == "ModelServiceReady"), None)
            return ready if ready and ready["status"] == "True" else None

        await wait_for(service_ready, 20, message="engine keyed ModelServiceReady")
        sent = {r["headers"].get("Authorization") for r in keyed.requests}
        assert "Bearer s3cret" in sent
        pod = await cluster.k8s.get(PODS, "with-key-1")
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "model-credential"]
        # The relay sidecar reads it itself (a Secret volume of its own); no value in the spec.
        assert volume["secret"]["secretName"] == "model-key" and volume["secret"]["items"][0]["key"] == "token"
        assert "s3cret" not in json.dumps(pod) and "s3cret" not in json.dumps(st)


async def _present(cluster: Cluster, name: str) -> bool:
    obj = await cluster.k8s.find(BUILDENGINES, name)
    return bool(((obj or {}).get("status") or {}).get("present"))


async def test_preflight_unreachable_until_queue_timeout(cluster: Cluster) -> None:
    dead = engine_object("http://127.0.0.1:9/v1")
    dead["metadata"]["name"] = "dead"
    await cluster.k8s.create(BUILDENGINES, dead)
    await wait_for(lambda: _present(cluster, "dead"), 20, message="engine dead present")
    await cluster.dispatch("unreach", engine="dead", timeouts={"queueSeconds": 2})
    st = await cluster.wait_phase("unreach", "Failed", timeout=20)
    assert cond(st, "ModelReady")["reason"] == "EndpointUnreachable"
    assert cond(st, "Succeeded")["reason"] == "PreflightFailed"


async def test_queue_limit_one_with_three_dispatches(
    k8s: Any, kubelet: Any, kopf_operator: Any, model_server: ScriptedServer
) -> None:
    from tests.operator.conftest import start_cluster

    def gauge() -> float:  # buildstudio_dispatches_running, as the operator's /metrics serves it
        return REGISTRY.get_sample_value("buildstudio_dispatches_running", {"engine": "opencode"}) or 0.0

    idle, most_gauge = gauge(), 0.0
    cluster = await start_cluster(k8s, kubelet, kopf_operator, model_server, max_running=1, per_model=1)
    for name in ("q1", "q2", "q3"):
        # Like the runner, the pod exits right after its result record (~1.2 s in).
        cluster.kubelet.script(name, PodScript.canned(canned_run(), line_interval=0.3))
    for name in ("q1", "q2", "q3"):
        await cluster.dispatch(name)
        await asyncio.sleep(0.05)  # distinct creation order
    positions: dict[str, set[int]] = {"q2": set(), "q3": set()}
    most_running = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 45
    while loop.time() < deadline:
        statuses = {n: await cluster.status(n) for n in ("q1", "q2", "q3")}
        # The limit counts admitted, unfinished dispatches (a finished one's pod may take a moment to exit).
        running = [n for n, s in statuses.items() if s.get("phase") == "Running"]
        most_running = max(most_running, len(running))
        most_gauge = max(most_gauge, gauge() - idle)
        for n in ("q2", "q3"):
            if statuses[n].get("queuePosition"):
                positions[n].add(statuses[n]["queuePosition"])
        if all(s.get("phase") == "Succeeded" for s in statuses.values()):
            break
        await asyncio.sleep(0.1)
    final = [await cluster.status(n) for n in ("q1", "q2", "q3")]
    assert [s.get("phase") for s in final] == ["Succeeded"] * 3
    assert most_running == 1
    assert most_gauge == 1  # the gauge agrees with the statuses, and is back where it was once all finished
    for _ in range(50):
        if gauge() == idle:
            break
        await asyncio.sleep(0.05)
    assert gauge() == idle
    assert 2 in positions["q3"] and 1 in positions["q2"]
    admitted = [s["admittedAt"] for s in final]
    assert admitted == sorted(admitted)


async def test_cancel_mid_run_keeps_partial_diff(cluster: Cluster) -> None:
    # A stand-in runner: progress, then on SIGTERM the result record with the partial diff (as the runner does).
    final = result_line("+partial\n", Outcome.CANCELLED, message="cancelled after 1 steps")
    progress = records.dump(ProgressRecord(stage="running", steps=1))
    code = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    print({final!r}, flush=True)\n"
        "    sys.exit(1)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"print({progress!r}, flush=True)\n"
        "time.sleep(60)\n"
    )
    # The stand-in plays the agent container; the pod's deletion means the reporter never runs,
    # so the partial diff shown is the agent's own record (labelled so in status.summary).
    agent = PodScript.run(command=[sys.executable, "-c", code])
    cluster.kubelet.script("cancel-1", PodScript.canned([], containers={"agent": agent}))
    await cluster.dispatch("cancel-1")
    # The pod stays Pending while its init containers (the agent among them) run: progress says it works.
    await wait_for(lambda: _has_progress(cluster, "cancel-1"), 20, message="progress in status")
    await cluster.k8s.patch(BUILDDISPATCHES, "cancel-1", {"spec": {"cancel": True}})
    st = await cluster.wait_phase("cancel-1", "Cancelled", "Failed", "Succeeded", timeout=20)
    assert st["phase"] == "Cancelled" and cond(st, "Succeeded")["reason"] == "Cancelled"
    assert st.get("diff") == "+partial\n", json.dumps(st, indent=1)
    assert st["summary"]["reportedBy"] == "agent"
    assert not st.get("patchConfigMap")  # an agent's account is shown, never stored as a patch


async def _pod_running(cluster: Cluster, name: str) -> bool:
    pod = await cluster.k8s.find(PODS, name)
    return bool(pod and (pod.get("status") or {}).get("phase") == "Running")


async def _has_progress(cluster: Cluster, name: str) -> bool:
    return bool((await cluster.status(name)).get("progress"))


async def test_run_timeout_backstop(cluster: Cluster) -> None:
    cluster.kubelet.script("slow-1", PodScript.hang([records.dump(ProgressRecord(stage="running"))]))
    await cluster.dispatch("slow-1", timeouts={"runSeconds": 30, "idleSeconds": 30})
    st = await cluster.wait_phase("slow-1", "Failed", "Succeeded", timeout=30)
    assert cond(st, "Succeeded")["reason"] == "TimedOut", st


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (PodScript.oom_killed([records.dump(ProgressRecord(stage="running"))], running_for=0.2), "OOMKilled"),
        (PodScript.evicted(running_for=0.2), "Evicted"),
        (PodScript.unschedulable(), "Unschedulable"),
        (PodScript.image_pull_backoff(), "ImagePullBackOff"),
        (PodScript.canned(["Traceback: boom"], exit_code=1), "PodFailed"),
    ],
)
async def test_pod_failure_reasons(cluster: Cluster, script: PodScript, reason: str) -> None:
    cluster.kubelet.script("pf", script)
    await cluster.dispatch("pf")
    st = await cluster.wait_phase("pf", "Failed", "Succeeded", timeout=30)
    assert cond(st, "Succeeded")["reason"] == reason, st


async def test_daemons_wake_on_pod_and_spec_changes_not_on_a_timer(cluster: Cluster) -> None:
    """With a 5-minute backstop for pending pods, only watch events can move these dispatches on
    in time: the pod starting (pod events) and a cancel (a spec edit)."""
    await cluster.operator.stop()
    slow = replace(FAST, pending_recheck_seconds=300.0, unschedulable_grace_seconds=600.0)
    operator = await cluster.start_operator(build_registry(slow, namespace="default", seed=False))
    cluster.kubelet.script("wake-run", PodScript.canned(canned_run(), running_for=0.5))
    cluster.kubelet.script("wake-cancel", PodScript.unschedulable())
    await cluster.dispatch("wake-run")
    await cluster.dispatch("wake-cancel")
    st = await cluster.wait_phase("wake-run", "Succeeded", "Failed", timeout=20)
    assert st["phase"] == "Succeeded", st

    async def unschedulable() -> bool:
        return cond(await cluster.status("wake-cancel"), "Running").get("reason") == "Unschedulable"

    await wait_for(unschedulable, 20, message="wake-cancel mirrors Unschedulable")
    await cluster.k8s.patch(BUILDDISPATCHES, "wake-cancel", {"spec": {"cancel": True}}, "default")
    st = await cluster.wait_phase("wake-cancel", "Cancelled", "Failed", timeout=20)
    assert cond(st, "Succeeded")["reason"] == "Cancelled", st
    await operator.stop()


async def test_operator_restart_mid_run_resumes_without_second_pod(cluster: Cluster) -> None:
    cluster.kubelet.script("rs", PodScript.canned(canned_run(), running_for=4.0))
    await cluster.dispatch("rs")
    await wait_for(lambda: _pod_running(cluster, "rs-1"), 20, message="pod running")
    await cluster.operator.stop()
    await asyncio.sleep(0.5)
    second = await new_operator(cluster.start_operator)
    st = await cluster.wait_phase("rs", "Succeeded", "Failed", timeout=30)
    assert st["phase"] == "Succeeded" and st["diff"] == "+print('hello')\n"
    pods = [
        p["metadata"]["name"]
        for p in await cluster.k8s.list(PODS, "default")
        if p["metadata"]["name"].startswith("rs-")
    ]
    assert pods == ["rs-1"] and st["attempt"] == 1
    await second.stop()


async def test_dispatch_created_while_operator_down_gets_one_pod(cluster: Cluster) -> None:
    await cluster.operator.stop()
    cluster.kubelet.script("down", PodScript.canned(canned_run()))
    await cluster.dispatch("down")
    await new_operator(cluster.start_operator)
    st = await cluster.wait_phase("down", "Succeeded", "Failed", timeout=30)
    assert st["phase"] == "Succeeded"
    names = [p["metadata"]["name"] for p in await cluster.k8s.list(PODS, "default")]
    assert names.count("down-1") == 1 and "down-2" not in names


async def test_huge_diff_and_10k_events_keep_status_within_budget(cluster: Cluster) -> None:
    diff = "".join(f"+line {i} " + "y" * 80 + "\n" for i in range(3000))  # ~270 KB
    lines = [records.dump(EventRecord(type="tool", message=f"edit f{i}.py " + "x" * 300)) for i in range(10_000)]
    lines.append(result_line(diff))
    cluster.kubelet.script("huge", PodScript.canned(lines))
    await cluster.dispatch("huge")
    st = await cluster.wait_phase("huge", "Succeeded", "Failed", timeout=60)
    assert st["phase"] == "Succeeded"
    assert size_of(st) <= 32 * 1024, size_of(st)
    assert st["diffTruncated"] is True and st["diffBytes"] == len(diff.encode())
    assert len(st["recentEvents"]) <= 20
    cm = await cluster.k8s.get(CONFIGMAPS, "huge-patch")
    assert gzip.decompress(base64.b64decode(cm["binaryData"]["patch.gz"])).decode() == diff


async def test_malformed_log_lines_are_skipped(cluster: Cluster) -> None:
    lines = ["not json at all", '{"kind": "progress"', '{"kind":"alien","v":1}', *canned_run()]
    cluster.kubelet.script("junk", PodScript.canned(lines))
    await cluster.dispatch("junk")
    st = await cluster.wait_phase("junk", "Succeeded", "Failed")
    assert st["phase"] == "Succeeded" and st["diff"] == "+print('hello')\n"


async def test_ttl_deletes_finished_dispatch(cluster: Cluster) -> None:
    cluster.kubelet.script("ttl", PodScript.canned(canned_run()))
    await cluster.dispatch("ttl", ttlSecondsAfterFinished=1)
    await cluster.wait_phase("ttl", "Succeeded", "Failed")

    async def gone() -> bool:
        return await cluster.k8s.find(BUILDDISPATCHES, "ttl") is None

    await wait_for(gone, 15, interval=0.2, message="dispatch deleted by TTL")


async def test_watch_410_gone_relists_and_handles_new_dispatches(cluster: Cluster) -> None:
    cluster.k8s.emulator.fail_next_watch_with_gone(BUILDDISPATCHES)
    cluster.kubelet.script("after410", PodScript.canned(canned_run()))
    await cluster.dispatch("after410")
    st = await cluster.wait_phase("after410", "Succeeded", "Failed", timeout=30)
    assert st["phase"] == "Succeeded"
    names = [p["metadata"]["name"] for p in await cluster.k8s.list(PODS, "default")]
    assert names.count("after410-1") == 1
