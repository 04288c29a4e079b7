"""The runner's result channel: one JSON object per line on stdout (the pod log).

Shared by the sandbox runner (writer) and the operator / `run --local` (readers).
Every record carries `kind` and `v` (schema version). Readers skip lines that are
not records (a malformed or foreign line is counted, never fatal).

``DiffStat``, ``TokenUsage`` and the counters of ``RunSummary`` are the API's own models
(``buildstudio.api.dispatch``): the record and the dispatch's status describe them once.

Kinds:
- ``progress``: periodic counters while the run goes on.
- ``event``: one compact line per notable opencode event (step, tool call, error).
- ``result``: exactly one, last; the dispatch record plus the diff.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from buildstudio.api.dispatch import DiffStat, RunCounters, TokenUsage

SCHEMA_VERSION = 1
# Longest protocol line a reader accepts: a result record with its whole patch (base64 of at
# most the compressed cap) and excerpt fits with room to spare.
MAX_LINE_BYTES = 4 * 1024 * 1024


class _Record(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Outcome(enum.StrEnum):
    """How a run ended; becomes the `Succeeded` condition's reason."""

    COMPLETED = "Completed"  # final answer, diff non-empty
    NO_CHANGES = "NoChanges"  # final answer, empty diff (still success)
    ENGINE_FAILED = "EngineFailed"  # opencode died/was misconfigured (start-up error, UnknownError)
    MODEL_ERROR = "ModelError"  # error event from the model service (APIError, 4xx/5xx, unreachable)
    CONTEXT_OVERFLOW = "ContextOverflow"  # ContextOverflowError
    TIMED_OUT = "TimedOut"  # overall run timeout
    IDLE_TIMEOUT = "IdleTimeout"  # no event for too long
    STEP_BUDGET_EXCEEDED = "StepBudgetExceeded"
    LOOP_DETECTED = "LoopDetected"  # compaction / cut-stream loop
    TRUNCATED = "OutputTruncated"  # finish reason "length"
    CANCELLED = "Cancelled"
    WORKSPACE_ERROR = "WorkspaceError"  # clone failed / not a git repo
    RUNNER_ERROR = "RunnerError"  # bug or unexpected failure in the runner itself
    DIFF_CAPTURE_FAILED = "DiffCaptureFailed"  # the work could not be diffed: a failure, never NoChanges
    TOOL_CALLS_NOT_EXECUTED = "ToolCallsNotExecuted"  # final text holds tool calls nobody ran

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.COMPLETED, Outcome.NO_CHANGES)


class ToolCall(_Record):
    name: str
    status: str  # completed | error
    duration_ms: int = Field(0, alias="durationMs")
    title: str = ""
    error: str = ""


class RunSummary(RunCounters):
    """Counters folded from the engine's event stream (bounded whatever the stream length).

    ``steps``, ``toolCalls`` and ``toolErrors`` are the status summary's (``api.dispatch.RunCounters``)."""

    step_retries: int = Field(0, alias="stepRetries")
    invalid_tool_calls: int = Field(0, alias="invalidToolCalls")
    tools_by_name: dict[str, int] = Field(default_factory=dict, alias="toolsByName")
    files_touched: list[str] = Field(default_factory=list, alias="filesTouched")
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    cost: float = 0.0
    events: int = 0
    malformed_lines: int = Field(0, alias="malformedLines")
    unknown_types: dict[str, int] = Field(default_factory=dict, alias="unknownTypes")
    errors: list[str] = Field(default_factory=list)
    final_text: str = Field("", alias="finalText")
    finish_reason: str = Field("", alias="finishReason")
    repaired_tool_calls: int = Field(0, alias="repairedToolCalls")
    unrepaired_tool_calls: int = Field(0, alias="unrepairedToolCalls")
    repair_reasons: dict[str, int] = Field(default_factory=dict, alias="repairReasons")


class Patch(_Record):
    """The whole patch, for the operator's owned ConfigMap."""

    encoding: Literal["gzip+base64"] = "gzip+base64"
    data: str = ""
    bytes: int = 0  # uncompressed size of the full `git diff`
    truncated: bool = False  # true when even the compressed patch exceeded the cap
    sha256: str = ""  # of the uncompressed patch that was kept


