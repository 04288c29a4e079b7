"""Judge how a run ended, from the folded event stream, the exit code and the diff.

Pure: plain data in, `(Outcome, one-line message)` out. Success is read from the stream,
never from the exit code alone: opencode exits 0 after a text-format tool call that did
nothing, or after the model gave up; grok exits 0 on a model error and on SIGTERM. Every engine's
parser (opencode's StreamFolder, the adapters of buildstudio.engines) fills the same RunSummary;
messages name the engine that ran.
"""

from __future__ import annotations

from buildstudio.engines.opencode_stream import error_name
from buildstudio.protocol.records import DiffStat, Outcome, RunSummary

# Watchdog stop reasons (set by the runner when it killed the engine) → outcome.
WATCHDOG_OUTCOMES: dict[str, Outcome] = {
    "timeout": Outcome.TIMED_OUT,
    "idle": Outcome.IDLE_TIMEOUT,
    "steps": Outcome.STEP_BUDGET_EXCEEDED,
    "loop": Outcome.LOOP_DETECTED,
}
# The engine kept running after its final answer and was ended by the runner: not a failure.
EXIT_TIMER = "exit-timer"
# Markup of a qwen3-coder style tool call that reached opencode as plain text (not executed).
TEXT_TOOL_CALL_MARKERS = ("<tool_call>", "<function=")
TOOL_CALL_ADVICE = (
    "turn the tool-call repair relay on (`--relay on`, or the engine's toolCallRepair), or fix the model"
    " server's tool parser (e.g. vLLM --enable-auto-tool-choice --tool-call-parser qwen3_coder)"
)
# Error names of RunSummary.errors (opencode's classes, and the adapters': docs/engines/) → outcome;
# any other name (ClaudeError(<reason>), GrokError, …) is the engine's own failure.
ERROR_OUTCOMES: dict[str, Outcome] = {
    "APIError": Outcome.MODEL_ERROR,
    "ContextOverflowError": Outcome.CONTEXT_OVERFLOW,
    "UnknownError": Outcome.ENGINE_FAILED,
    "StepLimitError": Outcome.STEP_BUDGET_EXCEEDED,  # grok's --max-tool-rounds reached
}


