"""Run one text phase (ideate, plan, review): messages → one chat completion → the result record.

The IO shell over ``prompts``, ``textgen`` and ``review``. The record is the same protocol the
sandbox runner writes (``records.ResultRecord``), so the operator's status reduction and
``run --local``'s printer take it unchanged: the full answer is in ``summary.finalText`` (the
status keeps its first 4 KiB), token usage in ``summary.tokens``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import httpx

from buildstudio.adapters.modelservice.textgen import (
    DEFAULT_MAX_OUTPUT_BYTES,
    Completion,
    CompletionError,
    CompletionResult,
    ErrorKind,
    Timeouts,
    chat_completion,
    one_line,
)
from buildstudio.core.prompts import Budget, budget_for, messages_for, text_phase
from buildstudio.core.review import ReviewFacts, Verdict, parse_verdict
from buildstudio.core.source import ReviewSource
from buildstudio.protocol.records import EventRecord, Outcome, ResultRecord, RunSummary, TokenUsage

EVENT_CHARS = 400
_OVERFLOW_HINTS = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "too many tokens",
    "exceeds the context",
)


@dataclass(frozen=True)
class PhaseRun:
    record: ResultRecord
    events: tuple[EventRecord, ...]  # compact lines for the log / status.recentEvents
    review: ReviewFacts | None = None  # review phase with an answer: what the ship gate needs


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _event(kind: str, message: str) -> EventRecord:
    return EventRecord(type=kind, message=one_line(message, EVENT_CHARS), ts=time.time())


def error_outcome(err: CompletionError) -> Outcome:
    """How a failed completion ends the phase (pure)."""
    if err.kind == ErrorKind.TIMEOUT:
        return Outcome.TIMED_OUT if err.deadline else Outcome.IDLE_TIMEOUT
    text = f"{err.message} {err.body_excerpt}".lower()
    if err.kind == ErrorKind.HTTP_STATUS and err.status in (400, 413) and any(h in text for h in _OVERFLOW_HINTS):
        return Outcome.CONTEXT_OVERFLOW
    return Outcome.MODEL_ERROR


def answer_outcome(done: Completion) -> Outcome:
    if done.truncated or done.finish_reason == "length":
        return Outcome.TRUNCATED
    if not done.text.strip():
        return Outcome.MODEL_ERROR
    return Outcome.COMPLETED


def review_facts(done: Completion, outcome: Outcome, source: ReviewSource, review_name: str) -> ReviewFacts:
    # A cut answer lost its closing line: whatever verdict it stated earlier does not count.
    verdict = parse_verdict(done.text) if outcome == Outcome.COMPLETED else Verdict.UNCLEAR
    return ReviewFacts(review=review_name, source=source.dispatch, verdict=verdict, diff_sha256=source.digest)


def fold_result(
    phase: str,
    result: CompletionResult,
    *,
    model: str,
    budget: Budget,
    source: ReviewSource | None,
    review_name: str,
    started_at: str,
    notes: tuple[EventRecord, ...] = (),
) -> PhaseRun:
    """The record, events and review facts of one completion (pure but for timestamps)."""
    events: list[EventRecord] = list(notes)
    summary = RunSummary(steps=1)
    review: ReviewFacts | None = None
    if isinstance(result, CompletionError):
        outcome = error_outcome(result)
        message = f"{phase}: {result.kind.value}: {result.message}"
        summary.final_text = result.partial_text
        summary.errors = [one_line(message, EVENT_CHARS)]
        events.append(_event("error", message))
    else:
        outcome = answer_outcome(result)
        summary.final_text = result.text
        summary.finish_reason = result.finish_reason
        summary.tokens = result.usage if result.usage_reported else TokenUsage()
        took = f"{len(result.text)} characters from {model} in {result.latency_s:.1f} s"
        tokens = (
            f"{result.usage.input} in / {result.usage.output} out tokens"
            if result.usage_reported
            else ("usage not reported")
        )
        events.append(_event("step", f"{phase}: {took} (finish {result.finish_reason or '-'}, {tokens})"))
        if outcome == Outcome.TRUNCATED:
            cap = "the byte cap" if result.truncated else f"max_tokens {budget.max_output_tokens}"
            message = f"{phase}: the answer was cut at {cap} ({took})"
        elif outcome == Outcome.MODEL_ERROR:
            message = f"{phase}: {model} returned an empty answer ({result.reasoning_chars} reasoning characters)"
            summary.errors = [message]
        else:
            message = f"{phase}: {took}"
        if phase == "review" and source is not None:
            review = review_facts(result, outcome, source, review_name)
            digest = review.diff_sha256[:12] or "unknown"
            verdict = f"review of {source.dispatch}: verdict {review.verdict.value} for diff {digest}"
            events.append(_event("review", verdict))
            message = f"{verdict}; {message}"
    summary.events = len(events)
    record = ResultRecord(
        outcome=outcome,
        phase=phase,  # the record's default is "build"
        message=one_line(message, 1000),
        summary=summary,
        started_at=started_at,
        finished_at=utcnow(),
        duration_seconds=result.latency_s,
    )
    return PhaseRun(record=record, events=tuple(events), review=review)


async def run_phase(
    phase: str,
    spec_prompt: str,
    *,
    base_url: str,
    model: str,
    context: int | None,
    api_key: str | None = None,
    source: ReviewSource | None = None,
    timeout: float = 600.0,  # noqa: ASYNC109  # a deadline that ends in a TimedOut record, not an exception
    idle_timeout: float | None = None,
    connect_timeout: float = 10.0,
    stream: bool = True,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    temperature: float | None = None,
    review_name: str = "",
    client: httpx.AsyncClient | None = None,
) -> PhaseRun:
    """One text phase end to end. ``timeout`` is the overall deadline; ``idle_timeout`` the longest silence."""
    budget = budget_for(context)
    messages = messages_for(text_phase(phase), spec_prompt, budget=budget, source=source)  # ValueError: misuse
    size = sum(len(m["content"]) for m in messages)
    notes = (
        ()
        if size <= budget.input_chars
        else (
            _event(
                "warning",
                f"{phase}: the prompt (≈{size} characters) exceeds the input budget "
                f"({budget.input_chars} characters for a {budget.context}-token context)",
            ),
        )
    )
    started_at = utcnow()
    timeouts = Timeouts(connect=connect_timeout, read=min(idle_timeout or 300.0, timeout), total=timeout)
    result = await chat_completion(
        base_url,
        model,
        messages,
        stream=stream,
        max_tokens=budget.max_output_tokens,
        temperature=temperature,
        api_key=api_key,
        timeouts=timeouts,
        max_output_bytes=max_output_bytes,
        client=client,
    )
    return fold_result(
        phase,
        result,
        model=model,
        budget=budget,
        source=source,
        review_name=review_name,
        started_at=started_at,
        notes=notes,
    )


async def run_text_phase(
    phase: str,
    spec_prompt: str,
    *,
    base_url: str,
    model: str,
    context: int | None,
    api_key: str | None = None,
    source: ReviewSource | None = None,
    timeout: float = 600.0,  # noqa: ASYNC109  # see run_phase
) -> ResultRecord:
    """The result record of one text phase (``run_phase`` for its events and review facts too)."""
    run = await run_phase(
        phase,
        spec_prompt,
        base_url=base_url,
        model=model,
        context=context,
        api_key=api_key,
        source=source,
        timeout=timeout,
    )
    return run.record
