"""What the handlers keep besides IO: kopf's filters and diff-base, the queue board, the collector
settings, the daemon's pause (no Kubernetes). The pure decisions they call are tested in ``tests/core``."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from buildstudio.api.common import API_GROUP
from buildstudio.core.admission import Entry, Limits, queue_entry
from buildstudio.core.settings import Settings
from buildstudio.handlers import (
    DIFFBASE_ANNOTATION,
    DIFFBASE_KEY,
    FINALIZER,
    GC_THRESHOLDS,
    SpecDiffBaseStorage,
    build_registry,
    needs_daemon,
    run_operator,
)
from buildstudio.handlers.context import OperatorContext, QueueBoard, Wakeups
from buildstudio.handlers.dispatch import DispatchDriver
from buildstudio.handlers.follow import LogFollower
from buildstudio.protocol import records
from tests.core.test_machine import to_running


def test_queue_board_overlay_wins_over_a_lagging_index() -> None:
    board = QueueBoard(max_age=0)
    running = queue_entry(
        "n",
        "a",
        {"creationTimestamp": "1"},
        {"engine": "e", "model": "m", "conditions": [{"type": "Admitted", "status": "True"}]},
    )
    waiting = queue_entry(
        "n",
        "b",
        {"creationTimestamp": "2"},
        {"engine": "e", "model": "m", "conditions": [{"type": "Admitted", "status": "Unknown"}]},
    )
    assert running.state == "running" and waiting.state == "waiting"
    stale = Entry(key=("n", "a"), engine="e", model="m", created="1", state="waiting")  # the index lags
    board.put(running)
    plan = board.plan([stale, waiting], {"e": Limits(1, 1)})
    assert plan.admit == frozenset() and plan.positions == {("n", "b"): 1}


def test_queue_board_overlay_shrinks_once_the_index_catches_up() -> None:
    """The overlay bridges the index's lag only; it never grows with the dispatches ever seen."""
    board = QueueBoard(max_age=0)
    done = [Entry(key=("n", f"d{i}"), engine="e", model="m", created=str(i), state="other") for i in range(50)]
    running = Entry(key=("n", "r"), engine="e", model="m", created="0", state="running")
    waiting = Entry(key=("n", "w"), engine="e", model="m", created="1", state="waiting")
    for entry in [*done, running, waiting]:
        board.put(entry)
    plan = board.plan([running], {"e": Limits(1, 1)})  # the index knows only r; w is not indexed yet
    assert plan.positions == {("n", "w"): 1} and board.waiting == 1
    assert set(board.overlay) == {("n", "w")}  # d* are finished and unindexed, r agrees with the index
    freed = Entry(key=("n", "r"), engine="e", model="m", created="0", state="other")
    board.put(freed)  # r finished; the index still shows it running
    plan = board.plan([running], {"e": Limits(1, 1)})
    assert plan.admit == frozenset({("n", "w")}) and board.waiting == 0
    assert ("n", "r") in board.overlay  # kept while the index lags
    board.plan([], {"e": Limits(1, 1)})
    assert ("n", "r") not in board.overlay


def test_queue_board_forget_keeps_the_slot_free_while_the_index_lags() -> None:
    """A finished dispatch's daemon forgets it; the index, behind, still shows it running."""
    board = QueueBoard(max_age=0)
    running = Entry(key=("n", "r"), engine="e", model="m", created="0", state="running")
    waiting = Entry(key=("n", "w"), engine="e", model="m", created="1", state="waiting")
    board.put(replace(running, state="other"))  # its finished status went out
    board.forget(running.key)
    plan = board.plan([running, waiting], {"e": Limits(1, 1)})
    assert plan.admit == frozenset({waiting.key})
    board.plan([waiting], {"e": Limits(1, 1)})  # the index caught up
    assert running.key not in board.overlay


