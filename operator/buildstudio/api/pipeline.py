"""`BuildPipeline`: the governed pipeline plan → build → review → approval → ship as one resource.

The operator creates and owns one `BuildDispatch` per step (deterministic names, owner
references) and folds their state into this object's status. The dispatch models are reused
where the pipeline only passes them on (repo, approval, ship options, timeouts, sandbox).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from buildstudio.api import inputs
from buildstudio.api.common import ApiModel, Condition, ObjectMeta, cel, conditions_field
from buildstudio.api.dispatch import (
    Approval,
    DiffStat,
    PullRequestOptions,
    Repo,
    Sandbox,
    ShipOptions,
    Timeouts,
    input_rules,
)

PipelinePhase = Literal[
    "Pending", "Planning", "Building", "Reviewing", "AwaitingApproval", "Shipping", "Succeeded", "Failed", "Cancelled"
]
Stage = Literal["plan", "build", "review", "ship"]
# Half a dispatch's prompt: the build's prompt adds the plan and, in a revision, the review.
PROMPT_MAX = 131_072


class PipelineModels(ApiModel):
    """Model per step. Unset: the engine's strong-tier model, as for a dispatch without spec.model."""

    plan: str | None = Field(None, description="Model of the plan step.", max_length=256)
    build: str | None = Field(None, description="Model of the build step(s).", max_length=256)
    review: str | None = Field(None, description="Model of the review step(s).", max_length=256)


class PipelinePhases(ApiModel):
    """Which steps run. Build always runs; ship needs review (a diff is never shipped unreviewed)."""

    plan: bool = Field(
        False,
        description="Run a plan step first; its text goes into the build's prompt, marked. That text is the plan "
        "dispatch's status.finalText: the first 4 KiB of the plan (a longer plan is marked as cut there).",
    )
    review: bool = Field(True, description="Review the build's diff (needed by ship and by revisions).")
    ship: bool = Field(
        True,
        description="After the review approved and spec.approval is given, push the diff as a branch. "
        "Off: the pipeline succeeds once the review approved.",
    )


class ApprovalPolicy(ApiModel):
    """Who may approve and how long the pipeline waits. One approval (spec.approval) is needed;
    the chart's ValidatingAdmissionPolicy binds its approvedBy to the user who set it."""

    approvers: list[str] = Field(
        default_factory=list,
        description="User names whose approval counts. Empty: any member of the approvers group "
        "(the chart's ValidatingAdmissionPolicy).",
        max_length=32,
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )
    timeout_seconds: int = Field(
        86_400,
        description="Longest wait for spec.approval after the review approved; then the pipeline fails "
        "with ApprovalTimeout.",
        ge=1,
        le=30 * 86_400,
    )


class BuildPipelineSpec(ApiModel):
    """A task for the governed pipeline: plan (optional) → build → review → approval → ship."""

    prompt: str = Field(
        description="The task, given to the build verbatim (with the plan, when one runs, in a marked section); "
        "not empty or only whitespace.",
        min_length=1,
        max_length=PROMPT_MAX,
        json_schema_extra=input_rules(inputs.PROMPT_RULES),
    )
    repo: Repo = Field(description="Repository the build works in and the ship pushes to.")
    engine: str | None = Field(
        None, description="BuildEngine name for every step. Unset: auto-detected, as for a dispatch.", max_length=253
    )
    models: PipelineModels = Field(default_factory=PipelineModels, description="Model per step.")
    phases: PipelinePhases = Field(default_factory=PipelinePhases, description="Which steps run.")
    revisions: int = Field(
        0,
        description="Automatic revision rounds (0 or 1): when the review requests changes, build again "
        "with the review's text, then review again.",
        ge=0,
        le=1,
    )
    approval_policy: ApprovalPolicy = Field(
        default_factory=ApprovalPolicy, description="Who may approve the ship and how long to wait."
    )
    approval: Approval | None = Field(
        None,
        description="The human approval of the ship: set it (kubectl patch) once the review approved; "
        "approvedBy must be your own user name.",
    )
    ship: ShipOptions | None = Field(
        None, description="The pushed branch: <branchPrefix><build dispatch>, a new branch."
    )
    pull_request: PullRequestOptions | None = Field(
        None, description="After the push, open a pull/merge request with the review and the provenance."
    )
    timeouts: Timeouts | None = Field(
        None, description="Time limits of each step's dispatch (a dispatch's defaults when unset)."
    )
    sandbox: Sandbox | None = Field(None, description="Sandbox pod overrides of the build step(s).")
    cancel: bool = Field(
        False, description="Set to true to stop the pipeline and cancel its running step. Cannot be undone."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, prompt: str) -> str:
        return inputs.valid_prompt(prompt)


