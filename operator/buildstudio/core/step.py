"""A step of a decision: the whole new status and the actions the shell takes (create children,
delete the pod, post an event, count a metric), and the draft a stage writes it in (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from buildstudio.core import conditions as c
from buildstudio.core.dispatch import Dispatch
from buildstudio.core.settings import Settings
from buildstudio.core.status import fit_budget


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


class Draft:
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
        self.status["conditions"] = c.with_ready(
            self.status.get("conditions"), self.status["phase"], now=self.now, generation=self.d.generation
        )
        status = fit_budget(self.status, settings.status_budget_bytes)
        return Step(status=status, actions=tuple(self.actions), wake_after=wake_after)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch from ``old`` to ``new`` status (top-level keys; removed → null)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
