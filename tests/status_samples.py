"""BuildDispatch and BuildEngine objects whose status comes from the operator's own status builders
(the dispatch state machine, the engine presence and model-service conditions), one per reason a
status can show: for checks of what reads those statuses (the Argo CD health scripts, the success
outcomes the dashboard and alerts count).

The builders are found by the module that defines them, not by a fixed import path: the package
layout may change without these samples going stale.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "operator"
T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


@functools.cache
def module_defining(name: str) -> ModuleType:
    """The one module under operator/buildstudio that defines ``name`` at top level."""
    pattern = re.compile(rf"^(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", re.M)
    found = [p for p in sorted((PACKAGE_ROOT / "buildstudio").rglob("*.py")) if pattern.search(p.read_text())]
    # api/ has a CRD-facing twin of some record types; the runner's records are the ones the machine reads.
    if len(found) > 1:
        found = [p for p in found if "api" not in p.relative_to(PACKAGE_ROOT).parts] or found
    assert len(found) == 1, f"{name} is defined in {found}"
    return importlib.import_module(".".join(found[0].relative_to(PACKAGE_ROOT).with_suffix("").parts))


def sym(name: str) -> Any:
    return getattr(module_defining(name), name)


@dataclass(frozen=True)
class Sample:
    """An object as the API server would serve it, and what its health should be."""

    name: str
    obj: dict[str, Any]
    health: str  # Healthy | Progressing | Degraded | Suspended
    reason: str  # the reason the health message must name ("" for none)


def _obj(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fix-1", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


# --- BuildDispatch ------------------------------------------------------------------------------------------
class _Dispatches:
    """Drives the state machine as the operator's handlers do."""

    def __init__(self) -> None:
        self.m = module_defining("queued")
        self.settings = sym("Settings")()
        gate = sym("GateDecision")
        self.admit = gate(True, "Admitted", "opencode drives local model m", engine="opencode", model="m", local=True)
        self.ready = self.m.ModelCheck(True, "Ready", "m: context 131072", context=131072)

    def dispatch(self, status: dict[str, Any] | None = None, **spec: Any) -> Any:
        base: dict[str, Any] = {"prompt": "add a test", "repo": {"url": "https://example.com/r.git"}, "model": "m"}
        return self.m.Dispatch(
            name="fix-1",
            namespace="dev",
            uid="u-1",
            generation=1,
            created=T0,
            spec=sym("BuildDispatchSpec").model_validate(base | spec),
            status=status or {},
        )

    def ship_dispatch(self, status: dict[str, Any] | None = None, **spec: Any) -> Any:
        return self.dispatch(status, phase="ship", repo=None, source={"dispatch": "fix"}, **spec)

    def queued(self) -> dict[str, Any]:
        return self.m.enter(self.dispatch(), self.admit, self.ready, T0, self.settings).status

    def launching(self) -> dict[str, Any]:
        return self.m.queued(self.dispatch(self.queued()), self.m.Slot(admit=True), T0, self.settings).status

    def pod(self, phase: str = "Running", **kw: Any) -> Any:
        return self.m.PodView(phase=phase, created=T0, started=T0, **kw)

    def look(
        self, status: dict[str, Any], pod: Any, live: Any = None, *, at: float = 1, ended: bool = False, **spec: Any
    ) -> dict[str, Any]:
        live = live if live is not None else sym("LiveState")()
        d = self.dispatch(status, **spec)
        return self.m.running(d, pod, live, T0 + timedelta(seconds=at), self.settings, log_ended=ended).status

    def running(self) -> dict[str, Any]:
        return self.look(self.launching(), self.pod())

    def result(self, outcome: Any, **kw: Any) -> Any:
        records = module_defining("ResultRecord")
        return records.ResultRecord(
            outcome=outcome,
            message=f"run ended: {outcome.value}",
            summary=records.RunSummary(steps=3, tool_calls=2, final_text="Done."),
            diff_stat=records.DiffStat(files=1, additions=1),
            diff="+x\n",
            diff_bytes=3,
            **kw,
        )

    def finished_with(self, outcome: Any) -> dict[str, Any]:
        live = sym("LiveState")(result=self.result(outcome), results=1)
        return self.look(self.running(), self.pod("Succeeded"), live, at=30, ended=True)

    def shipped(self, push_reason: str) -> dict[str, Any]:
        approved = self.ship_dispatch(approval={"approvedBy": "alice"})
        step = self.m.ship(approved, True, "Approved", "ship fix: 1 files, +1/-0", T0, self.settings, final=False)
        records = module_defining("ResultRecord")
        push = records.PushRecord(reason=push_reason, branch="buildstudio/fix", commit="c" * 40)
        outcome = records.Outcome.COMPLETED if push_reason == "Pushed" else records.Outcome.RUNNER_ERROR
        live = sym("LiveState")(
            result=records.ResultRecord(outcome=outcome, message=push_reason, phase="ship", push=push), results=1
        )
        d = self.ship_dispatch(step.status, approval={"approvedBy": "alice"})
        return self.m.running(d, self.pod("Succeeded"), live, T0, self.settings, log_ended=True).status

    def ship_waiting(self, reason: str, *, late: bool = False, final: bool = False) -> dict[str, Any]:
        now = T0 + timedelta(seconds=7200 if late else 0)
        return self.m.ship(
            self.ship_dispatch(), False, reason, f"ship gate: {reason}", now, self.settings, final=final
        ).status


