"""What one run needs (`RunnerSpec`), as the JSON file the operator mounts and the runner reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# What the runner runs: the coding agent (build), or one chat completion (the other three).
RunnerPhase = Literal["ideate", "plan", "build", "review"]
# The coding agents the runner can start (engines.adapters.ENGINES: opencode and the cloud adapters).
RunnerEngine = Literal["opencode", "claude", "codex", "grok"]


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class RepoSource(_Spec):
    """Clone this repo at this ref into the workspace: a remote git URL, or a local path in local mode."""

    url: str = Field(min_length=1)
    ref: str = Field("", description="branch, tag or commit; empty: the remote's default branch")
    local_paths: bool = Field(
        False,
        alias="localPaths",
        description="local mode (`run --local`) only: local paths and file:// URLs are allowed",
    )


class RunnerTimeouts(_Spec):
    run_seconds: float = Field(1800.0, alias="runSeconds", gt=0)
    idle_seconds: float = Field(300.0, alias="idleSeconds", gt=0)
    # opencode exits ≈ 100 ms after its final event; past this it is killed and the run counts as done.
    exit_after_final_seconds: float = Field(5.0, alias="exitAfterFinalSeconds", gt=0)
    clone_seconds: float = Field(300.0, alias="cloneSeconds", gt=0)
    # After SIGTERM to the runner: time to stop everything and still print the result.
    cancel_grace_seconds: float = Field(10.0, alias="cancelGraceSeconds", gt=0)
    # Provider timeouts written into opencode's config (a hung attempt is retried 6 times).
    header_timeout_ms: int = Field(120_000, alias="headerTimeoutMs", gt=0)
    chunk_timeout_ms: int = Field(120_000, alias="chunkTimeoutMs", gt=0)


class LoopLimits(_Spec):
    step_budget: int = Field(200, alias="stepBudget", ge=1)
    # opencode restarts a step at once when the stream is cut (finish "unknown"), for ever.
    unknown_finishes: int = Field(5, alias="unknownFinishes", ge=1)
    # Compaction rounds (overflow → summary → retry) before it counts as a loop.
    compactions: int = Field(3, ge=1)


class OutputBounds(_Spec):
    progress_interval_seconds: float = Field(2.0, alias="progressIntervalSeconds", gt=0)
    max_event_records: int = Field(400, alias="maxEventRecords", ge=0)
    max_output_bytes: int = Field(2 * 1024 * 1024, alias="maxOutputBytes", ge=64 * 1024)
    diff_excerpt_bytes: int = Field(16 * 1024, alias="diffExcerptBytes", ge=1024)
    patch_max_bytes: int = Field(1024 * 1024, alias="patchMaxBytes", ge=1024)
    stderr_tail_bytes: int = Field(4096, alias="stderrTailBytes", ge=0)
    # The reporter copies the workspace (without any .git) before diffing it: at most this much.
    copy_max_bytes: int = Field(4 * 1024**3, alias="copyMaxBytes", ge=1024 * 1024)


class ReviewInput(_Spec):
    """review phase: what the reviewer reads of its source dispatch (filled in by the operator)."""

    source: str = Field(min_length=1, description="the reviewed dispatch")
    diff: str = Field("", description="the whole patch, or its head when it did not fit (bounded)")
    diff_bytes: int = Field(0, alias="diffBytes", ge=0)
    diff_truncated: bool = Field(False, alias="diffTruncated")
    files: int = Field(0, ge=0)
    additions: int = Field(0, ge=0)
    deletions: int = Field(0, ge=0)
    final_text: str = Field("", alias="finalText")
    sha256: str = Field("", description="the source's patch-sha256: ties the verdict to this exact diff")


class RunnerSpec(_Spec):
    prompt: str = Field(min_length=1, description="given to opencode verbatim, through a stdin file")
    repo: RepoSource | None = Field(None, description="None: use the git repo already in the workspace")
    model: str = Field(min_length=1)
    engine: RunnerEngine = Field(
        "opencode",
        description="the coding agent the runner starts (its adapter in buildstudio.engines); old specs: opencode",
    )
    base_url: str = Field(
        alias="baseUrl",
        min_length=1,
        description="the model API's base, ending in /v1 (OpenAI-compatible; the vendor's API for a cloud engine)",
    )
    context_limit: int = Field(65536, alias="contextLimit", gt=0)
    output_limit: int = Field(8192, alias="outputLimit", gt=0)
    api_key_env: str | None = Field(None, alias="apiKeyEnv", description="env var holding the service's key")
    timeouts: RunnerTimeouts = Field(default_factory=RunnerTimeouts)
    limits: LoopLimits = Field(default_factory=LoopLimits)
    output: OutputBounds = Field(default_factory=OutputBounds)
    relay: bool = Field(False, description="start the tool-call repair relay between opencode and the model")
    replay: bool = Field(False, description="the model service is a replay: its words are canned")
    phase: RunnerPhase = Field(
        "build", description="build runs opencode; ideate/plan/review are one chat completion, no repo"
    )
    review: ReviewInput | None = Field(None, description="review phase: the source dispatch's result")


def load_spec(path: Path) -> RunnerSpec:
    return RunnerSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))


def dump_spec(spec: RunnerSpec) -> str:
    return spec.model_dump_json(by_alias=True, exclude_none=True, indent=2)
