"""Deterministic names and labels of a dispatch's children.

Deterministic names are what make the operator restart-safe: creating a child that
already exists answers 409 and the existing one is adopted, so an attempt never gets a
second pod.
"""

from __future__ import annotations

import hashlib

from buildstudio.api.common import API_GROUP

MAX_NAME = 63  # DNS-1123 label: pod names end up in hostnames
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_DISPATCH = f"{API_GROUP}/dispatch"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
LABEL_ENGINE = f"{API_GROUP}/engine"
MANAGED_BY = "buildstudio"
PART_OF = "build-studio"


def child_name(base: str, suffix: str) -> str:
    """``<base>-<suffix>``, shortened with a stable hash when it would exceed 63 chars."""
    name = f"{base}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-.')}-{digest}-{suffix}"


def pod_name(dispatch: str, attempt: int) -> str:
    return child_name(dispatch, str(attempt))


def config_name(dispatch: str) -> str:
    return child_name(dispatch, "config")


def patch_name(dispatch: str) -> str:
    return child_name(dispatch, "patch")


def egress_name(dispatch: str) -> str:
    return child_name(dispatch, "egress")


# One per namespace that runs sandboxes: selects every sandbox pod and allows nothing, so a pod
# is fail-closed from its first packet even before its own egress policy takes effect.
BASELINE_POLICY = "buildstudio-sandbox-baseline"


def probe_pod_name(engine: str, fingerprint: str) -> str:
    """Presence probe pod of an engine: one per (image, spec generation) fingerprint."""
    return child_name(f"buildstudio-probe-{engine}", fingerprint[:10])


def label_value(value: str) -> str:
    """A label value (≤ 63 chars, alnum at both ends); long values keep a hash."""
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in value).strip("-_.")
    if len(clean) <= MAX_NAME:
        return clean
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{clean[: MAX_NAME - 9].rstrip('-_.')}-{digest}"


def common_labels() -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: PART_OF}


def dispatch_labels(dispatch: str, component: str) -> dict[str, str]:
    return {**common_labels(), LABEL_COMPONENT: component, LABEL_DISPATCH: label_value(dispatch)}
