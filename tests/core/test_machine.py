"""The BuildDispatch state machine, driven directly (no Kubernetes)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from buildstudio.api.dispatch import BuildDispatchSpec, BuildDispatchStatus
from buildstudio.core import machine as m
from buildstudio.core.conditions import derive_phase, find
from buildstudio.core.gate import GateDecision
from buildstudio.core.settings import Settings
from buildstudio.core.status import LiveState, fold_line, size_of
from buildstudio.protocol.records import DiffStat, Outcome, Patch, ProgressRecord, ResultRecord, RunSummary, dump

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
S = Settings()
ADMIT = GateDecision(
    True, "Admitted", "opencode drives local model qwen3-coder", engine="opencode", model="qwen3-coder", local=True
)
READY = m.ModelCheck(
    True,
    "ContextOK",
    "qwen3-coder: context 131072 ≥ floor 65536",
    context=131072,
    backend="ollama",
    matched_model="qwen3-coder",
    context_source="ollama:/api/ps",
)


def spec(**kw: Any) -> BuildDispatchSpec:
    base: dict[str, Any] = {
        "prompt": "add a test",
        "repo": {"url": "https://example.com/r.git"},
        "model": "qwen3-coder",
    }
    base.update(kw)
    return BuildDispatchSpec.model_validate(base)


def dispatch(status: dict[str, Any] | None = None, **kw: Any) -> m.Dispatch:
    return m.Dispatch(
        name="fix-1", namespace="dev", uid="u-1", generation=1, created=T0, spec=spec(**kw), status=status or {}
    )


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = find(status.get("conditions"), type_)
    assert found is not None, f"no {type_} condition in {status.get('conditions')}"
    return dict(found)


def valid(status: dict[str, Any]) -> None:
    """The status the machine writes fits the lead's API model (the CRD schema's source)."""
    BuildDispatchStatus.model_validate({k: v for k, v in status.items() if v is not None})


def to_running(now: datetime = T0) -> m.Step:
    step = m.enter(dispatch(), ADMIT, READY, now, S)
    step = m.queued(dispatch(step.status), m.Slot(admit=True), now, S)
    return step


def test_entry_admits_into_queue() -> None:
    step = m.enter(dispatch(), ADMIT, READY, T0, S)
    st = step.status
    valid(st)
    assert st["phase"] == "Queued"
    assert cond(st, "ModelReady")["status"] == "True"
    assert cond(st, "Admitted")["status"] == "Unknown" and cond(st, "Admitted")["reason"] == "Queued"
    assert st["engine"] == "opencode" and st["model"] == "qwen3-coder"
    assert st["modelService"]["context"] == 131072
    assert st["observedGeneration"] == 1
    assert [e.reason for e in step.emitted()] == ["Queued"]


def test_launched_says_pending_as_the_first_look_at_the_pod_would() -> None:
    """After the pod was created, the launch's status write says what the next look would:
    the daemon's first look at the pending pod then has nothing to write."""
    step = to_running()
    assert cond(step.status, "Running")["reason"] == "Launching"
    after = m.launched(step, T0, 1)
    valid(after.status)
    assert after.actions == step.actions
    assert cond(after.status, "Running")["reason"] == "PodPending" and after.status["reason"] == "PodPending"
    pending = m.PodView(phase="Pending", created=T0)
    look = m.running(dispatch(after.status), pending, LiveState(), T0 + timedelta(seconds=1), S, log_ended=False)
    assert m.status_patch(after.status, look.status) == {}
    gone = m.running(dispatch(after.status), None, LiveState(), T0 + timedelta(seconds=1), S, log_ended=True)
    assert cond(gone.status, "Succeeded")["reason"] == "PodFailed"  # created, then vanished
    unchanged = m.launched(look, T0, 1)
    assert unchanged is look


def test_gate_refusal_is_terminal_not_admitted() -> None:
    gate = GateDecision(
        False, "EngineNotPresent", "local model m needs engine opencode, not present", engine="opencode"
    )
    step = m.enter(dispatch(), gate, None, T0, S)
    st = step.status
    valid(st)
    assert st["phase"] == "Failed"
    assert cond(st, "Admitted")["status"] == "False"
    assert cond(st, "Admitted")["reason"] == "EngineNotPresent"
    assert cond(st, "Succeeded")["status"] == "False" and cond(st, "Succeeded")["reason"] == "NotAdmitted"
    assert any(isinstance(a, m.Finished) and not a.succeeded for a in step.actions)


