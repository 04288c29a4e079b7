"""BuildDispatch handlers: one daemon per dispatch drives the state machine.

The daemon reads the object (kopf keeps ``body`` live), gathers the observation the current
stage needs (gate + preflight, queue plan, pod + log), calls ``core.machine`` and writes
the result: a status merge patch and the actions (children, pod deletion, events,
metrics). A restarted operator starts a new daemon per dispatch, which resumes from the
conditions in ``status``; child names are deterministic, so nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from buildstudio.api.dispatch import IMMUTABLE_FIELDS, BuildDispatchSpec
from buildstudio.core import egress as eg
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core import names
from buildstudio.core.conditions import RUNNING, find, parse_time
from buildstudio.core.credentials import credential_refusal
from buildstudio.core.locks import REASON as LOCKS_REASON
from buildstudio.core.locks import check_sandbox_overrides
from buildstudio.core.settings import Settings
from buildstudio.core.status import LiveState, fold_line, verify_patch
from buildstudio.core.ttl import seconds_until_expiry
from buildstudio.gate import EngineState, GateDecision, decide, wants_repair
from buildstudio.handlers.context import (
    OperatorContext,
    limits_of,
    model_check,
    model_target,
    queue_entry,
    verdict_for,
)
from buildstudio.handlers.phases import read_source, review_input, ship_decision
from buildstudio.handlers.ship import ShipRefused, prepare_ship
from buildstudio.kube import KubeError
from buildstudio.metrics import QUEUE_LENGTH, record_finished, record_preflight_failure
from buildstudio.netresolve import resolve

Logger = logging.Logger | logging.LoggerAdapter[Any]

PROGRESS_KEYS = frozenset({"progress", "recentEvents", "message", "reason", "observedGeneration", "phase"})
LOG_RETRY_SECONDS = 1.0
POD_RECHECK_SECONDS = 10.0
QUEUE_RECHECK_SECONDS = 10.0  # queued dispatches wake when a slot frees, else this often
EGRESS_REFUSED = "EgressRefused"


def now_utc() -> datetime:
    return datetime.now(tz=UTC)


async def _nothing() -> list[str]:
    return []


def parse_dispatch(body: Mapping[str, Any]) -> tuple[m.Dispatch | None, str]:
    """The machine's view of the object, or ``(None, error)`` when the spec is invalid."""
    meta = body.get("metadata") or {}
    status = dict(body.get("status") or {})
    created = parse_time(meta.get("creationTimestamp")) or now_utc()
    try:
        spec = BuildDispatchSpec.model_validate(dict(body.get("spec") or {}))
        error = ""
    except ValidationError as exc:
        first = exc.errors()[0]
        error = f"spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        spec = BuildDispatchSpec(prompt="-")
    d = m.Dispatch(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        uid=str(meta.get("uid") or ""),
        generation=meta.get("generation"),
        created=created,
        spec=spec,
        status=status,
    )
    return (None, error) if error else (d, "")


def ignored_spec_changes(diff: Any, stage: m.Stage) -> list[str]:
    """Immutable spec fields changed after admission: reported, never applied."""
    if stage == "entry":
        return []
    fields: set[str] = set()
    for _op, path, _old, _new in diff or ():
        if len(path) >= 2 and path[0] == "spec" and path[1] in IMMUTABLE_FIELDS:
            fields.add(str(path[1]))
        elif len(path) == 1 and path[0] == "spec":
            fields.update(IMMUTABLE_FIELDS)
    return sorted(fields)


def work_container(phase: str) -> str:
    """Whose log shows progress: the agent's in a build (its side: informative only), the push
    container's in a ship, else the reporter's (text phases run there)."""
    if phase == "ship":
        return m.PUSH_CONTAINER
    return m.AGENT_CONTAINER if phase == "build" else m.REPORTER_CONTAINER


