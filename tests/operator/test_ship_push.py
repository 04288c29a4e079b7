"""Ship for real, through the operator on the emulator with real pods (the kubelet fixture):
build (the reporter's result canned, with a real patch on the real base commit) → review
(canned approval of that sha256) → ship with approval → the ship pod's push container clones
the repository from a real smart-HTTP git server (Basic auth), applies the reviewed patch and
pushes a new branch with the provenance trailers; the ship's status names branch and commit."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from buildstudio.protocol import records
from buildstudio.protocol.records import Outcome, ResultRecord, ReviewRecord, RunSummary
from tests.kube.client import PODS, SECRETS
from tests.kube.kubelet import PodScript
from tests.operator.conftest import start_cluster
from tests.operator.gitserver import settings_for
from tests.operator.smartgit import git, make_remote, smart_git_server
from tests.operator.test_operator_flow import cond, result_line
from tests.test_push import FILES, PATCH

TOKEN = "push-token-in-cluster"


def _secret(name: str, value: str) -> dict[str, Any]:
    data = {"token": base64.b64encode(value.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}


async def test_an_approved_ship_pushes_a_branch_with_provenance_from_its_own_pod(
    k8s: Any, kubelet: Any, kopf_operator: Any, model_server: Any, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    bare, base = make_remote(root, "calc.git", FILES)
    bare.chmod(0o755)
    sha = hashlib.sha256(PATCH.encode()).hexdigest()
    await k8s.create(SECRETS, _secret("git-token", TOKEN))
    with smart_git_server(root, TOKEN) as server:
        url = server.repo_url("calc.git")
        settings = settings_for(url, credential_secrets=frozenset({"git-token"}))
        cluster = await start_cluster(k8s, kubelet, kopf_operator, model_server, settings=settings)
        creds = {"name": "git-token", "key": "token"}
        kubelet.script("fix-1", PodScript.canned([result_line(PATCH, base_commit=base)]))
        await cluster.dispatch(
            "fix", prompt="Add subtract to calc.py", repo={"url": url, "ref": "main", "credentialsSecret": creds}
        )
        built = await cluster.wait_phase("fix", "Succeeded", "Failed", timeout=60)
        assert built["phase"] == "Succeeded" and built["baseCommit"] == base, built

        review = ResultRecord(
            outcome=Outcome.COMPLETED,
            message="reviewed",
            phase="review",
            summary=RunSummary(final_text="Looks right.\n\nVERDICT: APPROVE"),
            review=ReviewRecord(source="fix", verdict="Approve", diff_sha256=sha),
        )
        kubelet.script("rev-1", PodScript.canned([records.dump(review)]))
        await cluster.dispatch("rev", phase="review", repo=None, source={"dispatch": "fix"}, prompt="Review it.")
        rev = await cluster.wait_phase("rev", "Succeeded", "Failed", timeout=60)
        assert rev["review"]["verdict"] == "Approve", rev

        # The ship pod runs for real (the kubelet's default script): no agent, the push container only.
        await cluster.dispatch(
            "ship-fix",
            phase="ship",
            repo=None,
            source={"dispatch": "fix"},
            approval={"approvedBy": "alice@example.com", "comment": "ship it"},
            ship={"branchPrefix": "bs/"},
        )
        shipped = await cluster.wait_phase("ship-fix", "Succeeded", "Failed", timeout=120)
        assert shipped["phase"] == "Succeeded" and cond(shipped, "Succeeded")["reason"] == "Pushed", (
            shipped,
            kubelet.log("ship-fix-1", container="push").text,
        )
        pod = await k8s.get(PODS, "ship-fix-1")
        assert [c["name"] for c in pod["spec"]["containers"]] == ["push"]
        assert all(ok for _m, _p, ok in server.requests)  # every request carried the credential

    heads = git("-C", str(bare), "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
    branches = dict(line.split() for line in heads.splitlines())
    commit = branches["refs/heads/bs/fix"]
    assert branches["refs/heads/main"] == base
    assert shipped["push"] == {"reason": "Pushed", "branch": "bs/fix", "commit": commit, "remote": url}
    assert git("-C", str(bare), "rev-parse", f"{commit}^").strip() == base
    assert git("-C", str(bare), "show", f"{commit}:calc.py").endswith("def subtract(a, b):\n    return a - b\n")
    assert git("-C", str(bare), "show", f"{commit}:NOTES.md") == "subtract added\n"
    message = git("-C", str(bare), "log", "-1", "--format=%B", commit)
    print(message)  # the closing note shows it
    for trailer in (
        "Build-Studio-Dispatch: fix",
        "Build-Studio-Ship: ship-fix",
        "Build-Studio-Engine: opencode",
        "Build-Studio-Review: rev",
        "Build-Studio-Verdict: Approve",
        f"Build-Studio-Diff-Sha256: {sha}",
        "Build-Studio-Approved-By: alice@example.com",
    ):
        assert trailer in message.splitlines(), message
    assert message.startswith("buildstudio: Add subtract to calc.py\n")
    log = kubelet.log("ship-fix-1", container="push").text
    assert TOKEN not in log and TOKEN not in str(shipped)


async def _built_and_reviewed(cluster: Any, kubelet: Any, url: str, base: str) -> None:
    sha = hashlib.sha256(PATCH.encode()).hexdigest()
    kubelet.script("fix-1", PodScript.canned([result_line(PATCH, base_commit=base)]))
    creds = {"name": "git-token", "key": "token"}
    await cluster.dispatch("fix", prompt="Add subtract", repo={"url": url, "ref": "main", "credentialsSecret": creds})
    assert (await cluster.wait_phase("fix", "Succeeded", "Failed", timeout=60))["phase"] == "Succeeded"
    review = ResultRecord(
        outcome=Outcome.COMPLETED,
        message="reviewed",
        phase="review",
        review=ReviewRecord(source="fix", verdict="Approve", diff_sha256=sha),
    )
    kubelet.script("rev-1", PodScript.canned([records.dump(review)]))
    await cluster.dispatch("rev", phase="review", repo=None, source={"dispatch": "fix"}, prompt="Review it.")
    assert (await cluster.wait_phase("rev", "Succeeded", "Failed", timeout=60))["review"]["verdict"] == "Approve"


async def test_the_ships_own_credential_is_used_and_a_wrong_one_ends_in_push_auth_failed(
    k8s: Any, kubelet: Any, kopf_operator: Any, model_server: Any, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    bare, base = make_remote(root, "calc.git", FILES)
    await k8s.create(SECRETS, _secret("git-token", TOKEN))
    await k8s.create(SECRETS, _secret("stale-token", "not-the-token"))
    await k8s.create(SECRETS, _secret("someone-elses", TOKEN))
    with smart_git_server(root, TOKEN) as server:
        url = server.repo_url("calc.git")
        settings = settings_for(url, credential_secrets=frozenset({"git-token", "stale-token"}))
        cluster = await start_cluster(k8s, kubelet, kopf_operator, model_server, settings=settings)
        await _built_and_reviewed(cluster, kubelet, url, base)
        ship: dict[str, Any] = {"phase": "ship", "source": {"dispatch": "fix"}, "approval": {"approvedBy": "bob"}}
        # A Secret the admin did not mark for dispatches: refused before any pod exists.
        theirs = {"url": url, "credentialsSecret": {"name": "someone-elses", "key": "token"}}
        await cluster.dispatch("ship-theirs", repo=theirs, **ship)
        refused = await cluster.wait_phase("ship-theirs", "Succeeded", "Failed", timeout=30)
        assert cond(refused, "Succeeded")["reason"] == "CredentialNotAllowed", refused
        assert await k8s.find(PODS, "ship-theirs-1") is None
        # The ship's own (allowed, but wrong) credential replaces the source's: the remote refuses it.
        stale = {"url": url, "credentialsSecret": {"name": "stale-token", "key": "token"}}
        await cluster.dispatch("ship-stale", repo=stale, **ship)
        failed = await cluster.wait_phase("ship-stale", "Succeeded", "Failed", timeout=120)
        assert cond(failed, "Succeeded")["reason"] == "PushAuthFailed", failed
        assert failed["push"]["reason"] == "PushAuthFailed" and not failed["push"]["commit"]
        pod = await k8s.get(PODS, "ship-stale-1")
        secrets = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
        assert secrets == ["stale-token"]
    assert "refs/heads/buildstudio/fix" not in git("-C", str(bare), "for-each-ref", "refs/heads")
