"""TTL after finish: when a finished dispatch is due for deletion."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from buildstudio.core.conditions import SUCCEEDED, find, is_finished, parse_time


def finished_at(status: Mapping[str, Any] | None) -> datetime | None:
    """``status.finishedAt``, else the terminal condition's transition time."""
    status = status or {}
    if not is_finished(status):
        return None
    explicit = parse_time(status.get("finishedAt"))
    if explicit is not None:
        return explicit
    cond = find(status.get("conditions"), SUCCEEDED)
    return parse_time(cond.get("lastTransitionTime") if cond else None)


def seconds_until_expiry(status: Mapping[str, Any] | None, ttl: int | None, now: datetime) -> float | None:
    """``None``: never expires (no TTL or not finished); ``<= 0``: delete now."""
    if ttl is None:
        return None
    done = finished_at(status)
    if done is None:
        return None
    return (done + timedelta(seconds=ttl) - now).total_seconds()
