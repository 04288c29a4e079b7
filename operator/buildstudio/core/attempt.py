"""The running stage: one attempt's pod followed to its end — the pod mirrored into ``Running``,
progress folded, the result record or the pod's failure turned into ``Succeeded`` (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from buildstudio.core import conditions as c
from buildstudio.core import names
from buildstudio.core.dispatch import Dispatch, current_pod
from buildstudio.core.pod import CONFIG_ERROR_REASONS, IMAGE_PULL_REASONS, PodView
from buildstudio.core.settings import Settings
from buildstudio.core.status import LiveState, progress_fields, result_fields
from buildstudio.core.step import DeletePod, Draft, Launch, Step, StorePatch
from buildstudio.protocol.records import Outcome, Patch


def launched(step: Step, now: datetime, generation: int | None) -> Step:
    """A launch step's status once its pod was created: pending, as the first look at the pod
    would put it — one status write fewer per dispatch. Other steps are returned unchanged."""
    status = dict(step.status)
    run = c.find(status.get("conditions"), c.RUNNING)
    if run is None or run.get("reason") != "Launching":
        return step
    pod = str(status.get("podName") or "")
    message = f"pod {pod}: waiting to start"
    status["conditions"] = c.set_condition(
        status.get("conditions"), c.RUNNING, "Unknown", "PodPending", message, now=now, generation=generation
    )
    if status.get("reason") == "Launching":
        status["reason"], status["message"] = "PodPending", message
    return replace(step, status=status)


def pod_was_seen(status: Mapping[str, Any]) -> bool:
    """Whether a pod of the attempt was ever observed (Running moved past Launching): a missing
    pod then means it is gone, with its log."""
    cond = c.find(status.get("conditions"), c.RUNNING)
    return cond is not None and cond.get("reason") != "Launching"


def _outcome_reason(outcome: Outcome, timing_out: bool) -> str:
    if timing_out and outcome == Outcome.CANCELLED:
        return "TimedOut"  # the operator's backstop stopped it; the runner saw a SIGTERM
    return outcome.value


def _pod_failure(pod: PodView | None, status: Mapping[str, Any]) -> tuple[str, str]:
    """Why a pod ended without a result record: the pod's own reason when it has one."""
    if status.get("reason") == "Cancelling":
        return "Cancelled", "cancelled; the sandbox ended without a result record"
    if status.get("reason") == "TimingOut":
        return "TimedOut", "run timeout; the sandbox was stopped without a result record"
    if pod is None:
        return "PodFailed", "the sandbox pod disappeared before it printed a result"
    where = f"container {pod.failed_container}" if pod.failed_container else "container"
    if pod.terminated_reason == "OOMKilled":
        return "OOMKilled", f"the sandbox {where} was OOM-killed (exit {pod.exit_code})"
    if pod.reason == "Evicted":
        return "Evicted", f"the sandbox pod was evicted: {pod.message or 'node pressure'}"
    if pod.reason == "DeadlineExceeded":
        return "TimedOut", "the sandbox pod exceeded its active deadline"
    detail = pod.terminated_reason or pod.reason or pod.phase
    return "PodFailed", f"the sandbox {where} ended ({detail}, exit {pod.exit_code}) without a result record"


def _with_partial(
    status: dict[str, Any], live: LiveState, reason: str, message: str, settings: Settings
) -> tuple[str, str]:
    """A cancelled attempt whose reporter never ran shows the agent's partial diff, labelled as the
    agent's; the outcome stays the operator's (Cancelled), and no patch is stored for it."""
    partial = live.agent_cancelled
    if reason != "Cancelled" or partial is None:
        return reason, message
    status.update(result_fields(partial.model_copy(update={"patch": Patch()}), settings, patch_cm=""))
    status["summary"]["reportedBy"] = "agent"
    return reason, f"{message}; the partial diff shown is the agent's own account"


