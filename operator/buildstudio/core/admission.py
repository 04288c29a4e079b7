"""The queue: which waiting dispatches may start now, and everyone else's position.

FIFO by creation time within an engine. A dispatch waits when its engine is at
``maxRunning`` or its model at ``maxRunningPerModel``; a later dispatch for another model
of the same engine may pass it (no head-of-line blocking across models), one for the same
model never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from buildstudio.core import conditions as c
from buildstudio.core.gate import EngineState

Key = tuple[str, str]  # (namespace, name)
State = Literal["waiting", "running", "other"]


@dataclass(frozen=True)
class Entry:
    key: Key
    engine: str
    model: str
    created: str  # RFC 3339; sorts chronologically
    state: State


@dataclass(frozen=True)
class Limits:
    max_running: int = 4
    max_running_per_model: int = 2


@dataclass
class Tally:
    """Slots and queue places a plan has handed out so far, per engine and per model."""

    engine: dict[str, int] = field(default_factory=dict)
    model: dict[tuple[str, str], int] = field(default_factory=dict)
    places: dict[str, int] = field(default_factory=dict)

    def start(self, e: Entry) -> None:
        self.engine[e.engine] = self.engine.get(e.engine, 0) + 1
        self.model[e.engine, e.model] = self.model.get((e.engine, e.model), 0) + 1

    def place(self, e: Entry, lim: Limits) -> int | None:
        """Start ``e`` now (None) or give it the next queue position of its engine."""
        engine_busy = self.engine.get(e.engine, 0) >= lim.max_running
        model_busy = self.model.get((e.engine, e.model), 0) >= lim.max_running_per_model
        if not engine_busy and not model_busy:
            self.start(e)
            return None
        pos = self.places.get(e.engine, 0) + 1
        self.places[e.engine] = pos
        return pos


def order(e: Entry) -> tuple[str, Key]:
    """Queue order: creation time, then name."""
    return (e.created, e.key)


@dataclass(frozen=True)
class Plan:
    admit: frozenset[Key] = frozenset()
    positions: Mapping[Key, int] = field(default_factory=dict)  # 1-based, per engine
    waiting: int = 0
    # What was handed out, and the last waiting entry: a newer one can be placed after it
    # with ``tally.place`` and get exactly what a new plan would give it.
    tally: Tally = field(default_factory=Tally, compare=False)
    tail: tuple[str, Key] | None = None


def plan(entries: Iterable[Entry], limits: Mapping[str, Limits], default: Limits | None = None) -> Plan:
    """Who starts now and the queue position of each dispatch that keeps waiting."""
    default = default or Limits()
    tally = Tally()
    waiting: list[Entry] = []
    for e in entries:
        if e.state == "running":
            tally.start(e)
        elif e.state == "waiting":
            waiting.append(e)
    waiting.sort(key=order)
    admit: set[Key] = set()
    positions: dict[Key, int] = {}
    for e in waiting:
        pos = tally.place(e, limits.get(e.engine, default))
        if pos is None:
            admit.add(e.key)
        else:
            positions[e.key] = pos
    return Plan(
        admit=frozenset(admit),
        positions=positions,
        waiting=len(waiting) - len(admit),
        tally=tally,
        tail=order(waiting[-1]) if waiting else None,
    )


def queue_entry(namespace: str, name: str, meta: Mapping[str, Any], status: Mapping[str, Any]) -> Entry:
    """A dispatch as the queue sees it, from its object: waiting (Admitted Unknown), running
    (Admitted True), else other."""
    conds = status.get("conditions")
    state: State = "other"
    if c.is_finished(status):
        state = "other"
    elif c.is_status(conds, c.ADMITTED, "True"):
        state = "running"
    elif c.is_status(conds, c.ADMITTED, "Unknown"):
        state = "waiting"
    return Entry(
        key=(namespace, name),
        engine=str(status.get("engine") or ""),
        model=str(status.get("model") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        state=state,
    )


def limits_of(engines: Iterable[EngineState]) -> dict[str, Limits]:
    """Each engine's concurrency limits, from its spec."""
    return {e.name: Limits(e.spec.concurrency.max_running, e.spec.concurrency.max_running_per_model) for e in engines}
