"""The BuildPipeline's decisions (core/pipeline.py), pure: every transition, the children's names and
specs, the plan in the build's prompt, failures that stop the pipeline, the revision round, cancel."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from buildstudio.api.dispatch import Approval, BuildDispatch
from buildstudio.api.pipeline import BuildPipeline, BuildPipelineSpec, BuildPipelineStatus
from buildstudio.core import conditions as c
from buildstudio.core import pipeline as pl
from buildstudio.core.pipeline import CancelChild, Child, CreateChild, Emit, Pipeline, Step
from tests import crdcheck

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
UID = "0b8c-pipeline-uid"
TASK = "Add subtract(a, b) to calc.py."
STAT = {"files": 1, "additions": 2, "deletions": 0, "binaryFiles": 0}


def make(status: dict[str, Any] | None = None, **spec: Any) -> Pipeline:
    body: dict[str, Any] = {"prompt": TASK, "repo": {"url": "https://example.com/calc.git"}, **spec}
    return Pipeline("calc", "default", UID, 1, BuildPipelineSpec.model_validate(body), status or {})


def kid(name: str, phase: str = "Succeeded", **kw: Any) -> Child:
    return Child(name=name, owner_uid=UID, phase=phase, **kw)


def built(name: str = "calc-build", **kw: Any) -> Child:
    return kid(name, diff_stat=STAT, diff="+def subtract(a, b):\n+    return a - b\n", **kw)


def reviewed(name: str = "calc-review", source: str = "calc-build", verdict: str = "Approve", **kw: Any) -> Child:
    kw.setdefault("final_text", f"Fine.\n\nVERDICT: {'APPROVE' if verdict == 'Approve' else 'REQUEST_CHANGES'}")
    return kid(name, verdict=verdict, review_source=source, **kw)


def decide(p: Pipeline, *children: Child, now: datetime = NOW) -> Step:
    step = pl.decide(p, {k.name: k for k in children}, now)
    BuildPipelineStatus.model_validate(step.status)  # every status written fits the CRD's schema
    return step


def then(p: Pipeline, step: Step) -> Pipeline:
    """The pipeline as the next look sees it: with the status the step wrote."""
    return replace(p, status=step.status)


def cond(step: Step, type_: str) -> dict[str, Any]:
    found = c.find(step.status.get("conditions"), type_)
    assert found is not None, (type_, step.status.get("conditions"))
    return dict(found)


def created(step: Step) -> list[CreateChild]:
    return [a for a in step.actions if isinstance(a, CreateChild)]


def events(step: Step) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in step.actions if isinstance(a, Emit)]


def child_spec(action: CreateChild) -> Any:
    return BuildDispatch.model_validate(action.manifest).spec


def through_review(p: Pipeline) -> tuple[Pipeline, tuple[Child, ...]]:
    """A pipeline whose build and review succeeded (the review approving)."""
    kids = (built(), reviewed())
    step = decide(p)
    step = decide(then(p, step), kids[0])
    return then(p, step), kids


# ---------------------------------------------------------------- names and children


def test_child_names_are_deterministic_and_fit_a_label() -> None:
    assert pl.child_name("calc", "build") == "calc-build"
    assert pl.child_name("calc", "build", 1) == "calc-build-r1"
    long = "p" * 250
    names = [pl.child_name(long, s, r) for s in ("plan", "build", "review", "ship") for r in (0, 1)]
    assert all(len(n) <= 63 for n in names) and len(set(names)) == len(names)
    assert names == [pl.child_name(long, s, r) for s in ("plan", "build", "review", "ship") for r in (0, 1)]
    assert all(n.endswith(("-plan", "-build", "-review", "-ship", "-r1")) for n in names)


def test_child_names_follow_the_phases() -> None:
    assert pl.child_names("calc", make().spec) == ["calc-build", "calc-review", "calc-ship"]
    spec = make(phases={"plan": True}, revisions=1).spec
    assert pl.child_names("calc", spec) == [
        "calc-plan", "calc-build", "calc-review", "calc-build-r1", "calc-review-r1", "calc-ship",
    ]  # fmt: skip
    assert pl.child_names("calc", make(phases={"review": False, "ship": False}).spec) == ["calc-build"]


def test_a_new_pipeline_creates_its_build_owned_and_labelled() -> None:
    p = make(models={"build": "qwen3-coder"}, timeouts={"runSeconds": 600})
    step = decide(p)
    [action] = created(step)
    meta = action.manifest["metadata"]
    assert action.name == meta["name"] == "calc-build" and meta["namespace"] == "default"
    assert meta["ownerReferences"] == [
        {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildPipeline", "name": "calc", "uid": UID,
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    assert meta["labels"][pl.LABEL_PIPELINE] == "calc" and meta["labels"][pl.LABEL_STAGE] == "build"
    spec = child_spec(action)
    assert spec.phase == "build" and spec.prompt == TASK and spec.repo.url == "https://example.com/calc.git"
    assert spec.model == "qwen3-coder" and spec.timeouts.run_seconds == 600
    assert step.status["phase"] == "Building" and step.status["current"] == "calc-build"
    assert cond(step, "Built")["status"] == "Unknown"
    assert step.status["children"] == [{"stage": "build", "name": "calc-build", "round": 0, "phase": ""}]
    assert events(step) == [("Normal", "Building")] and step.wake_after == pl.POLL_SECONDS
    assert step.status["observedGeneration"] == 1


def test_unset_models_leave_the_choice_to_the_engines_strong_tier() -> None:
    spec = child_spec(created(decide(make()))[0])
    assert spec.model is None and spec.engine is None  # the gate then picks the strong-tier model


def test_the_same_look_twice_creates_the_same_child_and_a_running_one_is_waited_for() -> None:
    p = make()
    first, again = decide(p), decide(p)  # a status write lost: the retry decides the same create (409 adopts)
    assert created(first) == created(again)
    waiting = decide(then(p, first), kid("calc-build", "Running", reason="PodRunning", message="pod calc-build-1"))
    assert waiting.actions == () and waiting.wake_after == pl.POLL_SECONDS
    assert cond(waiting, "Built")["reason"] == "PodRunning" and waiting.status["children"][0]["phase"] == "Running"
    assert "pod calc-build-1" in waiting.status["message"]


# ---------------------------------------------------------------- plan → build


def test_the_plan_runs_first_and_its_text_goes_into_the_builds_prompt_marked() -> None:
    p = make(phases={"plan": True}, models={"plan": "big-model"})
    step = decide(p)
    [plan] = created(step)
    spec = child_spec(plan)
    assert plan.name == "calc-plan" and spec.phase == "plan" and spec.repo is None and spec.model == "big-model"
    assert step.status["phase"] == "Planning" and cond(step, "Planned")["status"] == "Unknown"
    text = "1. Add subtract.\n2. Test it:\n```python\nassert subtract(3, 1) == 2\n```"
    step = decide(then(p, step), kid("calc-plan", final_text=text))
    assert cond(step, "Planned")["status"] == "True" and ("Normal", "PlanReady") in events(step)
    [action] = created(step)
    prompt = child_spec(action).prompt
    assert prompt.startswith(TASK + "\n\n## Plan (from dispatch calc-plan)\n")
    assert "````markdown\n" + text + "\n````\n" in prompt  # a fence longer than the plan's own
    assert "truncated" not in prompt


def test_a_long_plan_is_bounded_with_a_marker() -> None:
    text = "".join(f"step {i}: do the thing number {i}\n" for i in range(3000))  # ≈ 90 KiB
    prompt = pl.build_prompt(TASK, ("calc-plan", text))
    section = prompt.split("## Plan (from dispatch calc-plan)\n", 1)[1]
    assert len(section.encode()) < pl.PLAN_BYTES + 512
    assert "[plan truncated: the first " in section and f"of {len(text.encode())} bytes are shown]" in section
    assert "step 0: do the thing number 0\n" in section and "number 2999" not in section


def test_a_plan_that_filled_the_status_cap_is_marked_as_cut_in_the_builds_prompt() -> None:
    """In the cluster the plan is the plan dispatch's status.finalText: its first 4 KiB only."""
    p = make(phases={"plan": True})
    first = decide(p)
    for text, cut in (("é" * (pl.STATUS_TEXT_BYTES // 2 - 1) + "x", True), ("1. Add it.\n" * 300, False)):
        plan = Child.from_object(
            {"metadata": {"name": "calc-plan", "ownerReferences": [{"uid": UID, "controller": True}]},
             "status": {"phase": "Succeeded", "finalText": text}}
        )  # fmt: skip
        assert plan.final_text_cut is cut
        step = decide(then(p, first), plan)
        prompt = child_spec(created(step)[0]).prompt
        assert ("[plan cut: the plan dispatch's status keeps only the first 4096 bytes" in prompt) is cut
        assert ("(cut: the status keeps its first 4 KiB)" in cond(step, "Planned")["message"]) is cut


def test_an_empty_plan_stops_the_pipeline() -> None:
    p = make(phases={"plan": True})
    step = decide(then(p, decide(p)), kid("calc-plan", final_text="  \n"))
    assert step.status["phase"] == "Failed" and cond(step, "Succeeded")["reason"] == "EmptyPlan"
    assert created(step) == [] and step.wake_after is None


# ---------------------------------------------------------------- build → review


@pytest.mark.parametrize("phase", ["Failed", "Cancelled"])
def test_a_failed_build_stops_the_pipeline_with_its_reason(phase: str) -> None:
    p = make()
    step = decide(then(p, decide(p)), kid("calc-build", phase, reason="OOMKilled", message="the agent was killed"))
    assert step.status["phase"] == "Failed" and step.status["reason"] == "BuildFailed"
    assert cond(step, "Built") | {"lastTransitionTime": ""} == cond(step, "Built") | {
        "status": "False", "reason": "OOMKilled", "lastTransitionTime": ""}  # fmt: skip
    assert "OOMKilled" in step.status["message"] and "the agent was killed" in step.status["message"]
    assert cond(step, "Succeeded")["status"] == "False" and ("Warning", "BuildFailed") in events(step)
    assert step.status["finishedAt"] == "2026-12-05T12:00:00Z" and step.status["current"] == ""


def test_a_build_without_a_diff_stops_before_any_review() -> None:
    p = make()
    step = decide(then(p, decide(p)), kid("calc-build", diff_stat={"files": 0}))
    assert cond(step, "Succeeded")["reason"] == "NoDiff" and cond(step, "Built")["status"] == "False"
    assert created(step) == []


def test_a_succeeded_build_is_reviewed() -> None:
    p = make(models={"review": "reviewer"})
    step = decide(then(p, decide(p)), built())
    assert cond(step, "Built")["status"] == "True" and ("Normal", "BuildSucceeded") in events(step)
    assert step.status["diffStat"] == STAT and step.status["diffSummary"] == "+2/-0"
    [action] = created(step)
    spec = child_spec(action)
    assert action.name == "calc-review" and spec.phase == "review" and spec.source.dispatch == "calc-build"
    assert spec.model == "reviewer" and spec.repo is None and TASK in spec.prompt
    assert step.status["phase"] == "Reviewing" and step.status["current"] == "calc-review"


# ---------------------------------------------------------------- review → approval → ship


def test_an_approving_review_waits_for_a_human_approval() -> None:
    p, kids = through_review(make())
    step = decide(p, *kids)
    assert cond(step, "Reviewed")["status"] == "True" and step.status["review"] == {
        "dispatch": "calc-review", "verdict": "Approve"}  # fmt: skip
    assert step.status["phase"] == "AwaitingApproval" and cond(step, "Approved")["status"] == "Unknown"
    assert created(step) == [] and ("Normal", "AwaitingApproval") in events(step)
    assert 0 < (step.wake_after or 0) <= pl.APPROVAL_POLL_SECONDS
    again = decide(then(p, step), *kids, now=NOW + timedelta(seconds=30))
    assert events(again) == [] and again.status["phase"] == "AwaitingApproval"  # one Event, not one a look


def test_the_approval_starts_the_ship_with_the_pipelines_options() -> None:
    approval = {"approvedBy": "alice@example.com", "comment": "reviewed"}
    pr = {"forge": "gitea", "apiUrl": "https://git.example"}
    p, kids = through_review(make(ship={"branchPrefix": "bs/"}, pullRequest=pr))
    p = then(p, decide(p, *kids))  # waiting, until the approval comes
    step = decide(_approved(p, **approval), *kids)
    assert cond(step, "Approved")["status"] == "True" and step.status["approvedBy"] == "alice@example.com"
    [action] = created(step)
    spec = child_spec(action)
    assert action.name == "calc-ship" and spec.phase == "ship" and spec.source.dispatch == "calc-build"
    assert spec.approval.approved_by == "alice@example.com" and spec.approval.comment == "reviewed"
    assert spec.ship.branch_prefix == "bs/" and spec.pull_request.forge == "gitea"
    assert step.status["phase"] == "Shipping"


def _approved(p: Pipeline, approvedBy: str, comment: str = "") -> Pipeline:
    return replace(p, spec=p.spec.model_copy(update={"approval": Approval(approved_by=approvedBy, comment=comment)}))


def test_an_approver_outside_the_policy_does_not_count() -> None:
    p, kids = through_review(make(approvalPolicy={"approvers": ["alice"]}, approval={"approvedBy": "mallory"}))
    step = decide(p, *kids)
    assert created(step) == [] and cond(step, "Approved")["reason"] == "ApproverNotAllowed"
    assert ("Warning", "ApproverNotAllowed") in events(step)
    step = decide(_approved(then(p, step), "alice"), *kids)
    assert [a.name for a in created(step)] == ["calc-ship"]


def test_no_approval_within_the_timeout_fails_the_pipeline() -> None:
    p, kids = through_review(make(approvalPolicy={"timeoutSeconds": 60}))
    p = then(p, decide(p, *kids))
    assert decide(p, *kids, now=NOW + timedelta(seconds=59)).status["phase"] == "AwaitingApproval"
    step = decide(p, *kids, now=NOW + timedelta(seconds=60))
    assert cond(step, "Succeeded")["reason"] == "ApprovalTimeout" and cond(step, "Approved")["status"] == "False"
    assert step.status["phase"] == "Failed"


def _shipping(**spec: Any) -> tuple[Pipeline, tuple[Child, ...]]:
    p, kids = through_review(make(approval={"approvedBy": "alice"}, **spec))
    return then(p, decide(p, *kids)), kids


def test_a_pushed_ship_ends_the_pipeline_succeeded_with_branch_and_pull_request() -> None:
    p, kids = _shipping()
    push = {"reason": "Pushed", "branch": "buildstudio/calc-build", "commit": "c" * 40,
            "pullRequestUrl": "https://git.example/o/calc/pulls/7"}  # fmt: skip
    step = decide(p, *kids, kid("calc-ship", push=push))
    assert step.status["phase"] == "Succeeded" and cond(step, "Succeeded") | {"lastTransitionTime": ""} == {
        "type": "Succeeded", "status": "True", "reason": "Shipped", "lastTransitionTime": "",
        "observedGeneration": 1, "message": step.status["message"]}  # fmt: skip
    assert cond(step, "Shipped")["status"] == "True" and step.status["branch"] == "buildstudio/calc-build"
    assert step.status["commit"] == "c" * 40 and step.status["pullRequestUrl"].endswith("/pulls/7")
    assert {cond(step, t)["status"] for t in ("Built", "Reviewed", "Approved", "Shipped")} == {"True"}
    assert [r["name"] for r in step.status["children"]] == ["calc-build", "calc-review", "calc-ship"]
    assert step.wake_after is None and ("Normal", "Shipped") in events(step)
    done = decide(then(p, step), *kids, kid("calc-ship", push=push))
    assert done.actions == () and done.status == step.status  # finished: nothing more


def test_a_failed_push_fails_the_pipeline_with_the_ships_reason() -> None:
    p, kids = _shipping()
    step = decide(p, *kids, kid("calc-ship", "Failed", reason="PushRejected", message="protected branch"))
    assert step.status["reason"] == "ShipFailed" and cond(step, "Shipped")["reason"] == "PushRejected"
    assert "protected branch" in step.status["message"]


@pytest.mark.parametrize(
    ("verdict", "source", "reason"),
    [
        ("RequestChanges", "calc-build", "ReviewRequestedChanges"),
        ("Unclear", "calc-build", "ReviewUnclear"),
        ("Approve", "someone-else", "ReviewUnclear"),  # a verdict counts only for this build's diff
    ],
)
def test_a_review_that_does_not_approve_stops_the_pipeline(verdict: str, source: str, reason: str) -> None:
    p, _ = through_review(make())
    step = decide(p, built(), reviewed(verdict=verdict, source=source))
    assert step.status["phase"] == "Failed" and cond(step, "Succeeded")["reason"] == reason
    assert cond(step, "Reviewed")["status"] == "False" and created(step) == []
    assert "calc-review" in step.status["message"] and ("Warning", reason) in events(step)


def test_review_and_ship_off_succeed_after_the_build_and_ship_off_after_the_review() -> None:
    p = make(phases={"review": False, "ship": False})
    step = decide(then(p, decide(p)), built())
    assert step.status["phase"] == "Succeeded" and cond(step, "Succeeded")["reason"] == "Built"
    p, kids = through_review(make(phases={"ship": False}))
    step = decide(p, *kids)
    assert step.status["phase"] == "Succeeded" and cond(step, "Succeeded")["reason"] == "Reviewed"
    assert c.find(step.status["conditions"], "Approved") is None


# ---------------------------------------------------------------- the revision round


def test_one_revision_round_builds_again_with_the_reviews_text() -> None:
    p = make(revisions=1, phases={"plan": True}, approval={"approvedBy": "alice"})
    plan = kid("calc-plan", final_text="1. Add it.")
    step = decide(then(p, decide(then(p, decide(p)), plan)), plan, built())
    p = then(p, step)
    rejected = reviewed(verdict="RequestChanges", final_text="subtract is reversed.\nVERDICT: REQUEST_CHANGES")
    step = decide(p, plan, built(), rejected)
    [action] = created(step)
    assert action.name == "calc-build-r1" and step.status["round"] == 1
    assert cond(step, "Built")["status"] == "Unknown" and ("Normal", "RevisionRound") in events(step)
    prompt = child_spec(action).prompt
    assert prompt.startswith(TASK + "\n\n## Plan (from dispatch calc-plan)\n")
    review = "## Review (from dispatch calc-review) of an earlier attempt (dispatch calc-build, 1 files, +2/-0)"
    assert review in prompt and "subtract is reversed." in prompt
    assert "```diff\n+def subtract(a, b):\n" in prompt

    # The next looks start from round 1: no Event or condition of round 0 again.
    p = then(p, step)
    step = decide(p, plan, built(), rejected, built("calc-build-r1"))
    assert [a.name for a in created(step)] == ["calc-review-r1"] and events(step) == [
        ("Normal", "BuildSucceeded"), ("Normal", "Reviewing")]  # fmt: skip
    assert child_spec(created(step)[0]).source.dispatch == "calc-build-r1"
    p = then(p, step)
    step = decide(p, plan, built(), rejected, built("calc-build-r1"), reviewed("calc-review-r1", "calc-build-r1"))
    [ship] = created(step)
    assert ship.name == "calc-ship" and child_spec(ship).source.dispatch == "calc-build-r1"
    assert [r["name"] for r in step.status["children"]] == [
        "calc-plan", "calc-build", "calc-review", "calc-build-r1", "calc-review-r1", "calc-ship"]  # fmt: skip
    assert step.status["review"] == {"dispatch": "calc-review-r1", "verdict": "Approve"}


def test_the_revision_round_is_bounded_to_one() -> None:
    p = make(revisions=1)
    rejected = reviewed(verdict="RequestChanges")
    p = then(p, decide(then(p, decide(p)), built()))
    p = then(p, decide(p, built(), rejected))
    p = then(p, decide(p, built(), rejected, built("calc-build-r1")))
    again = reviewed("calc-review-r1", "calc-build-r1", verdict="RequestChanges")
    step = decide(p, built(), rejected, built("calc-build-r1"), again)
    assert step.status["phase"] == "Failed" and cond(step, "Succeeded")["reason"] == "ReviewRequestedChanges"
    assert created(step) == [] and "calc-review-r1" in step.status["message"]


def test_the_revision_prompt_bounds_the_review_and_the_earlier_diff() -> None:
    review = reviewed(verdict="RequestChanges", final_text="x" * 50_000)
    build = replace(built(), diff="+y\n" * 20_000)
    prompt = pl.build_prompt("t" * 131_072, ("calc-plan", "p" * 100_000), (review, build))
    assert len(prompt.encode()) < 131_072 + pl.PLAN_BYTES + pl.REVIEW_TEXT_BYTES + pl.EARLIER_DIFF_BYTES + 2048
    assert "[review truncated: " in prompt and "[diff truncated: " in prompt and "[plan truncated: " in prompt
    BuildDispatch.model_validate({"spec": {"prompt": prompt, "repo": {"url": "https://e.com/r.git"}}})


# ---------------------------------------------------------------- cancel, conflicts, invalid specs


def _cancelled(p: Pipeline) -> Pipeline:
    return replace(p, spec=p.spec.model_copy(update={"cancel": True}))


def test_cancel_cascades_to_the_running_child_and_ends_once_it_stopped() -> None:
    p = make()
    p = then(p, decide(p))
    running = kid("calc-build", "Running", reason="PodRunning")
    step = decide(_cancelled(p), running)
    assert [a for a in step.actions if isinstance(a, CancelChild)] == [CancelChild("calc-build")]
    assert step.status["reason"] == "Cancelling" and ("Normal", "Cancelling") in events(step)
    p = then(p, step)
    step = decide(_cancelled(p), replace(running, cancel=True))  # asked already: wait for it
    assert step.actions == () and step.wake_after == pl.POLL_SECONDS
    step = decide(_cancelled(then(p, step)), kid("calc-build", "Cancelled", reason="Cancelled", cancel=True))
    assert step.status["phase"] == "Cancelled" and cond(step, "Succeeded")["reason"] == "Cancelled"
    assert cond(step, "Built")["status"] == "False" and step.wake_after is None


def test_cancel_while_waiting_for_approval_ends_at_once() -> None:
    p, kids = through_review(make())
    step = decide(_cancelled(then(p, decide(p, *kids))), *kids)
    assert step.status["phase"] == "Cancelled" and not [a for a in step.actions if isinstance(a, CancelChild)]
    assert cond(step, "Approved")["status"] == "False"


def test_a_child_name_taken_by_another_object_stops_the_pipeline() -> None:
    step = decide(make(), Child(name="calc-build", owner_uid="someone-else", phase="Running"))
    assert cond(step, "Succeeded")["reason"] == "NameConflict" and created(step) == []
    assert not [a for a in step.actions if isinstance(a, CancelChild)]


def test_a_deleted_child_stops_the_pipeline() -> None:
    p = make()
    step = decide(then(p, decide(p)))  # calc-build was created and is gone
    assert cond(step, "Succeeded")["reason"] == "ChildDeleted" and created(step) == []


def test_an_invalid_spec_is_terminal() -> None:
    step = pl.invalid_spec({}, 3, "spec.repo: Field required", NOW)
    assert step.status["phase"] == "Failed" and "spec.repo" in step.status["message"]
    assert step.status["observedGeneration"] == 3 and step.wake_after is None


def test_child_from_object_reads_a_dispatch() -> None:
    obj = {
        "metadata": {"name": "calc-review", "ownerReferences": [
            {"kind": "Other", "uid": "x"}, {"kind": "BuildPipeline", "uid": UID, "controller": True}]},
        "spec": {"cancel": True},
        "status": {"phase": "Succeeded", "reason": "Completed", "finalText": "ok", "diff": "+a\n",
                   "review": {"source": "calc-build", "verdict": "Approve", "diffSha256": "ab"},
                   "diffStat": STAT, "push": {"branch": "b", "commit": "c"}},
    }  # fmt: skip
    child = Child.from_object(obj)
    assert child == Child(
        name="calc-review", owner_uid=UID, phase="Succeeded", reason="Completed", message="", cancel=True,
        final_text="ok", verdict="Approve", review_source="calc-build", diff_stat=STAT, diff="+a\n",
        push={"branch": "b", "commit": "c"},
    )  # fmt: skip
    assert Child.from_object({"metadata": {"name": "x"}}).owner_uid == "" and not Child.from_object({}).finished


# ---------------------------------------------------------------- the CRD's rules


def _doc(**spec: Any) -> dict[str, Any]:
    body = {"prompt": TASK, "repo": {"url": "https://example.com/calc.git"}, **spec}
    return {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildPipeline",
            "metadata": {"name": "calc", "namespace": "default"}, "spec": body}  # fmt: skip


def test_the_crd_lets_approval_and_cancel_change_and_nothing_else() -> None:
    old = _doc()
    assert crdcheck.errors(old) == []
    BuildPipeline.model_validate(old)
    approved = copy.deepcopy(old)
    approved["spec"].update(approval={"approvedBy": "alice"}, cancel=True, approvalPolicy={"approvers": ["alice"]})
    assert crdcheck.errors(approved, old) == []
    edited = copy.deepcopy(old)
    edited["spec"]["prompt"] = "Something else."
    assert any("spec.prompt is immutable once the pipeline exists" in e for e in crdcheck.errors(edited, old))
    undone = copy.deepcopy(approved)
    undone["spec"]["cancel"] = False
    assert any("spec.cancel cannot be undone" in e for e in crdcheck.errors(undone, approved))
    assert any("revisions need phases.review" in e
               for e in crdcheck.errors(_doc(revisions=1, phases={"review": False, "ship": False})))  # fmt: skip


# ---------------------------------------------------------------- the shipped commit, local mode


def test_the_commit_subject_is_the_tasks_first_line_not_the_plan_header() -> None:
    from buildstudio.core.shippod import Provenance, commit_message

    prompt = pl.build_prompt("Add subtract to calc.py\nwith a test.", ("calc-plan", "1. Add it.\n2. Test it."))
    prov = Provenance("calc-build", "calc-ship", "opencode", "m", "calc-review", "Approve", "0" * 64, "alice")
    subject = commit_message(prompt, prov).splitlines()[0]
    assert subject == "buildstudio: Add subtract to calc.py"
    assert commit_message("\n\n  Fix it  \n## Plan", prov).splitlines()[0] == "buildstudio: Fix it"
    assert commit_message("", prov).splitlines()[0] == "buildstudio: Build Studio change from calc-build"


def test_local_approval_needs_the_flag_or_a_yes_on_the_terminal() -> None:
    flag = pl.local_approval("alice", approve_flag=True, answer=None)
    assert isinstance(flag, Approval) and flag.approved_by == "alice"
    typed = pl.local_approval("alice", approve_flag=False, answer=" Yes\n")
    assert isinstance(typed, Approval) and typed.approved_by == "alice"
    for answer in ("", "n", "no", "yes please"):
        assert isinstance(pl.local_approval("alice", approve_flag=False, answer=answer), str)
    no_tty = pl.local_approval("alice", approve_flag=False, answer=None)
    assert isinstance(no_tty, str) and "--approve" in no_tty


def test_a_refused_local_approval_ends_the_pipeline_without_a_ship() -> None:
    p, kids = through_review(make())
    step = decide(p, *kids)
    assert step.status["phase"] == "AwaitingApproval" and not created(step)
    end = pl.approval_refused(then(p, step), NOW, "approval declined on the terminal; nothing was pushed")
    BuildPipelineStatus.model_validate(end.status)
    assert end.finished and end.status["phase"] == "Failed" and end.status["reason"] == "ApprovalRefused"
    assert cond(end, "Approved")["status"] == "False" and not created(end)


def test_a_local_run_is_read_as_a_child() -> None:
    from buildstudio.core.review import ReviewFacts, Verdict
    from buildstudio.protocol import records

    record = records.ResultRecord(
        outcome=records.Outcome.COMPLETED,
        message="review done",
        summary=records.RunSummary(final_text="x" * 10_000 + "\nVERDICT: APPROVE"),
    )
    facts = ReviewFacts("calc-review", "calc-build", Verdict.APPROVE, "a" * 64)
    child = pl.local_child("calc-review", UID, record, review=facts)
    assert (child.phase, child.verdict, child.review_source) == ("Succeeded", "Approve", "calc-build")
    assert len(child.final_text) > 10_000  # the whole answer, not a status's 4 KiB
    failed = pl.local_child("calc-build", UID, records.ResultRecord(outcome=records.Outcome.TIMED_OUT, message="t"))
    assert (failed.phase, failed.reason) == ("Failed", "TimedOut")
    stopped = pl.local_child("calc-build", UID, records.ResultRecord(outcome=records.Outcome.CANCELLED, message="c"))
    assert stopped.phase == "Cancelled" and stopped.finished


# ---------------------------------------------------------------- Ready (for tools that know only Ready)


def test_ready_follows_succeeded_for_tools_that_know_only_ready() -> None:
    p = make()
    first = decide(p)
    assert cond(first, "Ready")["status"] == "Unknown" and cond(first, "Ready")["reason"] == "Building"
    failed = decide(then(p, first), kid("calc-build", "Failed", reason="OOMKilled", message="killed"))
    assert cond(failed, "Ready") | {"lastTransitionTime": ""} == cond(failed, "Succeeded") | {
        "type": "Ready", "lastTransitionTime": ""}  # fmt: skip
    shipped, kids = _shipping()
    push = {"reason": "Pushed", "branch": "buildstudio/calc-build", "commit": "c" * 40}
    done = decide(shipped, *kids, kid("calc-ship", push=push))
    assert cond(done, "Ready")["status"] == "True" and cond(done, "Ready")["reason"] == "Shipped"


@pytest.mark.parametrize("prompt", [" ", "\n\t ", "\u2028", "\u3000\u00a0"])
def test_a_whitespace_only_pipeline_prompt_is_refused_by_the_model_and_the_crd(prompt: str) -> None:
    body = {"prompt": prompt, "repo": {"url": "https://example.com/calc.git"}}
    with pytest.raises(ValueError, match="only whitespace"):
        BuildPipelineSpec.model_validate(body)
    manifest = {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildPipeline",
                "metadata": {"name": "blank"}, "spec": body}  # fmt: skip
    assert any("only whitespace" in e for e in crdcheck.errors(manifest))
