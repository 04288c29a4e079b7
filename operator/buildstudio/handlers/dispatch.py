"""BuildDispatch handlers: the create handler, and one daemon per dispatch that drives the state machine.

Each look reads (the object, kopf's indexes, the source dispatch, the model service, the pod and
its log), hands what it read to one ``core`` function, and writes what that returns: a status
merge patch and the actions (children, pod deletion, events, metrics). Every decision is in the
core: the stage's step in ``core.machine``, the admin's rules in ``core.refusal``, the preflight
in ``core.modelservice``, the queue in ``core.admission``, the daemon's pace in ``core.pacing``,
the pod in ``core.sandbox_request``. A restarted operator starts a new daemon per dispatch, which
resumes from the conditions in ``status``; child names are deterministic, so nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from buildstudio.adapters.metrics import (
    QUEUE_LENGTH,
    RunningDispatch,
    record_finished,
    record_preflight_failure,
    record_relay,
)
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core import pacing
from buildstudio.core.admission import limits_of, queue_entry
from buildstudio.core.body import ignored_spec_changes, parse_dispatch, placeholder_dispatch, source_to_read
from buildstudio.core.finalizer import daemon_wanted, finalizers_with_ours
from buildstudio.core.gate import EngineState, GateDecision, decide
from buildstudio.core.modelservice import check_model
from buildstudio.core.refusal import admin_refusal
from buildstudio.core.sandbox_request import owner_of
from buildstudio.core.status import LiveState
from buildstudio.core.ttl import seconds_until_expiry
from buildstudio.handlers.context import OperatorContext, model_target
from buildstudio.handlers.follow import LogFollower
from buildstudio.handlers.launch import LaunchRefused, prepare_launch
from buildstudio.handlers.phases import read_source, ship_decision
from buildstudio.handlers.ship import prepare_ship

Logger = logging.Logger | logging.LoggerAdapter[Any]
Engines = kopf.Index[str, EngineState]
Queue = kopf.Index[tuple[str, str], Any]
Pods = kopf.Index[tuple[str, str], m.PodView]


def now_utc() -> datetime:
    return datetime.now(tz=UTC)


# ---------------------------------------------------------------- kopf handlers


def needs_daemon(body: kopf.Body, **_: Any) -> bool:
    """The daemon's filter: queued and running dispatches, and finished ones waiting for their TTL.

    The daemon also requires kopf's diff-base annotation (a literal annotation filter, checked
    before this callback). kopf writes it with the outcome of the create handler's cycle, in the
    same merge patch as the finalizer (``finalizers_with_ours``), and never removes it. So a brand
    new dispatch costs no call here, and the event of the create handler's own status write, which
    lands before kopf's write, wants no daemon: otherwise kopf would answer it with a JSON patch
    of the finalizer, tested against a resourceVersion its own write is about to change."""
    return daemon_wanted(body.get("spec") or {}, body.get("status") or {})


async def admit(body: kopf.Body, memo: Any, logger: Logger, patch: kopf.Patch, **indexes: Any) -> None:
    """The create handler: a new dispatch's gate, preflight, queue and (with a free slot) pod, in
    one call. No finalizer is needed first, so a new dispatch reaches its pod without waiting for
    one; ours rides on kopf's own write after this handler when the dispatch now needs a daemon."""
    driver = DispatchDriver(memo["ctx"], body, logger)
    try:
        await driver.enter_once(indexes["engines"], indexes["dispatch_queue"])
    finally:
        finalizers = finalizers_with_ours(body.metadata.get("finalizers"), body.spec, driver.status)
        if finalizers is not None:
            patch.setdefault("metadata", {})["finalizers"] = finalizers


async def readmit(body: kopf.Body, memo: Any, logger: Logger, **indexes: Any) -> None:
    """On resume: a dispatch the previous operator left at its entry goes through it again."""
    await DispatchDriver(memo["ctx"], body, logger).enter_once(indexes["engines"], indexes["dispatch_queue"])


async def drive(body: kopf.Body, memo: Any, logger: Logger, stopped: kopf.DaemonStopped, **indexes: Any) -> None:
    """The daemon of a queued, running, or finished-with-a-TTL dispatch (kopf passes each index
    as a keyword named after its id)."""
    driver = DispatchDriver(memo["ctx"], body, logger, pods=indexes["sandbox_pods"])
    await driver.run(stopped, indexes["engines"], indexes["dispatch_queue"])