def kopf_matches(handler_id: str, body: dict[str, object]) -> bool:
    """Whether kopf itself (its registry's matching: filters, then callbacks) selects a handler of
    the operator for this dispatch body."""
    import logging

    from kopf._cogs.structs import ephemera, patches, references
    from kopf._core.intents import causes, registries

    registry = build_registry(seed=False)
    resource = references.Resource(
        group=API_GROUP, version="v1alpha1", plural="builddispatches", kind="BuildDispatch", namespaced=True
    )
    handlers = [*registry._spawning.get_all_handlers(), *registry._indexing.get_all_handlers()]
    handler = next(h for h in handlers if h.id == handler_id)
    cause = causes.SpawningCause(
        resource=resource,
        indices={},  # type: ignore[arg-type]  # no index is read by these filters
        logger=logging.getLogger("test"),
        patch=patches.Patch(),
        memo=ephemera.Memo(),
        body=kopf.Body(body),  # type: ignore[arg-type]
        reset=False,
    )
    return registries.match(handler, cause)


RUNNING = {"conditions": [{"type": "Admitted", "status": "True"}, {"type": "Running", "status": "Unknown"}]}


def test_no_daemon_in_the_window_before_kopf_writes_the_create_outcome() -> None:
    """The create handler's status write lands before kopf's write carrying the finalizer and the
    diff-base: an event in between must not want a daemon (kopf would race its own write with a
    JSON patch). A brand-new dispatch does not even reach the callback."""
    meta = {"name": "d", "namespace": "n"}
    between = {"metadata": meta, "spec": {}, "status": RUNNING}
    written = {"metadata": {**meta, "finalizers": [FINALIZER], "annotations": {DIFFBASE_ANNOTATION: "{}"}}}
    stripped = {"metadata": {**meta, "annotations": {DIFFBASE_ANNOTATION: "{}"}}}  # finalizer removed by hand
    assert not kopf_matches("dispatch", between)
    assert not kopf_matches("dispatch", {**between, "metadata": {**meta, "finalizers": ["other.io/keep"]}})
    assert kopf_matches("dispatch", {**written, "status": RUNNING})
    assert kopf_matches("dispatch", {**stripped, "status": RUNNING})  # kopf adds the finalizer back itself
    assert not kopf_matches("dispatch", {**written, "status": {}})  # at the entry: nothing to wait for
    assert needs_daemon(kopf.Body({"status": RUNNING})) and not needs_daemon(kopf.Body({"status": {}}))


def test_the_queue_index_skips_dispatches_without_conditions() -> None:
    """A new dispatch skips the queue index (kopf drops its entry, as for any unmatched object);
    one with conditions is indexed, whatever its state (the handler decides what counts)."""
    meta = {"name": "d", "namespace": "n", "creationTimestamp": "2026-11-25T10:00:00Z"}
    assert not kopf_matches("dispatch_queue", {"metadata": meta, "spec": {}})
    assert not kopf_matches("dispatch_queue", {"metadata": meta, "spec": {}, "status": {"phase": "Pending"}})
    assert kopf_matches("dispatch_queue", {"metadata": meta, "spec": {}, "status": RUNNING})
    assert queue_entry("n", "d", meta, {}).state == "other"  # what the skipped ones would have been


@pytest.mark.parametrize(
    "body",
    [
        {
            "apiVersion": "buildstudio.dpf.dev/v1alpha1",
            "kind": "BuildEngine",
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "7"},
            "spec": {"x": [1, {"y": 2}]},
        },
        {
            "apiVersion": "buildstudio.dpf.dev/v1alpha1",
            "kind": "BuildDispatch",
            "metadata": {
                "name": "d",
                "namespace": "n",
                "generation": 3,
                "labels": {"team": "a"},
                "annotations": {
                    f"{API_GROUP}/kopf-managed": "yes",
                    f"{API_GROUP}/{DIFFBASE_KEY}": '{"spec":{}}',
                    f"{API_GROUP}/admit": "{}",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "note": "kept",
                },
                "finalizers": [FINALIZER],
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {"prompt": "p", "repo": {"url": "u"}, "cancel": False},
            "status": {"conditions": [{"type": "Running", "status": "True"}], "diff": "x" * 1000},
        },
    ],
)
def test_spec_diffbase_builds_what_kopfs_own_builds(body: dict[str, object]) -> None:
    ours = SpecDiffBaseStorage(prefix=API_GROUP, key=DIFFBASE_KEY, tracked_kinds=["BuildDispatch", "BuildEngine"])
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=DIFFBASE_KEY)
    essence = ours.build(body=kopf.Body(body))
    assert essence == theirs.build(body=kopf.Body(body))
    assert "status" not in essence and "spec" in essence
    extra = ours.build(body=kopf.Body(body), extra_fields=["status.conditions"])  # kopf's own way
    assert extra == theirs.build(body=kopf.Body(body), extra_fields=["status.conditions"])


