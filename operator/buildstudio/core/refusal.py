"""What the admin's rules refuse in a dispatch, decided at its entry before anything is created:
credentials (``credentials``), sandbox overrides (``locks``) and the egress it would need that
needs no name lookup (``egress``; resolved addresses are checked again at launch)."""

from __future__ import annotations

from collections.abc import Sequence

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import egress as eg
from buildstudio.core.credentials import credential_refusal
from buildstudio.core.dispatch import Dispatch
from buildstudio.core.gate import EngineState, GateDecision
from buildstudio.core.locks import REASON as LOCKS_REASON
from buildstudio.core.locks import check_sandbox_overrides
from buildstudio.core.settings import Settings

EGRESS_REFUSED = "EgressRefused"


def clone_url(spec: BuildDispatchSpec) -> str:
    """The remote the sandbox clones (only a build clones): what the git egress rule is for."""
    return spec.repo.url if spec.repo is not None and spec.phase == "build" else ""


def _cloud_key(engine: EngineState | None) -> bool:
    """The relay sends a cloud engine's credential to its upstream (``manifests.sandbox_pod``)."""
    return engine is not None and engine.spec.endpoint == "cloud" and engine.spec.credential is not None


def admin_refusal(
    d: Dispatch, gate: GateDecision, engines: Sequence[EngineState], settings: Settings
) -> tuple[str, str] | None:
    """(reason, message naming the field) of what the admin's rules forbid in this dispatch, or None."""
    engine = next((e for e in engines if e.name == gate.engine), None)
    service = engine.spec.model_service if engine is not None else None
    repo = d.spec.repo
    refusal = credential_refusal(
        namespace=d.namespace,
        repo_url=repo.url if repo is not None else "",
        repo_secret=repo.credentials_secret.name if repo is not None and repo.credentials_secret else None,
        model_base_url=service.base_url if service is not None else "",
        # A cloud engine's vendor key goes to its model service too, when it has one (a proxy).
        model_key=service is not None and (service.api_key_secret is not None or _cloud_key(engine)),
        allowed_secrets=settings.sandbox.credential_secrets,
        allow_plaintext=settings.sandbox.allow_plaintext_credentials,
    )
    if refusal is not None:
        return (refusal.reason, refusal.message)
    sandbox = d.spec.sandbox.to_api() if d.spec.sandbox else {}
    override = check_sandbox_overrides(sandbox, settings.locks, settings.sandbox)
    if override is not None:
        return (LOCKS_REASON, override)
    egress = eg.egress_refusal(clone_url(d.spec), service.base_url if service is not None else "", settings.egress)
    return (EGRESS_REFUSED, egress) if egress is not None else None
