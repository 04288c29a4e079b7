"""`BuildDispatch`: one task for a coding-agent engine (namespaced)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from buildstudio.api import inputs
from buildstudio.api.common import (
    NAME_PATTERN,
    ApiModel,
    Condition,
    ObjectMeta,
    SecretKeyRef,
    cel,
    conditions_field,
)

Phase = Literal["ideate", "plan", "build", "review", "ship"]
DispatchPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"]

# Text-generation phases need no repository and no coding engine.
TEXT_PHASES: frozenset[str] = frozenset({"ideate", "plan"})
# Phases that work on another dispatch's result (``spec.source``): the one place this set is spelled.
SOURCE_PHASES: frozenset[str] = frozenset({"review", "ship"})

FREE_FORM: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
IMMUTABLE = cel("self == oldSelf", "is immutable once the dispatch exists")


# Validation context of `buildstudio run --local`, where repo.url may also be a local path or file://:
# `BuildDispatch.model_validate(doc, context=LOCAL_PATHS)`.
LOCAL_PATHS_KEY = "localPaths"
LOCAL_PATHS: dict[str, bool] = {LOCAL_PATHS_KEY: True}


def input_rules(rules: tuple[inputs.Rule, ...]) -> dict[str, Any]:
    """The checks of ``core.inputs`` as CEL rules on a string field: the apiserver refuses what they refuse."""
    return {"x-kubernetes-validations": [cel(r.cel(), r.message) for r in rules]}


class Repo(ApiModel):
    """The git repository the engine works in."""

    url: str = Field(
        description="Clone URL: https://, http:// or ssh://[user@]host[:port]/path, or user@host:path "
        "(no file:// or other transports; local paths only with `buildstudio run --local`).",
        min_length=1,
        max_length=2048,
        json_schema_extra=input_rules(inputs.URL_RULES),
    )
    ref: str = Field(
        "main",
        description="Branch, tag or commit to start from: a git ref name (git check-ref-format) or a commit sha.",
        min_length=1,
        max_length=255,
        json_schema_extra=input_rules(inputs.REF_RULES),
    )
    credentials_secret: SecretKeyRef | None = Field(
        None, description="Secret with a token or SSH key for a private repository."
    )

    @field_validator("url")
    @classmethod
    def _url_is_data(cls, url: str, info: ValidationInfo) -> str:
        local = isinstance(info.context, dict) and info.context.get(LOCAL_PATHS_KEY) is True
        problem = inputs.check_repo_url(url, local=local)
        if problem:
            raise ValueError(problem)
        return url

    @field_validator("ref")
    @classmethod
    def _ref_is_data(cls, ref: str) -> str:
        problem = inputs.check_ref(ref)
        if problem:
            raise ValueError(problem)
        return ref


class Timeouts(ApiModel):
    """Time limits. The queue timeout counts from creation, the run timeout from Running."""

    queue_seconds: int = Field(
        3600, description="Longest wait for admission before the dispatch fails with QueueTimeout.", ge=1, le=7 * 86400
    )
    run_seconds: int = Field(
        1800,
        description="Longest run of the engine; then it is stopped, the partial "
        "diff kept, and the dispatch fails with TimedOut.",
        ge=30,
        le=86400,
    )
    idle_seconds: int = Field(
        300,
        description="Longest silence of the engine's event stream before it is stopped (IdleTimeout).",
        ge=10,
        le=86400,
    )


class ResourceList(ApiModel):
    """Compute resources of the sandbox container."""

    requests: dict[str, str] = Field(default_factory=dict, description="Requests, e.g. {cpu: 500m, memory: 1Gi}.")
    limits: dict[str, str] = Field(default_factory=dict, description="Limits, e.g. {memory: 4Gi}.")


class Sandbox(ApiModel):
    """Placement and resources of the sandbox pod; unset fields take the operator's defaults."""

    image: str | None = Field(
        None, description="Sandbox image (default: the engine's, then the operator's).", max_length=512
    )
    resources: ResourceList | None = Field(None, description="Container resources.")
    node_selector: dict[str, str] | None = Field(
        None, description="Node selector, replacing the default GPU-node affinity when set."
    )
    tolerations: list[dict[str, Any]] | None = Field(
        None,
        description="Tolerations, replacing the default nvidia.com/gpu toleration when set.",
        json_schema_extra={"items": {"type": "object", **FREE_FORM}},
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="Pod affinity (core/v1 Affinity), replacing the default GPU-node affinity when set.",
        json_schema_extra=FREE_FORM,
    )
    runtime_class_name: str | None = Field(None, description="RuntimeClass, e.g. gvisor or kata.", max_length=253)
    gpu: bool = Field(
        False,
        description="Request one nvidia.com/gpu. Off by default: the agent is a client of "
        "the model service and needs no GPU of its own.",
    )


