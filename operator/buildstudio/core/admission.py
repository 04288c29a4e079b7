"""The queue: which waiting dispatches may start now, and everyone else's position.

FIFO by creation time within an engine. A dispatch waits when its engine is at
``maxRunning`` or its model at ``maxRunningPerModel``; a later dispatch for another model
of the same engine may pass it (no head-of-line blocking across models), one for the same
model never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

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


@dataclass(frozen=True)
class Plan:
    admit: frozenset[Key] = frozenset()
    positions: Mapping[Key, int] = field(default_factory=dict)  # 1-based, per engine
    waiting: int = 0


def plan(entries: Iterable[Entry], limits: Mapping[str, Limits], default: Limits | None = None) -> Plan:
    """Who starts now and the queue position of each dispatch that keeps waiting."""
    default = default or Limits()
    running_engine: dict[str, int] = {}
    running_model: dict[tuple[str, str], int] = {}
    waiting: list[Entry] = []
    for e in entries:
        if e.state == "running":
            running_engine[e.engine] = running_engine.get(e.engine, 0) + 1
            running_model[e.engine, e.model] = running_model.get((e.engine, e.model), 0) + 1
        elif e.state == "waiting":
            waiting.append(e)
    waiting.sort(key=lambda e: (e.created, e.key))
    admit: set[Key] = set()
    positions: dict[Key, int] = {}
    per_engine_position: dict[str, int] = {}
    for e in waiting:
        lim = limits.get(e.engine, default)
        engine_busy = running_engine.get(e.engine, 0) >= lim.max_running
        model_busy = running_model.get((e.engine, e.model), 0) >= lim.max_running_per_model
        if not engine_busy and not model_busy:
            admit.add(e.key)
            running_engine[e.engine] = running_engine.get(e.engine, 0) + 1
            running_model[e.engine, e.model] = running_model.get((e.engine, e.model), 0) + 1
            continue
        pos = per_engine_position.get(e.engine, 0) + 1
        per_engine_position[e.engine] = pos
        positions[e.key] = pos
    return Plan(admit=frozenset(admit), positions=positions, waiting=len(waiting) - len(admit))
