"""The runner spec of one run (pure): built here only, for the operator's sandbox pod
(``runner.json`` in the config ConfigMap, ``core.manifests.sandbox_files``) and for
``buildstudio run --local`` (the spec file of its local runner).

The two callers differ in one rule only, the completion budget (``output_limit``), and say
which one they want: the operator sizes it from the context, a local run takes
``--output-limit``.
"""

from __future__ import annotations

from typing import cast

from buildstudio.api.dispatch import TEXT_PHASES
from buildstudio.engines.adapters import ENGINES
from buildstudio.protocol.spec import (
    LoopLimits,
    RepoSource,
    ReviewInput,
    RunnerEngine,
    RunnerPhase,
    RunnerSpec,
    RunnerTimeouts,
)

DEFAULT_CONTEXT = 65536  # tokens, when neither the preflight nor the user gave one
MIN_OUTPUT = 256
MAX_OUTPUT = 8192


def output_limit(context: int, requested: int | None = None) -> int:
    """Completion budget per model reply. opencode sends it as ``max_tokens`` on every request,
    so it must leave most of the context window to the prompt.

    - ``requested`` None (the operator): a quarter of the context, within 256..8192 tokens;
    - ``requested`` N (``run --local --output-limit N``, 8192 by default): N, at most half the context.
    """
    if requested is None:
        return max(MIN_OUTPUT, min(MAX_OUTPUT, context // 4))
    return min(requested, context // 2)


def chat_only(phase: str) -> bool:
    """The phase is one chat completion in the sandbox: no repository, no coding agent, no relay."""
    return phase in TEXT_PHASES or phase == "review"


def runner_spec(
    *,
    prompt: str,
    model: str,
    base_url: str,
    context: int | None,
    run_seconds: float,
    idle_seconds: float,
    phase: str = "build",
    repo: RepoSource | None = None,
    step_budget: int | None = None,
    relay: bool = False,
    replay: bool = False,
    requested_output: int | None = None,
    api_key_env: str | None = None,
    review: ReviewInput | None = None,
    engine: str = "opencode",
) -> RunnerSpec:
    """The spec of one run. A chat-only phase drops the repository and the relay; any other
    phase (build) runs the coding agent, ``engine`` (the BuildEngine's ``spec.engine``: opencode,
    claude, codex or grok); ``review`` is kept for a review phase only.

    For a cloud engine ``base_url`` is where its relay forwards: the vendor's API (``sandbox_request.
    model_upstream``) or a model service; the engine itself only ever talks to the relay."""
    if engine not in ENGINES:  # the gate refuses such an engine first (EngineUnsupported)
        raise ValueError(f"engine {engine!r} has no runner adapter (known: {', '.join(ENGINES)})")
    text = chat_only(phase)
    ctx = context or DEFAULT_CONTEXT
    return RunnerSpec(
        prompt=prompt,
        repo=None if text else repo,
        model=model,
        engine=cast(RunnerEngine, engine),
        base_url=base_url,
        context_limit=ctx,
        output_limit=output_limit(ctx, requested_output),
        api_key_env=api_key_env,
        timeouts=RunnerTimeouts(run_seconds=float(run_seconds), idle_seconds=float(idle_seconds)),
        limits=LoopLimits(step_budget=step_budget) if step_budget else LoopLimits(),
        relay=relay and not text,
        replay=replay,
        phase=cast(RunnerPhase, phase) if text else "build",
        review=review if phase == "review" else None,
    )