@pytest.mark.parametrize("reason", ["ContextTooSmall", "ModelNotFound", "Unauthorized"])
def test_preflight_refusal_is_terminal(reason: str) -> None:
    check = m.ModelCheck(False, reason, "context 8192 < hard minimum 16384")
    step = m.enter(dispatch(), ADMIT, check, T0, S)
    st = step.status
    valid(st)
    assert cond(st, "ModelReady") == {**cond(st, "ModelReady"), "status": "False", "reason": reason}
    assert cond(st, "Succeeded")["reason"] == "PreflightFailed"
    assert "8192 < hard minimum 16384" in cond(st, "Succeeded")["message"]
    assert m.PreflightFailed(reason) in step.actions


def test_unreachable_service_retries_until_queue_timeout() -> None:
    check = m.ModelCheck(False, "Unreachable", "connection refused", retryable=True)
    step = m.enter(dispatch(), ADMIT, check, T0, S)
    assert step.status["phase"] == "Pending" and m.stage_of(step.status) == "entry"
    assert step.wake_after == S.preflight_interval
    later = T0 + timedelta(seconds=3601)
    step = m.enter(dispatch(step.status), ADMIT, check, later, S)
    assert cond(step.status, "Succeeded")["reason"] == "PreflightFailed"


def test_warning_below_floor_is_admitted_with_numbers() -> None:
    check = m.ModelCheck(
        True, "ContextBelowFloor", "ok", warning="context 32768 < floor 65536: may overflow", context=32768
    )
    step = m.enter(dispatch(), ADMIT, check, T0, S)
    assert cond(step.status, "ModelReady")["status"] == "True"
    assert "32768 < floor 65536" in cond(step.status, "ModelReady")["message"]
    assert [e.type for e in step.emitted()] == ["Warning", "Normal"]


def test_queue_position_then_admission_launches_attempt_1() -> None:
    st = m.enter(dispatch(), ADMIT, READY, T0, S).status
    step = m.queued(dispatch(st), m.Slot(admit=False, position=3), T0, S)
    assert step.status["queuePosition"] == 3 and step.status["phase"] == "Queued"
    assert not step.actions
    step = m.queued(dispatch(step.status), m.Slot(admit=True), T0 + timedelta(seconds=5), S)
    st = step.status
    valid({k: v for k, v in st.items()})
    assert st["attempt"] == 1 and st["podName"] == "fix-1-1" and st["queuePosition"] is None
    assert st["phase"] == "Running"
    assert m.Launch(attempt=1, engine="opencode", model="qwen3-coder", context=131072) in step.actions
    assert m.stage_of(st) == "running"


def test_queue_timeout_counts_from_creation() -> None:
    st = m.enter(dispatch(timeouts={"queueSeconds": 60}), ADMIT, READY, T0, S).status
    d = dispatch(st, timeouts={"queueSeconds": 60})
    assert m.queued(d, m.Slot(False, 1), T0 + timedelta(seconds=59), S).status["phase"] == "Queued"
    step = m.queued(d, m.Slot(False, 1), T0 + timedelta(seconds=60), S)
    assert cond(step.status, "Succeeded")["reason"] == "QueueTimeout"
    assert cond(step.status, "Admitted")["status"] == "False"


def test_cancel_while_queued_is_terminal_without_pod() -> None:
    st = m.enter(dispatch(), ADMIT, READY, T0, S).status
    step = m.queued(dispatch(st, cancel=True), m.Slot(True), T0, S)
    assert step.status["phase"] == "Cancelled"
    assert not any(isinstance(a, m.Launch) for a in step.actions)


def pod(phase: str = "Running", **kw: Any) -> m.PodView:
    return m.PodView(phase=phase, created=T0, started=T0, **kw)


def test_pod_pending_running_and_restart_relaunch() -> None:
    st = to_running().status
    # Operator restarted before the pod existed: Launch again (idempotent, same name).
    step = m.running(dispatch(st), None, LiveState(), T0, S, log_ended=False)
    assert step.actions == (m.Launch(1, "opencode", "qwen3-coder", 131072),)
    step = m.running(dispatch(st), pod("Pending"), LiveState(), T0, S, log_ended=False)
    assert cond(step.status, "Running")["reason"] == "PodPending"
    step = m.running(dispatch(step.status), pod("Running"), LiveState(), T0 + timedelta(seconds=3), S, log_ended=False)
    assert cond(step.status, "Running")["status"] == "True"
    assert step.status["startedAt"] == "2026-11-25T10:00:00Z"
    # lastTransitionTime moves only when the status does.
    again = m.running(dispatch(step.status), pod("Running"), LiveState(), T0 + timedelta(seconds=9), S, log_ended=False)
    assert cond(again.status, "Running")["lastTransitionTime"] == cond(step.status, "Running")["lastTransitionTime"]
    assert not again.emitted()