def dispatch_samples() -> list[Sample]:
    """One BuildDispatch per stage and per terminal reason the machine can reach."""
    b = _Dispatches()
    m, settings, outcome = b.m, b.settings, sym("Outcome")
    out: list[Sample] = []

    def add(name: str, status: dict[str, Any] | None, health: str, reason: str, generation: int = 1) -> None:
        out.append(Sample(name, _obj("BuildDispatch", status, generation), health, reason))

    # Not finished: Progressing.
    add("new", None, "Progressing", "")
    unreachable = m.ModelCheck(False, "EndpointUnreachable", "connection refused", retryable=True)
    add(
        "preflight-retrying",
        m.enter(b.dispatch(), b.admit, unreachable, T0, settings).status,
        "Progressing",
        "EndpointUnreachable",
    )
    add("queued", b.queued(), "Progressing", "Queued")
    waiting = m.queued(b.dispatch(b.queued()), m.Slot(admit=False, position=3), T0, settings).status
    add("queued-position", waiting, "Progressing", "Queued")
    add("launching", b.launching(), "Progressing", "Launching")
    add(
        "pod-pending",
        m.launched(m.queued(b.dispatch(b.queued()), m.Slot(admit=True), T0, settings), T0, 1).status,
        "Progressing",
        "PodPending",
    )
    pulling = b.pod("Pending", waiting_reason="ImagePullBackOff", waiting_message="not found")
    add("image-pull-within-grace", b.look(b.launching(), pulling, at=10), "Progressing", "ImagePullBackOff")
    add("running", b.running(), "Progressing", "Running")
    add("cancelling", b.look(b.running(), b.pod(), cancel=True), "Progressing", "Cancelling")
    timing = b.look(b.running(), b.pod(), at=3600, timeouts={"runSeconds": 60, "idleSeconds": 30})
    add("timing-out", timing, "Progressing", "TimingOut")
    allowed = m.ship(
        b.ship_dispatch(approval={"approvedBy": "alice"}), True, "Approved", "ship fix", T0, settings, final=False
    )
    add("ship-launching", allowed.status, "Progressing", "Launching")
    add("spec-not-yet-observed", b.queued(), "Progressing", "", generation=2)

    # Ship gate waiting for people: Suspended.
    for reason in ("ApprovalRequired", "ReviewMissing", "ReviewStale", "ReviewRequestedChanges"):
        add(f"ship-waiting-{reason}", b.ship_waiting(reason), "Suspended", reason)

    # Finished: Healthy on success, Degraded otherwise.
    for o in outcome:
        add(
            f"result-{o.value}",
            b.finished_with(o),
            "Healthy" if o in (outcome.COMPLETED, outcome.NO_CHANGES) else "Degraded",
            o.value,
        )
    add("ship-pushed", b.shipped("Pushed"), "Healthy", "Pushed")
    add("ship-push-rejected", b.shipped("PushRejected"), "Degraded", "PushRejected")
    add("ship-no-diff", b.ship_waiting("NoDiff", final=True), "Degraded", "NoDiff")
    add("ship-review-never-came", b.ship_waiting("ReviewMissing", late=True), "Degraded", "ReviewMissing")
    refused = sym("GateDecision")(False, "EngineNotPresent", "engine opencode is not present", engine="opencode")
    add("not-admitted", m.enter(b.dispatch(), refused, None, T0, settings).status, "Degraded", "NotAdmitted")
    too_small = m.ModelCheck(False, "ContextTooSmall", "context 8192 < 16384")
    add(
        "preflight-failed",
        m.enter(b.dispatch(), b.admit, too_small, T0, settings).status,
        "Degraded",
        "PreflightFailed",
    )
    admin = m.enter(b.dispatch(), b.admit, None, T0, settings, refusal=("CredentialNotAllowed", "secret x not allowed"))
    add("admin-refusal", admin.status, "Degraded", "CredentialNotAllowed")
    add("invalid-spec", m.invalid_spec(b.dispatch(), "prompt: empty", T0, settings).status, "Degraded", "InvalidSpec")
    late = m.queued(b.dispatch(b.queued()), m.Slot(admit=False, position=1), T0 + timedelta(days=1), settings)
    add("queue-timeout", late.status, "Degraded", "QueueTimeout")
    add(
        "cancelled-queued",
        m.queued(b.dispatch(b.queued(), cancel=True), m.Slot(True), T0, settings).status,
        "Degraded",
        "Cancelled",
    )
    add(
        "refused-at-launch",
        m.refused_at_launch(b.dispatch(b.launching()), "EgressRefused", "remote does not resolve", T0, settings).status,
        "Degraded",
        "EgressRefused",
    )
    add(
        "timed-out",
        b.look(timing, None, at=3700, ended=True, timeouts={"runSeconds": 60, "idleSeconds": 30}),
        "Degraded",
        "TimedOut",
    )
    add(
        "oom-killed",
        b.look(b.running(), b.pod("Failed", terminated_reason="OOMKilled", exit_code=137), ended=True),
        "Degraded",
        "OOMKilled",
    )
    add(
        "evicted",
        b.look(b.running(), b.pod("Failed", reason="Evicted", message="disk"), ended=True),
        "Degraded",
        "Evicted",
    )
    add("pod-failed", b.look(b.running(), None, ended=True), "Degraded", "PodFailed")
    add("image-pull-backoff", b.look(b.launching(), pulling, at=3000), "Degraded", "ImagePullBackOff")
    stuck = b.pod("Pending", unschedulable="0/3 nodes are available")
    add("unschedulable", b.look(b.launching(), stuck, at=3000), "Degraded", "Unschedulable")
    twice = sym("LiveState")(result=b.result(outcome.COMPLETED), results=2)
    add("result-conflict", b.look(b.running(), b.pod("Succeeded"), twice, ended=True), "Degraded", "ResultConflict")
    return out


