"""When the dispatch daemon looks again, writes and sleeps (``core.pacing``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from buildstudio.core import machine as m
from buildstudio.core import pacing as p
from tests.core.test_machine import T0, dispatch

RUNNING = m.PodView(phase="Running")


def test_the_log_follower_wakes_the_daemon_on_the_first_line_then_every_twentieth() -> None:
    assert [n for n in range(1, 60) if p.wakes_daemon(n)] == [1, 21, 41]
    assert p.wakes_daemon(7, progress=True)  # a progress record always does


@pytest.mark.parametrize(
    ("pod", "streaming", "since", "cancel", "stands"),
    [
        (RUNNING, True, 1.0, False, True),
        (RUNNING, True, p.POD_RECHECK_SECONDS, False, False),  # stale: read again
        (RUNNING, False, 1.0, False, False),  # the stream ended: that is what says it stopped
        (RUNNING, True, 1.0, True, False),  # a cancel always looks
        (m.PodView(phase="Pending"), True, 1.0, False, False),
        (None, True, 1.0, False, False),
    ],
)
def test_a_running_pod_is_reread_only_when_it_matters(
    pod: m.PodView | None, streaming: bool, since: float, cancel: bool, stands: bool
) -> None:
    assert p.pod_look_stands(pod, streaming=streaming, since_read=since, cancel=cancel) == stands


def test_the_result_grace_period() -> None:
    assert not p.result_grace_over(100.0, 109.9, 10.0)
    assert p.result_grace_over(100.0, 110.0, 10.0)


def test_only_progress_and_queue_position_patches_are_held() -> None:
    def held(patch: dict[str, object], since: float) -> float:
        return p.held_seconds(patch, since, progress_interval=2.0, position_interval=10.0)

    progress = {"progress": {"steps": 3}, "message": "m", "phase": "Running"}
    assert held(progress, 0.5) == pytest.approx(1.5)
    assert held(progress, 2.0) == 0.0
    assert held({**progress, "conditions": []}, 0.5) == 0.0
    assert held({**progress, "startedAt": "x"}, 0.5) == 0.0
    # A queued dispatch moving up: its new position waits for the longer interval...
    assert held({"queuePosition": 4}, 3.0) == pytest.approx(7.0)
    assert held({"queuePosition": 4}, 10.0) == 0.0
    # ...unless it rides on a change that goes at once (admission clears it with the conditions).
    assert held({"queuePosition": None, "conditions": [], "attempt": 1}, 0.5) == 0.0


def test_the_pause_after_a_step() -> None:
    assert p.pause_seconds(None, T0) == p.IDLE_WAKE_SECONDS
    assert p.pause_seconds(-3, T0) == 0 and p.pause_seconds(2.5, T0) == 2.5
    deadline = m.queue_deadline(dispatch(timeouts={"queueSeconds": 60}))
    assert p.pause_seconds(0, T0, deadline) == 0  # a step due now is not held back by the queue
    assert p.pause_seconds(2.0, T0, deadline) == p.QUEUE_RECHECK_SECONDS  # queued: the recheck
    assert p.pause_seconds(2.0, deadline - timedelta(seconds=3), deadline) == 3.0  # or the deadline
    assert p.pause_seconds(2.0, deadline + timedelta(seconds=5), deadline) == 0.05


def test_a_held_back_write_wakes_the_daemon_when_it_may_go() -> None:
    assert p.carry_wake(10.0, 0.0) == 10.0
    assert p.carry_wake(10.0, 1.5) == pytest.approx(1.5)
    assert p.carry_wake(0.3, 1.5) == 0.3  # an earlier deadline
    assert p.carry_wake(10.0, 0.01) == 0.05  # due: at once, but never a busy loop


def test_a_running_pod_looks_at_the_clock_only_for_its_run_timeout() -> None:
    from buildstudio.core.settings import Settings
    from buildstudio.core.status import LiveState
    from tests.core.test_machine import pod, to_running

    settings = Settings()
    st = to_running().status
    first = m.running(dispatch(st), pod("Running"), LiveState(), T0, settings, log_ended=False)
    assert first.wake_after == settings.running_recheck_seconds  # the backstop: wakes come from events
    run_seconds = dispatch(first.status).spec.timeouts.run_seconds
    near = T0 + timedelta(seconds=run_seconds + settings.run_timeout_slack - 3)
    late = m.running(dispatch(first.status), pod("Running"), LiveState(), near, settings, log_ended=False)
    assert late.wake_after == pytest.approx(3.0)  # the run timeout's backstop is due then


def test_records_need_not_wake_the_daemon_while_the_throttle_would_hold_their_write() -> None:
    assert p.records_quiet_seconds(0.5, 2.0) == pytest.approx(1.5)
    assert p.records_quiet_seconds(2.0, 2.0) == 0.0
    assert p.records_quiet_seconds(7.0, 2.0) == 0.0  # long after the last write: at once