def result(outcome: Outcome = Outcome.COMPLETED, diff: str = "+x\n", **kw: Any) -> ResultRecord:
    return ResultRecord(
        outcome=outcome,
        message="1 files changed (+1 -0)",
        summary=RunSummary(steps=3, tool_calls=2, final_text="Done."),
        diff_stat=DiffStat(files=1, additions=1),
        diff=diff,
        diff_bytes=len(diff),
        patch=Patch(data="H4sIAAAAAAAAA9PTBwCAFAAAAA==", bytes=3, sha256="ab"),
        **kw,
    )


def running_status() -> dict[str, Any]:
    st = to_running().status
    return m.running(dispatch(st), pod("Running"), LiveState(), T0, S, log_ended=False).status


def test_result_record_finishes_with_diff_and_patch() -> None:
    live = fold_line(LiveState(), dump(ProgressRecord(stage="running", steps=2, tool_calls=1)))
    live = fold_line(live, dump(result()))
    step = m.running(dispatch(running_status()), pod("Succeeded"), live, T0 + timedelta(seconds=30), S, log_ended=True)
    st = step.status
    valid(st)
    assert st["phase"] == "Succeeded" and cond(st, "Succeeded")["reason"] == "Completed"
    assert st["diff"] == "+x\n" and st["diffSummary"] == "+1/-0" and st["patchConfigMap"] == "fix-1-patch"
    assert st["summary"]["steps"] == 3 and st["finalText"] == "Done."
    assert cond(st, "Running")["status"] == "False"
    assert any(isinstance(a, m.StorePatch) for a in step.actions)
    fin = next(a for a in step.actions if isinstance(a, m.Finished))
    assert fin.succeeded and fin.duration_seconds == 30


@pytest.mark.parametrize(
    ("outcome", "phase"),
    [
        (Outcome.NO_CHANGES, "Succeeded"),
        (Outcome.MODEL_ERROR, "Failed"),
        (Outcome.ENGINE_FAILED, "Failed"),
        (Outcome.DIFF_CAPTURE_FAILED, "Failed"),  # issue #14: a lost diff is a failure, never NoChanges
    ],
)
def test_outcomes_map_to_reasons(outcome: Outcome, phase: str) -> None:
    live = fold_line(LiveState(), dump(result(outcome)))
    st = m.running(dispatch(running_status()), pod("Running"), live, T0, S, log_ended=False).status
    assert st["phase"] == phase and cond(st, "Succeeded")["reason"] == outcome.value


def test_cancel_mid_run_deletes_pod_then_keeps_partial_result() -> None:
    st = running_status()
    step = m.running(dispatch(st, cancel=True), pod("Running"), LiveState(), T0, S, log_ended=False)
    assert m.DeletePod("fix-1-1", S.cancel_grace_seconds) in step.actions
    assert step.status["reason"] == "Cancelling"
    # The runner's SIGTERM path prints the result with the partial diff.
    live = fold_line(LiveState(), dump(result(Outcome.CANCELLED, diff="+partial\n")))
    end = m.running(dispatch(step.status, cancel=True), pod("Failed", deleting=True), live, T0, S, log_ended=True)
    assert end.status["phase"] == "Cancelled" and end.status["diff"] == "+partial\n"
    # Without a result record: still Cancelled.
    end = m.running(dispatch(step.status, cancel=True), None, LiveState(), T0, S, log_ended=True)
    assert end.status["phase"] == "Cancelled"


def test_run_timeout_backstop() -> None:
    st = running_status()
    d = dispatch(st, timeouts={"runSeconds": 60, "idleSeconds": 30})
    assert not m.running(d, pod(), LiveState(), T0 + timedelta(seconds=89), S, log_ended=False).actions
    step = m.running(d, pod(), LiveState(), T0 + timedelta(seconds=90), S, log_ended=False)
    assert m.DeletePod("fix-1-1", S.cancel_grace_seconds) in step.actions
    live = fold_line(LiveState(), dump(result(Outcome.CANCELLED)))
    d2 = dispatch(step.status, timeouts={"runSeconds": 60, "idleSeconds": 30})
    end = m.running(d2, None, live, T0 + timedelta(seconds=95), S, log_ended=True)
    assert cond(end.status, "Succeeded")["reason"] == "TimedOut"


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        (m.PodView(phase="Failed", terminated_reason="OOMKilled", exit_code=137), "OOMKilled"),
        (m.PodView(phase="Failed", reason="Evicted", message="low on ephemeral-storage"), "Evicted"),
        (m.PodView(phase="Failed", terminated_reason="Error", exit_code=1), "PodFailed"),
        (m.PodView(phase="Succeeded", terminated_reason="Completed", exit_code=0), "PodFailed"),
    ],
)
def test_pod_failures_without_result(view: m.PodView, reason: str) -> None:
    st = running_status()
    wait = m.running(dispatch(st), view, LiveState(), T0, S, log_ended=False)
    assert wait.status["phase"] == "Running"  # the result may still be in the log
    step = m.running(dispatch(st), view, LiveState(), T0, S, log_ended=True)
    assert cond(step.status, "Succeeded")["reason"] == reason


