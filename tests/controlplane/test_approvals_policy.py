"""The chart's ValidatingAdmissionPolicy on the real apiserver: spec.approval is set only by a member of the
approvers group, under that member's own user name (users impersonated with `kubectl --as`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from . import chart
from .controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

NS = "approvals"
GROUP = "buildstudio-approvers"
POLICY_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


@pytest.fixture(scope="module")
def policy(control_plane: ControlPlane, crds: object) -> Iterator[str]:
    """The chart's policy and binding applied; a namespace where users may write BuildDispatches."""
    docs = chart.render("bs-system", api_versions=[POLICY_API])
    policies = chart.of_kinds(docs, ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"))
    assert len(policies) == 2, [d["kind"] for d in docs]
    chart.apply(control_plane, policies)
    control_plane.kubectl("create", "namespace", NS)
    # RBAC lets every user here write dispatches: only the policy tells the approvers apart.
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "dispatchers", "namespace": NS},
            "rules": [{"apiGroups": ["buildstudio.dpf.dev"], "resources": ["builddispatches", "buildpipelines"],
                       "verbs": ["create", "get", "patch", "update"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "dispatchers", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dispatchers"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                             "name": "system:authenticated"}]}
    chart.apply(control_plane, [role, binding])
    name = policies[0]["metadata"]["name"]
    _wait_enforced(control_plane)
    yield name
    listing = {"apiVersion": "v1", "kind": "List", "items": policies}
    control_plane.kubectl("delete", "-f", "-", stdin=json.dumps(listing), check=False)
    # Gone before the namespace goes: a cluster-wide operator of a later module would meet them in a
    # terminating namespace (its Events there get 403 NamespaceTerminating).
    control_plane.kubectl("delete", "builddispatches,buildpipelines", "--all", "-n", NS, "--timeout=30s", check=False)
    control_plane.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _ship(name: str, approved_by: str) -> dict[str, Any]:
    return {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildDispatch",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"prompt": "ship it", "model": "qwen3-coder", "repo": {"url": "https://git.example/calc.git"},
                     "phase": "ship", "source": {"dispatch": "build-1"},
                     "approval": {"approvedBy": approved_by, "comment": "reviewed"}}}


def _as(cp: ControlPlane, user: str, *groups: str) -> list[str]:
    return [f"--as={user}", *(f"--as-group={g}" for g in groups)]


def _create(cp: ControlPlane, who: list[str], doc: dict[str, Any], *, dry_run: bool = False) -> Any:
    argv = [*who, "create", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return cp.kubectl(*argv, stdin=json.dumps(doc), check=False)


def _wait_enforced(cp: ControlPlane, timeout: float = 30.0) -> None:
    """A new policy takes effect a moment after it is stored (type-checked, then loaded): probe until a
    spoofed approval is refused."""
    deadline = time.monotonic() + timeout
    while True:
        probe = _create(cp, _as(cp, "probe", GROUP), _ship("probe", "someone-else"), dry_run=True)
        if probe.returncode != 0 and "ValidatingAdmissionPolicy" in probe.stderr:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the approvals policy is not enforced after {timeout:.0f} s: {probe.stderr}")
        time.sleep(0.5)


def test_the_policy_type_checks_cleanly(control_plane: ControlPlane, policy: str) -> None:
    stored = json.loads(control_plane.kubectl("get", "validatingadmissionpolicy", policy, "-o", "json").stdout)
    assert stored["status"].get("typeChecking", {}).get("expressionWarnings") in (None, []), stored["status"]


def test_an_approver_approves_under_their_own_name(control_plane: ControlPlane, policy: str) -> None:
    alice = _as(control_plane, "alice", GROUP)
    made = _create(control_plane, alice, _ship("ship-1", "alice"))
    assert made.returncode == 0, made.stderr
    spoofed = _create(control_plane, alice, _ship("ship-2", "bob"), dry_run=True)
    assert spoofed.returncode != 0
    assert f"ValidatingAdmissionPolicy '{policy}'" in spoofed.stderr
    assert "spec.approval.approvedBy must be the approver's own user name: alice" in spoofed.stderr


def test_a_non_member_cannot_approve(control_plane: ControlPlane, policy: str) -> None:
    mallory = _as(control_plane, "mallory", "developers")
    refused = _create(control_plane, mallory, _ship("ship-3", "mallory"), dry_run=True)
    assert refused.returncode != 0
    assert f"spec.approval can be set only by a member of the group {GROUP}; mallory is not" in refused.stderr


def test_changing_an_approval_is_checked_and_other_edits_are_not(control_plane: ControlPlane, policy: str) -> None:
    assert _create(control_plane, _as(control_plane, "alice", GROUP), _ship("ship-4", "alice")).returncode == 0

    def patch(who: list[str], body: dict[str, Any]) -> Any:
        return control_plane.kubectl(*who, "patch", "builddispatch", "ship-4", "-n", NS, "--type=merge",
                                     "-p", json.dumps(body), check=False)

    takeover = patch(_as(control_plane, "mallory", "developers"), {"spec": {"approval": {"approvedBy": "mallory"}}})
    assert takeover.returncode != 0 and "mallory is not" in takeover.stderr
    forged = patch(_as(control_plane, "bob", GROUP), {"spec": {"approval": {"approvedBy": "carol"}}})
    assert forged.returncode != 0 and "own user name: bob" in forged.stderr
    reapproved = patch(_as(control_plane, "bob", GROUP), {"spec": {"approval": {"approvedBy": "bob"}}})
    assert reapproved.returncode == 0, reapproved.stderr
    # Not touching the approval: anyone RBAC allows (here: a label by a non-member) passes the policy.
    labelled = patch(_as(control_plane, "mallory", "developers"), {"metadata": {"labels": {"team": "calc"}}})
    assert labelled.returncode == 0, labelled.stderr
    stored = json.loads(control_plane.kubectl("get", "bd", "ship-4", "-n", NS, "-o", "json").stdout)
    assert stored["spec"]["approval"]["approvedBy"] == "bob"


OPERATOR_SA = f"system:serviceaccount:bs-system:{chart.RELEASE}-build-studio"


def _pipeline(name: str, approved_by: str) -> dict[str, Any]:
    return {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildPipeline",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"prompt": "add subtract", "repo": {"url": "https://git.example/calc.git"},
                     "approval": {"approvedBy": approved_by}}}


def test_a_pipelines_approval_is_bound_to_the_approver_too(control_plane: ControlPlane, policy: str) -> None:
    alice = _as(control_plane, "alice", GROUP)
    made = _create(control_plane, alice, _pipeline("bp-1", "alice"), dry_run=True)
    assert made.returncode == 0, made.stderr
    spoofed = _create(control_plane, alice, _pipeline("bp-2", "bob"), dry_run=True)
    assert spoofed.returncode != 0 and "own user name: alice" in spoofed.stderr
    outsider = _create(control_plane, _as(control_plane, "mallory", "developers"), _pipeline("bp-3", "mallory"),
                       dry_run=True)
    assert outsider.returncode != 0 and "mallory is not" in outsider.stderr


def test_only_the_operator_copies_a_pipelines_approval_into_its_ship_step(
    control_plane: ControlPlane, policy: str
) -> None:
    step = _ship("bp-1-ship", "alice")
    step["metadata"]["ownerReferences"] = [
        {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildPipeline", "name": "bp-1",
         "uid": "6d1f2b8e-0000-4000-8000-000000000001", "controller": True, "blockOwnerDeletion": True}]
    operator = [f"--as={OPERATOR_SA}"]
    copied = _create(control_plane, operator, step, dry_run=True)
    assert copied.returncode == 0, copied.stderr
    # Anyone else with the same owner reference is checked as usual; so is the operator without one.
    forged = _create(control_plane, _as(control_plane, "bob", GROUP), step, dry_run=True)
    assert forged.returncode != 0 and "own user name: bob" in forged.stderr
    unowned = _create(control_plane, operator, _ship("loose-ship", "alice"), dry_run=True)
    assert unowned.returncode != 0 and f"{OPERATOR_SA} is not" in unowned.stderr