def error_kind(entry: str) -> str:
    """The error's class name without an engine's detail: ``ClaudeError(api_error)`` → ``ClaudeError``."""
    return error_name(entry).split("(", 1)[0]


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 file``, ``2 files`` (``words``: an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _stats(s: RunSummary) -> str:
    return f"{plural(s.steps, 'step')}, {plural(s.tool_calls, 'tool call')}, {plural(s.tokens.total, 'token')}"


def _diff(d: DiffStat) -> str:
    text = f"{plural(d.files, 'file')} changed (+{d.additions} -{d.deletions}"
    return text + (f", {d.binary_files} binary)" if d.binary_files else ")")


def _exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "no exit code"
    if exit_code in (124, 137, 143) or exit_code < 0:
        return f"exit {exit_code} (killed)"
    return f"exit {exit_code}"


def looks_like_text_tool_call(text: str) -> bool:
    return any(marker in text for marker in TEXT_TOOL_CALL_MARKERS)


def _loop_kind(s: RunSummary) -> str:
    if any(error_kind(e) == "ContextOverflowError" for e in s.errors):
        return "context-overflow/compaction loop"
    if s.finish_reason == "unknown":
        return "cut-stream loop (steps ending with reason 'unknown')"
    return "loop"


def _judge_terminal(s: RunSummary, diff: DiffStat, note: str) -> tuple[Outcome, str]:
    if s.finish_reason == "length":
        return (
            Outcome.TRUNCATED,
            f"model output hit its token limit (finish reason 'length') after {_stats(s)}; {_diff(diff)}{note}",
        )
    if looks_like_text_tool_call(s.final_text):
        # The engine exits 0 after printing such a call as text: a success here would be a lie.
        return (
            Outcome.TOOL_CALLS_NOT_EXECUTED,
            f"the final text looks like a text-format tool call that was never executed ({_diff(diff)}, after"
            f" {_stats(s)}){note}; {TOOL_CALL_ADVICE}",
        )
    if diff.files > 0:
        return Outcome.COMPLETED, f"{_diff(diff)} in {_stats(s)}{note}"
    msg = f"finished with no changes to the repository after {_stats(s)}"
    if s.tool_errors or s.invalid_tool_calls:
        msg += f"; {plural(s.tool_errors, 'tool error')}, {plural(s.invalid_tool_calls, 'invalid tool call')}"
    return Outcome.NO_CHANGES, msg + note


def judge(
    summary: RunSummary,
    *,
    exit_code: int | None,
    stop_reason: str | None,
    diff_stat: DiffStat,
    cancelled: bool = False,
    engine: str = "opencode",
) -> tuple[Outcome, str]:
    """Decide the outcome of a run and a single-line message with numbers.

    `stop_reason` is the watchdog's reason when the runner killed the engine
    ("timeout", "idle", "steps", "loop", "exit-timer"), else None — the only word on a kill
    for an engine whose exit code means nothing (grok).
    `summary.finishReason` is non-empty only when nothing followed the final answer
    (see StreamFolder.summary, engines.base.StreamParser), so stop/length there means a genuine
    final answer. `engine` names the engine in the messages.
    """
    s = summary
    if cancelled:
        return Outcome.CANCELLED, f"cancelled after {_stats(s)}"
    if s.finish_reason in ("stop", "length"):
        # The answer was final; a watchdog stop after it only ended a lingering process.
        note = f" ({engine} did not exit by itself; stopped by the runner: {stop_reason})" if stop_reason else ""
        return _judge_terminal(s, diff_stat, note)
    last_error = f"; last error: {s.errors[-1]}" if s.errors else ""
    if stop_reason and stop_reason != EXIT_TIMER:
        outcome = WATCHDOG_OUTCOMES.get(stop_reason)
        if outcome is None:
            return Outcome.RUNNER_ERROR, f"stopped for an unknown reason {stop_reason!r} after {_stats(s)}"
        what = {
            Outcome.TIMED_OUT: "run timed out",
            Outcome.IDLE_TIMEOUT: f"no event from {engine} for too long",
            Outcome.STEP_BUDGET_EXCEEDED: "step budget exceeded",
            Outcome.LOOP_DETECTED: _loop_kind(s) + " detected",
        }[outcome]
        return outcome, f"{what}; stopped after {_stats(s)}{last_error}"
    if s.errors:
        name = error_kind(s.errors[-1])
        outcome = ERROR_OUTCOMES.get(name, Outcome.ENGINE_FAILED)
        label = {
            Outcome.MODEL_ERROR: "model service error",
            Outcome.CONTEXT_OVERFLOW: "context window exceeded",
            Outcome.STEP_BUDGET_EXCEEDED: f"{engine} reached its step limit",
        }.get(outcome, f"{engine} failed")
        return outcome, f"{label}: {s.errors[-1]} ({_exit(exit_code)}, after {_stats(s)})"
    if s.events == 0:
        return (
            Outcome.ENGINE_FAILED,
            f"{engine} printed no event ({_exit(exit_code)}); start-up failure, see its stderr",
        )
    last = f"last step finished with {s.finish_reason!r}" if s.finish_reason else "the last step did not finish"
    return (
        Outcome.ENGINE_FAILED,
        f"{engine} ended without a final answer ({_exit(exit_code)}; {last}) after {_stats(s)}",
    )


def decide_result(
    claim: RunSummary | None,
    claimed: Outcome | None,
    claimed_message: str,
    *,
    diff: DiffStat | None,
    diff_error: str = "",
    workspace_error: str = "",
) -> tuple[Outcome, str]:
    """The reporter's outcome: the agent's claim may fail its own run, never make up a success.

    ``claimed`` / ``claimed_message`` / ``claim`` come from the agent's report (its container,
    its uid: untrusted); ``diff`` is what the reporter itself recomputed from the workspace
    against the trusted base (None when that failed, with ``diff_error``). Whether the run
    changed anything, what it changed and how large it is are decided by the reporter alone.
    """
    if workspace_error:
        return Outcome.WORKSPACE_ERROR, workspace_error
    if diff is None:
        return Outcome.DIFF_CAPTURE_FAILED, f"diff capture failed: {diff_error or 'unknown error'}"
    if claimed is None:
        return (
            Outcome.ENGINE_FAILED,
            f"the agent left no readable report ({claimed_message or 'none'}); its diff, as found: {_diff(diff)}",
        )
    if not claimed.succeeded:
        return claimed, claimed_message
    if claim is not None:
        return _judge_terminal(claim, diff, "")
    if diff.files == 0:
        return Outcome.NO_CHANGES, "final answer, no changes"
    return Outcome.COMPLETED, f"final answer, {_diff(diff)}"
