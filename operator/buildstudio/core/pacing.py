"""When a dispatch's daemon looks, writes and sleeps: pod re-reads, the result's grace period,
progress-patch throttling, the pause between steps. Clocks are passed in (monotonic seconds
or datetimes); nothing here sleeps or reads one."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from buildstudio.core.pod import PodView

# Status keys a live-progress write may carry; a patch of only these is throttled.
PROGRESS_KEYS = frozenset({"progress", "recentEvents", "message", "reason", "observedGeneration", "phase"})
# A patch of only these (a queued dispatch moving up) waits for the queue-position interval.
POSITION_KEYS = frozenset({"queuePosition"})
LOG_RETRY_SECONDS = 1.0  # a broken log stream is re-attached after this
POD_RECHECK_SECONDS = 10.0  # a running pod whose log streams is re-read this often (no pod index)
QUEUE_RECHECK_SECONDS = 10.0  # queued dispatches wake when a slot frees, else this often
IDLE_WAKE_SECONDS = 1.0  # a step with no deadline of its own
WAKE_EVERY_LINES = 20  # the log follower wakes the daemon once per this many lines
TTL_WAIT_SECONDS = 300.0  # a finished dispatch's daemon re-checks its TTL at least this often


def wakes_daemon(lines: int, *, progress: bool = False) -> bool:
    """Whether the log line numbered ``lines`` wakes the daemon: a progress record (what status shows;
    the runner writes one every few seconds), else the first line, then every 20th."""
    return progress or lines % WAKE_EVERY_LINES == 1


def carry_wake(delay: float, held_for: float) -> float:
    """The pause, shortened when a status write was held back (``held_seconds``): the daemon
    looks again as soon as that write may go, so nothing waits for an unrelated wake."""
    if held_for <= 0:
        return delay
    return min(delay, max(held_for, 0.05))


def records_quiet_seconds(since_last_write: float, interval: float) -> float:
    """How long after a status write a progress record need not wake the daemon: until the
    throttle's ``interval`` is over, the look would write nothing; the record waits in the
    follower and the first look after the interval shows the latest one."""
    return max(interval - since_last_write, 0.0)


def pod_look_stands(pod: PodView | None, *, streaming: bool, since_read: float, cancel: bool) -> bool:
    """Whether the last read of the pod may be used again instead of a GET: while its log streams
    (the stream's end is what says it stopped), a running pod is re-read every
    ``POD_RECHECK_SECONDS``; a cancel always looks again."""
    running = pod is not None and pod.phase == "Running"
    return streaming and since_read < POD_RECHECK_SECONDS and running and not cancel


def result_grace_over(ended_at: float, now: float, grace_seconds: float) -> bool:
    """Whether the pod ended long enough ago (``settings.result_grace_seconds``) that no result
    record is still coming."""
    return now - ended_at >= grace_seconds


def held_seconds(
    patch: Mapping[str, Any], since_last_write: float, *, progress_interval: float, position_interval: float
) -> float:
    """How long a status patch waits (0: it goes now). Live progress only: until
    ``progress_interval`` has passed since the last write; a queue position only: until
    ``position_interval`` has (each finish moves every queued dispatch up one place, so written
    at once N queued dispatches would make N writes per finish); anything else goes at once, and
    carries what was held."""
    keys = patch.keys()
    if keys <= POSITION_KEYS:
        interval = position_interval
    elif keys <= PROGRESS_KEYS and "conditions" not in patch:
        interval = progress_interval
    else:
        return 0.0
    return max(interval - since_last_write, 0.0)


def pause_seconds(wake_after: float | None, now: datetime, queue_deadline: datetime | None = None) -> float:
    """How long the daemon sleeps after a step (something it waits for may wake it sooner).
    ``queue_deadline`` while queued (``machine.queue_deadline``): a queued dispatch looks at
    least every ``QUEUE_RECHECK_SECONDS`` and at its deadline."""
    delay = IDLE_WAKE_SECONDS if wake_after is None else max(wake_after, 0.0)
    if delay == 0 or queue_deadline is None:
        return delay
    left = (queue_deadline - now).total_seconds()
    return min(QUEUE_RECHECK_SECONDS, max(left, 0.05))
