"""The launch of an admitted attempt: its pod, ConfigMap and egress policy (``core/sandbox_request.py``).

This module gathers what the pure builders need that only IO can tell: the review's source, the
addresses of the git remote and the model service (bounded lookups), the namespace's baseline
policy. Ship pods launch through ``handlers/ship.py`` with the same egress policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from buildstudio.adapters.netresolve import resolve
from buildstudio.core import egress as eg
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core.body import source_to_read
from buildstudio.core.gate import EngineState
from buildstudio.core.refusal import EGRESS_REFUSED, clone_url
from buildstudio.core.sandbox_request import build_sandbox_request, sandbox_children_for, sandbox_pod_for
from buildstudio.core.source_dispatch import review_input
from buildstudio.handlers.context import OperatorContext
from buildstudio.handlers.phases import read_source

Logger = logging.Logger | logging.LoggerAdapter[Any]
Manifest = dict[str, Any]
Children = Callable[[], list[Manifest]]


class LaunchRefused(Exception):
    """A launch that may not go ahead, found before any child object exists."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def _nothing() -> list[str]:
    return []


async def egress_policy(
    ctx: OperatorContext, owner: mf.Owner, repo_url: str, base_url: str, logger: Logger
) -> Manifest:
    """The attempt's egress policy: the names it needs resolved now (bounded), the rules built
    from those addresses; ``LaunchRefused`` when no safe policy exists."""
    settings = ctx.settings
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
        logger.info("egress of %s leaves out: %s", owner.name, "; ".join(plan.dropped))
    return eg.egress_policy(
        owner,
        base_url,
        repo_url,
        settings.sandbox,
        settings.egress,
        git_addresses=git_addresses,
        model_addresses=model_addresses,
    )


async def prepare_launch(
    ctx: OperatorContext, d: m.Dispatch, launch: m.Launch, engine: EngineState, logger: Logger
) -> tuple[Manifest, Children]:
    """The attempt's pod, and how to build its ConfigMap and egress NetworkPolicy (after the
    pod is on its way), once the namespace's baseline policy is known to exist."""
    review = None
    source = source_to_read(d.spec) if d.spec.phase == "review" else None
    if source is not None:
        found = await read_source(ctx.kube, d.namespace, source)
        if found is None:
            raise kopf.TemporaryError(f"source dispatch {source} is gone", delay=5)
        review = review_input(found)
    request = build_sandbox_request(d, engine, launch.attempt)
    policy = await egress_policy(ctx, request.owner, clone_url(d.spec), request.model_base_url, logger)

    def children() -> list[Manifest]:
        return sandbox_children_for(d, request, engine, launch, policy, review)

    # The baseline exists before the pod, so the sandbox never runs unrestricted.
    await ctx.baselines.ensure(d.namespace)
    return sandbox_pod_for(d, request, engine, launch, ctx.settings.sandbox), children
