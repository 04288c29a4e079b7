"""The dispatch as the state machine reads it: the parts of the BuildDispatch object it needs, its
stage (read from the conditions, so a restarted operator resumes), its current pod and its queue
deadline (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import conditions as c
from buildstudio.core import names

Stage = Literal["entry", "queued", "running", "finished"]


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


def current_pod(d: Dispatch) -> str:
    """The pod of the dispatch's current attempt (the first before any was recorded)."""
    return str(d.status.get("podName") or names.pod_name(d.name, max(d.attempt, 1)))


def queue_deadline(d: Dispatch) -> datetime:
    """When a dispatch still waiting (gate, preflight, queue) times out: ``timeouts.queueSeconds`` after creation."""
    return d.created + timedelta(seconds=d.spec.timeouts.queue_seconds)
