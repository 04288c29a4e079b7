"""BuildEngine handlers: seeding from the registry, presence for real, the model service on a timer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from buildstudio import registry as engine_registry
from buildstudio.core import conditions as c
from buildstudio.core import manifests as mf
from buildstudio.gate import EngineState
from buildstudio.handlers.context import OperatorContext, engine_state, model_target, verdict_for
from buildstudio.kube import KubeError

Logger = logging.Logger | logging.LoggerAdapter[Any]

PROBE_TIMEOUT = 150.0  # image pull + a version command; the probe pod's activeDeadlineSeconds is 120
FAILED_PROBE_RETRY = 300.0
VERSION_RE = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.-]+)?")


def now_utc() -> datetime:
    return datetime.now(tz=UTC)


# ---------------------------------------------------------------- pure decisions


def probe_plan(engine: EngineState, generation: int | None, default_image: str) -> tuple[str, list[str], str]:
    """(image, version command, fingerprint) of the presence probe for this spec generation."""
    image = engine.spec.image or default_image
    command = list(engine.spec.version_command) or [engine.spec.command[0], "--version"]
    raw = json.dumps([image, command, generation], sort_keys=True).encode()
    return image, command, hashlib.sha256(raw).hexdigest()[:16]


def needs_probe(status: Mapping[str, Any], generation: int | None, image: str, now: datetime) -> bool:
    presence = status.get("presence") or {}
    if presence.get("method") != "probe-pod" or presence.get("image") != image:
        return True
    if presence.get("observedGeneration") != generation:
        return True
    if not status.get("present"):
        checked = c.parse_time(presence.get("checkedAt"))
        return checked is None or (now - checked).total_seconds() >= FAILED_PROBE_RETRY
    return False


def parse_version(log: str) -> str:
    match = VERSION_RE.search(log)
    return match.group(0) if match else c.one_line(log, 128)


def presence_status(
    status: Mapping[str, Any],
    *,
    present: bool,
    method: str,
    message: str,
    image: str,
    version: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    out = dict(status)
    out["present"] = present
    out["version"] = version
    out["presence"] = {
        "method": method,
        "checkedAt": c.timestamp(now),
        "message": c.one_line(message),
        "image": image,
        "observedGeneration": generation,
    }
    out["conditions"] = c.set_condition(
        status.get("conditions"),
        c.PRESENT,
        "True" if present else "False",
        "Present" if present else "NotPresent",
        message,
        now=now,
        generation=generation,
    )
    out["observedGeneration"] = generation
    return out


def merge_patch_between(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys → null)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch_between(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    patch.update({key: None for key in old if key not in new})
    return patch


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
        existing = await ctx.kube.get("BuildEngine", entry.name)
        if existing is None:
            await ctx.kube.create(wanted)
            logger.info("seeded BuildEngine %s", entry.name)
            continue
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(engine_registry.MANAGED_LABEL) != "true":
            logger.info("BuildEngine %s was made by a user; left alone", entry.name)
            continue
        old_spec = existing.get("spec") or {}
        if old_spec != wanted["spec"]:
            patch = merge_patch_between(old_spec, wanted["spec"])
            await ctx.kube.merge_patch("BuildEngine", entry.name, None, {"spec": patch})
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
            await asyncio.sleep(1.0)
        try:
            log = await ctx.kube.read_log(ctx.namespace, name, limit_bytes=4096)
        except KubeError:
            log = ""
        if phase != "Succeeded":
            return False, "", f"`{' '.join(command)}` failed in {image}: {c.one_line(log, 300) or phase}"
        version = parse_version(log)
        return True, version, f"`{' '.join(command)}` in {image} printed {version}"
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
            where = f"{ctx.namespace}/{cred.secret_ref.name}"
            message = f"credential Secret {where} " + ("exists" if present else "not found")
        if present == bool(status.get("present")) and (status.get("presence") or {}).get("message") == message:
            return status
        return presence_status(
            status,
            present=present,
            method="credential-secret",
            message=message,
            image="",
            version=engine.spec.version,
            generation=generation,
            now=now,
        )
    image, command, fingerprint = probe_plan(engine, generation, ctx.settings.sandbox.image)
    if not needs_probe(status, generation, image, now):
        return status
    owner = mf.Owner(name=engine.name, uid=str(body.metadata.uid), namespace=ctx.namespace, kind="BuildEngine")
    present, version, message = await run_probe_pod(ctx, owner, image, command, fingerprint)
    return presence_status(
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
    verdict = verdict_for(engine, model.id, obs)
    now = now_utc()
    out = dict(status)
    out["modelService"] = {
        "reachable": obs.reachable,
        "backend": obs.backend.value if obs.backend is not None else "",
        "models": obs.models[:32],
        "context": obs.context.allocated,
        "contextSource": obs.context.allocated_source.value if obs.context.allocated_source else "",
        "reason": verdict.reason.value,
        "message": c.one_line(verdict.message),
        "latencyMs": obs.latency_ms,
        "observedAt": c.timestamp(now),
    }
    out["conditions"] = c.set_condition(
        status.get("conditions"),
        c.MODEL_SERVICE_READY,
        "True" if verdict.admit else "False",
        verdict.reason.value,
        verdict.message,
        now=now,
        generation=None,
    )
    return out


async def engine_loop(ctx: OperatorContext, body: kopf.Body, stopped: kopf.DaemonStopped, logger: Logger) -> None:
    status: dict[str, Any] = dict(body.get("status") or {})
    while not stopped:
        name = str(body.metadata.name)
        engine = engine_state(name, dict(body.get("spec") or {}), status)
        if engine is None:
            logger.warning("BuildEngine %s has an invalid spec; not probed", name)
        else:
            new = await check_presence(ctx, body, engine, status)
            engine = EngineState(name=name, spec=engine.spec, present=bool(new.get("present")))
            if engine.spec.endpoint == "local":
                new = await observe_model_service(ctx, engine, new)
            patch = {k: v for k, v in new.items() if status.get(k) != v}
            if patch:
                updated = await ctx.kube.merge_patch("BuildEngine", name, None, patch, status=True)
                status = dict(updated.get("status") or new)
        await stopped.wait(ctx.settings.preflight_interval)
