"""The five phases through the real operator: plan (text, in the sandbox), then build → review → ship,
the governed gates of a self-development loop. The review and plan pods run the real runner
against the scripted model; the build pod's log is canned (its own test runs real opencode)."""

from __future__ import annotations

import json
from typing import Any

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.protocol import records
from buildstudio.protocol.records import Outcome, PushRecord, ResultRecord
from tests.kube.client import CONFIGMAPS, PODS, Kube
from tests.kube.kopf_runner import KopfOperator  # noqa: F401  (fixture types)
from tests.kube.kubelet import Kubelet, PodScript
from tests.operator.conftest import start_cluster
from tests.operator.test_operator_flow import canned_run, cond, result_line

PATCH = "diff --git a/calc.py b/calc.py\n+def subtract(a, b):\n+    return a - b\n"


async def test_plan_phase_runs_text_generation_in_the_sandbox(k8s: Kube, kubelet: Kubelet, kopf_operator: Any) -> None:
    async with ScriptedServer([{"text": "1. Add subtract.\n2. Test it."}], no_aux=True) as model:
        cluster = await start_cluster(k8s, kubelet, kopf_operator, model)
        kubelet.script("plan-1", PodScript.run())
        await cluster.dispatch("plan", phase="plan", repo=None, prompt="Plan adding subtract.")
        st = await cluster.wait_phase("plan", "Succeeded", "Failed", timeout=60)
        assert st["phase"] == "Succeeded", st
        assert st["finalText"].startswith("1. Add subtract.") and st["diffStat"]["files"] == 0
        sent = model.requests[-1]["body"]
        assert sent["messages"][-1]["content"] == "Plan adding subtract." and "tools" not in sent


async def test_build_review_ship_governed_gates(k8s: Kube, kubelet: Kubelet, kopf_operator: Any) -> None:
    answer = "The change adds subtract with the right semantics.\n\nVERDICT: APPROVE"
    async with ScriptedServer([{"text": answer}], no_aux=True) as model:
        cluster = await start_cluster(k8s, kubelet, kopf_operator, model)
        base = "a" * 40
        kubelet.script("fix-1", PodScript.canned([*canned_run(PATCH)[:-1], result_line(PATCH, base_commit=base)]))
        # The ship pod's push container (its real run: tests/operator/test_ship_push.py).
        pushed = PushRecord(
            reason="Pushed", branch="buildstudio/fix", commit="c" * 40, remote="https://example.com/r.git"
        )
        push_line = records.dump(ResultRecord(outcome=Outcome.COMPLETED, message="pushed", phase="ship", push=pushed))
        kubelet.script("ship-early-1", PodScript.canned([push_line]))
        await cluster.dispatch("fix")
        assert (await cluster.wait_phase("fix", "Succeeded", "Failed"))["phase"] == "Succeeded"

        # Ship before any review: the gate holds it (not a failure: a review may still come).
        await cluster.dispatch(
            "ship-early", phase="ship", repo=None, source={"dispatch": "fix"}, approval={"approvedBy": "alice"}
        )

        async def held() -> dict[str, Any] | None:
            st = await cluster.status("ship-early")
            return st if st.get("reason") == "ReviewMissing" else None

        from tests.kube.client import wait_for

        await wait_for(held, 20, interval=0.1, message="ship held for a review")

        kubelet.script("rev-1", PodScript.run())
        await cluster.dispatch(
            "rev", phase="review", repo=None, source={"dispatch": "fix"}, prompt="Review this change."
        )
        rev = await cluster.wait_phase("rev", "Succeeded", "Failed", timeout=60)
        assert rev["phase"] == "Succeeded", rev
        assert rev["review"]["source"] == "fix" and rev["review"]["verdict"] == "Approve"
        # The last completion (a preflight's GET /v1/models may come after it on a busy machine).
        chat = next(r for r in reversed(model.requests) if r.get("body"))
        prompt = chat["body"]["messages"][-1]["content"]
        assert "+def subtract(a, b):" in prompt and prompt.rstrip().endswith("Review this change.")

        shipped = await cluster.wait_phase("ship-early", "Succeeded", "Failed", timeout=30)
        assert shipped["phase"] == "Succeeded" and cond(shipped, "Succeeded")["reason"] == "Pushed", shipped
        assert cond(shipped, "Admitted")["reason"] == "Approved" and "fix-patch" in cond(shipped, "Admitted")["message"]
        assert shipped["push"] == pushed.model_dump(by_alias=True, exclude={"pull_request_url"})
        # The allowed ship pushed from a pod of its own: one container, no agent, the patch mounted.
        pod = await k8s.get(PODS, "ship-early-1")
        assert [c["name"] for c in pod["spec"]["containers"]] == ["push"] and not pod["spec"].get("initContainers")
        assert {
            "name": "patch",
            "configMap": {"name": "fix-patch", "items": [{"key": "patch.gz", "path": "patch.gz"}]},
        } in pod["spec"]["volumes"]
        ship_json = json.loads((await k8s.get(CONFIGMAPS, "ship-early-config"))["data"]["ship.json"])
        assert ship_json["baseCommit"] == base and ship_json["branch"] == "buildstudio/fix"
        assert ship_json["repoUrl"] == "https://example.com/r.git"
        assert (
            "Build-Studio-Review: rev" in ship_json["message"]
            and "Build-Studio-Approved-By: alice" in ship_json["message"]
        )

        await cluster.dispatch(
            "ship-unapproved-src",
            phase="ship",
            repo=None,
            source={"dispatch": "nope"},
            approval={"approvedBy": "alice"},
        )
        refused = await cluster.wait_phase("ship-unapproved-src", "Failed", timeout=30)
        assert cond(refused, "Succeeded")["reason"] == "NotAdmitted"
        assert cond(refused, "Admitted")["reason"] == "SourceNotReady"