def _running_wake(d: Dispatch, status: Mapping[str, Any], now: datetime, settings: Settings) -> float:
    """A running pod's changes wake its dispatch (watch events, progress records, spec edits): the
    clock is needed only for the run timeout's backstop, and a bounded look covers a lost wake."""
    started = c.parse_time(status.get("startedAt"))
    backstop = settings.running_recheck_seconds
    if started is None:
        return backstop
    limit = d.spec.timeouts.run_seconds + settings.run_timeout_slack
    return min(backstop, max((started - now).total_seconds() + limit, 0.05))


def _pending_wake(pod: PodView, age: float, settings: Settings) -> float:
    """When to look at a pending pod again: its grace deadline, or a slow recheck — the pod's
    own changes wake the operator before that (watch events)."""
    if pod.unschedulable:
        left = settings.unschedulable_grace_seconds - age
    elif pod.waiting_reason in IMAGE_PULL_REASONS or pod.waiting_reason in CONFIG_ERROR_REASONS:
        left = settings.image_pull_grace_seconds - age
    else:
        left = settings.pending_recheck_seconds
    return min(max(left, 0.5), settings.pending_recheck_seconds)


def running(
    d: Dispatch,
    pod: PodView | None,
    live: LiveState,
    now: datetime,
    settings: Settings,
    *,
    log_ended: bool,
) -> Step:
    """Follow the attempt: mirror the pod, fold progress, end on the result or a failure."""
    draft = Draft(d, now)
    status = draft.status
    pod_name = current_pod(d)
    run_cond = c.find(status.get("conditions"), c.RUNNING)
    run_reason = run_cond.get("reason") if run_cond else ""
    if live.progress is not None or live.events:
        status.update(progress_fields(live, now, reported_by="agent" if d.spec.phase == "build" else "reporter"))
    if pod is not None and pod.phase != "Pending" and pod.started and not status.get("startedAt"):
        status["startedAt"] = c.timestamp(pod.started)  # it ran, even if no look caught it Running

    result = live.result
    if live.results > 1 or (result is not None and live.conflict):
        detail = live.conflict or f"{live.results} result records for attempt {d.attempt}"
        return draft.finish(False, "ResultConflict", f"the sandbox's result cannot be trusted: {detail}", settings)
    if result is not None and d.spec.phase == "ship":
        push = result.push
        reason = push.reason if push is not None and push.reason else "PushFailed"
        if push is not None:
            fields = push.model_dump(by_alias=True)
            status["push"] = {k: v for k, v in fields.items() if v or k != "pullRequestUrl"}
        succeeded = push is not None and push.reason == "Pushed" and result.outcome.succeeded
        if status.get("reason") in ("Cancelling", "TimingOut") and not succeeded:
            reason = "Cancelled" if status.get("reason") == "Cancelling" else "TimedOut"
        return draft.finish(succeeded, reason, result.message, settings)
    if result is not None:
        patch_cm = names.patch_name(d.name) if result.patch.data else ""
        review_of = d.spec.source.dispatch if d.spec.phase == "review" and d.spec.source is not None else None
        status.update(result_fields(result, settings, patch_cm=patch_cm, review_of=review_of))
        if result.patch.data:
            p = result.patch
            draft.actions.append(StorePatch(p.data, p.bytes, p.sha256, p.truncated))
        reason = _outcome_reason(result.outcome, status.get("reason") == "TimingOut")
        succeeded = result.outcome.succeeded and reason == result.outcome.value
        return draft.finish(succeeded, reason, result.message, settings)

    cancelling = status.get("reason") == "Cancelling"
    timing_out = status.get("reason") == "TimingOut"
    if d.spec.cancel and not cancelling and not timing_out:
        draft.headline("Cancelling", f"cancel requested; stopping pod {pod_name}")
        draft.emit("Normal", "Cancelling", f"cancel requested; stopping pod {pod_name}")
        if pod is None and run_reason == "Launching":
            return draft.finish(False, "Cancelled", "cancelled before the sandbox started", settings)
        draft.actions.append(DeletePod(pod_name, settings.cancel_grace_seconds))
        return draft.step(settings, wake_after=1.0)

    started = c.parse_time(status.get("startedAt"))
    if started is not None and not cancelling and not timing_out:
        limit = d.spec.timeouts.run_seconds + settings.run_timeout_slack
        if (now - started).total_seconds() >= limit:
            draft.headline("TimingOut", f"run exceeded {d.spec.timeouts.run_seconds}s; stopping {pod_name}")
            draft.emit("Warning", "TimingOut", f"run exceeded {d.spec.timeouts.run_seconds}s")
            draft.actions.append(DeletePod(pod_name, settings.cancel_grace_seconds))
            return draft.step(settings, wake_after=1.0)

    if pod is None:
        if run_reason == "Launching" and not cancelling:
            # Restart-safe relaunch: the names are deterministic, create answers 409 if it exists.
            engine = str(status.get("engine") or "")
            ctx = (status.get("modelService") or {}).get("context")
            draft.actions.append(Launch(d.attempt or 1, engine, str(status.get("model") or ""), ctx))
            return draft.step(settings, wake_after=1.0)
        if log_ended:
            reason, message = _with_partial(status, live, *_pod_failure(None, status), settings)
            return draft.finish(False, reason, message, settings)
        return draft.step(settings, wake_after=1.0)

    if pod.ended or pod.deleting:
        if not log_ended:
            return draft.step(settings, wake_after=0.5)  # the result record may still be in the log
        reason, message = _with_partial(status, live, *_pod_failure(pod, status), settings)
        return draft.finish(False, reason, message, settings)

    age = (now - pod.created).total_seconds() if pod.created else 0.0
    if pod.phase == "Pending":
        if pod.unschedulable and age >= settings.unschedulable_grace_seconds:
            draft.actions.append(DeletePod(pod_name, 0))
            return draft.finish(False, "Unschedulable", f"pod {pod_name}: {pod.unschedulable}", settings)
        if pod.waiting_reason in IMAGE_PULL_REASONS and age >= settings.image_pull_grace_seconds:
            draft.actions.append(DeletePod(pod_name, 0))
            msg = f"pod {pod_name}: {pod.waiting_reason}: {pod.waiting_message}"
            return draft.finish(False, "ImagePullBackOff", msg, settings)
        if pod.waiting_reason in CONFIG_ERROR_REASONS and age >= settings.image_pull_grace_seconds:
            draft.actions.append(DeletePod(pod_name, 0))
            msg = f"pod {pod_name}: {pod.waiting_reason}: {pod.waiting_message}"
            return draft.finish(False, "PodFailed", msg, settings)
        detail = pod.unschedulable or pod.waiting_reason or "waiting to start"
        reason = "Unschedulable" if pod.unschedulable else (pod.waiting_reason or "PodPending")
        if not cancelling and not timing_out:
            draft.headline(reason, f"pod {pod_name}: {detail}")
        draft.cond(c.RUNNING, "Unknown", reason, f"pod {pod_name}: {detail}")
        return draft.step(settings, wake_after=_pending_wake(pod, age, settings))

    # Pod running.
    if not c.is_status(status.get("conditions"), c.RUNNING, "True"):
        draft.cond(c.RUNNING, "True", "PodRunning", f"pod {pod_name} is running")
        draft.emit("Normal", "Running", f"sandbox pod {pod_name} is running")
    if not status.get("startedAt"):
        status["startedAt"] = c.timestamp(pod.started or now)
    if not cancelling and not timing_out:
        stage = live.progress.stage if live.progress else "starting"
        draft.headline("Running", f"pod {pod_name}: {stage}")
    return draft.step(settings, wake_after=_running_wake(d, status, now, settings))
