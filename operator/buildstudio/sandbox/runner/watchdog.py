"""When to stop the engine (pure): every way it was measured not to stop by itself (opencode contract
§7, §9; docs/engines/: claude retries a dead service ≈ 3 min, codex waits on a silent one for ever,
grok's exit code means nothing).

- overall run time; idle (no event for N s, from start too: a hung server prints nothing; the
  runner leaves retry notices out of "event", and counts grok's relay traffic as one);
- step budget (opencode has no enforced step limit);
- cut-stream loop (N consecutive steps finishing ``unknown``) and compaction loop;
- the exit timer after the final ``step_finish reason: stop`` (opencode normally exits ≈ 100 ms
  later; past the timer it is killed and the run still counts as finished).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Trip(enum.StrEnum):
    """Values are the ``stop_reason`` vocabulary of ``verdict.judge``."""

    RUN_TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle"
    STEP_BUDGET = "steps"
    LOOP = "loop"
    EXIT_AFTER_FINAL = "exit-timer"


@dataclass(frozen=True)
class Limits:
    run_seconds: float
    idle_seconds: float
    exit_after_final_seconds: float
    step_budget: int
    unknown_finishes: int
    compactions: int


@dataclass(frozen=True)
class Signals:
    """What the watchdog looks at; times are monotonic seconds."""

    started_at: float
    last_event_at: float | None = None
    steps: int = 0
    consecutive_unknown: int = 0
    compactions: int = 0
    final_stop_at: float | None = None  # when a terminal step_finish (stop) was seen, if any


@dataclass(frozen=True)
class Decision:
    trip: Trip
    message: str


def check(now: float, s: Signals, lim: Limits, engine: str = "opencode") -> Decision | None:
    """The first limit crossed, or None. The exit timer wins: the work is done by then."""
    if s.final_stop_at is not None and now - s.final_stop_at >= lim.exit_after_final_seconds:
        return Decision(
            Trip.EXIT_AFTER_FINAL,
            f"{engine} did not exit {lim.exit_after_final_seconds:g} s after its final event; stopped it",
        )
    elapsed = now - s.started_at
    if elapsed >= lim.run_seconds:
        return Decision(Trip.RUN_TIMEOUT, f"run timeout: {lim.run_seconds:g} s elapsed")
    quiet_since = s.last_event_at if s.last_event_at is not None else s.started_at
    if s.final_stop_at is None and now - quiet_since >= lim.idle_seconds:
        return Decision(Trip.IDLE_TIMEOUT, f"idle timeout: no event from {engine} for {lim.idle_seconds:g} s")
    if s.steps > lim.step_budget:
        return Decision(Trip.STEP_BUDGET, f"step budget exceeded: {s.steps} steps > {lim.step_budget}")
    if s.consecutive_unknown >= lim.unknown_finishes:
        return Decision(
            Trip.LOOP,
            f"loop: {s.consecutive_unknown} consecutive steps ended without a finish reason (stream cut)",
        )
    if s.compactions >= lim.compactions:
        return Decision(Trip.LOOP, f"loop: {s.compactions} context compactions (context overflow loop)")
    return None
