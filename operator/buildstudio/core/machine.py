"""The BuildDispatch state machine: (dispatch, observations, clock) → (status, actions).

Stages, read from the conditions (never from memory, so a restarted operator resumes):

- ``entry``: gate (``Admitted`` refused → NotAdmitted) and preflight (``ModelReady``);
- ``queued``: ``Admitted`` Unknown/Queued until the queue admits it (or QueueTimeout);
- ``running``: ``Admitted`` True; the pod ``<dispatch>-<attempt>`` is launched, watched,
  its log folded; ends on the result record or on a pod failure / cancel / run timeout
  (``core/attempt.py``);
- ``finished``: ``Succeeded`` True/False; only TTL remains.

This module holds the entry, queue and ship stages; each returns a ``Step`` (``core/step.py``):
the whole new status and the actions the shell takes. It also re-exports the nouns the stages
read and write (``core/dispatch.py``, ``core/pod.py``, ``core/step.py``, ``core/attempt.py``),
so callers walk one module: ``machine.<name>``. Nothing here does IO.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from buildstudio.core import conditions as c
from buildstudio.core import names
from buildstudio.core.attempt import _pod_failure, launched, pod_was_seen, running
from buildstudio.core.dispatch import Dispatch, Stage, current_pod, queue_deadline, stage_of
from buildstudio.core.gate import GateDecision
from buildstudio.core.pod import RESULT_CONTAINERS, PodView, result_container, work_container
from buildstudio.core.settings import Settings
from buildstudio.core.ship import ShipDecision, ShipReason
from buildstudio.core.step import (
    Action,
    DeletePod,
    Draft,
    Emit,
    Finished,
    Launch,
    PreflightFailed,
    Step,
    StorePatch,
    status_patch,
)

__all__ = [
    "RESULT_CONTAINERS",
    "Action",
    "DeletePod",
    "Dispatch",
    "Emit",
    "Finished",
    "Launch",
    "ModelCheck",
    "PodView",
    "PreflightFailed",
    "Slot",
    "Stage",
    "Step",
    "StorePatch",
    "_pod_failure",  # read by tests/test_trust_boundary.py
    "current_pod",
    "enter",
    "entered",
    "invalid_spec",
    "launched",
    "pod_was_seen",
    "queue_deadline",
    "queued",
    "refused_at_launch",
    "result_container",
    "running",
    "ship",
    "ship_gate",
    "ship_refusal_is_final",
    "stage_of",
    "status_patch",
    "work_container",
]


@dataclass(frozen=True)
class ModelCheck:
    """The preflight verdict for the dispatch's model, flattened for the machine."""

    admit: bool
    reason: str  # CamelCase: ModelReady's reason
    message: str
    warning: str = ""  # admitted below the advisory floor: the numbers, one line
    retryable: bool = False  # unreachable service: keep retrying until the queue timeout
    context: int | None = None
    backend: str = ""
    matched_model: str = ""
    context_source: str = ""


def _cancelled_before_start(draft: Draft, settings: Settings) -> Step:
    return draft.finish(False, "Cancelled", "cancelled before the sandbox started", settings)


def invalid_spec(d: Dispatch, error: str, now: datetime, settings: Settings) -> Step:
    """A spec the API models refuse (the emulator and old apiservers skip schema checks)."""
    draft = Draft(d, now)
    return draft.finish(False, "InvalidSpec", f"invalid spec: {error}", settings)


def refused_at_launch(d: Dispatch, reason: str, message: str, now: datetime, settings: Settings) -> Step:
    """A launch that may not go ahead after all (say, the git remote no longer resolves, so no
    egress policy can name it), decided before any child object exists. ``d.status`` may be the
    launch step's: the attempt that was about to start is taken back."""
    draft = Draft(d, now)
    draft.status["conditions"] = [x for x in d.conditions if x.get("type") != c.RUNNING]
    for key in ("podName", "admittedAt"):
        draft.status.pop(key, None)
    draft.cond(c.ADMITTED, "False", reason, message)
    return draft.finish(False, reason, message, settings)


def enter(
    d: Dispatch,
    gate: GateDecision,
    check: ModelCheck | None,
    now: datetime,
    settings: Settings,
    *,
    refusal: tuple[str, str] | None = None,
) -> Step:
    """Gate, then preflight. ``check`` is None when the gate refused or no model service applies.
    ``refusal`` (reason, message naming the field): what the admin's rules forbid in this
    spec (credentials, locks, egress) — refused before anything is created."""
    draft = Draft(d, now)
    if d.spec.cancel:
        return _cancelled_before_start(draft, settings)
    if not gate.admit:
        draft.cond(c.ADMITTED, "False", gate.reason, gate.message)
        if gate.engine:
            draft.status["engine"] = gate.engine
        return draft.finish(False, "NotAdmitted", f"{gate.reason}: {gate.message}", settings)
    if refusal is not None:
        reason, message = refusal
        draft.cond(c.ADMITTED, "False", reason, message)
        draft.status["engine"] = gate.engine or ""
        return draft.finish(False, reason, message, settings)  # finish() emits the Warning
    draft.status["engine"] = gate.engine or ""
    draft.status["model"] = gate.model or d.spec.model or ""
    if check is None:
        draft.cond(c.MODEL_READY, "True", "NotApplicable", "no model service to check for this engine")
    else:
        draft.status["modelService"] = {
            "backend": check.backend,
            "matchedModel": check.matched_model,
            "context": check.context,
            "contextSource": check.context_source,
            "reason": check.reason,
        }
        if not check.admit:
            draft.cond(c.MODEL_READY, "False", check.reason, check.message)
            if check.retryable and now < queue_deadline(d):
                draft.headline(check.reason, check.message)
                return draft.step(settings, wake_after=settings.preflight_interval)
            draft.actions.append(PreflightFailed(check.reason))
            return draft.finish(False, "PreflightFailed", f"{check.reason}: {check.message}", settings)
        if check.warning:
            draft.cond(c.MODEL_READY, "True", check.reason, check.warning)
            draft.emit("Warning", check.reason, check.warning)
        else:
            draft.cond(c.MODEL_READY, "True", check.reason, check.message)
    draft.cond(c.ADMITTED, "Unknown", "Queued", f"{gate.message}; waiting for a free slot")
    draft.headline("Queued", gate.message)
    draft.emit("Normal", "Queued", gate.message)
    return draft.step(settings, wake_after=0)