class SourceRef(ApiModel):
    """The dispatch whose result a review or ship phase works on."""

    dispatch: str = Field(
        description="Name of a BuildDispatch in the same namespace.", min_length=1, max_length=253, pattern=NAME_PATTERN
    )


class Approval(ApiModel):
    """A human approval; ship never applies a diff without one."""

    approved_by: str = Field(description="Who approved.", min_length=1, max_length=253)
    comment: str = Field("", description="Why.", max_length=1024)


class ShipOptions(ApiModel):
    """ship: where the approved diff goes on the git remote."""

    branch_prefix: str = Field(
        "buildstudio/",
        description="The pushed branch is <branchPrefix><source dispatch>; a new branch, never forced.",
        max_length=100,
        pattern=r"^([A-Za-z0-9._][A-Za-z0-9._/-]*)?$",
    )


class PullRequestOptions(ApiModel):
    """ship: open a pull (merge) request of the pushed branch through the forge's REST API."""

    forge: Literal["github", "gitlab", "gitea"] = Field(description="github, gitlab, or gitea (Gitea and Forgejo).")
    api_url: str = Field(
        description="The API's base: https://api.github.com, or the GitLab/Gitea/Forgejo instance's root.",
        max_length=2048,
        pattern=r"^https?://[^\s@/]+(/[^\s]*)?$",
    )
    project: str = Field(
        "", description="owner/repo (GitLab: the project's path). Unset: from the repository URL.", max_length=512
    )
    base: str = Field("", description="The branch to merge into. Unset: the source's spec.repo.ref.", max_length=255)
    title: str = Field("", description="Unset: the commit's subject.", max_length=256)


