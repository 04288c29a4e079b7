"""A dispatch as the queue sees it, and each engine's limits (``core.admission``)."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.core.admission import Entry, Limits, limits_of, queue_entry
from buildstudio.core.gate import EngineState


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        ([], "other"),
        ([{"type": "Admitted", "status": "Unknown"}], "waiting"),
        ([{"type": "Admitted", "status": "True"}], "running"),
        ([{"type": "Admitted", "status": "True"}, {"type": "Succeeded", "status": "False"}], "other"),
        ([{"type": "Admitted", "status": "False"}], "other"),
    ],
)
def test_queue_entry_states(conditions: list[dict[str, Any]], state: str) -> None:
    status = {"engine": "e", "model": "m", "conditions": conditions}
    entry = queue_entry("n", "d", {"creationTimestamp": "2026-11-25T10:00:00Z"}, status)
    assert entry == Entry(("n", "d"), "e", "m", "2026-11-25T10:00:00Z", state)  # type: ignore[arg-type]


def test_limits_come_from_each_engines_concurrency() -> None:
    raw = {
        "engine": "opencode",
        "endpoint": "local",
        "version": "1",
        "command": ["opencode"],
        "concurrency": {"maxRunning": 3, "maxRunningPerModel": 1},
    }
    engine = EngineState("e", BuildEngineSpec.model_validate(raw), present=True)
    assert limits_of([engine]) == {"e": Limits(3, 1)}
