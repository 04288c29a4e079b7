"""A BuildDispatch object read into the machine's view (``core.body``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from buildstudio.core.body import (
    PLACEHOLDER_SPEC,
    ignored_spec_changes,
    parse_dispatch,
    placeholder_dispatch,
    source_to_read,
)
from tests.core.test_machine import spec

T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)
LATER = datetime(2026, 11, 26, tzinfo=UTC)


def body(**spec_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "d",
            "namespace": "n",
            "uid": "u",
            "generation": 2,
            "creationTimestamp": "2026-11-25T10:00:00Z",
        },
        "spec": spec_fields,
        "status": {"attempt": 1},
    }


def test_spec_changes_after_admission_are_reported() -> None:
    diff = [("change", ("spec", "prompt"), "a", "b"), ("change", ("spec", "cancel"), False, True)]
    assert ignored_spec_changes(diff, "entry") == []
    assert ignored_spec_changes(diff, "running") == ["prompt"]
    assert ignored_spec_changes([("change", ("spec", "ttlSecondsAfterFinished"), 1, 2)], "queued") == []
    assert "prompt" in ignored_spec_changes([("change", ("spec",), {}, {})], "queued")  # the whole spec replaced


def test_parse_dispatch_reports_invalid_spec() -> None:
    d, error = parse_dispatch(body(prompt="x", timeouts={"runSeconds": 1}), LATER)
    assert d is None and "runSeconds" in error
    d, error = parse_dispatch(body(prompt="x", repo={"url": "https://g/r.git"}), LATER)
    assert d is not None and d.created == T0 and d.generation == 2 and error == ""
    assert d.status == {"attempt": 1} and (d.name, d.namespace, d.uid) == ("d", "n", "u")


def test_parse_dispatch_without_a_creation_time_takes_now() -> None:
    raw = body(prompt="x", repo={"url": "https://g/r.git"})
    del raw["metadata"]["creationTimestamp"]
    d, _ = parse_dispatch(raw, LATER)
    assert d is not None and d.created == LATER


def test_the_placeholder_of_an_invalid_spec_keeps_name_status_and_generation() -> None:
    d = placeholder_dispatch(body(prompt="x", timeouts={"runSeconds": 1}), LATER)
    assert (d.name, d.namespace, d.uid, d.generation) == ("d", "n", "u", 2)
    assert d.spec == PLACEHOLDER_SPEC and d.created == LATER and d.status == {"attempt": 1}


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ({}, None),
        ({"phase": "plan", "repo": None}, None),
        ({"phase": "review", "repo": None, "source": {"dispatch": "fix"}}, "fix"),
        ({"phase": "ship", "repo": None, "source": {"dispatch": "fix"}, "approval": {"approvedBy": "a"}}, "fix"),
    ],
)
def test_review_and_ship_read_their_source(fields: dict[str, Any], source: str | None) -> None:
    assert source_to_read(spec(**fields)) == source