def success_reasons() -> set[str]:
    """The Succeeded=True reasons among the samples: what "success" means to the dashboard and alerts."""
    find = sym("find")
    reasons = set()
    for s in dispatch_samples():
        done = find((s.obj.get("status") or {}).get("conditions"), "Succeeded")
        if done is not None and done["status"] == "True":
            reasons.add(done["reason"])
    return reasons


# --- BuildEngine ---------------------------------------------------------------------------------------------
def engine_samples() -> list[Sample]:
    presence_status: Callable[..., dict[str, Any]] = sym("presence_status")
    set_condition = sym("set_condition")

    def present(ok: bool, generation: int = 1) -> dict[str, Any]:
        message = "`opencode --version` in sandbox printed 1.2.3" if ok else "`opencode --version` failed: not found"
        return presence_status(
            {},
            present=ok,
            method="probe-pod",
            message=message,
            image="sandbox",
            version="1.2.3" if ok else "",
            generation=generation,
            now=T0,
        )

    def with_service(status: dict[str, Any], ok: bool, reason: str) -> dict[str, Any]:
        conditions = set_condition(
            status.get("conditions"),
            "ModelServiceReady",
            "True" if ok else "False",
            reason,
            f"model service: {reason}",
            now=T0,
            generation=None,
        )
        return status | {"conditions": conditions}

    def add(name: str, status: dict[str, Any] | None, health: str, reason: str, generation: int = 1) -> Sample:
        return Sample(name, _obj("BuildEngine", status, generation), health, reason)

    return [
        add("new", None, "Progressing", ""),
        add("cloud-present", present(True), "Healthy", "Present"),
        add("local-service-ready", with_service(present(True), True, "Ready"), "Healthy", "Ready"),
        add(
            "local-service-unreachable",
            with_service(present(True), False, "EndpointUnreachable"),
            "Degraded",
            "EndpointUnreachable",
        ),
        add("local-model-missing", with_service(present(True), False, "ModelNotFound"), "Degraded", "ModelNotFound"),
        add("not-present", present(False), "Degraded", "NotPresent"),
        add("not-present-service-ready", with_service(present(False), True, "Ready"), "Degraded", "NotPresent"),
        add("spec-changed-not-probed", present(True), "Progressing", "", generation=2),
    ]
