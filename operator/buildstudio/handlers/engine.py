"""BuildEngine handlers: seeding from the registry, presence for real, the model service on a timer.

The decisions are in the core (``core.seeding``, ``core.presence``, ``core.modelservice``); this
module reads the registry file, the cluster and the model service, and writes what they return.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from buildstudio.adapters import registry as engine_registry
from buildstudio.adapters.kube import KubeError
from buildstudio.core import manifests as mf
from buildstudio.core import presence as pr
from buildstudio.core.gate import EngineState
from buildstudio.core.modelservice import model_service_status
from buildstudio.core.seeding import seed
from buildstudio.handlers.context import OperatorContext, model_target

Logger = logging.Logger | logging.LoggerAdapter[Any]

PROBE_TIMEOUT = 150.0  # image pull + a version command; the probe pod's activeDeadlineSeconds is 120
PROBE_POLL_SECONDS = 1.0


def now_utc() -> datetime:
    return datetime.now(tz=UTC)


# ---------------------------------------------------------------- kopf handlers


async def engines_index(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, EngineState] | None:
    """The engines index: each BuildEngine as the gate sees it."""
    state = pr.engine_state(name, dict(spec), dict(status))
    return {name: state} if state is not None else {}  # {} drops a stale entry; None would keep it


async def engine_daemon(body: kopf.Body, memo: Any, logger: Logger, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await engine_loop(memo["ctx"], body, stopped, logger)


# ---------------------------------------------------------------- IO


async def seed_engines(ctx: OperatorContext, logger: Logger) -> None:
    """Create (or bring up to date) the registry's bakeInDefault engines; leave user-made ones alone."""
    try:
        entries = engine_registry.load(ctx.registry_path)
    except (OSError, engine_registry.RegistryError) as exc:
        logger.warning("engine registry not loaded, nothing seeded: %s", exc)
        return
    for entry in entries:
        if not entry.spec.bake_in_default:
            continue
        cfg = ctx.settings
        entry = engine_registry.with_overrides(
            entry,
            base_url=cfg.model_base_url,
            backend=cfg.model_backend,
            max_running=cfg.max_running,
            max_running_per_model=cfg.max_running_per_model,
        )
        wanted = engine_registry.as_object(entry)
        move = seed(await ctx.kube.get("BuildEngine", entry.name), wanted, engine_registry.MANAGED_LABEL)
        if move.move == "create":
            await ctx.kube.create(wanted)
            logger.info("seeded BuildEngine %s", entry.name)
        elif move.move == "user-made":
            logger.info("BuildEngine %s was made by a user; left alone", entry.name)
        elif move.move == "update":
            await ctx.kube.merge_patch("BuildEngine", entry.name, None, {"spec": move.spec_patch})
            logger.info("updated BuildEngine %s from the registry", entry.name)


async def run_probe_pod(
    ctx: OperatorContext, owner: mf.Owner, image: str, command: list[str], fingerprint: str
) -> tuple[bool, str, str]:
    """Run the version command in the engine image: (present, version, message)."""
    manifest = mf.probe_pod(owner, image, command, fingerprint, ctx.settings.sandbox)
    name = manifest["metadata"]["name"]
    await ctx.kube.create(manifest)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROBE_TIMEOUT
    try:
        while True:
            pod = await ctx.kube.get("Pod", name, ctx.namespace)
            phase = ((pod or {}).get("status") or {}).get("phase", "")
            if phase in ("Succeeded", "Failed"):
                break
            if pod is None:
                return False, "", f"probe pod {name} disappeared"
            if loop.time() > deadline:
                return False, "", f"probe pod {name} did not finish within {PROBE_TIMEOUT:.0f}s (phase {phase})"
            await asyncio.sleep(PROBE_POLL_SECONDS)
        try:
            log = await ctx.kube.read_log(ctx.namespace, name, limit_bytes=4096)
        except KubeError:
            log = ""
        return pr.probe_outcome(phase, log, image, command)
    finally:
        await ctx.kube.delete("Pod", name, ctx.namespace, grace_seconds=0)


async def check_presence(
    ctx: OperatorContext, body: kopf.Body, engine: EngineState, status: dict[str, Any]
) -> dict[str, Any]:
    generation = body.metadata.get("generation")
    now = now_utc()
    if engine.spec.endpoint == "cloud":
        cred = engine.spec.credential
        if cred is None:
            present, message = False, "no credential Secret referenced"
        else:
            present = await ctx.kube.exists_metadata_only("Secret", cred.secret_ref.name, ctx.namespace)
            message = pr.credential_message(f"{ctx.namespace}/{cred.secret_ref.name}", present)
        if pr.presence_unchanged(status, present, message):
            return status
        return pr.presence_status(
            status,
            present=present,
            method="credential-secret",
            message=message,
            image="",
            version=engine.spec.version,
            generation=generation,
            now=now,
        )
    image, command, fingerprint = pr.probe_plan(engine, generation, ctx.settings.sandbox.image)
    if not pr.needs_probe(status, generation, image, now):
        return status
    owner = mf.Owner(name=engine.name, uid=str(body.metadata.uid), namespace=ctx.namespace, kind="BuildEngine")
    present, version, message = await run_probe_pod(ctx, owner, image, command, fingerprint)
    return pr.presence_status(
        status,
        present=present,
        method="probe-pod",
        message=message,
        image=image,
        version=version,
        generation=generation,
        now=now_utc(),
    )


async def observe_model_service(ctx: OperatorContext, engine: EngineState, status: dict[str, Any]) -> dict[str, Any]:
    target = await model_target(ctx, engine)
    model = engine.strongest()
    if target is None or model is None:
        return status
    obs = await ctx.preflight.get(target, model.id)
    return model_service_status(status, engine, model.id, obs, now_utc())


async def engine_loop(ctx: OperatorContext, body: kopf.Body, stopped: kopf.DaemonStopped, logger: Logger) -> None:
    status: dict[str, Any] = dict(body.get("status") or {})
    while not stopped:
        name = str(body.metadata.name)
        engine = pr.engine_state(name, dict(body.get("spec") or {}), status)
        if engine is None:
            logger.warning("BuildEngine %s has an invalid spec; not probed", name)
        else:
            new = await check_presence(ctx, body, engine, status)
            engine = EngineState(name=name, spec=engine.spec, present=bool(new.get("present")))
            if engine.spec.endpoint == "local":
                new = await observe_model_service(ctx, engine, new)
            patch = pr.changed_fields(status, new)
            if patch:
                updated = await ctx.kube.merge_patch("BuildEngine", name, None, patch, status=True)
                status = dict(updated.get("status") or new)
        await stopped.wait(ctx.settings.preflight_interval)
