"""The sandbox pod as the state machine reads it (``PodView``), and its containers' roles: whose
log shows progress, whose log is the result channel (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from buildstudio.core import conditions as c

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
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
