"""The ship pod (one ``push`` container with the git credential) passes Pod Security
`restricted` on a real apiserver, and a ship dispatch with ``spec.ship`` passes the CRD's schema."""

from __future__ import annotations

import json

import pytest

from buildstudio.core import manifests as mf
from buildstudio.core.settings import SandboxDefaults
from buildstudio.core.shippod import ShipPodRequest, ship_pod
from tests.controlplane.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane


def test_the_ship_pod_passes_restricted_admission(control_plane: ControlPlane) -> None:
    ns = "ship-admission"
    control_plane.kubectl("create", "namespace", ns, check=False)
    control_plane.kubectl("label", "--overwrite", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    control_plane.kubectl("wait", "--for=create", "-n", ns, "serviceaccount/default", "--timeout=60s")
    made = control_plane.kubectl("create", "configmap", "owner", "-n", ns, "-o", "json")
    owner_uid = json.loads(made.stdout)["metadata"]["uid"]
    owner = mf.Owner(name="owner", uid=owner_uid, namespace=ns, kind="ConfigMap", api_version="v1")
    pod = ship_pod(ShipPodRequest(owner, 1, "fix-patch", mf.SecretKey("git-token", "token")), SandboxDefaults())
    done = control_plane.kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(pod), check=False)
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)
    assert [c["name"] for c in stored["spec"]["containers"]] == ["push"]
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