def test_image_pull_backoff_and_unschedulable_after_grace() -> None:
    st = to_running().status
    pulling = m.PodView(phase="Pending", waiting_reason="ImagePullBackOff", waiting_message="not found", created=T0)
    early = m.running(dispatch(st), pulling, LiveState(), T0 + timedelta(seconds=10), S, log_ended=False)
    assert early.status["reason"] == "ImagePullBackOff" and early.status["phase"] == "Running"
    late = m.running(dispatch(st), pulling, LiveState(), T0 + timedelta(seconds=121), S, log_ended=False)
    assert cond(late.status, "Succeeded")["reason"] == "ImagePullBackOff"
    assert m.DeletePod("fix-1-1", 0) in late.actions
    stuck = m.PodView(phase="Pending", unschedulable="0/3 nodes are available: 3 Insufficient memory.", created=T0)
    late = m.running(dispatch(st), stuck, LiveState(), T0 + timedelta(seconds=601), S, log_ended=False)
    assert cond(late.status, "Succeeded")["reason"] == "Unschedulable"
    assert "Insufficient memory" in late.status["message"]


def test_huge_diff_and_10k_events_stay_within_budget() -> None:
    live = LiveState()
    for i in range(10_000):
        line = f'{{"kind":"event","v":1,"type":"tool","message":"edit f{i}.py {"x" * 600}"}}'
        live = fold_line(live, line)
    live = fold_line(live, "this is not json {")
    diff = "".join(f"+line {i} " + "y" * 100 + "\n" for i in range(20_000))
    big = result(diff=diff)
    big.summary.final_text = "z" * 50_000
    live = fold_line(live, dump(big))
    assert live.events_seen == 10_000 and live.malformed == 1 and len(live.events) == 20
    step = m.running(dispatch(running_status()), pod("Succeeded"), live, T0, S, log_ended=True)
    st = step.status
    valid(st)
    assert size_of(st) <= 32 * 1024
    assert st["diffTruncated"] is True and st["diffBytes"] == len(diff.encode())
    assert "the whole patch is in ConfigMap fix-1-patch" in st["diff"]
    assert len(st["finalText"].encode()) <= 4096


def test_phase_derivation() -> None:
    assert derive_phase([]) == "Pending"
    assert derive_phase([{"type": "Succeeded", "status": "False", "reason": "Cancelled"}]) == "Cancelled"


def test_status_patch_nulls_removed_keys() -> None:
    assert m.status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}


@pytest.mark.parametrize(
    ("pod", "age", "wake"),
    [
        (m.PodView(phase="Pending"), 0.0, 10.0),  # plain pending: its changes wake us; 10 s backstop
        (m.PodView(phase="Pending", waiting_reason="ImagePullBackOff"), 115.0, 5.0),  # the grace ends
        (m.PodView(phase="Pending", waiting_reason="ErrImagePull"), 30.0, 10.0),
        (m.PodView(phase="Pending", waiting_reason="CreateContainerConfigError"), 119.9, 0.5),
        (m.PodView(phase="Pending", unschedulable="0/1 nodes are available"), 595.0, 5.0),
        (m.PodView(phase="Pending", unschedulable="0/1 nodes are available"), 700.0, 0.5),
    ],
)
def test_pending_pod_wake_is_its_next_deadline(pod: m.PodView, age: float, wake: float) -> None:
    d = dispatch(m.launched(to_running(), T0, 1).status)
    look = m.running(d, replace(pod, created=T0), LiveState(), T0 + timedelta(seconds=age), S, log_ended=False)
    if look.actions:  # past a grace: the pod is deleted and the dispatch ends
        assert age >= S.image_pull_grace_seconds
        return
    assert look.wake_after == pytest.approx(wake)
