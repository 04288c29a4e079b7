"""Which credentials a dispatch may have the sandbox use, and where they may be sent (pure).

A dispatch names Secrets by reference and never sees their values, but the sandbox sends them
to the hosts the dispatch names (its repo URL): without a check, any author could have any
Secret of the namespace sent to a server of theirs. So a dispatch may use only Secrets the
admin marked for dispatches (``sandbox.credentialSecrets`` in the chart: ``name`` for any
namespace, ``namespace/name`` for one) — an allow-list in the operator's settings rather than a
label on the Secret, because reading labels would need ``get secrets`` in every namespace.
Credentials never travel over plain http unless the admin allowed it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Refusal:
    reason: str  # the Succeeded=False reason
    message: str  # names the field


def secret_allowed(namespace: str, name: str, allowed: Collection[str]) -> bool:
    return name in allowed or f"{namespace}/{name}" in allowed


def credential_refusal(
    *,
    namespace: str,
    repo_url: str,
    repo_secret: str | None,
    model_base_url: str,
    model_key: bool,
    allowed_secrets: Collection[str],
    allow_plaintext: bool,
) -> Refusal | None:
    """Why this dispatch's credentials may not be used as asked, or None."""
    if repo_secret is not None:
        if not secret_allowed(namespace, repo_secret, allowed_secrets):
            return Refusal(
                "CredentialNotAllowed",
                f"spec.repo.credentialsSecret: Secret {repo_secret!r} is not marked for dispatches; the admin "
                f"lists usable Secrets in the chart's sandbox.credentialSecrets ({namespace}/{repo_secret})",
            )
        if urlsplit(repo_url).scheme == "http" and not allow_plaintext:
            return Refusal(
                "PlaintextCredential",
                f"spec.repo.url: {repo_url} is plain http; the git credential is sent only over https or ssh "
                "(or when the admin sets sandbox.allowPlaintextCredentials)",
            )
    if model_key and urlsplit(model_base_url).scheme == "http" and not allow_plaintext:
        return Refusal(
            "PlaintextCredential",
            f"the engine's model service {model_base_url} is plain http and has an apiKeySecret; the key is "
            "sent only over https (or when the admin sets sandbox.allowPlaintextCredentials)",
        )
    return None
