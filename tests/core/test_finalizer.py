"""When a dispatch needs its daemon and finalizer (``core.finalizer``)."""

from __future__ import annotations

from buildstudio.core.finalizer import FINALIZER, daemon_wanted, finalizers_with_ours

RUNNING = {"conditions": [{"type": "Admitted", "status": "True"}, {"type": "Running", "status": "Unknown"}]}
QUEUED = {"conditions": [{"type": "Admitted", "status": "Unknown", "reason": "Queued"}]}
REFUSED = {"conditions": [{"type": "Succeeded", "status": "False", "reason": "NotAdmitted"}]}


def test_the_daemon_runs_while_queued_running_or_waiting_for_a_ttl() -> None:
    assert daemon_wanted({}, RUNNING) and daemon_wanted({}, QUEUED)
    assert not daemon_wanted({}, {}) and not daemon_wanted({}, REFUSED)
    assert daemon_wanted({"ttlSecondsAfterFinished": 0}, REFUSED)


def test_finalizer_rides_on_the_create_write_only_when_it_is_safe_and_needed() -> None:
    assert finalizers_with_ours(None, {}, RUNNING) == [FINALIZER]
    assert finalizers_with_ours([], {}, QUEUED) == [FINALIZER]
    assert finalizers_with_ours(["other.io/keep"], {}, RUNNING) is None  # kopf adds ours without dropping theirs
    assert finalizers_with_ours([FINALIZER], {}, RUNNING) is None
    assert finalizers_with_ours(None, {}, {}) is None  # still at the entry: no daemon yet
    assert finalizers_with_ours(None, {}, REFUSED) is None  # finished, no TTL: nothing to wait for
    assert finalizers_with_ours(None, {"ttlSecondsAfterFinished": 60}, REFUSED) == [FINALIZER]