def ship(
    d: Dispatch, allow: bool, reason: str, message: str, now: datetime, settings: Settings, *, final: bool
) -> Step:
    """The ship gate's answer (no model). Allowed: the ship pod ``<ship>-<attempt>`` is launched
    (no queue slot: it runs no model) and pushes the reviewed patch; its result ends the ship.
    A refusal that a later review or approval can lift keeps the dispatch waiting (until the
    queue timeout); ``final`` ones end it."""
    draft = Draft(d, now)
    if d.spec.cancel:
        return _cancelled_before_start(draft, settings)
    draft.cond(c.MODEL_READY, "True", "NotApplicable", "ship asks no model")
    if allow:
        attempt = d.attempt + 1
        pod = names.pod_name(d.name, attempt)
        draft.status.update(attempt=attempt, podName=pod, queuePosition=None, admittedAt=c.timestamp(now))
        draft.cond(c.ADMITTED, "True", reason, message)
        draft.cond(c.RUNNING, "Unknown", "Launching", f"creating ship pod {pod}")
        draft.headline("Launching", f"{reason}: pushing from pod {pod}")
        draft.emit("Normal", reason, f"{message}; pushing from pod {pod}")
        draft.actions.append(Launch(attempt=attempt, engine="", model="", context=None))
        return draft.step(settings, wake_after=0)
    if final or now >= queue_deadline(d):
        draft.cond(c.ADMITTED, "False", reason, message)
        return draft.finish(False, reason, message, settings)
    # Not Admitted=Unknown (that is the queue's stage): the gate is asked again until it answers.
    draft.headline(reason, message)
    return draft.step(settings, wake_after=settings.preflight_interval)


# Ship refusals no later review or approval can lift: the ship ends at once.
FINAL_SHIP_REFUSALS = frozenset({ShipReason.SOURCE_NOT_SUCCEEDED, ShipReason.NO_DIFF, ShipReason.PATCH_TRUNCATED})


def ship_refusal_is_final(reason: ShipReason) -> bool:
    return reason in FINAL_SHIP_REFUSALS


def ship_gate(d: Dispatch, decision: ShipDecision, now: datetime, settings: Settings) -> Step:
    """``ship`` over the ship gate's decision (``core.ship.decide_ship``)."""
    final = ship_refusal_is_final(decision.reason)
    return ship(d, decision.allow, decision.reason, decision.message, now, settings, final=final)


@dataclass(frozen=True)
class Slot:
    """The queue's answer for this dispatch."""

    admit: bool
    position: int | None = None
    waiting: int = 0


def queued(d: Dispatch, slot: Slot, now: datetime, settings: Settings, *, context: int | None = None) -> Step:
    """Wait for a slot; admitted → launch attempt N+1."""
    draft = Draft(d, now)
    if d.spec.cancel:
        return _cancelled_before_start(draft, settings)
    deadline = queue_deadline(d)
    if now >= deadline and not slot.admit:
        draft.cond(c.ADMITTED, "False", "QueueTimeout", "no slot within timeouts.queueSeconds")
        return draft.finish(
            False,
            "QueueTimeout",
            f"still queued (position {slot.position}) {d.spec.timeouts.queue_seconds}s after creation",
            settings,
        )
    if not slot.admit:
        draft.status["queuePosition"] = slot.position
        wake = min(settings.queue_poll_interval, max((deadline - now).total_seconds(), 0.0))
        return draft.step(settings, wake_after=wake)
    attempt = d.attempt + 1
    pod = names.pod_name(d.name, attempt)
    draft.status.update(
        attempt=attempt,
        podName=pod,
        queuePosition=None,
        admittedAt=c.timestamp(now),
    )
    draft.cond(c.ADMITTED, "True", "Admitted", f"slot free; sandbox {pod}")
    draft.cond(c.RUNNING, "Unknown", "Launching", f"creating pod {pod}")
    draft.headline("Launching", f"creating pod {pod}")
    draft.emit("Normal", "Admitted", f"admitted; creating sandbox pod {pod}")
    engine = str(draft.status.get("engine") or "")
    model = str(draft.status.get("model") or "")
    if context is None:
        context = (draft.status.get("modelService") or {}).get("context")
    draft.actions.append(Launch(attempt=attempt, engine=engine, model=model, context=context))
    return draft.step(settings, wake_after=0)


def entered(first: Step, second: Step) -> Step:
    """The entry step (``enter``: Queued) and the queue's step right after it (``queued``) as one
    step, one status write: with a free slot, Queued and Admitted go out together, and only the
    one transition users see is announced (Admitted, not Queued then Admitted)."""
    first_actions = first.actions
    if any(isinstance(a, Launch) for a in second.actions):
        first_actions = tuple(a for a in first.actions if not (isinstance(a, Emit) and a.reason == "Queued"))
    return replace(second, actions=first_actions + second.actions)