def test_spec_diffbase_reuses_an_essence_only_while_spec_labels_and_annotations_stand() -> None:
    """A status write is most of a dispatch's events: its essence is the one built before. A new
    generation (spec), a label or an annotation builds again, and equals kopf's own build."""
    ours = SpecDiffBaseStorage(prefix=API_GROUP, key=DIFFBASE_KEY, tracked_kinds=["BuildDispatch"])
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP, key=DIFFBASE_KEY)
    meta = {"name": "d", "namespace": "n", "uid": "u1", "generation": 1, "labels": {"a": "1"}, "annotations": {}}
    body = {"apiVersion": "v1", "kind": "BuildDispatch", "metadata": meta, "spec": {"prompt": "p"}}
    first = ours.build(body=kopf.Body(body))
    status_only = {**body, "status": {"progress": {"steps": 2}}}
    assert ours.build(body=kopf.Body(status_only)) is first
    changes = [
        {**body, "metadata": {**meta, "generation": 2}, "spec": {"prompt": "q"}},
        {**body, "metadata": {**meta, "labels": {"a": "2"}}},
        {**body, "metadata": {**meta, "annotations": {"note": "x"}}},
        {**body, "metadata": {**meta, "uid": "u2"}, "spec": {"prompt": "other object"}},
    ]
    for changed in changes:
        again = ours.build(body=kopf.Body(changed))
        assert again is not first and again == theirs.build(body=kopf.Body(changed))
    no_generation = {**body, "metadata": {k: v for k, v in meta.items() if k != "generation"}}
    assert ours.build(body=kopf.Body(no_generation)) == theirs.build(body=kopf.Body(no_generation))


