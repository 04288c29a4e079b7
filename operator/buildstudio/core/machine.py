"""The BuildDispatch state machine: (dispatch, observations, clock) → (status, actions).

Stages, read from the conditions (never from memory, so a restarted operator resumes):

- ``entry``: gate (``Admitted`` refused → NotAdmitted) and preflight (``ModelReady``);
- ``queued``: ``Admitted`` Unknown/Queued until the queue admits it (or QueueTimeout);
- ``running``: ``Admitted`` True; the pod ``<dispatch>-<attempt>`` is launched, watched,
  its log folded; ends on the result record or on a pod failure / cancel / run timeout;
- ``finished``: ``Succeeded`` True/False; only TTL remains.

Every function returns a ``Step``: the whole new status and the actions the shell takes
(create children, delete the pod, post an event, count a metric). Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import conditions as c
from buildstudio.core import names
from buildstudio.core.gate import GateDecision
from buildstudio.core.settings import Settings
from buildstudio.core.ship import ShipDecision, ShipReason
from buildstudio.core.status import LiveState, fit_budget, progress_fields, result_fields
from buildstudio.protocol.records import Outcome, Patch

Stage = Literal["entry", "queued", "running", "finished"]
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Dispatch:
    """The parts of a BuildDispatch object the machine reads."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    created: datetime
    spec: BuildDispatchSpec
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def conditions(self) -> list[Mapping[str, Any]]:
        return list(self.status.get("conditions") or [])

    @property
    def attempt(self) -> int:
        return int(self.status.get("attempt") or 0)


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


REPORTER_CONTAINER = "reporter"  # its log is the result channel
PUSH_CONTAINER = "push"  # the ship pod's one container: its log is that pod's result channel
RESULT_CONTAINERS = frozenset({REPORTER_CONTAINER, PUSH_CONTAINER})
STARTING_REASONS = frozenset({"PodInitializing", "ContainerCreating"})
RELAY_CONTAINER = "relay"
AGENT_CONTAINER = "agent"


def work_container(phase: str) -> str:
    """Whose log shows progress: the agent's in a build (its side: informative only), the push
    container's in a ship, else the reporter's (text phases run there)."""
    if phase == "ship":
        return PUSH_CONTAINER
    return AGENT_CONTAINER if phase == "build" else REPORTER_CONTAINER


def result_container(followed: str) -> str:
    """The container whose log is the result channel, given the one followed for progress."""
    return followed if followed in RESULT_CONTAINERS else REPORTER_CONTAINER


@dataclass(frozen=True)
class PodView:
    """What the machine needs of the sandbox pod (``from_pod`` reads a Pod object).

    The sandbox's work runs in init containers (clone, agent) while the pod's own phase still
    says Pending: ``phase`` here is Running once any of its containers has started."""

    phase: str = "Pending"
    reason: str = ""  # status.reason (Evicted, DeadlineExceeded)
    message: str = ""
    waiting_reason: str = ""
    waiting_message: str = ""
    terminated_reason: str = ""  # OOMKilled, Error, Completed (a failed container's first)
    exit_code: int | None = None
    unschedulable: str | None = None  # the PodScheduled=False message
    created: datetime | None = None
    started: datetime | None = None
    deleting: bool = False
    failed_container: str = ""  # the container whose termination ended the pod, if any failed
    reporter_ended: bool = False  # the result channel's container has terminated

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodView:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        waiting: Mapping[str, Any] = {}
        terminated: Mapping[str, Any] = {}
        failed = ""
        started_any = False
        reporter_ended = False
        statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        for cs in statuses:
            state = cs.get("state") or {}
            wait = state.get("waiting")
            # A container that cannot start (image, config) outranks others that only wait for it.
            if wait and (not waiting or waiting.get("reason") in STARTING_REASONS):
                waiting = wait
            term = state.get("terminated")
            if state.get("running") or term:
                started_any = True
            if term:
                if cs.get("name") in RESULT_CONTAINERS:
                    reporter_ended = True
                if cs.get("name") == RELAY_CONTAINER:
                    continue  # a sidecar: restarted by the kubelet, and ended by it after the work
                if not failed and (term.get("exitCode") or term.get("reason") not in (None, "Completed")):
                    terminated, failed = term, str(cs.get("name") or "")
                elif not terminated:
                    terminated = term
        unschedulable = None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                unschedulable = str(cond.get("message") or cond.get("reason") or "Unschedulable")
        code = terminated.get("exitCode")
        phase = str(status.get("phase") or "Pending")
        if phase == "Pending" and started_any:
            phase = "Running"
        return cls(
            phase=phase,
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            waiting_reason=str(waiting.get("reason") or "") if phase == "Pending" else "",
            waiting_message=str(waiting.get("message") or "") if phase == "Pending" else "",
            terminated_reason=str(terminated.get("reason") or ""),
            exit_code=int(code) if code is not None else None,
            unschedulable=unschedulable,
            created=c.parse_time(meta.get("creationTimestamp")),
            started=c.parse_time(status.get("startTime")),
            deleting=bool(meta.get("deletionTimestamp")),
            failed_container=failed,
            reporter_ended=reporter_ended,
        )


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Launch:
    """Create (if absent) the attempt's ConfigMap, NetworkPolicy and Pod."""

    attempt: int
    engine: str
    model: str
    context: int | None


