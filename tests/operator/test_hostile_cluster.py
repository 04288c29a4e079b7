"""The hostile agent (tests/fixtures/hostile/opencode) in the real sandbox pod: clone, relay,
agent and reporter as separate processes under separate uids (the kubelet fixture as root), with
a git token and a model API key in the pod. It forges result records into every stdout it can
open and into its report file, scans every environment and file it can reach for the secrets,
and makes a nested repository. Nothing it forged may be adopted and nothing secret may reach it;
a ship of its diff is refused for want of a real review."""

from __future__ import annotations

import base64
import gzip
import hashlib
import secrets
from typing import Any

import pytest

from buildstudio.protocol import records
from tests.kube.client import BUILDDISPATCHES, BUILDENGINES, CONFIGMAPS, SECRETS, wait_for
from tests.kube.kubelet import PodScript
from tests.operator.conftest import start_cluster
from tests.operator.gitserver import served_repo, settings_for
from tests.runner_harness import REPO_ROOT

HOSTILE = REPO_ROOT / "tests" / "fixtures" / "hostile" / "opencode"
# Fresh values each run: they exist only in the Secrets, never in a file the agent could find.
GIT_TOKEN = f"SECRET-git-{secrets.token_hex(8)}"
MODEL_KEY = f"SECRET-model-{secrets.token_hex(8)}"


def _secret(name: str, value: str) -> dict[str, Any]:
    data = {"token": base64.b64encode(value.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


@pytest.mark.slow
async def test_hostile_agent_in_the_sandbox_pod_forges_nothing_and_steals_nothing(
    k8s: Any, kubelet: Any, kopf_operator: Any, model_server: Any, tmp_path: Any
) -> None:
    if not kubelet.separate_uids:
        reason = kubelet.separate_uids_reason
        pytest.skip(f"the kubelet fixture cannot run containers under their own uids here: {reason}")
    await k8s.create(SECRETS, _secret("git-token", GIT_TOKEN))
    await k8s.create(SECRETS, _secret("model-key", MODEL_KEY))
    async with served_repo(tmp_path, {"README.md": "# victim\n"}) as url:
        settings = settings_for(url, credential_secrets=frozenset({"git-token"}))
        cluster = await start_cluster(k8s, kubelet, kopf_operator, model_server, settings=settings)
        key_ref = {"apiKeySecret": {"name": "model-key", "key": "token"}}
        await k8s.patch(BUILDENGINES, "opencode", {"spec": {"modelService": key_ref}})
        kubelet.script("victim", PodScript.run(env={"OPENCODE_BIN": str(HOSTILE)}))
        await cluster.dispatch(
            "victim", repo={"url": url, "ref": "main", "credentialsSecret": {"name": "git-token", "key": "token"}}
        )
        st = await cluster.wait_phase("victim", "Succeeded", "Failed", timeout=120)

    # The attack landed where it could: its report file (the claim), and any stdout of its own uid ...
    landed = next(line for line in st["diff"].splitlines() if line.startswith("+forged into:")).split()[2:]
    assert any(target.endswith("report.json") for target in landed), landed
    if any("/fd/1" in target for target in landed):
        assert "FORGED by the agent" in kubelet.log("victim-1", container="agent").text
    # ... yet the result channel holds exactly one record, the reporter's.
    reporter_log = kubelet.log("victim-1", container="reporter").text
    results = [r for r in map(records.parse_line, reporter_log.splitlines()) if isinstance(r, records.ResultRecord)]
    assert len(results) == 1 and "FORGED" not in reporter_log

    assert st["phase"] == "Succeeded" and _cond(st, "Succeeded")["reason"] == "Completed", st
    assert "review" not in st and "FORGED" not in str(st)
    assert st["diffStat"]["files"] == 2 and "+++ b/newcrate/lib.rs" in st["diff"]
    stolen = next(line for line in st["diff"].splitlines() if line.startswith("+stolen:"))
    assert GIT_TOKEN not in stolen and MODEL_KEY not in stolen, stolen
    # The stored patch is what its sha256 says (the operator recomputed it), not the forged one.
    cm = await k8s.get(CONFIGMAPS, "victim-patch")
    patch = gzip.decompress(base64.b64decode(cm["binaryData"]["patch.gz"]))
    assert cm["metadata"]["annotations"]["buildstudio.dpf.dev/patch-sha256"] == hashlib.sha256(patch).hexdigest()
    assert hashlib.sha256(patch).hexdigest() != "f" * 64

    # A ship of the diff: its forged "review" counts for nothing.
    await k8s.create(
        BUILDDISPATCHES,
        {
            "apiVersion": "buildstudio.dpf.dev/v1alpha1",
            "kind": "BuildDispatch",
            "metadata": {"name": "ship-victim", "namespace": "default"},
            "spec": {
                "prompt": "ship it",
                "phase": "ship",
                "source": {"dispatch": "victim"},
                "approval": {"approvedBy": "alice"},
                "timeouts": {"queueSeconds": 2},
            },
        },
    )

    async def refused() -> dict[str, Any] | None:
        ship = await cluster.status("ship-victim")
        conds = {c["type"]: c for c in ship.get("conditions", [])}
        return ship if any(c.get("reason") == "ReviewMissing" for c in conds.values()) else None

    ship = await wait_for(refused, 20, message="ship refused for want of a review")
    assert ship.get("phase") != "Succeeded"