def test_spec_diffbase_skips_kinds_without_change_handlers() -> None:
    """A sandbox pod's essence is never used (no change handlers or daemons on pods): empty."""
    ours = SpecDiffBaseStorage(prefix=API_GROUP, key=DIFFBASE_KEY, tracked_kinds=["BuildDispatch"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    assert ours.build(body=kopf.Body(pod)) == {}


@pytest.mark.parametrize("seed", range(40))
def test_queue_board_tail_placement_matches_a_full_plan(seed: int) -> None:
    """A board that places new dispatches at the tail of its plan (never re-planning unless
    something it counted changed) decides exactly what a board re-planning every time does."""
    rng = random.Random(seed)
    limits = {"a": Limits(2, 1), "b": Limits(3, 2)}
    lazy, eager = QueueBoard(max_age=1e9), QueueBoard(max_age=0)
    index: dict[tuple[str, str], Entry] = {}  # what kopf's index shows: here, without lag
    clock = 0
    for _ in range(120):
        roll = rng.random()
        live = [e for e in index.values() if e.state != "other"]
        if roll < 0.55 or not live:  # a new dispatch (the newest) arrives
            clock += 1
            entry = Entry(
                key=("n", f"d{clock}"),
                engine=rng.choice("ab"),
                model=rng.choice("xy"),
                created=f"{clock:06d}",
                state="waiting",
            )
        elif roll < 0.8:  # one finishes or is cancelled
            done = rng.choice(live)
            entry = Entry(key=done.key, engine=done.engine, model=done.model, created=done.created, state="other")
        else:  # a queued one's daemon looks again
            waiting = [e for e in live if e.state == "waiting"]
            if not waiting:
                continue
            entry = rng.choice(waiting)
        answers = []
        for board in (lazy, eager):
            if entry.state == "other":
                board.put(entry)
                answers.append((None, None))
            else:
                answers.append(board.slot(entry, lambda: [e for e in index.values() if e.state != "other"], limits))
        assert answers[0] == answers[1]
        assert lazy.waiting == eager.waiting
        admit, _position = answers[0]
        if entry.state == "other":
            index.pop(entry.key, None)
        elif admit:
            running = replace(entry, state="running")
            for board in (lazy, eager):
                board.put(running)
            index[entry.key] = running
        else:
            index[entry.key] = entry
        for engine, lim in limits.items():
            assert sum(1 for e in index.values() if e.state == "running" and e.engine == engine) <= lim.max_running


def test_the_operator_runs_with_the_imports_frozen_and_rarer_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """``buildstudio operator`` tunes the collector before kopf starts (see ``tune_gc``)."""
    seen: dict[str, object] = {}

    def fake_run(**kwargs: object) -> None:
        seen.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count(), kwargs=kwargs)

    before = gc.get_threshold()
    monkeypatch.setattr(kopf, "run", fake_run)
    try:
        run_operator(namespaces=["team-a"])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["threshold"] == GC_THRESHOLDS
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000  # the imported modules, classes, schemas
    assert seen["kwargs"]["namespaces"] == ["team-a"] and not seen["kwargs"]["clusterwide"]  # type: ignore[index]


class _PacedLog:
    """Stands in for the adapter's log stream: progress records at the given offsets (s)."""

    def __init__(self, offsets: list[float]) -> None:
        self.offsets = offsets

    async def follow_log(self, namespace: str, pod: str, *, container: str | None = None) -> AsyncIterator[str]:
        start = asyncio.get_running_loop().time()
        for i, at in enumerate(self.offsets, 1):
            await asyncio.sleep(max(0.0, start + at - asyncio.get_running_loop().time()))
            yield records.dump(records.ProgressRecord(stage="running", steps=i, message=f"step {i}"))
        await asyncio.sleep(60)  # the pod still runs


NOT_STOPPED = cast(kopf.DaemonStopped, False)  # how the daemon reads kopf's flag: its truth


def _running_driver(interval: float, offsets: list[float]) -> DispatchDriver:
    ctx = cast(
        OperatorContext,
        SimpleNamespace(
            kube=_PacedLog(offsets), settings=Settings(status_patch_interval=interval), board=QueueBoard(),
            wakeups=Wakeups(),
        ),
    )
    body = kopf.Body({"metadata": {"name": "d", "namespace": "n"}, "status": to_running().status})
    driver = DispatchDriver(ctx, body, logging.getLogger("test"))
    driver.nudge = ctx.wakeups.register(driver.key)
    driver.follower = LogFollower(ctx, "n", "d-1", driver.logger, container="agent", alarm=driver.nudge)
    return driver


async def test_progress_records_wake_the_daemon_only_once_the_throttle_lets_them_out() -> None:
    """Just after a status write, a record would be held by the progress throttle: the daemon
    sleeps on until the throttle's interval is over, then looks at once (the record is pending)."""
    driver = _running_driver(interval=0.6, offsets=[0.1, 0.2])
    loop = asyncio.get_running_loop()
    driver.last_status_write = loop.time()  # a write just went out
    try:
        started = loop.time()
        await driver.pause(NOT_STOPPED, 10.0, cast(Any, None))
        woke = loop.time() - started
        assert 0.5 <= woke < 2.0  # not at the first record (0.1 s): at the interval's end
        assert driver.follower is not None and driver.follower.pending
        assert driver.follower.live.progress is not None and driver.follower.live.progress.steps == 2
    finally:
        assert driver.follower is not None
        await driver.follower.close()


async def test_a_progress_record_wakes_the_daemon_at_once_when_the_throttle_allows_a_write() -> None:
    driver = _running_driver(interval=0.6, offsets=[0.1])
    loop = asyncio.get_running_loop()
    driver.last_status_write = loop.time() - 5.0  # the last write was long ago
    try:
        started = loop.time()
        await driver.pause(NOT_STOPPED, 10.0, cast(Any, None))
        assert loop.time() - started < 0.5  # woken by the record at 0.1 s
    finally:
        assert driver.follower is not None
        await driver.follower.close()
