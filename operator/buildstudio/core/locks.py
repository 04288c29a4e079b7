"""What a dispatch may override of the admin's sandbox settings (pure).

The admin's chart values bind: a ``spec.sandbox`` field the admin fixed (``sandbox.locks``;
``auto`` locks whatever the admin set) and any resource above the admin's ceilings refuse the
dispatch before anything is created. Some requests are refused whatever the locks say: a
toleration of every taint, and placement onto control-plane nodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from buildstudio.core.settings import LockMode, SandboxDefaults, SandboxLocks

REASON = "SandboxOverrideRefused"
# Labels and taints that mark control-plane nodes: a sandbox never goes there.
CONTROL_PLANE_KEYS = frozenset({"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"})
_SELECTING = frozenset({"In", "Exists"})  # operators that put a pod onto nodes with the key
_QUANTITY = re.compile(
    r"^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_SCALE = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity as a number (``500m`` → 0.5, ``1Gi`` → 1073741824)."""
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise ValueError(f"{text!r} is not a resource quantity")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number) * (Decimal(10) ** int(exponent or 0))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a resource quantity") from None
    return value * _SCALE[suffix or ""]


def _admin_set(field: str, defaults: SandboxDefaults) -> str:
    """What the admin set for ``field`` (empty: nothing), for ``auto`` locks and messages."""
    if field == "image":
        return defaults.image
    if field == "runtimeClassName":
        return defaults.runtime_class_name or ""
    if field == "tolerations":
        return f"the {defaults.gpu_resource} toleration" if defaults.gpu_toleration else ""
    if field in ("nodeSelector", "affinity"):
        if defaults.node_selector:
            return f"nodeSelector {dict(defaults.node_selector)}"
        return f"required GPU-node affinity ({defaults.gpu_node_label})" if defaults.gpu_affinity == "required" else ""
    return ""


def _mode(field: str, locks: SandboxLocks) -> LockMode:
    return {
        "image": locks.image,
        "runtimeClassName": locks.runtime_class_name,
        "tolerations": locks.tolerations,
        "nodeSelector": locks.node_selector,
        "affinity": locks.affinity,
    }[field]


def locked(field: str, locks: SandboxLocks, defaults: SandboxDefaults) -> bool:
    mode = _mode(field, locks)
    return mode == "deny" or (mode == "auto" and bool(_admin_set(field, defaults)))


def _control_plane_terms(affinity: Mapping[str, Any]) -> Iterator[str]:
    """The keys of node-affinity terms that select control-plane nodes."""
    node = affinity.get("nodeAffinity") or {}
    required = (node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    preferred = [p.get("preference") or {} for p in node.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
    for term in [*required, *preferred]:
        for expr in [*(term.get("matchExpressions") or []), *(term.get("matchFields") or [])]:
            if expr.get("key") in CONTROL_PLANE_KEYS and expr.get("operator") in _SELECTING:
                yield str(expr.get("key"))


def _placement(sandbox: Mapping[str, Any]) -> str | None:
    """Refused whatever the locks say: tolerating every taint, control-plane placement."""
    for i, tol in enumerate(sandbox.get("tolerations") or []):
        if tol.get("operator") == "Exists" and not tol.get("key"):
            return f"spec.sandbox.tolerations[{i}]: operator Exists without a key tolerates every taint"
        if tol.get("key") in CONTROL_PLANE_KEYS:
            return f"spec.sandbox.tolerations[{i}]: tolerates the control-plane taint {tol.get('key')}"
    for key in sandbox.get("nodeSelector") or {}:
        if key in CONTROL_PLANE_KEYS:
            return f"spec.sandbox.nodeSelector: {key} selects control-plane nodes"
    for key in _control_plane_terms(sandbox.get("affinity") or {}):
        return f"spec.sandbox.affinity: a node-affinity term on {key} selects control-plane nodes"
    return None


def _ceiling(name: str, locks: SandboxLocks, defaults: SandboxDefaults) -> str | None:
    if name in locks.max_resources:
        return locks.max_resources[name]
    return locks.max_resources.get("gpu") if name == defaults.gpu_resource else None


def _resources(sandbox: Mapping[str, Any], locks: SandboxLocks, defaults: SandboxDefaults) -> str | None:
    wanted = sandbox.get("resources") or {}
    merged: dict[str, dict[str, str]] = {"requests": dict(defaults.requests), "limits": dict(defaults.limits)}
    for kind in ("requests", "limits"):
        for name, raw in (wanted.get(kind) or {}).items():
            where = f"spec.sandbox.resources.{kind}.{name}"
            ceiling = _ceiling(name, locks, defaults)
            if ceiling is None:
                allowed = ", ".join(sorted(locks.max_resources)) or "none"
                return f"{where}: not a resource a dispatch may ask for (sandbox.locks.maxResources: {allowed})"
            try:
                value = quantity(raw)
            except ValueError as exc:
                return f"{where}: {exc}"
            if value > quantity(ceiling):
                return f"{where}: {raw} exceeds the admin's ceiling {ceiling} (sandbox.locks.maxResources)"
            merged[kind][name] = str(raw)
    if sandbox.get("gpu"):
        ceiling = _ceiling(defaults.gpu_resource, locks, defaults)
        if ceiling is None or quantity(ceiling) < 1:
            return f"spec.sandbox.gpu: the admin allows no {defaults.gpu_resource} (sandbox.locks.maxResources.gpu)"
        merged["limits"][defaults.gpu_resource] = "1"
    for name in sorted(set(merged["requests"]) & set(merged["limits"])):
        try:
            request, limit = quantity(merged["requests"][name]), quantity(merged["limits"][name])
        except ValueError:
            continue  # the admin's own default; not the dispatch's to answer for
        if request > limit:
            return (
                f"spec.sandbox.resources: requests.{name} {merged['requests'][name]} exceeds "
                f"limits.{name} {merged['limits'][name]}"
            )
    return None


def check_sandbox_overrides(sandbox: Mapping[str, Any], locks: SandboxLocks, defaults: SandboxDefaults) -> str | None:
    """Why ``spec.sandbox`` (API form, camelCase) asks for more than the admin allows, naming the
    field; None when it may run as asked. A value equal to the admin's is no override."""
    always = _placement(sandbox)
    if always is not None:
        return always
    for field in ("image", "runtimeClassName", "tolerations", "nodeSelector", "affinity"):
        value = sandbox.get(field)
        if not value or value == _admin_set(field, defaults):
            continue
        if locked(field, locks, defaults):
            fixed = _admin_set(field, defaults)
            by = f"the admin set {fixed}" if fixed else "the admin does not allow it"
            return f"spec.sandbox.{field}: may not be set by a dispatch ({by}; sandbox.locks.{field})"
    return _resources(sandbox, locks, defaults)
