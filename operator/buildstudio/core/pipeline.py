"""The BuildPipeline's decisions (pure): (pipeline, its children's observed state, clock) → ``Step``.

Every look walks the steps in order, reading only the children's own status (never memory, so a
restarted operator resumes): plan (optional) → build → review → [one revision round: build-r1 →
review-r1] → approval → ship. The first step that is not done decides: its child is missing →
create it; running → wait; failed → the pipeline fails with that reason; succeeded → next step.
Children have deterministic names (``<pipeline>-plan``, ``-build``, ``-review``, ``-build-r1``,
``-review-r1``, ``-ship``), so a create repeated after a restart adopts the existing one (409).

Cancel (``spec.cancel``) sets ``spec.cancel`` on every running child (their own machine stops the
pod, keeping the partial diff) and ends the pipeline once none is running. Deleting the pipeline
cascades through the owner references (garbage collection).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from buildstudio.api.common import API_GROUP, API_VERSION_STRING, REASON_PATTERN
from buildstudio.api.dispatch import Approval, BuildDispatchSpec, SourceRef, Timeouts
from buildstudio.api.pipeline import BuildPipelineSpec, Stage
from buildstudio.core import conditions as c
from buildstudio.core import names
from buildstudio.core.prompts import fence_for
from buildstudio.core.review import ReviewFacts
from buildstudio.core.settings import Settings
from buildstudio.core.status import clip_bytes
from buildstudio.core.step import Emit as Emit  # re-exported: the same Event action as a dispatch's
from buildstudio.protocol.records import Outcome, ResultRecord

LABEL_PIPELINE = f"{API_GROUP}/pipeline"
LABEL_STAGE = f"{API_GROUP}/pipeline-stage"
COMPONENT = "pipeline-step"

PLANNED, BUILT, REVIEWED, APPROVED, SHIPPED = "Planned", "Built", "Reviewed", "Approved", "Shipped"
CONDITION: dict[Stage, str] = {"plan": PLANNED, "build": BUILT, "review": REVIEWED, "ship": SHIPPED}
RUNNING_PHASE: dict[Stage, str] = {"plan": "Planning", "build": "Building", "review": "Reviewing", "ship": "Shipping"}
FAILED_REASON: dict[Stage, str] = {
    "plan": "PlanFailed",
    "build": "BuildFailed",
    "review": "ReviewFailed",
    "ship": "ShipFailed",
}
FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})

# What the build's prompt may carry besides the task (the task itself is ≤ 128 KiB, a dispatch's
# prompt ≤ 256 KiB). In the cluster the plan is the plan dispatch's status.finalText, which keeps
# only the answer's first STATUS_TEXT_BYTES (nothing stores the whole answer); a plan that filled
# them is marked as cut in the build's prompt. Locally the whole answer is at hand: ≤ PLAN_BYTES.
PLAN_BYTES = 16 * 1024
STATUS_TEXT_BYTES = Settings().final_text_bytes
REVIEW_TEXT_BYTES = 8 * 1024
EARLIER_DIFF_BYTES = 16 * 1024
# Re-look bounds: children's and the pipeline's own watch events wake the handler sooner.
POLL_SECONDS = 10.0
APPROVAL_POLL_SECONDS = 60.0


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Pipeline:
    """The parts of a BuildPipeline object the decisions read."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: BuildPipelineSpec
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Child:
    """What the pipeline reads of one child BuildDispatch."""

    name: str
    owner_uid: str  # the uid of its controller owner reference ("" when none)
    phase: str = ""  # status.phase; "" before the operator has looked at it
    reason: str = ""
    message: str = ""
    cancel: bool = False
    final_text: str = ""
    final_text_cut: bool = False  # final_text filled the status's cap: the answer went on
    verdict: str = ""  # status.review.verdict, only when the review names the expected source
    review_source: str = ""
    diff_stat: Mapping[str, int] = field(default_factory=dict)
    diff: str = ""
    push: Mapping[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Child:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        owner: Mapping[str, Any] = next((o for o in meta.get("ownerReferences") or () if o.get("controller")), {})
        review = status.get("review") or {}
        stat = status.get("diffStat") or {}
        push = status.get("push") or {}
        text = str(status.get("finalText") or "")
        return cls(
            name=str(meta.get("name") or ""),
            owner_uid=str(owner.get("uid") or ""),
            phase=str(status.get("phase") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            cancel=bool((obj.get("spec") or {}).get("cancel")),
            final_text=text,
            # clip_bytes keeps whole characters: a cut text is up to 3 bytes short of the cap.
            final_text_cut=len(text.encode()) > STATUS_TEXT_BYTES - 4,
            verdict=str(review.get("verdict") or ""),
            review_source=str(review.get("source") or ""),
            diff_stat={k: int(v) for k, v in stat.items() if isinstance(v, int)},
            diff=str(status.get("diff") or ""),
            push={k: str(v) for k, v in push.items() if isinstance(v, str)},
        )


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class CreateChild:
    """Create (if absent: 409 adopts) one child dispatch."""

    name: str
    stage: Stage
    manifest: dict[str, Any]


@dataclass(frozen=True)
class CancelChild:
    """Set ``spec.cancel: true`` on a running child."""

    name: str


Action = CreateChild | CancelChild | Emit


@dataclass(frozen=True)
class Step:
    status: dict[str, Any]
    actions: tuple[Action, ...] = ()
    wake_after: float | None = None  # seconds; None: finished, nothing more to look at

    @property
    def finished(self) -> bool:
        return c.is_finished(self.status)


# ---------------------------------------------------------------- names


def child_name(pipeline: str, stage: Stage, round_: int = 0) -> str:
    """``<pipeline>-<stage>`` (``-r1`` in the revision round), at most 63 characters (hashed when longer)."""
    return names.child_name(pipeline, stage if round_ == 0 else f"{stage}-r{round_}")


def child_names(pipeline: str, spec: BuildPipelineSpec) -> list[str]:
    """Every child this pipeline may have: what the shell reads before each decision."""
    out = [child_name(pipeline, "plan")] if spec.phases.plan else []
    for round_ in range(spec.revisions + 1):
        out.append(child_name(pipeline, "build", round_))
        if spec.phases.review:
            out.append(child_name(pipeline, "review", round_))
    if spec.phases.ship:
        out.append(child_name(pipeline, "ship"))
    return out


def child_object(p: Pipeline, name: str, stage: Stage, spec: BuildDispatchSpec) -> dict[str, Any]:
    """The child BuildDispatch, owned (controller) by the pipeline: deleted with it by the GC."""
    owner = {
        "apiVersion": API_VERSION_STRING,
        "kind": "BuildPipeline",
        "name": p.name,
        "uid": p.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = {
        **names.common_labels(),
        names.LABEL_COMPONENT: COMPONENT,
        LABEL_PIPELINE: names.label_value(p.name),
        LABEL_STAGE: stage,
    }
    return {
        "apiVersion": API_VERSION_STRING,
        "kind": "BuildDispatch",
        "metadata": {"name": name, "namespace": p.namespace, "labels": labels, "ownerReferences": [owner]},
        "spec": spec.to_api(),
    }


# ---------------------------------------------------------------- prompts


def _bounded(text: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` UTF-8 bytes of ``text``, cut after a newline when there is one."""
    cut = clip_bytes(text, limit)
    if len(cut) == len(text):
        return text, False
    if "\n" in cut:
        cut = cut[: cut.rfind("\n") + 1]
    return cut, True


def _fenced(text: str, info: str, limit: int, what: str) -> str:
    body, cut = _bounded(text.strip("\n"), limit)
    fence = fence_for(body)
    body = body if body.endswith("\n") else body + "\n"
    note = ""
    if cut:
        note = f"[{what} truncated: the first {len(body.encode())} of {len(text.encode())} bytes are shown]\n"
    return f"{fence}{info}\n{body}{fence}\n{note}"


def plan_section(plan: str, text: str, *, cut: bool = False) -> str:
    """The plan's text as the build sees it: marked, fenced, bounded. ``cut``: the text is only
    the first part of the plan (a dispatch's status keeps STATUS_TEXT_BYTES of its answer)."""
    note = (
        f"[plan cut: the plan dispatch's status keeps only the first {STATUS_TEXT_BYTES} bytes of its "
        "answer; the rest is not shown]\n"
        if cut
        else ""
    )
    return (
        f"## Plan (from dispatch {plan})\n"
        "Written by a planning step from the task above, before any code was read: follow it where it "
        "fits; the task above decides.\n" + _fenced(text, "markdown", PLAN_BYTES, "plan") + note
    )


def revision_section(review: Child, build: Child) -> str:
    """The review that requested changes, and the diff it judged, for the revision build."""
    stat = build.diff_stat
    size = f"{stat.get('files', 0)} files, +{stat.get('additions', 0)}/-{stat.get('deletions', 0)}"
    out = (
        f"## Review (from dispatch {review.name}) of an earlier attempt (dispatch {build.name}, {size})\n"
        "The review requested changes. Do the task above again from the repository as it is, addressing "
        "the review.\n" + _fenced(review.final_text, "markdown", REVIEW_TEXT_BYTES, "review")
    )
    if build.diff:
        out += "The earlier attempt's diff (an excerpt):\n" + _fenced(build.diff, "diff", EARLIER_DIFF_BYTES, "diff")
    return out


def build_prompt(
    task: str,
    plan: tuple[str, str] | None = None,
    revision: tuple[Child, Child] | None = None,
    *,
    plan_cut: bool = False,
) -> str:
    """The task verbatim, then the plan's section and the review's, each marked."""
    parts = [task.rstrip("\n")]
    if plan is not None:
        parts.append(plan_section(*plan, cut=plan_cut))
    if revision is not None:
        parts.append(revision_section(*revision))
    return "\n\n".join(parts)


def review_prompt(p: Pipeline) -> str:
    return (
        f"Check that the change does what this task (BuildPipeline {p.name}) asks, correctly and safely.\n"
        + _fenced(p.spec.prompt, "", len(p.spec.prompt.encode()) + 1, "task")
    )


# ---------------------------------------------------------------- child specs


def _timeouts(p: Pipeline) -> Timeouts:
    return p.spec.timeouts or Timeouts()


def plan_spec(p: Pipeline) -> BuildDispatchSpec:
    return BuildDispatchSpec(
        prompt=p.spec.prompt, phase="plan", engine=p.spec.engine, model=p.spec.models.plan, timeouts=_timeouts(p)
    )


def build_spec(
    p: Pipeline, plan: tuple[str, str] | None, revision: tuple[Child, Child] | None, *, plan_cut: bool = False
) -> BuildDispatchSpec:
    return BuildDispatchSpec(
        prompt=build_prompt(p.spec.prompt, plan, revision, plan_cut=plan_cut),
        phase="build",
        repo=p.spec.repo,
        engine=p.spec.engine,
        model=p.spec.models.build,
        timeouts=_timeouts(p),
        sandbox=p.spec.sandbox,
    )


def review_spec(p: Pipeline, build: str) -> BuildDispatchSpec:
    return BuildDispatchSpec(
        prompt=review_prompt(p),
        phase="review",
        source=SourceRef(dispatch=build),
        engine=p.spec.engine,
        model=p.spec.models.review,
        timeouts=_timeouts(p),
    )


def ship_spec(p: Pipeline, build: str, approval: Approval) -> BuildDispatchSpec:
    # The approval is the pipeline's, which the approvals policy checked when it was set there.
    return BuildDispatchSpec(
        prompt=f"Ship the reviewed change of BuildPipeline {p.name}.",
        phase="ship",
        source=SourceRef(dispatch=build),
        approval=approval,
        ship=p.spec.ship,
        pull_request=p.spec.pull_request,
        engine=p.spec.engine,
        timeouts=_timeouts(p),
    )


# ---------------------------------------------------------------- the decision


def _reason(value: str, fallback: str) -> str:
    return value if value and len(value) <= 64 and re.match(REASON_PATTERN, value) else fallback


class _Draft:
    """A mutable copy of the status while one decision is made."""

    def __init__(self, status: Mapping[str, Any], generation: int | None, now: datetime) -> None:
        self.now = now
        self.generation = generation
        self.status: dict[str, Any] = dict(status)
        self.actions: list[Action] = []

    def cond(self, type_: str, status: c.Status, reason: str, message: str) -> bool:
        """Set a condition; True when its status changed (what is worth an Event)."""
        old = c.find(self.status.get("conditions"), type_)
        self.status["conditions"] = c.set_condition(
            self.status.get("conditions"), type_, status, reason, message, now=self.now, generation=self.generation
        )
        return old is None or old.get("status") != status

    def done(self, type_: str, reason: str, message: str) -> None:
        if self.cond(type_, "True", reason, message):
            self.emit("Normal", reason, message)

    def headline(self, phase: str, reason: str, message: str) -> None:
        self.status["phase"] = phase
        self.status["reason"] = reason
        self.status["message"] = c.one_line(message)

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(Emit(type_, reason, c.one_line(message)))

    def record(self, stage: Stage, name: str, round_: int, phase: str) -> None:
        refs = [dict(r) for r in self.status.get("children") or ()]
        for ref in refs:
            if ref.get("name") == name:
                ref["phase"] = phase
                break
        else:
            refs.append({"stage": stage, "name": name, "round": round_, "phase": phase})
        self.status["children"] = refs

    def recorded(self, name: str) -> bool:
        return any(r.get("name") == name for r in self.status.get("children") or ())

    def finish(self, succeeded: bool, reason: str, message: str) -> Step:
        for cond in self.status.get("conditions") or ():
            if cond.get("status") == "Unknown":  # the step that was under way ends with the pipeline
                self.cond(str(cond["type"]), "False", reason, message)
        self.cond(c.SUCCEEDED, "True" if succeeded else "False", reason, message)
        phase = "Succeeded" if succeeded else "Cancelled" if reason == "Cancelled" else "Failed"
        self.headline(phase, reason, message)
        self.status["current"] = ""
        self.status["finishedAt"] = c.timestamp(self.now)
        self.emit("Normal" if succeeded else "Warning", reason, message)
        return self.step(None)

    def step(self, wake_after: float | None) -> Step:
        self.status["observedGeneration"] = self.generation
        # Ready follows Succeeded on every write (finish() may have closed it False a moment ago).
        self.status["conditions"] = c.with_ready(
            self.status.get("conditions"),
            str(self.status.get("phase") or "Pending"),
            now=self.now,
            generation=self.generation,
        )
        return Step(status=self.status, actions=tuple(self.actions), wake_after=wake_after)


def invalid_spec(status: Mapping[str, Any], generation: int | None, error: str, now: datetime) -> Step:
    """A spec the API models refuse (the emulator and old apiservers skip schema checks)."""
    draft = _Draft(status, generation, now)
    if c.is_finished(status):
        return draft.step(None)
    return draft.finish(False, "InvalidSpec", f"invalid spec: {error}")


def decide(p: Pipeline, children: Mapping[str, Child], now: datetime) -> Step:
    """The next step of ``p`` given its children (name → observed child; absent ones missing)."""
    draft = _Draft(p.status, p.generation, now)
    if c.is_finished(p.status):
        return draft.step(None)
    for name, child in sorted(children.items()):
        if child.owner_uid != p.uid:
            return draft.finish(False, "NameConflict", f"BuildDispatch {name} exists and is not this pipeline's")
    for ref in p.status.get("children") or ():
        seen = children.get(str(ref.get("name")))
        if seen is not None:
            draft.record(ref["stage"], seen.name, int(ref.get("round") or 0), seen.phase)
    if p.spec.cancel:
        return _cancel(draft, children)
    return _walk(p, draft, children)


def _cancel(draft: _Draft, children: Mapping[str, Child]) -> Step:
    running = sorted(name for name, child in children.items() if not child.finished)
    if not running:
        return draft.finish(
            False,
            "Cancelled",
            "cancelled" + (f"; {draft.status['current']} was stopped" if draft.status.get("current") else ""),
        )
    asked = [name for name in running if not children[name].cancel]
    draft.actions.extend(CancelChild(name) for name in asked)
    message = f"cancel requested; waiting for {', '.join(running)} to stop"
    draft.headline(str(draft.status.get("phase") or "Pending"), "Cancelling", message)
    if asked:
        draft.emit("Normal", "Cancelling", message)
    return draft.step(POLL_SECONDS)


def _run(
    p: Pipeline,
    draft: _Draft,
    children: Mapping[str, Child],
    stage: Stage,
    round_: int,
    make_spec: Callable[[], BuildDispatchSpec],
) -> Child | Step:
    """One step's child: created when missing, waited for while it runs; its failure ends the
    pipeline. Returns the child once it succeeded."""
    name = child_name(p.name, stage, round_)
    child = children.get(name)
    cond = CONDITION[stage]
    running = RUNNING_PHASE[stage]
    draft.status["round"] = round_
    if child is None:
        if draft.recorded(name):
            draft.cond(cond, "False", "ChildDeleted", f"dispatch {name} was deleted")
            return draft.finish(False, "ChildDeleted", f"{stage} dispatch {name} was deleted before it finished")
        draft.actions.append(CreateChild(name, stage, child_object(p, name, stage, make_spec())))
        draft.record(stage, name, round_, "")
        draft.status["current"] = name
        draft.cond(cond, "Unknown", "Created", f"dispatch {name} created")
        draft.headline(running, running, f"{stage}: dispatch {name} created")
        draft.emit("Normal", running, f"created {stage} dispatch {name}")
        return draft.step(POLL_SECONDS)
    if not child.finished:
        detail = f"dispatch {name}: {child.phase or 'Pending'}" + (f": {child.message}" if child.message else "")
        draft.status["current"] = name
        draft.cond(cond, "Unknown", _reason(child.reason, "Pending"), detail)
        draft.headline(running, running, detail)
        return draft.step(POLL_SECONDS)
    if child.phase != "Succeeded":
        why = _reason(child.reason, child.phase)
        message = f"{stage} dispatch {name} ended {child.phase} ({child.reason or 'no reason'}): {child.message}"
        draft.cond(cond, "False", why, message)
        return draft.finish(False, FAILED_REASON[stage], message)
    return child


def _walk(p: Pipeline, draft: _Draft, children: Mapping[str, Child]) -> Step:
    spec = p.spec
    plan: tuple[str, str] | None = None
    plan_cut = False
    if spec.phases.plan:
        got = _run(p, draft, children, "plan", 0, lambda: plan_spec(p))
        if isinstance(got, Step):
            return got
        if not got.final_text.strip():
            draft.cond(PLANNED, "False", "EmptyPlan", f"plan {got.name} produced no text")
            return draft.finish(False, "EmptyPlan", f"plan dispatch {got.name} produced no text")
        plan, plan_cut = (got.name, got.final_text), got.final_text_cut
        size = f"{len(got.final_text)} characters"
        if plan_cut:
            size += f" (cut: the status keeps its first {STATUS_TEXT_BYTES // 1024} KiB)"
        draft.done(PLANNED, "PlanReady", f"plan {got.name}: {size}")

    # A revision build exists only after the first review requested changes: start from it then.
    revised = spec.revisions >= 1 and child_name(p.name, "build", 1) in children
    revision: tuple[Child, Child] | None = None
    build: Child | None = None
    for round_ in range(1 if revised else 0, spec.revisions + 1):
        got = _run(p, draft, children, "build", round_, partial(build_spec, p, plan, revision, plan_cut=plan_cut))
        if isinstance(got, Step):
            return got
        build = got
        stat = build.diff_stat
        draft.status["diffStat"] = {k: stat.get(k, 0) for k in ("files", "additions", "deletions", "binaryFiles")}
        draft.status["diffSummary"] = f"+{stat.get('additions', 0)}/-{stat.get('deletions', 0)}"
        if stat.get("files", 0) == 0:
            draft.cond(BUILT, "False", "NoDiff", f"build {build.name} changed nothing")
            return draft.finish(False, "NoDiff", f"build dispatch {build.name} changed nothing: no diff to review")
        draft.done(BUILT, "BuildSucceeded", f"build {build.name}: {draft.status['diffSummary']}")
        if not spec.phases.review:
            return draft.finish(True, "Built", f"build {build.name} succeeded ({draft.status['diffSummary']})")

        got = _run(p, draft, children, "review", round_, partial(review_spec, p, build.name))
        if isinstance(got, Step):
            return got
        review = got
        verdict = review.verdict if review.review_source == build.name and review.verdict else "Unclear"
        draft.status["review"] = {"dispatch": review.name, "verdict": verdict}
        if verdict == "Approve":
            draft.done(REVIEWED, "Approve", f"review {review.name} approved {build.name}")
            break
        if verdict == "RequestChanges" and round_ < spec.revisions:
            message = f"review {review.name} requested changes; revision round {round_ + 1}"
            draft.cond(REVIEWED, "Unknown", "ChangesRequested", message)
            draft.emit("Normal", "RevisionRound", message)
            revision = (review, build)
            continue
        reason = "ReviewRequestedChanges" if verdict == "RequestChanges" else "ReviewUnclear"
        said = "requested changes to" if verdict == "RequestChanges" else "gave no clear verdict on"
        draft.cond(REVIEWED, "False", verdict, f"review {review.name} {said} {build.name}")
        gist = c.one_line(review.final_text, 400)
        return draft.finish(False, reason, f"review {review.name} {said} {build.name}: {gist}")
    if build is None:  # unreachable: the last round either breaks out approved or returns
        return draft.finish(False, "ReviewMissing", "no round of build and review completed")

    if not spec.phases.ship:
        return draft.finish(True, "Reviewed", f"review approved build {build.name}; shipping is off")
    approval = _approval(p, draft)
    if isinstance(approval, Step):
        return approval
    got = _run(p, draft, children, "ship", 0, partial(ship_spec, p, build.name, approval))
    if isinstance(got, Step):
        return got
    push = got.push
    draft.status.update(
        branch=push.get("branch", ""), commit=push.get("commit", ""), pullRequestUrl=push.get("pullRequestUrl", "")
    )
    where = f"{push.get('branch', '?')} at {push.get('commit', '?')[:12]}"
    if push.get("pullRequestUrl"):
        where += f"; pull request {push['pullRequestUrl']}"
    draft.done(SHIPPED, "Pushed", f"ship {got.name} pushed {where}")
    return draft.finish(True, "Shipped", f"shipped build {build.name}: {where}")


def _approval(p: Pipeline, draft: _Draft) -> Approval | Step:
    """The approval the ship goes ahead under, or a wait for it (bounded by the policy's timeout)."""
    policy = p.spec.approval_policy
    given = p.spec.approval
    who = given.approved_by.strip() if given is not None else ""
    if given is not None and who and (not policy.approvers or who in policy.approvers):
        draft.status["approvedBy"] = who
        draft.done(APPROVED, "Approved", f"approved by {who}" + (f": {given.comment}" if given.comment else ""))
        return Approval(approved_by=who, comment=given.comment)
    if who:
        reason, message = "ApproverNotAllowed", f"{who} is not in approvalPolicy.approvers; waiting for one who is"
    else:
        reason, message = "AwaitingApproval", "the review approved; waiting for spec.approval"
    reviewed = c.find(draft.status.get("conditions"), REVIEWED)
    since = c.parse_time(reviewed.get("lastTransitionTime") if reviewed else None) or draft.now
    left = (since + timedelta(seconds=policy.timeout_seconds) - draft.now).total_seconds()
    if left <= 0:
        draft.cond(APPROVED, "False", "ApprovalTimeout", f"no approval within {policy.timeout_seconds}s")
        return draft.finish(False, "ApprovalTimeout", f"no approval within {policy.timeout_seconds}s of the review")
    old = c.find(draft.status.get("conditions"), APPROVED)
    draft.cond(APPROVED, "Unknown", reason, message)
    draft.status["current"] = ""
    draft.headline("AwaitingApproval", reason, message)
    if old is None or old.get("reason") != reason:
        draft.emit("Normal" if reason == "AwaitingApproval" else "Warning", reason, message)
    return draft.step(min(left, APPROVAL_POLL_SECONDS))


# ---------------------------------------------------------------- local mode (`buildstudio pipeline --local`)
# The same ``decide`` drives a local pipeline: each created child runs at once as local processes,
# and what it ended with comes back as a ``Child`` (its owner is the pipeline, as in the cluster).

APPROVAL_REFUSED = "ApprovalRefused"


def local_child(name: str, owner_uid: str, record: ResultRecord, *, review: ReviewFacts | None = None) -> Child:
    """A plan, build or review that ran locally, as the decisions read a child dispatch. The
    plan's and the review's whole answer is its ``final_text`` (a status keeps only 4 KiB)."""
    stat = record.diff_stat
    phase = "Succeeded" if record.outcome.succeeded else "Failed"
    if record.outcome is Outcome.CANCELLED:
        phase = "Cancelled"  # Ctrl-C: the shell then cancels the pipeline, as spec.cancel does
    return Child(
        name=name,
        owner_uid=owner_uid,
        phase=phase,
        reason=record.outcome.value,
        message=record.message,
        final_text=record.summary.final_text,
        verdict=review.verdict.value if review is not None else "",
        review_source=review.source if review is not None else "",
        diff_stat={
            "files": stat.files,
            "additions": stat.additions,
            "deletions": stat.deletions,
            "binaryFiles": stat.binary_files,
        },
        diff=record.diff,
    )


def local_approval(user: str, *, approve_flag: bool, answer: str | None) -> Approval | str:
    """The approval of a local pipeline, or why there is none. ``answer``: the reply typed on the
    terminal (None when stdin is no terminal, so nobody could be asked)."""
    if approve_flag:
        return Approval(approved_by=user, comment="--approve")
    if answer is None:
        return "no approval: stdin is not a terminal and --approve was not given; nothing was pushed"
    if answer.strip().lower() in ("y", "yes"):
        return Approval(approved_by=user, comment="approved on the terminal")
    return "approval declined on the terminal; nothing was pushed"


def approval_refused(p: Pipeline, now: datetime, message: str) -> Step:
    """A local pipeline whose approval was not given: it ends here, nothing shipped."""
    draft = _Draft(p.status, p.generation, now)
    draft.cond(APPROVED, "False", APPROVAL_REFUSED, message)
    return draft.finish(False, APPROVAL_REFUSED, message)
