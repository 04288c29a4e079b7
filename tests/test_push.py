"""The ship pod's push role (``python -m buildstudio.sandbox.runner push``) as a process, against a real
smart-HTTP git server on loopback (``git http-backend`` behind Basic auth), and the pure parts
of ``core/shippod.py``: branch name, trailers, the failure classifier, the pod manifest."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildstudio.core import manifests as mf
from buildstudio.core.settings import SandboxDefaults
from buildstudio.core.shippod import (
    Provenance,
    PushReason,
    ShipPodRequest,
    ShipSpec,
    branch_name,
    classify_push_failure,
    commit_message,
    ship_pod,
    trailer_lines,
)
from buildstudio.protocol import records
from tests.operator.smartgit import GitServer, git, make_remote, refuse_pushes, smart_git_server
from tests.runner_harness import REPO_ROOT

TOKEN = "s3cret-push-token"
PATCH = """diff --git a/calc.py b/calc.py
index 0000000..1111111 100644
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,5 @@
 def add(a, b):
     return a + b
+
+def subtract(a, b):
+    return a - b
diff --git a/NOTES.md b/NOTES.md
new file mode 100644
--- /dev/null
+++ b/NOTES.md
@@ -0,0 +1 @@
+subtract added
"""
FILES = {"calc.py": "def add(a, b):\n    return a + b\n", "README.md": "# calc\n"}
PROV = Provenance(
    dispatch="fix",
    ship="ship-fix",
    engine="opencode",
    model="qwen3-coder",
    review="rev",
    verdict="Approve",
    diff_sha256=hashlib.sha256(PATCH.encode()).hexdigest(),
    approved_by="alice@example.com",
)


def _run_push(tmp: Path, spec: ShipSpec, patch: bytes, token: str | None) -> tuple[int, records.ResultRecord, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "ship.json").write_text(spec.to_json())
    (tmp / "patch.gz").write_bytes(gzip.compress(patch))
    argv = [sys.executable, "-m", "buildstudio.sandbox.runner", "push", "--spec", str(tmp / "ship.json")]
    argv += ["--patch", str(tmp / "patch.gz"), "--scratch", str(tmp / "scratch"), "--allow-plaintext-credentials"]
    if token is not None:
        (tmp / "token").write_text(token + "\n")
        argv += ["--credential-file", str(tmp / "token")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=180, check=False)
    lines = [records.parse_line(line) for line in done.stdout.decode().splitlines() if line.strip()]
    results = [r for r in lines if isinstance(r, records.ResultRecord)]
    assert len(results) == 1, done.stdout.decode() + done.stderr.decode()
    return done.returncode, results[0], done.stderr.decode()


def _spec(server: GitServer, base: str, **kw: object) -> ShipSpec:
    fields: dict[str, object] = {
        "repoUrl": server.repo_url("calc.git"),
        "baseCommit": base,
        "patchSha256": hashlib.sha256(PATCH.encode()).hexdigest(),
        "branch": branch_name("buildstudio/", "fix"),
        "message": commit_message("Add subtract to calc.py", PROV),
        "commitDate": "2026-12-02T22:00:00+00:00",
        "timeoutSeconds": 60,
    }
    fields.update(kw)
    return ShipSpec.model_validate(fields)


def _heads(bare: Path) -> dict[str, str]:
    out = git("-C", str(bare), "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
    return {ref: sha for ref, sha in (line.split() for line in out.splitlines())}


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[GitServer, Path, str]]:
    root = tmp_path / "srv"
    root.mkdir()
    bare, base = make_remote(root, "calc.git", FILES)
    with smart_git_server(root, TOKEN) as server:
        yield server, bare, base


def test_push_creates_the_branch_with_base_plus_patch_and_the_trailers(
    tmp_path: Path, remote: tuple[GitServer, Path, str]
) -> None:
    server, bare, base = remote
    code, result, err = _run_push(tmp_path, _spec(server, base), PATCH.encode(), TOKEN)
    assert code == 0 and result.push is not None and result.push.reason == "Pushed", (result, err)
    heads = _heads(bare)
    assert heads["refs/heads/main"] == base  # untouched
    commit = heads["refs/heads/buildstudio/fix"]
    assert result.push.commit == commit and result.push.branch == "buildstudio/fix"
    assert result.outcome == records.Outcome.COMPLETED and result.phase == "ship"
    # The commit is base + the patch, exactly.
    assert git("-C", str(bare), "rev-parse", f"{commit}^").strip() == base
    applied = git("-C", str(bare), "diff", "--stat", base, commit)
    assert "calc.py" in applied and "NOTES.md" in applied
    assert git("-C", str(bare), "show", f"{commit}:calc.py").endswith("def subtract(a, b):\n    return a - b\n")
    body = git("-C", str(bare), "log", "-1", "--format=%B", commit)
    assert body.startswith("buildstudio: Add subtract to calc.py\n")
    trailers = git("-C", str(bare), "log", "-1", "--format=%(trailers:only,unfold)", commit).split("\n")
    assert "Build-Studio-Dispatch: fix" in trailers and "Build-Studio-Review: rev" in trailers
    assert "Build-Studio-Verdict: Approve" in trailers and "Build-Studio-Approved-By: alice@example.com" in trailers
    assert f"Build-Studio-Diff-Sha256: {PROV.diff_sha256}" in trailers
    assert "Build-Studio-Engine: opencode" in trailers and "Build-Studio-Model: qwen3-coder" in trailers
    # Every request carried the credential; the token is nowhere in argv, config or the record.
    assert server.requests and all(ok for _m, _p, ok in server.requests)
    assert TOKEN not in records.dump(result) and TOKEN not in err
    assert TOKEN not in (tmp_path / "scratch" / "repo" / ".git" / "config").read_text()


def test_the_patch_itself_equals_the_diff_between_base_and_branch(
    tmp_path: Path, remote: tuple[GitServer, Path, str]
) -> None:
    server, bare, base = remote
    code, result, _ = _run_push(tmp_path, _spec(server, base), PATCH.encode(), TOKEN)
    assert code == 0 and result.push is not None
    # Re-applying the patch to base in a scratch clone gives the very tree the branch has.
    check = tmp_path / "check"
    git("clone", "-q", str(bare), str(check))
    git("-C", str(check), "checkout", "-q", base)
    (tmp_path / "p.diff").write_text(PATCH)
    git("-C", str(check), "apply", "--index", str(tmp_path / "p.diff"))
    tree = git("-C", str(check), "write-tree").strip()
    assert tree == git("-C", str(bare), "rev-parse", f"{result.push.commit}^{{tree}}").strip()


def test_a_rerun_of_the_same_ship_is_up_to_date_not_rejected(
    tmp_path: Path, remote: tuple[GitServer, Path, str]
) -> None:
    server, _bare, base = remote
    one = _run_push(tmp_path / "a", _spec(server, base), PATCH.encode(), TOKEN)
    two = _run_push(tmp_path / "b", _spec(server, base), PATCH.encode(), TOKEN)
    assert one[0] == two[0] == 0 and one[1].push and two[1].push
    assert one[1].push.commit == two[1].push.commit  # fixed dates: the same commit


def test_a_wrong_credential_is_push_auth_failed(tmp_path: Path, remote: tuple[GitServer, Path, str]) -> None:
    server, bare, base = remote
    code, result, _ = _run_push(tmp_path, _spec(server, base), PATCH.encode(), "wrong-token")
    assert code == 1 and result.push is not None and result.push.reason == "PushAuthFailed", result
    assert "refs/heads/buildstudio/fix" not in _heads(bare)
    code, result, _ = _run_push(tmp_path / "none", _spec(server, base), PATCH.encode(), None)
    assert result.push is not None and result.push.reason == "PushAuthFailed", result


def test_a_refusing_pre_receive_hook_is_push_rejected(tmp_path: Path, remote: tuple[GitServer, Path, str]) -> None:
    server, bare, base = remote
    refuse_pushes(bare)
    code, result, _ = _run_push(tmp_path, _spec(server, base), PATCH.encode(), TOKEN)
    assert code == 1 and result.push is not None and result.push.reason == "PushRejected", result
    assert "pre-receive hook declined" in result.message or "protected branch" in result.message
    assert "refs/heads/buildstudio/fix" not in _heads(bare)


def test_a_non_fast_forward_is_push_rejected_and_nothing_is_forced(
    tmp_path: Path, remote: tuple[GitServer, Path, str]
) -> None:
    server, bare, base = remote
    # Someone else's commit is already on the branch: it must stay.
    other = tmp_path / "other"
    git("clone", "-q", str(bare), str(other))
    (other / "x.txt").write_text("theirs\n")
    git("-C", str(other), "add", "x.txt")
    git("-C", str(other), "commit", "-q", "-m", "theirs")
    git("-C", str(other), "push", "-q", "origin", "HEAD:refs/heads/buildstudio/fix")
    theirs = _heads(bare)["refs/heads/buildstudio/fix"]
    code, result, _ = _run_push(tmp_path / "run", _spec(server, base), PATCH.encode(), TOKEN)
    assert result.push is not None and result.push.reason == "PushRejected", result
    assert code == 1 and _heads(bare)["refs/heads/buildstudio/fix"] == theirs


def test_a_patch_whose_sha256_differs_is_patch_mismatch_and_nothing_is_pushed(
    tmp_path: Path, remote: tuple[GitServer, Path, str]
) -> None:
    server, bare, base = remote
    tampered = PATCH.replace("a - b", "a + b").encode()
    code, result, _ = _run_push(tmp_path, _spec(server, base), tampered, TOKEN)
    assert code == 1 and result.push is not None and result.push.reason == "PatchMismatch", result
    assert hashlib.sha256(tampered).hexdigest() in result.message
    assert server.requests == []  # not even cloned
    assert set(_heads(bare)) == {"refs/heads/main"}


def test_an_unreachable_remote_is_retried_then_remote_unreachable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = ShipSpec.model_validate(
        {
            "repoUrl": f"http://127.0.0.1:{port}/calc.git",
            "baseCommit": "a" * 40,
            "patchSha256": hashlib.sha256(PATCH.encode()).hexdigest(),
            "branch": "buildstudio/fix",
            "message": "m",
            "timeoutSeconds": 60,
        }
    )
    code, result, _ = _run_push(tmp_path, spec, PATCH.encode(), TOKEN)
    assert code == 1 and result.push is not None and result.push.reason == "RemoteUnreachable", result
    assert "tries" in result.message


# ------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("stderr", "reason", "retry"),
    [
        ("fatal: Authentication failed for 'https://git.example/r.git/'", PushReason.AUTH_FAILED, False),
        ("fatal: could not read Username for 'http://h': terminal prompts disabled", PushReason.AUTH_FAILED, False),
        ("remote: HTTP Basic: Access denied", PushReason.AUTH_FAILED, False),
        (
            " ! [rejected] x -> buildstudio/a (non-fast-forward)\nerror: failed to push some refs",
            PushReason.REJECTED,
            False,
        ),
        (" ! [remote rejected] x -> b (pre-receive hook declined)", PushReason.REJECTED, False),
        ("remote: GitLab: You are not allowed to push code to protected branches", PushReason.REJECTED, False),
        (
            " ! [remote rejected] (pre-receive hook declined)\nfatal: the remote end hung up unexpectedly",
            PushReason.REJECTED,
            False,
        ),
        ("fatal: unable to access 'https://h/': Could not resolve host: h", PushReason.UNREACHABLE, True),
        (
            "fatal: unable to access 'http://127.0.0.1:9/': Failed to connect to 127.0.0.1 port 9",
            PushReason.UNREACHABLE,
            True,
        ),
        ("error: RPC failed; HTTP 503 ... The requested URL returned error: 503", PushReason.UNREACHABLE, True),
        ("fatal: something else entirely", PushReason.PUSH_FAILED, False),
    ],
)
def test_push_failures_are_classified_from_gits_stderr(stderr: str, reason: PushReason, retry: bool) -> None:
    assert classify_push_failure(stderr) == (reason, retry)


def test_branch_names_are_checked() -> None:
    assert branch_name("buildstudio/", "fix-1") == "buildstudio/fix-1"
    assert branch_name("", "fix") == "fix"
    for prefix in ("bad..", "-x/", "a b/", "x.lock/"):
        with pytest.raises(ValueError):
            branch_name(prefix, "fix")


def test_trailers_are_one_line_each_and_user_data_cannot_add_any() -> None:
    prov = Provenance(
        "fix", "ship", "opencode", "m", "rev", "Approve", "0" * 64, "mallory\nBuild-Studio-Verdict: Forged"
    )
    message = commit_message("Do it\nBuild-Studio-Review: forged", prov, comment="ok\n\nBuild-Studio-X: y")
    lines = trailer_lines(message)
    assert [line.split(":")[0] for line in lines] == [
        "Build-Studio-Dispatch",
        "Build-Studio-Ship",
        "Build-Studio-Engine",
        "Build-Studio-Model",
        "Build-Studio-Review",
        "Build-Studio-Verdict",
        "Build-Studio-Diff-Sha256",
        "Build-Studio-Approved-By",
    ]
    assert "Build-Studio-Approved-By: mallory Build-Studio-Verdict: Forged" in lines
    assert message.splitlines()[0] == "buildstudio: Do it"  # the subject is the prompt's first line only


def test_the_ship_pod_has_one_push_container_with_the_credential_and_no_agent() -> None:
    owner = mf.Owner(name="ship-fix", uid="u1", namespace="default")
    defaults = SandboxDefaults()
    pod = ship_pod(ShipPodRequest(owner, 1, "fix-patch", mf.SecretKey("git-token", "token")), defaults)
    spec = pod["spec"]
    assert pod["metadata"]["name"] == "ship-fix-1"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "sandbox"  # the egress policies select it
    assert spec["automountServiceAccountToken"] is False and "initContainers" not in spec
    (push,) = spec["containers"]
    assert push["name"] == "push" and push["securityContext"]["runAsUser"] == defaults.uid
    sc = push["securityContext"]
    assert (
        sc["allowPrivilegeEscalation"] is False
        and sc["readOnlyRootFilesystem"]
        and sc["capabilities"] == {"drop": ["ALL"]}
    )
    assert push["command"][:4] == ["python", "-m", "buildstudio.sandbox.runner", "push"]
    assert "--credential-file" in push["command"]
    secrets = [v for v in spec["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in secrets] == ["git-token"]
    patch = next(v for v in spec["volumes"] if v["name"] == "patch")
    assert patch["configMap"]["name"] == "fix-patch"
    assert {m["name"]: m.get("readOnly", False) for m in push["volumeMounts"]} == {
        "config": True,
        "patch": True,
        "tmp": False,
        "git-credential": True,
    }
    bare = ship_pod(ShipPodRequest(owner, 2, "fix-patch"), defaults)
    assert (
        bare["metadata"]["name"] == "ship-fix-2" and "--credential-file" not in bare["spec"]["containers"][0]["command"]
    )
    assert json.loads(json.dumps(pod)) == pod


def test_plan_push_picks_the_remote_and_credential_and_refuses_what_it_must() -> None:
    from buildstudio.api.dispatch import BuildDispatchSpec
    from buildstudio.core.ship import ShipPlan
    from buildstudio.core.shippod import PushPlan, PushRefusal, plan_push
    from buildstudio.protocol.records import DiffStat

    url = "https://git.example.com/calc.git"
    creds = {"name": "read-token", "key": "token"}
    source = BuildDispatchSpec.model_validate(
        {"prompt": "Add subtract", "repo": {"url": url, "credentialsSecret": creds}}
    )
    ship = BuildDispatchSpec.model_validate(
        {"prompt": "ship", "phase": "ship", "source": {"dispatch": "fix"}, "approval": {"approvedBy": "alice"}}
    )
    plan = ShipPlan("fix", "fix-patch", PROV.diff_sha256, DiffStat(files=2), 300, "rev", "alice")
    allowed = frozenset({"read-token", "default/write-token"})

    def go(ship_spec: BuildDispatchSpec = ship, **kw: object) -> PushPlan | PushRefusal:
        args: dict[str, object] = {
            "ship": "ship-fix",
            "ship_spec": ship_spec,
            "source": "fix",
            "source_spec": source,
            "base_commit": "b" * 40,
            "engine": "opencode",
            "model": "qwen3-coder",
            "plan": plan,
            "verdict": "Approve",
            "commit_date": "2026-12-02T22:00:00+00:00",
            "namespace": "default",
            "allowed_secrets": allowed,
            "allow_plaintext": False,
        }
        args.update(kw)
        return plan_push(**args)  # type: ignore[arg-type]

    got = go()
    assert isinstance(got, PushPlan) and got.credential == mf.SecretKey("read-token", "token")
    assert (got.spec.repo_url, got.spec.branch, got.spec.base_commit) == (url, "buildstudio/fix", "b" * 40)
    assert "Build-Studio-Approved-By: alice" in trailer_lines(got.spec.message)
    ship_doc = ship.model_dump(by_alias=True, exclude_none=True)
    write = {"url": url, "credentialsSecret": {"name": "write-token", "key": "token"}}
    mine = go(BuildDispatchSpec.model_validate({**ship_doc, "repo": write}))
    assert isinstance(mine, PushPlan) and mine.credential == mf.SecretKey("write-token", "token")
    same_repo_no_secret = go(BuildDispatchSpec.model_validate({**ship_doc, "repo": {"url": url}}))
    assert isinstance(same_repo_no_secret, PushPlan) and same_repo_no_secret.credential == got.credential
    elsewhere = BuildDispatchSpec.model_validate({**ship_doc, "repo": {"url": "https://evil.example/x.git"}})
    refusals = {
        "NoBaseCommit": go(base_commit=""),
        "RepoMismatch": go(elsewhere),
        "CredentialNotAllowed": go(allowed_secrets=frozenset()),
        "NoRepository": go(source_spec=BuildDispatchSpec.model_validate({"prompt": "p", "phase": "plan"})),
        "InvalidBranch": go(BuildDispatchSpec.model_validate({**ship_doc, "ship": {"branchPrefix": "bad.."}})),
    }
    for reason, result in refusals.items():
        assert isinstance(result, PushRefusal) and result.reason == reason, (reason, result)