class ReviewRecord(_Record):
    """A review phase's verdict, tied to the exact diff it judged (what the ship gate checks)."""

    source: str  # the reviewed dispatch
    verdict: str  # Approve | RequestChanges | Unclear
    diff_sha256: str = Field("", alias="diffSha256")


class PushRecord(_Record):
    """A ship pod's push: the branch and commit it left on the remote, or why it could not."""

    reason: str  # Pushed | PushAuthFailed | PushRejected | RemoteUnreachable | PatchMismatch | ...
    branch: str = ""
    commit: str = ""
    remote: str = ""
    pull_request_url: str = Field("", alias="pullRequestUrl")


class ProgressRecord(_Record):
    kind: Literal["progress"] = "progress"
    v: int = SCHEMA_VERSION
    stage: str  # preparing | cloning | running | diffing
    elapsed_seconds: float = Field(0.0, alias="elapsedSeconds")
    steps: int = 0
    tool_calls: int = Field(0, alias="toolCalls")
    tokens: int = 0
    last_tool: str = Field("", alias="lastTool")
    message: str = ""


class EventRecord(_Record):
    kind: Literal["event"] = "event"
    v: int = SCHEMA_VERSION
    type: str  # step | tool | text | error | watchdog | repair
    message: str  # single line, bounded
    ts: float = 0.0


class ResultRecord(_Record):
    kind: Literal["result"] = "result"
    v: int = SCHEMA_VERSION
    outcome: Outcome
    message: str
    exit_code: int | None = Field(None, alias="exitCode")
    summary: RunSummary = Field(default_factory=RunSummary)
    diff_stat: DiffStat = Field(default_factory=DiffStat, alias="diffStat")
    diff: str = ""  # bounded excerpt for status
    diff_bytes: int = Field(0, alias="diffBytes")
    diff_truncated: bool = Field(False, alias="diffTruncated")
    patch: Patch = Field(default_factory=Patch)
    base_commit: str = Field("", alias="baseCommit")
    started_at: str = Field("", alias="startedAt")
    finished_at: str = Field("", alias="finishedAt")
    duration_seconds: float = Field(0.0, alias="durationSeconds")
    replay: bool = False  # true when the model's words were canned (replay model server)
    phase: str = "build"  # ideate | plan | build | review
    review: ReviewRecord | None = None  # review phase only
    push: PushRecord | None = None  # ship phase only
    # The outcome the agent's side claimed (informative; the reporter decided ``outcome``).
    agent_claim: str = Field("", alias="agentClaim")


__all__ = [
    "MAX_LINE_BYTES",
    "SCHEMA_VERSION",
    "DiffStat",
    "EventRecord",
    "Outcome",
    "Patch",
    "ProgressRecord",
    "PushRecord",
    "Record",
    "ResultRecord",
    "ReviewRecord",
    "RunSummary",
    "TokenUsage",
    "ToolCall",
    "dump",
    "parse_line",
]

Record = Annotated[ProgressRecord | EventRecord | ResultRecord, Field(discriminator="kind")]
_RECORD = TypeAdapter(Record)


def dump(record: ProgressRecord | EventRecord | ResultRecord) -> str:
    """One line of the protocol (no trailing newline)."""
    return record.model_dump_json(by_alias=True)


def parse_line(line: str | bytes) -> ProgressRecord | EventRecord | ResultRecord | None:
    """Parse one protocol line; None for anything that is not a record of ours.

    Never raises on bad input: a line over MAX_LINE_BYTES (characters, for a str) is refused
    before parsing, and every decoding failure is None.
    """
    try:
        if len(line) > MAX_LINE_BYTES:
            return None
        raw = json.loads(line)
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; json.loads recurses per nesting
    # level, so a deeply nested line raises RecursionError; TypeError: not text at all.
    except (ValueError, RecursionError, TypeError):
        return None
    if not isinstance(raw, dict) or raw.get("kind") not in ("progress", "event", "result"):
        return None
    try:
        return _RECORD.validate_python(raw)
    except (ValidationError, RecursionError):
        return None
