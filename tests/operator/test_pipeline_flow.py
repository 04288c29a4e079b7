"""BuildPipeline through the real operator on the emulator, with the kubelet fixture playing the node:
plan and review run the real runner against the scripted model, the build's result is canned (a real
patch on the real base commit), the ship pod pushes for real to a smart-HTTP git server; and the
refusal paths (the review requests changes, cancel mid-build)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core import pipeline as pl
from tests.kube.client import BUILDDISPATCHES, EVENTS, PODS, SECRETS, Kube, wait_for
from tests.kube.kubectl import Kubectl
from tests.kube.kubelet import Kubelet, PodScript
from tests.operator.conftest import start_cluster
from tests.operator.gitserver import settings_for
from tests.operator.smartgit import git, make_remote, smart_git_server
from tests.operator.test_operator_flow import cond, result_line
from tests.test_push import FILES, PATCH

BUILDPIPELINES = "buildstudio.dpf.dev/v1alpha1/buildpipelines"
TOKEN = "pipeline-push-token"
TASK = "Add subtract(a, b) to calc.py"
PLAN = "1. Add subtract(a, b) to calc.py.\n2. Note it in NOTES.md."


def pipeline_object(name: str, url: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": TASK, "repo": {"url": url, "ref": "main"}, **spec}
    return {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildPipeline",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }


async def pipeline_status(k8s: Kube, name: str) -> dict[str, Any]:
    return dict((await k8s.get(BUILDPIPELINES, name)).get("status") or {})


async def wait_pipeline(k8s: Kube, name: str, *phases: str, timeout: float = 90) -> dict[str, Any]:  # noqa: ASYNC109
    async def check() -> dict[str, Any] | None:
        st = await pipeline_status(k8s, name)
        return st if st.get("phase") in phases else None

    return await wait_for(check, timeout, interval=0.2, message=f"pipeline {name} in phase {phases}")


def _secret(name: str, value: str) -> dict[str, Any]:
    data = {"token": base64.b64encode(value.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}


async def test_plan_build_review_approval_ship(
    k8s: Kube, kubelet: Kubelet, kopf_operator: Any, kubectl: Kubectl, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    bare, base = make_remote(root, "calc.git", FILES)
    await k8s.create(SECRETS, _secret("git-token", TOKEN))
    review = "subtract is right and NOTES.md says so.\n\nVERDICT: APPROVE"
    async with ScriptedServer([{"text": PLAN}, {"text": review}], no_aux=True) as model:
        with smart_git_server(root, TOKEN) as server:
            url = server.repo_url("calc.git")
            settings = settings_for(url, credential_secrets=frozenset({"git-token"}))
            await start_cluster(k8s, kubelet, kopf_operator, model, settings=settings)
            kubelet.script("calc-plan-1", PodScript.run())
            kubelet.script("calc-build-1", PodScript.canned([result_line(PATCH, base_commit=base)]))
            kubelet.script("calc-review-1", PodScript.run())
            creds = {"name": "git-token", "key": "token"}
            obj = pipeline_object(
                "calc", url, phases={"plan": True}, repo={"url": url, "ref": "main", "credentialsSecret": creds}
            )
            await k8s.create(BUILDPIPELINES, obj)

            waiting = await wait_pipeline(k8s, "calc", "AwaitingApproval", "Failed", timeout=120)
            assert waiting["phase"] == "AwaitingApproval", waiting
            assert [cond(waiting, t)["status"] for t in ("Planned", "Built", "Reviewed", "Approved")] == [
                "True", "True", "True", "Unknown"]  # fmt: skip
            assert waiting["review"] == {"dispatch": "calc-review", "verdict": "Approve"}
            # The plan's text reached the build's prompt, marked; the planner got the task verbatim.
            build = await k8s.get(BUILDDISPATCHES, "calc-build")
            assert waiting["diffStat"] == build["status"]["diffStat"] and waiting["diffStat"]["files"] == 1
            assert waiting["diffSummary"] == build["status"]["diffSummary"]
            assert build["spec"]["prompt"].startswith(TASK + "\n\n## Plan (from dispatch calc-plan)\n")
            assert PLAN in build["spec"]["prompt"]
            plan_request = model.chat_requests()[0]
            assert plan_request["messages"][-1]["content"] == TASK
            owners = build["metadata"]["ownerReferences"]
            pipeline = await k8s.get(BUILDPIPELINES, "calc")
            assert owners == [{"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildPipeline",
                               "name": "calc", "uid": pipeline["metadata"]["uid"], "controller": True,
                               "blockOwnerDeletion": True}]  # fmt: skip
            assert await k8s.find(BUILDDISPATCHES, "calc-ship") is None  # nothing ships unapproved

            approval = {"approvedBy": "alice@example.com", "comment": "looks right"}
            await k8s.patch(BUILDPIPELINES, "calc", {"spec": {"approval": approval}})
            await kubectl("wait", "--for=condition=Succeeded", "bp/calc", "--timeout=120s", timeout=130)
            done = await pipeline_status(k8s, "calc")
            assert done["phase"] == "Succeeded", (done, kubelet.log("calc-ship-1", container="push"))
            listed = await kubectl("get", "bp")
            print(listed.stdout)  # the closing note shows it
            print(yaml.safe_dump({"status": done}, sort_keys=False))

    heads = git("-C", str(bare), "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
    branches = dict(line.split() for line in heads.splitlines())
    assert done["branch"] == "buildstudio/calc-build"
    assert done["commit"] == branches["refs/heads/buildstudio/calc-build"] and branches["refs/heads/main"] == base
    assert cond(done, "Succeeded")["reason"] == "Shipped" and done["approvedBy"] == "alice@example.com"
    assert {cond(done, t)["status"] for t in ("Planned", "Built", "Reviewed", "Approved", "Shipped")} == {"True"}
    assert [(c["stage"], c["name"], c["phase"]) for c in done["children"]] == [
        ("plan", "calc-plan", "Succeeded"), ("build", "calc-build", "Succeeded"),
        ("review", "calc-review", "Succeeded"), ("ship", "calc-ship", "Succeeded")]  # fmt: skip
    ship = await k8s.get(BUILDDISPATCHES, "calc-ship")
    assert ship["spec"]["approval"] == approval and ship["spec"]["source"] == {"dispatch": "calc-build"}
    message = git("-C", str(bare), "log", "-1", "--format=%B", done["commit"])
    print(message)
    assert message.splitlines()[0] == f"buildstudio: {TASK}"  # the task's line, not the plan the build also got
    for trailer in ("Build-Studio-Dispatch: calc-build", "Build-Studio-Review: calc-review",
                    "Build-Studio-Approved-By: alice@example.com"):  # fmt: skip
        assert trailer in message.splitlines(), message
    assert listed.stdout.split()[:7] == ["NAME", "PHASE", "REASON", "CURRENT", "DIFF", "VERDICT", "AGE"]
    assert listed.stdout.splitlines()[1].split()[:5] == ["calc", "Succeeded", "Shipped", done["diffSummary"], "Approve"]
    reasons = [e["reason"] for e in await k8s.list(EVENTS, "default") if e["involvedObject"]["name"] == "calc"]
    for reason in ("Planning", "PlanReady", "Building", "BuildSucceeded", "Reviewing", "Approve",
                   "AwaitingApproval", "Approved", "Shipping", "Pushed", "Shipped"):  # fmt: skip
        assert reasons.count(reason) == 1, (reason, reasons)


async def test_a_review_requesting_changes_fails_the_pipeline_with_its_reason(
    k8s: Kube, kubelet: Kubelet, kopf_operator: Any
) -> None:
    review = "subtract returns b - a.\n\nVERDICT: REQUEST_CHANGES"
    async with ScriptedServer([{"text": review}], no_aux=True) as model:
        await start_cluster(k8s, kubelet, kopf_operator, model)
        kubelet.script("fix-build-1", PodScript.canned([result_line(PATCH, base_commit="a" * 40)]))
        kubelet.script("fix-review-1", PodScript.run())
        await k8s.create(BUILDPIPELINES, pipeline_object("fix", "https://example.com/calc.git"))
        failed = await wait_pipeline(k8s, "fix", "Succeeded", "Failed")
    assert failed["phase"] == "Failed" and cond(failed, "Succeeded")["reason"] == "ReviewRequestedChanges", failed
    assert cond(failed, "Reviewed")["status"] == "False" and "subtract returns b - a." in failed["message"]
    assert failed["review"] == {"dispatch": "fix-review", "verdict": "RequestChanges"}
    assert await k8s.find(BUILDDISPATCHES, "fix-ship") is None
    assert "Approved" not in {c["type"] for c in failed["conditions"]}  # it never got that far


async def test_cancel_mid_build_cascades_to_the_running_build(
    k8s: Kube, kubelet: Kubelet, kopf_operator: Any, model_server: ScriptedServer
) -> None:
    await start_cluster(k8s, kubelet, kopf_operator, model_server)
    kubelet.script("stop-build-1", PodScript.canned(["not a record"], running_for=None))  # runs until deleted
    await k8s.create(BUILDPIPELINES, pipeline_object("stop", "https://example.com/calc.git"))

    async def building() -> dict[str, Any] | None:
        st = await pipeline_status(k8s, "stop")
        return st if st.get("phase") == "Building" and st["children"][0]["phase"] == "Running" else None

    await wait_for(building, 60, interval=0.2, message="pipeline stop building with its pod running")
    await k8s.patch(BUILDPIPELINES, "stop", {"spec": {"cancel": True}})
    cancelled = await wait_pipeline(k8s, "stop", "Cancelled", "Failed", "Succeeded", timeout=60)
    assert cancelled["phase"] == "Cancelled" and cond(cancelled, "Succeeded")["reason"] == "Cancelled", cancelled
    assert cond(cancelled, "Built")["status"] == "False"
    build = await k8s.get(BUILDDISPATCHES, "stop-build")
    assert build["spec"]["cancel"] is True and build["status"]["phase"] == "Cancelled"
    assert await k8s.find(PODS, "stop-build-1") is None
    assert await k8s.find(BUILDDISPATCHES, "stop-review") is None
    assert build["metadata"]["labels"][pl.LABEL_PIPELINE] == "stop"


async def test_an_approval_from_outside_the_policy_waits_and_none_in_time_fails_the_pipeline(
    k8s: Kube, kubelet: Kubelet, kopf_operator: Any
) -> None:
    review = "subtract is right.\n\nVERDICT: APPROVE"
    async with ScriptedServer([{"text": review}], no_aux=True) as model:
        await start_cluster(k8s, kubelet, kopf_operator, model)
        kubelet.script("late-build-1", PodScript.canned([result_line(PATCH, base_commit="a" * 40)]))
        kubelet.script("late-review-1", PodScript.run())
        policy = {"approvers": ["bob@example.com"], "timeoutSeconds": 6}
        await k8s.create(BUILDPIPELINES, pipeline_object("late", "https://example.com/calc.git", approvalPolicy=policy))
        waiting = await wait_pipeline(k8s, "late", "AwaitingApproval", "Failed")
        assert waiting["phase"] == "AwaitingApproval", waiting
        await k8s.patch(BUILDPIPELINES, "late", {"spec": {"approval": {"approvedBy": "mallory@example.com"}}})

        async def refused() -> dict[str, Any] | None:
            st = await pipeline_status(k8s, "late")
            return st if st.get("reason") in ("ApproverNotAllowed", "ApprovalTimeout") else None

        seen = await wait_for(refused, 30, interval=0.2, message="pipeline late refusing mallory's approval")
        failed = await wait_pipeline(k8s, "late", "Failed", "Succeeded", timeout=30)
    assert seen["reason"] == "ApproverNotAllowed" and seen["phase"] == "AwaitingApproval", seen
    assert "mallory@example.com is not in approvalPolicy.approvers" in seen["message"]
    assert failed["phase"] == "Failed" and cond(failed, "Succeeded")["reason"] == "ApprovalTimeout", failed
    assert cond(failed, "Approved")["status"] == "False" and "no approval within 6s" in failed["message"]
    assert failed.get("approvedBy", "") == ""
    assert await k8s.find(BUILDDISPATCHES, "late-ship") is None  # nothing shipped


async def test_a_plan_longer_than_the_status_keeps_reaches_the_build_marked_as_cut(
    k8s: Kube, kubelet: Kubelet, kopf_operator: Any
) -> None:
    """The plan dispatch's status.finalText keeps 4 KiB of the answer: the build is told so."""
    plan = "".join(f"{i}. Do step {i} of the long plan.\n" for i in range(400))  # ≈ 12 KiB
    async with ScriptedServer([{"text": plan}], no_aux=True) as model:
        await start_cluster(k8s, kubelet, kopf_operator, model)
        kubelet.script("long-plan-1", PodScript.run())
        kubelet.script("long-build-1", PodScript.canned([result_line(PATCH, base_commit="a" * 40)]))
        phases = {"plan": True, "review": False, "ship": False}
        await k8s.create(BUILDPIPELINES, pipeline_object("long", "https://example.com/calc.git", phases=phases))
        done = await wait_pipeline(k8s, "long", "Succeeded", "Failed")
    assert done["phase"] == "Succeeded" and cond(done, "Succeeded")["reason"] == "Built", done
    assert "(cut: the status keeps its first 4 KiB)" in cond(done, "Planned")["message"]
    prompt = (await k8s.get(BUILDDISPATCHES, "long-build"))["spec"]["prompt"]
    assert "0. Do step 0 of the long plan." in prompt and "399. Do step 399" not in prompt
    assert "[plan cut: the plan dispatch's status keeps only the first 4096 bytes of its answer" in prompt