@dataclass(frozen=True)
class DeletePod:
    name: str
    grace_seconds: int


@dataclass(frozen=True)
class StorePatch:
    """Write the whole patch (gzip+base64) into the owned ConfigMap."""

    data: str
    size: int
    sha256: str
    truncated: bool


@dataclass(frozen=True)
class Emit:
    """A Kubernetes Event on the dispatch (single line)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Finished:
    """For metrics: the dispatch reached a terminal state."""

    succeeded: bool
    reason: str
    engine: str
    model: str
    duration_seconds: float | None


@dataclass(frozen=True)
class PreflightFailed:
    reason: str


Action = Launch | DeletePod | StorePatch | Emit | Finished | PreflightFailed


@dataclass(frozen=True)
class Step:
    status: dict[str, Any]
    actions: tuple[Action, ...] = ()
    wake_after: float | None = None  # seconds; None: wait for something to change

    def emitted(self) -> list[Emit]:
        return [a for a in self.actions if isinstance(a, Emit)]


# ---------------------------------------------------------------- helpers


def stage_of(status: Mapping[str, Any] | None) -> Stage:
    status = status or {}
    if c.is_finished(status):
        return "finished"
    conds = status.get("conditions")
    if c.is_status(conds, c.ADMITTED, "True"):
        return "running"
    if c.is_status(conds, c.ADMITTED, "Unknown"):
        return "queued"
    return "entry"


class _Draft:
    """A mutable copy of the status while one decision is made."""

    def __init__(self, d: Dispatch, now: datetime) -> None:
        self.d = d
        self.now = now
        self.status: dict[str, Any] = dict(d.status)
        self.actions: list[Action] = []

    def cond(self, type_: str, status: c.Status, reason: str, message: str) -> None:
        self.status["conditions"] = c.set_condition(
            self.status.get("conditions"),
            type_,
            status,
            reason,
            message,
            now=self.now,
            generation=self.d.generation,
        )

    def headline(self, reason: str, message: str) -> None:
        self.status["reason"] = reason
        self.status["message"] = c.one_line(message)

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(Emit(type_, reason, c.one_line(message)))

    def finish(self, succeeded: bool, reason: str, message: str, settings: Settings) -> Step:
        self.cond(c.SUCCEEDED, "True" if succeeded else "False", reason, message)
        if c.find(self.status.get("conditions"), c.RUNNING) is not None:
            self.cond(c.RUNNING, "False", "Finished", f"sandbox finished: {reason}")
        self.headline(reason, message)
        self.status["finishedAt"] = c.timestamp(self.now)
        self.status["queuePosition"] = None
        self.emit("Normal" if succeeded else "Warning", reason, message)
        started = c.parse_time(self.status.get("startedAt"))
        self.actions.append(
            Finished(
                succeeded=succeeded,
                reason=reason,
                engine=str(self.status.get("engine") or self.d.spec.engine or ""),
                model=str(self.status.get("model") or self.d.spec.model or ""),
                duration_seconds=(self.now - started).total_seconds() if started else None,
            )
        )
        return self.step(settings)

    def step(self, settings: Settings, wake_after: float | None = None) -> Step:
        self.status["observedGeneration"] = self.d.generation
        self.status["phase"] = c.derive_phase(self.status.get("conditions"))
        status = fit_budget(self.status, settings.status_budget_bytes)
        return Step(status=status, actions=tuple(self.actions), wake_after=wake_after)


def current_pod(d: Dispatch) -> str:
    """The pod of the dispatch's current attempt (the first before any was recorded)."""
    return str(d.status.get("podName") or names.pod_name(d.name, max(d.attempt, 1)))


def queue_deadline(d: Dispatch) -> datetime:
    """When a dispatch still waiting (gate, preflight, queue) times out: ``timeouts.queueSeconds`` after creation."""
    return d.created + timedelta(seconds=d.spec.timeouts.queue_seconds)


def _cancelled_before_start(draft: _Draft, settings: Settings) -> Step:
    return draft.finish(False, "Cancelled", "cancelled before the sandbox started", settings)


# ---------------------------------------------------------------- stages


def invalid_spec(d: Dispatch, error: str, now: datetime, settings: Settings) -> Step:
    """A spec the API models refuse (the emulator and old apiservers skip schema checks)."""
    draft = _Draft(d, now)
    return draft.finish(False, "InvalidSpec", f"invalid spec: {error}", settings)


def refused_at_launch(d: Dispatch, reason: str, message: str, now: datetime, settings: Settings) -> Step:
    """A launch that may not go ahead after all (say, the git remote no longer resolves, so no
    egress policy can name it), decided before any child object exists. ``d.status`` may be the
    launch step's: the attempt that was about to start is taken back."""
    draft = _Draft(d, now)
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
    draft = _Draft(d, now)
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
    draft = _Draft(d, now)
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
    draft = _Draft(d, now)
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
    draft = _Draft(d, now)
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
    return draft.step(settings, wake_after=1.0)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch from ``old`` to ``new`` status (top-level keys; removed → null)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