def admin_refusal(
    d: m.Dispatch, gate: GateDecision, engines: list[EngineState], settings: Settings
) -> tuple[str, str] | None:
    """What the admin's rules forbid in this dispatch (the decisions are in ``core``)."""
    engine = next((e for e in engines if e.name == gate.engine), None)
    service = engine.spec.model_service if engine is not None else None
    repo = d.spec.repo
    refusal = credential_refusal(
        namespace=d.namespace,
        repo_url=repo.url if repo is not None else "",
        repo_secret=repo.credentials_secret.name if repo is not None and repo.credentials_secret else None,
        model_base_url=service.base_url if service is not None else "",
        model_key=service is not None and service.api_key_secret is not None,
        allowed_secrets=settings.sandbox.credential_secrets,
        allow_plaintext=settings.sandbox.allow_plaintext_credentials,
    )
    if refusal is not None:
        return (refusal.reason, refusal.message)
    sandbox = d.spec.sandbox.to_api() if d.spec.sandbox else {}
    override = check_sandbox_overrides(sandbox, settings.locks, settings.sandbox)
    if override is not None:
        return (LOCKS_REASON, override)
    # What needs no name lookup is checked now; the resolved addresses are checked at launch.
    egress = eg.egress_refusal(clone_url(d.spec), service.base_url if service is not None else "", settings.egress)
    return (EGRESS_REFUSED, egress) if egress is not None else None


def clone_url(spec: BuildDispatchSpec) -> str:
    """The remote the sandbox clones (only a build clones): what the git egress rule is for."""
    return spec.repo.url if spec.repo is not None and spec.phase == "build" else ""


class LaunchRefused(Exception):
    """A launch that may not go ahead, found before any child object exists."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class LogFollower:
    """Follows one attempt's progress into a ``LiveState`` (re-attaching from the start on
    errors), and reads the result once from the reporter container's whole log."""

    def __init__(self, ctx: OperatorContext, namespace: str, pod: str, logger: Logger, *, container: str) -> None:
        self.ctx = ctx
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.logger = logger
        self.live = LiveState()
        self.ended = False
        self.result_read = False
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"follow {namespace}/{pod}/{container}")

    async def _run(self) -> None:
        keep = self.ctx.settings.recent_events
        while not self.ended:
            live = LiveState()
            try:
                async for line in self.ctx.kube.follow_log(self.namespace, self.pod, container=self.container):
                    # Result records are never taken from here: only the reporter's finished log counts.
                    live = fold_line(live, line, keep_events=keep, accept_results=False)
                    self.live = replace(live, result=self.live.result, results=self.live.results)
                    if live.lines % 20 == 1:
                        self.changed.set()
                self.ended = True
                self.changed.set()
                return
            except TimeoutError:
                continue  # a silent stretch: re-attach (the log is re-read from its start)
            except KubeError as exc:
                if exc.status == 404 and await self.ctx.kube.get("Pod", self.pod, self.namespace) is None:
                    self.ended = True  # the pod is gone and so is its log
                    self.changed.set()
                    return
            except Exception as exc:
                self.logger.debug("log stream of %s broke: %r; re-attaching", self.pod, exc)
            await asyncio.sleep(LOG_RETRY_SECONDS)

    async def read_result(self) -> bool:
        """Read the result container's whole log once (it has terminated); False when it could not be read."""
        channel = self.container if self.container in m.RESULT_CONTAINERS else m.REPORTER_CONTAINER
        try:
            text = await self.ctx.kube.read_log(self.namespace, self.pod, container=channel)
        except KubeError as exc:
            self.logger.debug("reading the result log of %s failed: %r", self.pod, exc)
            return False
        got = LiveState()
        for line in text.splitlines():
            got = fold_line(got, line, keep_events=self.ctx.settings.recent_events)
        conflict = ""
        if got.result is not None:
            # The operator recomputes what it can: the patch's sha256 and size from its data.
            conflict = await asyncio.to_thread(verify_patch, got.result.patch)
        base = self.live
        if self.container in m.RESULT_CONTAINERS:
            base = got if got.lines >= base.lines else base  # text phases: the whole log is the newest
        else:  # the reporter's own progress and events follow the agent's
            keep = self.ctx.settings.recent_events
            base = replace(
                base,
                lines=base.lines + got.lines,
                malformed=base.malformed + got.malformed,
                events=(*base.events, *got.events)[-keep:] if keep > 0 else (),
                events_seen=base.events_seen + got.events_seen,
                progress=got.progress or base.progress,
            )
        self.live = replace(base, result=got.result, results=got.results, conflict=conflict)
        self.result_read = True
        self.ended = True
        self.task.cancel()
        return True

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