PIPELINE_RULES = [
    cel(
        "!self.phases.ship || self.phases.review",
        "phases.ship needs phases.review: a diff is never shipped unreviewed",
        field_path=".phases.ship",
    ),
    cel("self.revisions == 0 || self.phases.review", "revisions need phases.review", field_path=".revisions"),
]
# Fields that may change after creation: approval, approvalPolicy (who, how long), cancel (one way).
IMMUTABLE_FIELDS = (
    "prompt",
    "repo",
    "engine",
    "models",
    "phases",
    "revisions",
    "ship",
    "pullRequest",
    "timeouts",
    "sandbox",
)


class PipelineChild(ApiModel):
    """One BuildDispatch the pipeline created."""

    stage: Stage = Field(description="plan, build, review or ship.")
    name: str = Field(description="The BuildDispatch (same namespace, owned by the pipeline).", max_length=253)
    round: int = Field(0, description="0, or 1 for the revision round.", ge=0, le=1)
    phase: str = Field("", description="The dispatch's status.phase when last seen.", max_length=32)


class PipelineReview(ApiModel):
    """The latest review's verdict."""

    dispatch: str = Field(description="The review dispatch.", max_length=253)
    verdict: Literal["Approve", "RequestChanges", "Unclear"] = Field(
        description="Approve, RequestChanges, or Unclear (no single verdict line)."
    )


class BuildPipelineStatus(ApiModel):
    """Observed state of the pipeline, folded from its children by the operator."""

    observed_generation: int | None = Field(None, description="metadata.generation last acted on.", ge=0)
    phase: PipelinePhase | None = Field(
        None,
        description="Pending, Planning, Building, Reviewing, AwaitingApproval, Shipping, Succeeded, Failed "
        "or Cancelled.",
    )
    reason: str = Field("", description="Reason of the latest significant transition.", max_length=64)
    message: str = Field("", description="Message of the latest significant transition.", max_length=1024)
    conditions: list[Condition] = conditions_field(
        "Planned, Built, Reviewed, Approved, Shipped (one per step that ran) and Succeeded (terminal: "
        "kubectl wait --for=condition=Succeeded)."
    )
    current: str = Field("", description="The child dispatch running now.", max_length=253)
    round: int = Field(0, description="The current round: 1 once a revision build started.", ge=0, le=1)
    children: list[PipelineChild] = Field(
        default_factory=list, description="The child dispatches, in the order they were created.", max_length=8
    )
    diff_stat: DiffStat | None = Field(None, description="Size of the latest build's diff.")
    diff_summary: str = Field("", description="+additions/-deletions, for the printer column.", max_length=64)
    review: PipelineReview | None = Field(None, description="The latest review's verdict.")
    approved_by: str = Field("", description="Whose approval the ship went ahead under.", max_length=253)
    branch: str = Field("", description="The pushed branch.", max_length=255)
    commit: str = Field("", description="The pushed commit.", max_length=64)
    pull_request_url: str = Field("", description="The pull/merge request opened for the branch.", max_length=2048)
    finished_at: str | None = Field(
        None, description="When it reached a terminal state.", json_schema_extra={"format": "date-time"}
    )


class BuildPipeline(ApiModel):
    """The governed pipeline as one resource; `Succeeded` is its terminal condition."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["buildstudio.dpf.dev/v1alpha1"] = "buildstudio.dpf.dev/v1alpha1"
    kind: Literal["BuildPipeline"] = "BuildPipeline"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: BuildPipelineSpec
    status: BuildPipelineStatus = Field(default_factory=BuildPipelineStatus)


__all__ = [
    "IMMUTABLE_FIELDS",
    "PIPELINE_RULES",
    "PROMPT_MAX",
    "ApprovalPolicy",
    "BuildPipeline",
    "BuildPipelineSpec",
    "BuildPipelineStatus",
    "PipelineChild",
    "PipelineModels",
    "PipelinePhase",
    "PipelinePhases",
    "PipelineReview",
    "Stage",
]