async def spec_changed(body: kopf.Body, diff: kopf.Diff, status: kopf.Status, memo: Any, **_: Any) -> None:
    """Cancel or another edit: the daemon looks now; immutable fields changed are reported."""
    ctx = memo.get("ctx")
    if ctx is not None:
        ctx.wakeups.notify((str(body.metadata.namespace), str(body.metadata.name)))
    fields = ignored_spec_changes(diff, m.stage_of(dict(status)))
    if fields:
        kopf.warn(
            body,
            reason="SpecChangeIgnored",
            message=f"spec.{', spec.'.join(fields)} changed after admission; the running attempt keeps "
            "the spec it was admitted with",
        )


async def pod_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A sandbox pod changed: its dispatch's daemon looks (the index already holds the new pod:
    kopf indexes before it calls event handlers)."""
    ctx = memo.get("ctx")
    for owner in body.metadata.get("ownerReferences") or ():
        if ctx is not None and owner.get("kind") == "BuildDispatch":
            ctx.wakeups.notify((str(body.metadata.namespace), str(owner.get("name"))))


async def dispatch_queue(
    namespace: str | None, name: str, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], Any]:
    """The queue index: only what admission counts (waiting and running), so the plan's cost
    stays with the live dispatches however many finished ones are kept. kopf's views are read
    as they are (copying them into dicts would resolve every key)."""
    ns = namespace or ""
    entry = queue_entry(ns, name, meta, status)
    return {(ns, name): entry} if entry.state != "other" else {}


async def sandbox_pods(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], m.PodView]:
    """The sandbox pod index (watch-fed): the daemons look at pods without a GET."""
    return {(namespace or "", name): m.PodView.from_pod(body)}


# ---------------------------------------------------------------- the daemon's loop


class DispatchDriver:
    """The loop of one dispatch's daemon (and the create handler's single look)."""

    def __init__(self, ctx: OperatorContext, body: kopf.Body, logger: Logger, pods: Pods | None = None) -> None:
        self.ctx = ctx
        self.pods = pods  # kopf's index of sandbox pods (watch-fed): no GET per look
        self.body = body
        self.logger = logger
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.follower: LogFollower | None = None
        self.last_status_write = 0.0
        self.held_for = 0.0  # the last status write was held back this long (pacing.held_seconds)
        self.pod_ended_at: float | None = None
        self.engines: dict[str, EngineState] = {}
        self.pod: m.PodView | None = None
        self.pod_read_at = 0.0
        self.nudge = asyncio.Event()  # registered with ctx.wakeups while the daemon runs
        self.running = RunningDispatch()  # its share of buildstudio_dispatches_running
        self.parsed_view: m.Dispatch | None = None  # the last look's: its spec while the generation stays

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.body.metadata.namespace), str(self.body.metadata.name))

    def _body(self) -> dict[str, Any]:
        body = dict(self.body)
        body["status"] = self.status  # ours is newer than the watch's copy
        return body

    async def run(self, stopped: kopf.DaemonStopped, engines: Engines, queue: Queue) -> None:
        self.nudge = self.ctx.wakeups.register(self.key)
        # One waiter for the daemon's life rings the alarm on stop, so a pause waits on one event.
        on_stop = asyncio.ensure_future(stopped.wait())
        on_stop.add_done_callback(lambda _: self.nudge.set())
        try:
            while not stopped:
                self.nudge.clear()  # before the look: a change during it wakes the next pause at once
                if self.follower is not None:  # this look shows what the follower has
                    self.follower.pending = self.follower.listening = False
                d = await self.parsed()
                if d is None:
                    return
                stage = m.stage_of(d.status)
                if stage == "finished":
                    if not await self.ttl(d, stopped):
                        return
                    continue
                step = await self.decide(d, stage, now_utc(), engines, queue)
                await self.apply(d, step)
                self.running.sync(str(self.status.get("engine") or ""), m.stage_of(self.status) == "running")
                await self.pause(stopped, step.wake_after, d)
        finally:
            on_stop.cancel()
            self.running.sync("", running=False)
            self.ctx.wakeups.unregister(self.key, self.nudge)
            if self.follower is not None:
                await self.follower.close()

    async def parsed(self) -> m.Dispatch | None:
        """The dispatch, or None after an invalid spec was written down as terminal."""
        now = now_utc()
        d, error = parse_dispatch(self._body(), now, known=self.parsed_view)
        if d is not None:
            self.parsed_view = d
            return d
        if m.stage_of(self.status) != "finished":
            placeholder = placeholder_dispatch(self._body(), now)
            await self.apply(placeholder, m.invalid_spec(placeholder, error, now, self.ctx.settings))
        return None

    async def enter_once(self, engines: Engines, queue: Queue) -> None:
        """The fast path of a new dispatch: gate, preflight, queue and (with a free slot) the pod,
        in one handler call; a retryable preflight failure retries through kopf."""
        d = await self.parsed()
        if d is None or m.stage_of(d.status) != "entry":
            return
        step = await self.decide(d, "entry", now_utc(), engines, queue)
        await self.apply(d, step)
        if m.stage_of(self.status) == "entry":
            raise kopf.TemporaryError(str(self.status.get("message", "preflight")), delay=step.wake_after or 5.0)

    async def decide(self, d: m.Dispatch, stage: m.Stage, now: datetime, engines: Engines, queue: Queue) -> m.Step:
        known = [state for _, store in engines.items() for state in store]
        self.engines = {e.name: e for e in known}
        if stage == "entry":
            return await self.enter(d, now, known, queue)
        if stage == "queued":
            return self.queue_step(d, now, known, queue)
        pod_name = m.current_pod(d)
        pod = await self.observe_pod(d, pod_name)
        log_ended = await self.observe_log(d, pod_name, pod)
        live = self.follower.live if self.follower is not None else LiveState()
        return m.running(d, pod, live, now, self.ctx.settings, log_ended=log_ended)

    async def enter(self, d: m.Dispatch, now: datetime, known: list[EngineState], queue: Queue) -> m.Step:
        """The entry: the gate (with the source dispatch, for a review or ship), then the ship gate
        for a ship, else the admin's rules, the preflight and the queue."""
        settings = self.ctx.settings
        source_name = source_to_read(d.spec)
        source = await read_source(self.ctx.kube, d.namespace, source_name) if source_name is not None else None
        gate = decide(known, d.spec, source_succeeded=source.succeeded if source is not None else None)
        if gate.admit and d.spec.phase == "ship" and source is not None:
            verdict = await ship_decision(self.ctx.kube, d.namespace, source, d.spec.approval)
            return m.ship_gate(d, verdict, now, settings)
        refusal = admin_refusal(d, gate, known, settings) if gate.admit else None
        check = await self.preflight(gate, known) if gate.admit and refusal is None else None
        first = m.enter(d, gate, check, now, settings, refusal=refusal)
        if m.stage_of(first.status) != "queued":
            return first
        # Straight on to the queue: with a free slot, Queued and Admitted go out in one patch.
        return m.entered(first, self.queue_step(replace(d, status=first.status), now, known, queue))

    def queue_step(self, d: m.Dispatch, now: datetime, known: list[EngineState], queue: Queue) -> m.Step:
        entry = queue_entry(d.namespace, d.name, self.body.metadata, d.status)
        admit, position = self.ctx.board.slot(
            entry, lambda: [e for _, store in queue.items() for e in store], limits_of(known)
        )
        QUEUE_LENGTH.set(self.ctx.board.waiting)
        step = m.queued(d, m.Slot(admit=admit, position=position), now, self.ctx.settings)
        if admit:
            # Taken at once: another daemon planning before our patch lands must see the slot used.
            self.ctx.board.put(queue_entry(d.namespace, d.name, self.body.metadata, step.status))
        return step

    async def preflight(self, gate: GateDecision, engines: list[EngineState]) -> m.ModelCheck | None:
        engine = next((e for e in engines if e.name == gate.engine), None)
        if engine is None or gate.model is None:
            return None
        target = await model_target(self.ctx, engine)
        if target is None:
            return None  # cloud engine: no model service of ours to check
        obs = await self.ctx.preflight.get(target, gate.model)
        return check_model(engine, gate.model, obs)

    async def observe_pod(self, d: m.Dispatch, pod_name: str) -> m.PodView | None:
        """The pod: from kopf's index when there is one, else read again only when it matters
        (``pacing.pod_look_stands``)."""
        loop = asyncio.get_running_loop()
        if self.pods is not None:
            store = self.pods.get((d.namespace, pod_name))
            views = list(store) if store is not None else []
            if views:
                self.pod = views[-1]
                return self.pod
            # Not in the index: not created yet, just created (the watch lags), or gone. Ask.
        else:
            follower = self.follower
            streaming = follower is not None and not follower.ended and follower.pod == pod_name
            since = loop.time() - self.pod_read_at
            if pacing.pod_look_stands(self.pod, streaming=streaming, since_read=since, cancel=d.spec.cancel):
                return self.pod
        obj = await self.ctx.kube.get("Pod", pod_name, d.namespace)
        self.pod = m.PodView.from_pod(obj) if obj is not None else None
        self.pod_read_at = loop.time()
        return self.pod

    async def observe_log(self, d: m.Dispatch, pod_name: str, pod: m.PodView | None) -> bool:
        """Follow progress once the pod runs; read the result once the result container has
        terminated. True when everything there is to read has been read."""
        loop = asyncio.get_running_loop()
        if self.follower is None or self.follower.pod != pod_name:
            if pod is None or pod.phase == "Pending":
                return pod is None and self.follower is None and m.pod_was_seen(self.status)
            container = m.work_container(d.spec.phase)
            self.follower = LogFollower(
                self.ctx, d.namespace, pod_name, self.logger, container=container, alarm=self.nudge
            )
            await asyncio.sleep(0)
        if self.follower.result_read:
            return True
        if pod is not None and pod.reporter_ended and await self.follower.read_result():
            return True
        if pod is None or pod.ended or pod.deleting:
            self.pod_ended_at = self.pod_ended_at or loop.time()
            if pacing.result_grace_over(self.pod_ended_at, loop.time(), self.ctx.settings.result_grace_seconds):
                if pod is not None and pod.reporter_ended:
                    await self.follower.read_result()
                return True
        return False

    def engine(self, name: str) -> EngineState:
        engine = self.engines.get(name)
        if engine is None:
            raise kopf.TemporaryError(f"engine {name!r} is not known yet", delay=2)
        return engine

    async def apply(self, d: m.Dispatch, step: m.Step) -> None:
        """Write one step. The patch ConfigMap exists before a status names it; events and metrics
        follow the status. A pod goes out with the status that records its attempt: the pod's
        name is deterministic (dispatch + attempt), so if the status write is lost, the retry
        decides the same attempt again and adopts the pod (409) instead of creating a second."""
        first = (m.StorePatch, m.DeletePod)
        for action in step.actions:
            if isinstance(action, first):
                await self.act(d, action)
        launch = next((a for a in step.actions if isinstance(a, m.Launch)), None)
        if launch is None:
            await self.write_status(d, step)
        else:
            # The pod first (it is the long pole: scheduling, image pull), then together its
            # ConfigMap, its egress policy and the status (Admitted, PodPending): the namespace's
            # baseline policy denies the pod all traffic until its own policy applies, and the
            # kubelet waits for the ConfigMap volume. Every create is idempotent (409 adopts), so
            # a failed step is retried as a whole and finds the same attempt.
            try:
                if d.spec.phase == "ship":
                    pod, children = await prepare_ship(self.ctx, d, launch, self.logger)
                else:
                    pod, children = await prepare_launch(self.ctx, d, launch, self.engine(launch.engine), self.logger)
            except LaunchRefused as refused:
                step = m.refused_at_launch(
                    replace(d, status=step.status), refused.reason, refused.message, now_utc(), self.ctx.settings
                )
                await self.write_status(d, step)
                for action in step.actions:
                    await self.act(d, action)
                return
            await self.ctx.kube.create(pod)
            step = m.launched(step, now_utc(), d.generation)  # it exists: say so in the same write
            writes = [self.ctx.kube.create(child) for child in children()]
            results = await asyncio.gather(*writes, self.write_status(d, step), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        for action in step.actions:
            if not isinstance(action, (*first, m.Launch)):
                await self.act(d, action)

    async def write_status(self, d: m.Dispatch, step: m.Step) -> None:
        patch = m.status_patch(self.status, step.status)
        if not patch:
            self.held_for = 0.0
            return
        loop = asyncio.get_running_loop()
        since = loop.time() - self.last_status_write
        settings = self.ctx.settings
        self.held_for = pacing.held_seconds(
            patch,
            since,
            progress_interval=settings.status_patch_interval,
            position_interval=settings.queue_position_interval,
        )
        if self.held_for > 0:
            return
        updated = await self.ctx.kube.merge_patch("BuildDispatch", d.name, d.namespace, patch, status=True)
        self.status = dict(updated.get("status") or step.status)
        self.last_status_write = loop.time()
        # The board knows at once (the index only after the watch event) that a slot is taken or free.
        self.ctx.board.put(queue_entry(d.namespace, d.name, self.body.metadata, self.status))

    async def act(self, d: m.Dispatch, action: m.Action) -> None:
        kube = self.ctx.kube
        if isinstance(action, m.Emit):
            kopf.event(self.body, type=action.type, reason=action.reason, message=action.message)
        elif isinstance(action, m.DeletePod):
            await kube.delete("Pod", action.name, d.namespace, grace_seconds=action.grace_seconds)
        elif isinstance(action, m.StorePatch):
            cm = mf.patch_config_map(
                owner_of(d),
                action.data,
                size=action.size,
                sha256=action.sha256,
                truncated=action.truncated,
                cap_bytes=self.ctx.settings.patch_cap_bytes,
            )
            await kube.create(cm)
        elif isinstance(action, m.Finished):
            record_finished(action.engine, action.model, action.reason, action.duration_seconds)
            record_relay(action.engine, action.model, self.status.get("summary"))
        elif isinstance(action, m.PreflightFailed):
            record_preflight_failure(action.reason, str(self.status.get("engine") or ""))

    async def pause(self, stopped: kopf.DaemonStopped, wake_after: float | None, d: m.Dispatch) -> None:
        """Sleep until the step's deadline (``pacing.pause_seconds``), or until something it depends
        on changes first: the dispatch's spec (cancel, edits) or its pod (watch events, via
        ``ctx.wakeups``), its log (the follower: records only once the throttle would let them
        out, ``pacing.records_quiet_seconds``), a freed slot while queued, or the daemon being
        stopped. Everything but the freed slot rings the one alarm, ``self.nudge``."""
        queued = m.stage_of(self.status) == "queued"
        delay = pacing.pause_seconds(wake_after, now_utc(), m.queue_deadline(d) if queued else None)
        since = asyncio.get_running_loop().time() - self.last_status_write
        interval = self.ctx.settings.status_patch_interval
        delay = pacing.carry_wake(delay, self.held_for)
        if delay == 0 or stopped:
            await asyncio.sleep(0)
            return
        if queued:
            freed = asyncio.ensure_future(self.ctx.board.freed().wait())
            rung = asyncio.ensure_future(self.nudge.wait())
            try:
                await asyncio.wait([freed, rung], timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                freed.cancel()
                rung.cancel()
            return
        follower = self.follower if self.follower is not None and not self.follower.ended else None
        if follower is not None:
            quiet = min(pacing.records_quiet_seconds(since, interval), delay)
            follower.listening = False
            if quiet > 0 and await self.alarm_within(quiet):
                return
            delay -= quiet
            if follower.pending or delay <= 0:
                return  # a record came in the quiet time: show it now
            follower.listening = True
        await self.alarm_within(delay)

    async def alarm_within(self, seconds: float) -> bool:
        """Wait for the alarm at most ``seconds``; whether it rang."""
        if not self.nudge.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.nudge.wait()
        return self.nudge.is_set()

    async def ttl(self, d: m.Dispatch, stopped: kopf.DaemonStopped) -> bool:
        """Delete the dispatch when its TTL expires; ``False`` when there is nothing left to do."""
        remaining = seconds_until_expiry(d.status, d.spec.ttl_seconds_after_finished, now_utc())
        self.ctx.board.forget(self.key)
        if self.follower is not None:
            await self.follower.close()
            self.follower = None
        if remaining is None:
            return False
        if remaining > 0:
            await stopped.wait(min(remaining, pacing.TTL_WAIT_SECONDS))
            return not stopped
        kopf.event(self.body, type="Normal", reason="Expired", message="ttlSecondsAfterFinished elapsed; deleting")
        await self.ctx.kube.delete("BuildDispatch", d.name, d.namespace)
        return False