class DispatchDriver:
    """The loop of one dispatch's daemon."""

    def __init__(
        self, ctx: OperatorContext, body: kopf.Body, logger: Logger, pods: kopf.Index[Any, Any] | None = None
    ) -> None:
        self.ctx = ctx
        self.pods = pods  # kopf's index of sandbox pods (watch-fed): no GET per look
        self.body = body
        self.logger = logger
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.follower: LogFollower | None = None
        self.last_progress_patch = 0.0
        self.pod_ended_at: float | None = None
        self.engines: dict[str, EngineState] = {}
        self.pod: m.PodView | None = None
        self.pod_read_at = 0.0
        self.nudge = asyncio.Event()  # registered with ctx.wakeups while the daemon runs

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.body.metadata.namespace), str(self.body.metadata.name))

    def view(self) -> tuple[m.Dispatch | None, str]:
        body = dict(self.body)
        body["status"] = self.status  # ours is newer than the watch's copy
        return parse_dispatch(body)

    async def run(
        self,
        stopped: kopf.DaemonStopped,
        engines: kopf.Index[str, EngineState],
        queue: kopf.Index[tuple[str, str], Any],
    ) -> None:
        self.nudge = self.ctx.wakeups.register(self.key)
        try:
            while not stopped:
                self.nudge.clear()  # before the look: a change during it wakes the next pause at once
                d = await self.parsed()
                if d is None:
                    return
                now = now_utc()
                stage = m.stage_of(d.status)
                if stage == "finished":
                    if not await self.ttl(d, stopped):
                        return
                    continue
                step = await self.decide(d, stage, now, engines, queue)
                await self.apply(d, step)
                await self.pause(stopped, step.wake_after)
        finally:
            self.ctx.wakeups.unregister(self.key, self.nudge)
            if self.follower is not None:
                await self.follower.close()

    async def parsed(self) -> m.Dispatch | None:
        """The dispatch, or None after an invalid spec was written down as terminal."""
        d, error = self.view()
        if d is not None:
            return d
        now = now_utc()
        fallback = m.Dispatch(
            name=self.key[1],
            namespace=self.key[0],
            uid=str(self.body.metadata.uid),
            generation=self.body.metadata.get("generation"),
            created=now,
            spec=BuildDispatchSpec(prompt="-"),
            status=self.status,
        )
        if m.stage_of(self.status) != "finished":
            await self.apply(fallback, m.invalid_spec(fallback, error, now, self.ctx.settings))
        return None

    async def enter_once(self, engines: kopf.Index[str, EngineState], queue: kopf.Index[tuple[str, str], Any]) -> None:
        """The fast path of a new dispatch: gate, preflight, queue and (with a free slot) the pod,
        in one handler call; a retryable preflight failure retries through kopf."""
        d = await self.parsed()
        if d is None or m.stage_of(d.status) != "entry":
            return
        step = await self.decide(d, "entry", now_utc(), engines, queue)
        await self.apply(d, step)
        if m.stage_of(self.status) == "entry":
            raise kopf.TemporaryError(str(self.status.get("message", "preflight")), delay=step.wake_after or 5.0)

    async def decide(
        self,
        d: m.Dispatch,
        stage: m.Stage,
        now: datetime,
        engines: kopf.Index[str, EngineState],
        queue: kopf.Index[tuple[str, str], Any],
    ) -> m.Step:
        settings = self.ctx.settings
        known = [state for _, store in engines.items() for state in store]
        self.engines = {e.name: e for e in known}
        if stage == "entry":
            source = None
            if d.spec.phase in ("review", "ship") and d.spec.source is not None:
                source = await read_source(self.ctx.kube, d.namespace, d.spec.source.dispatch)
            gate = decide(known, d.spec, source_succeeded=source.succeeded if source is not None else None)
            if gate.admit and d.spec.phase == "ship" and source is not None:
                verdict = await ship_decision(self.ctx.kube, d.namespace, source, d.spec.approval)
                final = verdict.reason in ("SourceNotSucceeded", "NoDiff", "PatchTruncated")
                return m.ship(d, verdict.allow, verdict.reason, verdict.message, now, settings, final=final)
            refusal = admin_refusal(d, gate, known, settings) if gate.admit else None
            check = await self.preflight(gate, known) if gate.admit and refusal is None else None
            first = m.enter(d, gate, check, now, settings, refusal=refusal)
            if m.stage_of(first.status) != "queued":
                return first
            # Straight on to the queue: with a free slot, Queued and Admitted go out in one patch.
            second = self.queue_step(replace(d, status=first.status), now, known, queue)
            if any(isinstance(a, m.Launch) for a in second.actions):
                # Queued and admitted in one go: one event for the one transition users see.
                first_actions = tuple(a for a in first.actions if not (isinstance(a, m.Emit) and a.reason == "Queued"))
            else:
                first_actions = first.actions
            return replace(second, actions=first_actions + second.actions)
        if stage == "queued":
            return self.queue_step(d, now, known, queue)
        pod_name = str(d.status.get("podName") or names.pod_name(d.name, max(d.attempt, 1)))
        pod = await self.observe_pod(d, pod_name)
        log_ended = await self.observe_log(d, pod_name, pod)
        live = self.follower.live if self.follower is not None else LiveState()
        return m.running(d, pod, live, now, settings, log_ended=log_ended)

    def queue_step(
        self,
        d: m.Dispatch,
        now: datetime,
        known: list[EngineState],
        queue: kopf.Index[tuple[str, str], Any],
    ) -> m.Step:
        entry = queue_entry(d.namespace, d.name, self.body.metadata, dict(d.status))
        admit, position = self.ctx.board.slot(
            entry, lambda: [e for _, store in queue.items() for e in store], limits_of(known)
        )
        QUEUE_LENGTH.set(self.ctx.board.waiting)
        slot = m.Slot(admit=admit, position=position)
        step = m.queued(d, slot, now, self.ctx.settings)
        if slot.admit:
            # Taken at once: another daemon planning before our patch lands must see the slot used.
            self.ctx.board.put(queue_entry(d.namespace, d.name, self.body.metadata, step.status))
        return step

    async def observe_pod(self, d: m.Dispatch, pod_name: str) -> m.PodView | None:
        """The pod, read again only when it matters: while its log streams, a running pod is
        re-read every ``POD_RECHECK_SECONDS`` (the stream's end is what says it stopped)."""
        loop = asyncio.get_running_loop()
        if self.pods is not None:
            store = self.pods.get((d.namespace, pod_name))
            views = list(store) if store is not None else []
            if views:
                self.pod = views[-1]
                return self.pod
            # Not in the index: not created yet, just created (the watch lags), or gone. Ask.
        else:
            streaming = self.follower is not None and not self.follower.ended and self.follower.pod == pod_name
            fresh = loop.time() - self.pod_read_at < POD_RECHECK_SECONDS
            if streaming and fresh and self.pod is not None and self.pod.phase == "Running" and not d.spec.cancel:
                return self.pod
        obj = await self.ctx.kube.get("Pod", pod_name, d.namespace)
        self.pod = m.PodView.from_pod(obj) if obj is not None else None
        self.pod_read_at = loop.time()
        return self.pod

    async def observe_log(self, d: m.Dispatch, pod_name: str, pod: m.PodView | None) -> bool:
        """Follow progress once the pod runs; read the result once the reporter has terminated.
        True when everything there is to read has been read."""
        loop = asyncio.get_running_loop()
        if self.follower is None or self.follower.pod != pod_name:
            if pod is None or pod.phase == "Pending":
                return pod is None and self.follower is None and self._pod_was_seen()
            self.follower = LogFollower(
                self.ctx, d.namespace, pod_name, self.logger, container=work_container(d.spec.phase)
            )
            await asyncio.sleep(0)
        if self.follower.result_read:
            return True
        if pod is not None and pod.reporter_ended and await self.follower.read_result():
            return True
        if pod is None or pod.ended or pod.deleting:
            self.pod_ended_at = self.pod_ended_at or loop.time()
            if loop.time() - self.pod_ended_at >= self.ctx.settings.result_grace_seconds:
                if pod is not None and pod.reporter_ended:
                    await self.follower.read_result()
                return True
        return False

    def _pod_was_seen(self) -> bool:
        cond = find(self.status.get("conditions"), RUNNING)
        return cond is not None and cond.get("reason") != "Launching"

    async def preflight(self, gate: GateDecision, engines: list[EngineState]) -> m.ModelCheck | None:
        engine = next((e for e in engines if e.name == gate.engine), None)
        if engine is None or gate.model is None:
            return None
        target = await model_target(self.ctx, engine)
        if target is None:
            return None  # cloud engine: no model service of ours to check
        obs = await self.ctx.preflight.get(target, gate.model)
        return model_check(verdict_for(engine, gate.model, obs), obs)

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
                    pod, children = await prepare_ship(self.ctx, d, launch, self.egress)
                else:
                    pod, children = await self.prepare_launch(d, launch)
            except (LaunchRefused, ShipRefused) as refused:
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
            return
        loop = asyncio.get_running_loop()
        only_progress = set(patch) <= PROGRESS_KEYS and "conditions" not in patch
        if only_progress and loop.time() - self.last_progress_patch < self.ctx.settings.status_patch_interval:
            return  # throttled: the next non-progress change or interval carries it
        updated = await self.ctx.kube.merge_patch("BuildDispatch", d.name, d.namespace, patch, status=True)
        self.status = dict(updated.get("status") or step.status)
        self.last_progress_patch = loop.time()
        # The board knows at once (the index only after the watch event) that a slot is taken or free.
        self.ctx.board.put(queue_entry(d.namespace, d.name, self.body.metadata, self.status))

    async def act(self, d: m.Dispatch, action: m.Action) -> None:
        kube = self.ctx.kube
        if isinstance(action, m.Emit):
            kopf.event(self.body, type=action.type, reason=action.reason, message=action.message)
        elif isinstance(action, m.DeletePod):
            await kube.delete("Pod", action.name, d.namespace, grace_seconds=action.grace_seconds)
        elif isinstance(action, m.StorePatch):
            owner = mf.Owner(name=d.name, uid=d.uid, namespace=d.namespace)
            cm = mf.patch_config_map(
                owner,
                action.data,
                size=action.size,
                sha256=action.sha256,
                truncated=action.truncated,
                cap_bytes=self.ctx.settings.patch_cap_bytes,
            )
            await kube.create(cm)
        elif isinstance(action, m.Finished):
            record_finished(action.engine, action.model, action.reason, action.duration_seconds)
        elif isinstance(action, m.PreflightFailed):
            record_preflight_failure(action.reason)

    async def prepare_launch(
        self, d: m.Dispatch, action: m.Launch
    ) -> tuple[dict[str, Any], Callable[[], list[dict[str, Any]]]]:
        """The attempt's pod, and how to build its ConfigMap and egress NetworkPolicy (after the
        pod is on its way), once the namespace's baseline policy is known to exist."""
        engine = self.engine(action.engine)
        if engine is None:
            raise kopf.TemporaryError(f"engine {action.engine!r} is not known yet", delay=2)
        spec = engine.spec
        base_url = spec.model_service.base_url if spec.model_service else ""
        owner = mf.Owner(name=d.name, uid=d.uid, namespace=d.namespace)
        review = None
        if d.spec.phase == "review" and d.spec.source is not None:
            source = await read_source(self.ctx.kube, d.namespace, d.spec.source.dispatch)
            if source is None:
                raise kopf.TemporaryError(f"source dispatch {d.spec.source.dispatch} is gone", delay=5)
            review = review_input(source)
        key_ref = spec.model_service.api_key_secret if spec.model_service else None
        model_key = mf.SecretKey(key_ref.name, key_ref.key) if key_ref is not None else None
        defaults = self.ctx.settings.sandbox
        credential = None
        if spec.credential is not None:
            credential = mf.SecretKey(spec.credential.secret_ref.name, spec.credential.secret_ref.key)
        repo_creds = None
        if d.spec.repo is not None and d.spec.repo.credentials_secret is not None:
            ref = d.spec.repo.credentials_secret
            repo_creds = mf.SecretKey(ref.name, ref.key)
        request = mf.SandboxRequest(
            owner=owner,
            attempt=action.attempt,
            engine=mf.EngineRuntime(
                name=engine.name,
                engine=spec.engine,
                endpoint=spec.endpoint,
                image=spec.image or None,
                credential=credential,
                credential_env=spec.credential.env if spec.credential else None,
            ),
            repo_url=d.spec.repo.url if d.spec.repo else "",
            model_base_url=base_url,
            sandbox=d.spec.sandbox.to_api() if d.spec.sandbox else {},
            repo_credentials=repo_creds,
            model_api_key=model_key,
        )

        repair = wants_repair(engine, action.model)
        policy = await self.egress(owner, clone_url(d.spec), base_url)

        def children() -> list[dict[str, Any]]:
            runner, config = mf.sandbox_files(
                d.spec,
                model=action.model,
                base_url=base_url,
                context=action.context,
                relay=repair,
                review=review,
            )
            return [
                mf.config_map(owner, runner, config),
                policy,
            ]

        # The baseline exists before the pod, so the sandbox never runs unrestricted.
        await self.ctx.baselines.ensure(d.namespace)
        phase = "build" if d.spec.phase == "build" else "text"
        return mf.sandbox_pod(request, defaults, phase=phase, relay_repair=repair and phase == "build"), children

    async def egress(self, owner: mf.Owner, repo_url: str, base_url: str) -> dict[str, Any]:
        """The attempt's egress policy: the names it needs resolved now (bounded), the rules
        built from those addresses; ``LaunchRefused`` when no safe policy exists."""
        settings = self.ctx.settings
        git, model = eg.lookups(repo_url, base_url, settings.egress)
        timeout = settings.egress.resolve_timeout_seconds
        git_addresses, model_addresses = await asyncio.gather(
            resolve(git.host, git.port, timeout) if git is not None else _nothing(),
            resolve(model.host, model.port, timeout) if model is not None else _nothing(),
        )
        plan = eg.plan_egress(
            repo_url, base_url, settings.egress, git_addresses=git_addresses, model_addresses=model_addresses
        )
        if plan.refusal is not None:
            raise LaunchRefused(EGRESS_REFUSED, plan.refusal)
        if plan.dropped:
            self.logger.info("egress of %s leaves out: %s", owner.name, "; ".join(plan.dropped))
        return eg.egress_policy(
            owner,
            base_url,
            repo_url,
            settings.sandbox,
            settings.egress,
            git_addresses=git_addresses,
            model_addresses=model_addresses,
        )

    def engine(self, name: str) -> EngineState | None:
        return self.engines.get(name)

    async def pause(self, stopped: kopf.DaemonStopped, wake_after: float | None) -> None:
        """Sleep until the step's deadline, or until something it depends on changes first: the
        dispatch's spec (cancel, edits) or its pod (watch events, via ``ctx.wakeups``), its log,
        a freed slot while queued, or the daemon being stopped."""
        delay = 1.0 if wake_after is None else max(wake_after, 0.0)
        if delay == 0:
            await asyncio.sleep(0)
            return
        wakers: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.nudge.wait())]
        if m.stage_of(self.status) == "queued":
            created = parse_time(self.body.metadata.get("creationTimestamp")) or now_utc()
            d, _ = self.view()
            queue_seconds = d.spec.timeouts.queue_seconds if d is not None else 3600
            left = (created - now_utc()).total_seconds() + queue_seconds
            delay = min(QUEUE_RECHECK_SECONDS, max(left, 0.05))
            wakers.append(asyncio.ensure_future(self.ctx.board.freed().wait()))
        follower = self.follower
        if follower is not None and not follower.ended:
            follower.changed.clear()
            wakers.append(asyncio.ensure_future(follower.changed.wait()))
        wakers.append(asyncio.ensure_future(stopped.wait()))
        try:
            await asyncio.wait(wakers, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waker in wakers:
                waker.cancel()

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
            await stopped.wait(min(remaining, 300.0))
            return not stopped
        kopf.event(self.body, type="Normal", reason="Expired", message="ttlSecondsAfterFinished elapsed; deleting")
        await self.ctx.kube.delete("BuildDispatch", d.name, d.namespace)
        return False
