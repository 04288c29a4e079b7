"""The launch of an allowed ship: its pod, ConfigMap and egress policy (``core/shippod.py``).

The gate is asked again at launch (a review may have been superseded since the entry), the
source's spec read for its repository and prompt; the decisions are pure (``decide_ship``,
``plan_push``), this module only gathers their inputs.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

from pydantic import ValidationError

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import machine as m
from buildstudio.core.sandbox_request import owner_of
from buildstudio.core.shippod import PushRefusal, ShipPodRequest, plan_push, ship_config_map, ship_pod
from buildstudio.handlers.context import OperatorContext
from buildstudio.handlers.launch import Children, LaunchRefused, Manifest, egress_policy
from buildstudio.handlers.phases import read_source, ship_decision

Logger = logging.Logger | logging.LoggerAdapter[Any]


class ShipRefused(LaunchRefused):
    """A ship whose push may not go ahead after all."""


async def prepare_ship(
    ctx: OperatorContext, d: m.Dispatch, action: m.Launch, logger: Logger
) -> tuple[Manifest, Children]:
    """The ship pod and how to build its ConfigMap and egress policy; ``ShipRefused`` when the
    push may not go ahead (the gate closed again, no base commit, a Secret not allowed, …)."""
    if d.spec.source is None:
        raise ShipRefused("InvalidSpec", "ship needs spec.source")
    name = d.spec.source.dispatch
    source = await read_source(ctx.kube, d.namespace, name)
    if source is None:
        raise ShipRefused("SourceNotReady", f"source dispatch {name} is gone")
    verdict = await ship_decision(ctx.kube, d.namespace, source, d.spec.approval)
    if not verdict.allow or verdict.plan is None:
        raise ShipRefused(str(verdict.reason), verdict.message)
    obj = await ctx.kube.get("BuildDispatch", name, d.namespace)
    try:
        source_spec = BuildDispatchSpec.model_validate((obj or {}).get("spec") or {})
    except ValidationError as e:
        raise ShipRefused(
            "SourceNotReady", f"source dispatch {name} has an invalid spec: {e.errors()[0]['msg']}"
        ) from None
    settings = ctx.settings
    review_text = ""
    if d.spec.pull_request is not None:  # the review's own words go into the request's body
        review_obj = await ctx.kube.get("BuildDispatch", verdict.plan.review, d.namespace)
        review_text = str(((review_obj or {}).get("status") or {}).get("finalText") or "")
    planned = plan_push(
        ship=d.name,
        ship_spec=d.spec,
        source=name,
        source_spec=source_spec,
        base_commit=source.status.base_commit,
        engine=source.status.engine,
        model=source.status.model,
        plan=verdict.plan,
        verdict="Approve",  # the gate allows only an approving review of this exact diff
        commit_date=d.created.astimezone(UTC).isoformat(timespec="seconds"),
        namespace=d.namespace,
        review_text=review_text,
        allowed_secrets=settings.sandbox.credential_secrets,
        allow_plaintext=settings.sandbox.allow_plaintext_credentials,
    )
    if isinstance(planned, PushRefusal):
        raise ShipRefused(planned.reason, planned.message)
    owner = owner_of(d)
    # The forge's API (a pull request) is the pod's one destination besides the git remote; the
    # egress planner's second slot (the model service's, unused here) names it.
    pr = planned.spec.pull_request
    policy = await egress_policy(ctx, owner, planned.spec.repo_url, pr.api_url if pr is not None else "", logger)
    await ctx.baselines.ensure(d.namespace)  # before the pod: it never runs unrestricted
    pod = ship_pod(
        ShipPodRequest(owner, action.attempt, verdict.plan.patch_config_map, planned.credential), settings.sandbox
    )
    spec = planned.spec

    def children() -> list[Manifest]:
        return [ship_config_map(owner, spec), policy]

    return pod, children
