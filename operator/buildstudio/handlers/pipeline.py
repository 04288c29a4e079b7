"""BuildPipeline handlers: one daemon per unfinished pipeline reads its children, calls
``core.pipeline.decide`` and writes the result (children, cancels, status, Events).

Why a daemon: one writer per pipeline (no two handlers racing to create a step or to write
status), restart-safe (it resumes from status and the children, whose names are deterministic),
and bounded: it sleeps until a child or the pipeline itself changes (watch events, through
``ctx.wakeups``) or the step's deadline, at most ``core.pipeline.POLL_SECONDS`` while a child runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from buildstudio.api.common import API_GROUP, API_VERSION
from buildstudio.api.pipeline import BuildPipelineSpec
from buildstudio.core import conditions as c
from buildstudio.core import pipeline as pl
from buildstudio.handlers.context import OperatorContext

Logger = logging.Logger | logging.LoggerAdapter[Any]
PIPELINES = (API_GROUP, API_VERSION, "buildpipelines")
DISPATCHES = (API_GROUP, API_VERSION, "builddispatches")


def wake_key(namespace: str, name: str) -> tuple[str, str]:
    """The pipeline's key in ``ctx.wakeups``: ':' is never in an object name, so it cannot be a dispatch's."""
    return (namespace, f"pipeline:{name}")


def parse_pipeline(body: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[pl.Pipeline | None, str]:
    """The core's view of the object, or ``(None, error)`` when the spec is invalid."""
    meta = body.get("metadata") or {}
    try:
        spec = BuildPipelineSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        return None, f"spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    pipeline = pl.Pipeline(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        uid=str(meta.get("uid") or ""),
        generation=meta.get("generation"),
        spec=spec,
        status=dict(status),
    )
    return pipeline, ""


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch from ``old`` to ``new`` status (top-level keys; removed → null)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


class PipelineDriver:
    """The loop of one pipeline's daemon."""

    def __init__(self, ctx: OperatorContext, body: kopf.Body, logger: Logger) -> None:
        self.ctx = ctx
        self.body = body  # kopf keeps it live: spec edits (approval, cancel) show up here
        self.logger = logger
        self.status: dict[str, Any] = dict(body.get("status") or {})  # ours is newer than the watch's
        self.namespace = str(body.metadata.namespace)
        self.name = str(body.metadata.name)

    async def run(self, stopped: kopf.DaemonStopped) -> None:
        key = wake_key(self.namespace, self.name)
        nudge = self.ctx.wakeups.register(key)
        try:
            while not stopped:
                nudge.clear()  # before the look: a change during it wakes the next pause at once
                step = await self.look()
                await self.apply(step)
                if step.wake_after is None:
                    return
                await asyncio.wait(
                    [asyncio.ensure_future(nudge.wait()), asyncio.ensure_future(stopped.wait())],
                    timeout=step.wake_after,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            self.ctx.wakeups.unregister(key, nudge)

    async def look(self) -> pl.Step:
        p, error = parse_pipeline(self.body, self.status)
        now = datetime.now(tz=UTC)
        if p is None:
            return pl.invalid_spec(self.status, self.body.metadata.get("generation"), error, now)
        wanted = pl.child_names(p.name, p.spec)
        found = await asyncio.gather(*(self.ctx.kube.get("BuildDispatch", n, self.namespace) for n in wanted))
        children = {name: pl.Child.from_object(obj) for name, obj in zip(wanted, found, strict=True) if obj}
        return pl.decide(p, children, now)

    async def apply(self, step: pl.Step) -> None:
        """Children first (a create repeated after a lost status write adopts: 409), then the status,
        then the Events that tell of it."""
        kube = self.ctx.kube
        for action in step.actions:
            if isinstance(action, pl.CreateChild):
                await kube.create(action.manifest)
            elif isinstance(action, pl.CancelChild):
                await kube.merge_patch("BuildDispatch", action.name, self.namespace, {"spec": {"cancel": True}})
        patch = status_patch(self.status, step.status)
        if patch:
            updated = await kube.merge_patch("BuildPipeline", self.name, self.namespace, patch, status=True)
            self.status = dict(updated.get("status") or step.status)
        for action in step.actions:
            if isinstance(action, pl.Emit):
                kopf.event(self.body, type=action.type, reason=action.reason, message=action.message)


def unfinished(status: kopf.Status, **_: Any) -> bool:
    return not c.is_finished(dict(status))


def register_pipeline(registry: kopf.OperatorRegistry) -> None:
    """The BuildPipeline handlers, into ``registry`` (``handlers.build_registry`` calls this)."""

    @kopf.daemon(
        *PIPELINES,
        registry=registry,
        id="pipeline",
        when=unfinished,
        backoff=2.0,
        cancellation_backoff=1.0,
        cancellation_timeout=5.0,
    )
    async def pipeline(body: kopf.Body, memo: Any, logger: Logger, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await PipelineDriver(memo["ctx"], body, logger).run(stopped)

    @kopf.on.event(*PIPELINES, registry=registry, id="pipeline_changed")
    async def pipeline_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
        # A spec edit (an approval, a cancel) bumps the generation past the one the daemon last
        # wrote: it looks now, not at its next deadline. Its own status writes wake nothing.
        ctx = memo.get("ctx")
        if ctx is not None and body.metadata.get("generation") != body.status.get("observedGeneration"):
            ctx.wakeups.notify(wake_key(str(body.metadata.namespace), str(body.metadata.name)))

    @kopf.on.event(
        *DISPATCHES, registry=registry, id="pipeline_child_changed", labels={pl.LABEL_PIPELINE: kopf.PRESENT}
    )
    async def child_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
        ctx = memo.get("ctx")
        for owner in body.metadata.get("ownerReferences") or ():
            if ctx is not None and owner.get("kind") == "BuildPipeline":
                ctx.wakeups.notify(wake_key(str(body.metadata.namespace), str(owner.get("name"))))
