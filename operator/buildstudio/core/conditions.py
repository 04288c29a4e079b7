"""metav1.Condition helpers and the phase derived from conditions.

``lastTransitionTime`` changes only when a condition's ``status`` changes; reason, message
and observedGeneration follow the latest decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]
Condition = dict[str, Any]

MODEL_READY = "ModelReady"
ADMITTED = "Admitted"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
# Derived from Succeeded for tools that only know Ready (kubectl wait, kstatus, dashboards): see ``with_ready``.
READY = "Ready"
# Engine conditions.
PRESENT = "Present"
MODEL_SERVICE_READY = "ModelServiceReady"

MESSAGE_LIMIT = 1024


@lru_cache(maxsize=64)  # one decision stamps several fields with the same ``now``
def timestamp(now: datetime) -> str:
    """RFC 3339, seconds precision, UTC (what the apiserver stores)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Single line (kubectl output breaks on newlines), at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_status(conditions: Sequence[Mapping[str, Any]] | None, type_: str, status: Status) -> bool:
    cond = find(conditions, type_)
    return cond is not None and cond.get("status") == status


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with ``type_`` set; the other conditions keep their order and content."""
    old = find(conditions, type_)
    changed = old is None or old.get("status") != status
    new: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": one_line(message),
        "lastTransitionTime": timestamp(now) if changed or old is None else old.get("lastTransitionTime"),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    out: list[Condition] = []
    replaced = False
    for cond in conditions or ():
        if cond.get("type") == type_:
            out.append(new)
            replaced = True
        else:
            out.append(dict(cond))
    if not replaced:
        out.append(new)
    return out


def derive_phase(conditions: Sequence[Mapping[str, Any]] | None) -> str:
    """The printer-column phase, derived only from conditions (never stored on its own)."""
    done = find(conditions, SUCCEEDED)
    if done is not None and done.get("status") == "True":
        return "Succeeded"
    if done is not None and done.get("status") == "False":
        return "Cancelled" if done.get("reason") == "Cancelled" else "Failed"
    if is_status(conditions, ADMITTED, "True"):
        return "Running"
    if is_status(conditions, ADMITTED, "Unknown"):
        return "Queued"
    return "Pending"


def with_ready(
    conditions: Sequence[Mapping[str, Any]] | None, working: str, *, now: datetime, generation: int | None
) -> list[Condition]:
    """``conditions`` with ``Ready`` derived from ``Succeeded`` (Knative's convention for a run to completion).

    Ready=True once the object finished successfully (its result is there), False with Succeeded's
    reason and message once it ended otherwise (failed, refused, cancelled: it will never be ready),
    Unknown while it is still on its way, with ``working`` (the phase, e.g. Queued) as the reason.
    So ``kubectl wait --for=condition=Ready`` returns on success, and a failure shows its reason.
    Never decided on its own: it always follows Succeeded."""
    done = find(conditions, SUCCEEDED)
    if done is not None and done.get("status") in ("True", "False"):
        status: Status = "True" if done.get("status") == "True" else "False"
        reason, message = str(done.get("reason") or SUCCEEDED), str(done.get("message") or "")
    else:
        status, reason, message = "Unknown", working or "Pending", f"not finished yet: {working or 'Pending'}"
    return set_condition(conditions, READY, status, reason, message, now=now, generation=generation)


def is_finished(status: Mapping[str, Any] | None) -> bool:
    done = find((status or {}).get("conditions"), SUCCEEDED)
    return done is not None and done.get("status") in ("True", "False")