class BuildDispatchSpec(ApiModel):
    """One task: a prompt for an engine and model, on a repository."""

    prompt: str = Field(
        description="The task, given to the engine verbatim (never through a shell); not empty or only whitespace.",
        min_length=1,
        max_length=262_144,
        json_schema_extra=input_rules(inputs.PROMPT_RULES),
    )
    repo: Repo | None = Field(
        None, description="Repository to work in (required for build; review and ship work on spec.source)."
    )
    engine: str | None = Field(
        None,
        description="BuildEngine name. Unset: auto-detected — the present engine "
        "that serves the model (opencode for a local model).",
        max_length=253,
    )
    model: str | None = Field(None, description="Model id. Unset: the engine's strong-tier model.", max_length=256)
    phase: Phase = Field(
        "build",
        description="Pipeline phase: ideate and plan generate text with the strongest "
        "local model; build runs the engine in a sandbox; review and ship are governed gates.",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Queue, run and idle time limits.")
    step_budget: int | None = Field(
        None,
        description="Most model steps before the engine is stopped (opencode has no enforced limit of its own).",
        ge=1,
        le=10_000,
    )
    ttl_seconds_after_finished: int | None = Field(
        None, description="Delete the dispatch this long after it finished.", ge=0, le=365 * 86400
    )
    cancel: bool = Field(
        False, description="Set to true to stop the dispatch; the partial diff is kept. Cannot be undone."
    )
    sandbox: Sandbox | None = Field(None, description="Sandbox pod overrides.")
    source: SourceRef | None = Field(None, description="review/ship: the dispatch whose diff is reviewed or shipped.")
    approval: Approval | None = Field(None, description="ship: the human approval the diff is applied under.")
    pull_request: PullRequestOptions | None = Field(
        None, description="ship: after the push, open a pull/merge request with the review and the provenance."
    )
    ship: ShipOptions | None = Field(
        None,
        description="ship: the branch to push. The remote is the source's repo; spec.repo (same URL) may "
        "name another credentialsSecret for the push.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, prompt: str) -> str:
        return inputs.valid_prompt(prompt)


DISPATCH_RULES = [
    cel("self.phase != 'build' || has(self.repo)", "build needs spec.repo", field_path=".repo"),
    cel(
        f"!(self.phase in [{', '.join(repr(p) for p in sorted(SOURCE_PHASES))}]) || has(self.source)",
        "review and ship need spec.source",
        field_path=".source",
    ),
    cel(
        "self.phase != 'ship' || has(self.approval)",
        "ship needs spec.approval: a diff is never applied without it",
        field_path=".approval",
    ),
    cel(
        "self.timeouts.idleSeconds <= self.timeouts.runSeconds",
        "timeouts.idleSeconds must not exceed timeouts.runSeconds",
        field_path=".timeouts.idleSeconds",
    ),
]
# Fields that may change after creation: cancel (one way), ttlSecondsAfterFinished, approval.
IMMUTABLE_FIELDS = (
    "prompt",
    "repo",
    "engine",
    "model",
    "phase",
    "timeouts",
    "stepBudget",
    "sandbox",
    "source",
    "ship",
    "pullRequest",
)


class Progress(ApiModel):
    """Live counters while the engine runs (updated at most every couple of seconds)."""

    stage: str = Field("", description="preparing, cloning, running or diffing.", max_length=32)
    steps: int = Field(0, description="Model steps so far.", ge=0)
    tool_calls: int = Field(0, description="Tool calls so far.", ge=0)
    tokens: int = Field(0, description="Tokens so far (input + output).", ge=0)
    last_tool: str = Field("", description="Last tool call, e.g. 'edit calc.py'.", max_length=256)
    message: str = Field("", description="Last progress message.", max_length=512)
    reported_by: str = Field(
        "",
        description="Whose figures these are: agent (the sandbox's agent side: informative, they decide "
        "nothing) or reporter (the sandbox's own result container).",
        max_length=16,
    )
    updated_at: str | None = Field(
        None, description="When progress was last written.", json_schema_extra={"format": "date-time"}
    )


class RecordModel(ApiModel):
    """A part of the status that is also the runner's record of it (``protocol.records``): one
    schema for both; a record from a newer runner with more fields is read, its extras ignored."""

    model_config = ApiModel.model_config | {"extra": "ignore"}


class TokenUsage(RecordModel):
    """Token usage summed over the run's steps."""

    input: int = Field(0, description="Prompt tokens.", ge=0)
    output: int = Field(0, description="Completion tokens.", ge=0)
    reasoning: int = Field(0, description="Reasoning tokens.", ge=0)
    cache_read: int = Field(0, description="Prompt tokens read from cache.", ge=0)
    cache_write: int = Field(0, description="Prompt tokens written to cache.", ge=0)
    total: int = Field(0, description="All tokens.", ge=0)


class RunCounters(RecordModel):
    """The counters the status summary and the runner's ``RunSummary`` both carry."""

    steps: int = Field(0, description="Model steps.", ge=0)
    tool_calls: int = Field(0, description="Tool calls.", ge=0)
    tool_errors: int = Field(0, description="Tool calls that failed.", ge=0)


class Summary(RunCounters):
    """The dispatch record's counters."""

    model_config = ApiModel.model_config

    files_changed: int = Field(0, description="Files in the diff.", ge=0)
    tokens: TokenUsage = Field(default_factory=TokenUsage, description="Token usage.")
    cost: str = Field(
        "0", description="Cost reported by the engine (0 for a local model), as a decimal string.", max_length=32
    )
    repaired_tool_calls: int = Field(
        0, description="Text-format tool calls the repair relay turned into API tool calls.", ge=0
    )
    unrepaired_tool_calls: int = Field(
        0, description="Call-like text the repair relay could not turn into a tool call (never executed).", ge=0
    )
    duration_seconds: int = Field(0, description="Wall time of the run.", ge=0)
    reported_by: str = Field(
        "",
        description="Whose counters these are (filesChanged is always the reporter's diff): agent (the "
        "sandbox's agent side: informative, they decide "
        "nothing) or reporter (the sandbox's own result container).",
        max_length=16,
    )


class DiffStat(RecordModel):
    """Size of the diff."""

    files: int = Field(0, description="Files changed.", ge=0)
    additions: int = Field(0, description="Lines added.", ge=0)
    deletions: int = Field(0, description="Lines deleted.", ge=0)
    binary_files: int = Field(0, description="Binary files changed (not shown in the diff).", ge=0)


class ModelObservation(ApiModel):
    """What the preflight saw of the model service for this dispatch."""

    backend: str = Field("", description="Backend identified.", max_length=32)
    matched_model: str = Field("", description="Model id as the service lists it.", max_length=256)
    context: int | None = Field(None, description="Allocated context window, tokens.")
    context_source: str = Field("", description="Where the context number came from.", max_length=128)
    reason: str = Field("", description="Preflight verdict reason.", max_length=64)


class ReviewStatus(ApiModel):
    """A review phase's verdict; ship counts it only for the exact diff it names."""

    source: str = Field(description="The reviewed dispatch.", max_length=253)
    verdict: Literal["Approve", "RequestChanges", "Unclear"] = Field(
        description="Approve, RequestChanges, or Unclear (no single verdict line in the answer)."
    )
    diff_sha256: str = Field("", description="sha256 of the reviewed diff (the source's patch-sha256).", max_length=64)


class PushStatus(ApiModel):
    """ship: what the ship pod pushed, or why it could not."""

    reason: str = Field(
        description="Pushed, PushAuthFailed, PushRejected, RemoteUnreachable, PatchMismatch, ...", max_length=64
    )
    branch: str = Field("", description="The branch on the remote.", max_length=255)
    commit: str = Field("", description="The pushed commit.", max_length=64)
    remote: str = Field("", description="The remote's URL.", max_length=2048)
    pull_request_url: str = Field("", description="The pull/merge request opened for the branch.", max_length=2048)


class BuildDispatchStatus(ApiModel):
    """Observed state of the dispatch, written by the operator (bounded to 32 KiB)."""

    observed_generation: int | None = Field(None, description="metadata.generation last acted on.", ge=0)
    phase: DispatchPhase | None = Field(None, description="Convenience phase derived from the conditions.")
    reason: str = Field("", description="Reason of the latest significant transition.", max_length=64)
    message: str = Field("", description="Message of the latest significant transition.", max_length=1024)
    conditions: list[Condition] = conditions_field(
        "ModelReady, Admitted, Running and Succeeded (terminal: kubectl wait --for=condition=Succeeded), and "
        "Ready for tools that know only Ready, derived from Succeeded: Unknown until the dispatch finished "
        "(reason: its phase), then True if it succeeded, else False with Succeeded's reason and message."
    )
    engine: str = Field("", description="Engine the dispatch runs on (resolved when auto-detected).", max_length=253)
    model: str = Field("", description="Model the dispatch runs on (resolved when defaulted).", max_length=256)
    attempt: int = Field(0, description="Sandbox attempt number; the pod is named <dispatch>-<attempt>.", ge=0)
    pod_name: str = Field("", description="Current sandbox pod.", max_length=253)
    queue_position: int | None = Field(
        None,
        description="1-based position while Queued: written when the dispatch is queued, then refreshed at "
        "most every 10 s (the operator's BUILDSTUDIO_QUEUE_POSITION_INTERVAL) as the queue moves.",
        ge=0,
    )
    progress: Progress | None = Field(None, description="Live counters while running.")
    recent_events: list[str] = Field(
        default_factory=list,
        description="Last engine events, one line each.",
        max_length=20,
        json_schema_extra={"items": {"type": "string", "maxLength": 512}},
    )
    summary: Summary | None = Field(None, description="Final counters of the run.")
    diff_stat: DiffStat | None = Field(None, description="Size of the diff.")
    diff_summary: str = Field("", description="+additions/-deletions, for the printer column.", max_length=64)
    diff: str = Field(
        "", description="Unified diff excerpt (at most 16 KiB, cut at a line, with a marker).", max_length=17_000
    )
    diff_bytes: int = Field(0, description="Size of the whole diff in bytes.", ge=0)
    diff_truncated: bool = Field(False, description="The excerpt is shorter than the whole diff.")
    patch_config_map: str = Field(
        "", description="Owned ConfigMap holding the whole patch (gzip, key patch.gz).", max_length=253
    )
    final_text: str = Field("", description="The engine's final answer (at most 4 KiB).", max_length=4200)
    model_service: ModelObservation | None = Field(None, description="Preflight observation.")
    review: ReviewStatus | None = Field(None, description="review phase: the verdict and the diff it is for.")
    base_commit: str = Field("", description="build: the commit the diff is against.", max_length=64)
    push: PushStatus | None = Field(None, description="ship phase: the pushed branch and commit.")
    admitted_at: str | None = Field(
        None, description="When the gate admitted it.", json_schema_extra={"format": "date-time"}
    )
    started_at: str | None = Field(
        None, description="When the sandbox started running.", json_schema_extra={"format": "date-time"}
    )
    finished_at: str | None = Field(
        None, description="When it reached a terminal state.", json_schema_extra={"format": "date-time"}
    )


class BuildDispatch(ApiModel):
    """One coding task; `Succeeded` is its terminal condition."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["buildstudio.dpf.dev/v1alpha1"] = "buildstudio.dpf.dev/v1alpha1"
    kind: Literal["BuildDispatch"] = "BuildDispatch"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: BuildDispatchSpec
    status: BuildDispatchStatus = Field(default_factory=BuildDispatchStatus)


__all__ = [
    "DISPATCH_RULES",
    "IMMUTABLE",
    "IMMUTABLE_FIELDS",
    "LOCAL_PATHS",
    "SOURCE_PHASES",
    "TEXT_PHASES",
    "Approval",
    "BuildDispatch",
    "BuildDispatchSpec",
    "BuildDispatchStatus",
    "DiffStat",
    "ModelObservation",
    "Progress",
    "PullRequestOptions",
    "PushStatus",
    "RecordModel",
    "Repo",
    "ResourceList",
    "ReviewStatus",
    "RunCounters",
    "Sandbox",
    "ShipOptions",
    "SourceRef",
    "Summary",
    "Timeouts",
    "TokenUsage",
]
