"""``python -m buildstudio.sandbox.runner push``: the ship pod's one container (``core/shippod.py``).

No agent runs in this pod: it clones the source's repository at its base commit (with the git
credential, a Secret volume of this container only), checks that the stored patch is the
reviewed one (its sha256 recomputed here), applies it to the index, commits it with the
provenance trailers and pushes a new branch — never forced, every user value after
``--end-of-options``, the token only as an ``http.<origin>.extraHeader``. It prints exactly one
``result`` record (the operator's result channel) whose ``push`` names the branch and commit,
or the reason it could not: ``PatchMismatch`` (nothing cloned, nothing pushed),
``PushAuthFailed``, ``PushRejected``, ``RemoteUnreachable`` (after bounded retries),
``PatchDoesNotApply``, ``PushFailed``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from buildstudio.api import inputs
from buildstudio.core.shippod import PushReason, ShipSpec, classify_push_failure
from buildstudio.protocol import records
from buildstudio.protocol.spec import RepoSource
from buildstudio.sandbox.runner import workspace
from buildstudio.sandbox.runner.output import RecordWriter, one_line
from buildstudio.sandbox.runner.supervise import utcnow

MAX_PATCH_BYTES = 64 * 1024 * 1024  # uncompressed; a ConfigMap holds at most 1 MiB compressed
MAX_SPEC_BYTES = 64 * 1024
PUSH_RETRY_DELAYS = (1.0, 2.0, 4.0)


class PushError(Exception):
    def __init__(self, reason: PushReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def read_patch(path: Path, limit: int = MAX_PATCH_BYTES) -> bytes:
    """The patch (gzip, as the patch ConfigMap stores it; plain text also read), bounded."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        if len(raw) > limit:
            raise PushError(PushReason.PATCH_MISMATCH, f"the patch is larger than {limit} bytes")
        return raw
    with gzip.open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PushError(PushReason.PATCH_MISMATCH, f"the patch decompresses to more than {limit} bytes")
    return data


_WHY = {
    PushReason.AUTH_FAILED: "the remote refused the git credential (or asked for one): ",
    PushReason.REJECTED: "the remote refused the push (non-fast-forward, protected branch or a hook): ",
    PushReason.UNREACHABLE: "the remote could not be reached: ",
}


def _git_failure(stage: str, detail: str) -> PushError:
    reason, _ = classify_push_failure(detail)
    return PushError(reason, one_line(f"{_WHY.get(reason, '')}{stage} failed: {detail}", 2000))


def push(
    spec: ShipSpec,
    patch: bytes,
    scratch: Path,
    *,
    token: str | None = None,
    allow_plaintext_credentials: bool = False,
    local_paths: bool = False,
    delays: tuple[float, ...] = PUSH_RETRY_DELAYS,
) -> tuple[str, int]:
    """Clone, verify, apply, commit, push; ``(commit sha, tries)`` or ``PushError``."""
    digest = hashlib.sha256(patch).hexdigest()
    if digest != spec.patch_sha256:
        raise PushError(
            PushReason.PATCH_MISMATCH,
            f"the stored patch has sha256 {digest}, not the reviewed {spec.patch_sha256}: nothing pushed",
        )
    problem = inputs.check_ref(spec.branch) or inputs.check_repo_url(spec.repo_url, local=local_paths)
    if problem is not None or spec.branch.startswith("-"):
        raise PushError(PushReason.PUSH_FAILED, f"refusing to push {spec.branch!r} to {spec.repo_url!r}: {problem}")
    deadline = time.monotonic() + spec.timeout_seconds
    ws = scratch / "repo"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        workspace.clone(
            ws,
            RepoSource(url=spec.repo_url, ref=spec.base_commit),
            token=token,
            allow_plaintext_credentials=allow_plaintext_credentials,
            local_paths=local_paths,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
    except workspace.WorkspaceError as e:
        raise _git_failure("the clone", str(e)) from None
    env = workspace.git_env(_identity(spec))
    local = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"]
    patch_file = scratch / "change.patch"
    patch_file.write_bytes(patch)
    message_file = scratch / "message.txt"
    message_file.write_text(spec.message, encoding="utf-8")
    try:
        workspace._git([*local, "apply", "--index", "--whitespace=nowarn", "--", str(patch_file)],
                       cwd=ws, env=env, deadline=deadline)  # fmt: skip
    except workspace._GitFailed as e:
        raise PushError(
            PushReason.PATCH_DOES_NOT_APPLY,
            one_line(f"the patch does not apply on {spec.base_commit}: {e.detail}", 2000),
        ) from None
    try:
        workspace._git([*local, "commit", "--quiet", "--no-verify", "--allow-empty-message", "-F", str(message_file)],
                       cwd=ws, env=env, deadline=deadline)  # fmt: skip
        commit = workspace._git(["rev-parse", "--verify", "HEAD^{commit}"], cwd=ws, env=env, deadline=deadline).strip()
    except workspace._GitFailed as e:
        raise PushError(PushReason.PUSH_FAILED, one_line(f"the commit failed: {e.detail}", 2000)) from None
    push_env = dict(env)
    if token:
        push_env.update(workspace.credential_env(spec.repo_url, token))
    protocols = [*workspace._REMOTE_PROTOCOLS, *(workspace._FILE_PROTOCOL if local_paths else ())]
    # No "+" in the refspec and no --force: an existing branch elsewhere is a rejection, never overwritten.
    argv = [*protocols, "push", "--quiet", "--no-verify", "--end-of-options",
            spec.repo_url, f"{commit}:refs/heads/{spec.branch}"]  # fmt: skip
    for attempt in range(len(delays) + 1):
        try:
            workspace._git(argv, cwd=ws, env=push_env, deadline=deadline)
            return commit, attempt + 1
        except workspace._GitFailed as e:
            _, retry = classify_push_failure(e.detail)
            if retry and attempt < len(delays) and time.monotonic() + delays[attempt] < deadline:
                time.sleep(delays[attempt])
                continue
            tries = f" (after {attempt + 1} tries)" if attempt else ""
            raise _git_failure(f"the push of {spec.branch}{tries}", e.detail) from None
    raise AssertionError("unreachable")


PR_TIMEOUT_SECONDS = 30.0
MAX_ANSWER_BYTES = 1024 * 1024


def open_pull_request(spec: ShipSpec, token: str, *, allow_plaintext_credentials: bool = False) -> str:
    """Open the pull/merge request ``spec.pull_request`` asks for; its web URL, or ``PushError``."""
    import json

    import httpx

    from buildstudio.core.forge import pull_request, pull_request_url

    pr = spec.pull_request
    assert pr is not None
    if pr.api_url.startswith("http://") and not allow_plaintext_credentials:
        raise PushError(
            PushReason.PULL_REQUEST_FAILED, f"refusing to send the token over plain http:// to {pr.api_url}"
        )
    req = pull_request(
        pr.forge, pr.api_url, pr.project, token, head=spec.branch, base=pr.base, title=pr.title, body=pr.body
    )
    raw = b""
    try:
        with (
            httpx.Client(timeout=PR_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client,
            client.stream(req.method, req.url, headers=req.headers, json=req.json) as answer,
        ):
            for chunk in answer.iter_bytes():
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    break
            status = answer.status_code
    except httpx.HTTPError as e:
        raise PushError(PushReason.PULL_REQUEST_FAILED, f"the {pr.forge} API at {pr.api_url} failed: {e}") from None
    text = raw[:MAX_ANSWER_BYTES].decode("utf-8", "replace")
    if status not in (200, 201):
        raise PushError(
            PushReason.PULL_REQUEST_FAILED,
            one_line(f"the {pr.forge} API answered {status} to the pull request of {spec.branch}: {text}", 1000),
        )
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    url = pull_request_url(pr.forge, data) if isinstance(data, dict) else ""
    if not url:
        raise PushError(PushReason.PULL_REQUEST_FAILED, f"the {pr.forge} API's answer names no pull request URL")
    return url


def _identity(spec: ShipSpec) -> dict[str, str]:
    env = {
        "GIT_AUTHOR_NAME": spec.author_name,
        "GIT_AUTHOR_EMAIL": spec.author_email,
        "GIT_COMMITTER_NAME": spec.author_name,
        "GIT_COMMITTER_EMAIL": spec.author_email,
    }
    if spec.commit_date:
        # Fixed dates: the same patch on the same base gives the same commit, so a re-run of the
        # pod after a lost result finds its own branch "up to date" instead of rejected.
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = spec.commit_date
    return env


def result_of(
    spec: ShipSpec | None,
    *,
    commit: str = "",
    error: PushError | None = None,
    started_at: str,
    tries: int = 1,
    pr_url: str = "",
) -> records.ResultRecord:
    """The one result record (pure). A failed pull request still names the pushed commit."""
    branch = spec.branch if spec is not None else ""
    remote = spec.repo_url if spec is not None else ""
    if error is None:
        message = f"pushed branch {branch} at {commit[:12]} to {remote}" + (
            f" (after {tries} tries)" if tries > 1 else ""
        )
        message += f"; pull request {pr_url}" if pr_url else ""
        return records.ResultRecord(
            outcome=records.Outcome.COMPLETED,
            message=message,
            phase="ship",
            base_commit=spec.base_commit if spec is not None else "",
            push=records.PushRecord(
                reason=PushReason.PUSHED, branch=branch, commit=commit, remote=remote, pull_request_url=pr_url
            ),
            started_at=started_at,
            finished_at=utcnow(),
        )
    return records.ResultRecord(
        outcome=records.Outcome.RUNNER_ERROR,
        message=error.message,
        phase="ship",
        push=records.PushRecord(reason=error.reason, branch=branch, commit=commit, remote=remote),
        started_at=started_at,
        finished_at=utcnow(),
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m buildstudio.sandbox.runner push", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--spec", type=Path, required=True, help="ship.json (core.shippod.ShipSpec)")
    ap.add_argument("--patch", type=Path, required=True, help="the stored patch (gzip)")
    ap.add_argument("--scratch", type=Path, required=True, help="an empty directory for the clone")
    ap.add_argument("--credential-file", type=Path, help="the git token (a Secret volume of this container only)")
    ap.add_argument("--allow-plaintext-credentials", action="store_true", help="send the token over http:// too")
    ap.add_argument("--local-paths", action="store_true", help="allow local paths and file:// (local mode only)")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started_at = utcnow()
    writer = RecordWriter(max_events=0, max_bytes=1 << 20, progress_interval=60.0)
    spec: ShipSpec | None = None
    try:
        raw = args.spec.read_bytes()[: MAX_SPEC_BYTES + 1]
        if len(raw) > MAX_SPEC_BYTES:
            raise ValueError(f"larger than {MAX_SPEC_BYTES} bytes")
        spec = ShipSpec.model_validate_json(raw)
    except (OSError, ValueError) as e:
        error = PushError(PushReason.PUSH_FAILED, one_line(f"cannot read the ship spec {args.spec}: {e}", 2000))
        writer.result(result_of(None, error=error, started_at=started_at))
        return 2
    try:
        token = None
        if args.credential_file is not None:
            token = args.credential_file.read_text(encoding="utf-8").strip()[:16384] or None
        if token and urlsplit(spec.repo_url).scheme == "http" and not args.allow_plaintext_credentials:
            raise PushError(
                PushReason.AUTH_FAILED,
                f"refusing to send the git credential over plain http:// to {spec.repo_url}: use https://",
            )
        try:
            patch = read_patch(args.patch)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise PushError(PushReason.PATCH_MISMATCH, f"cannot read the stored patch: {e}") from None
        commit, tries = push(
            spec,
            patch,
            args.scratch,
            token=token,
            allow_plaintext_credentials=args.allow_plaintext_credentials,
            local_paths=args.local_paths,
        )
    except PushError as e:
        writer.result(result_of(spec, error=e, started_at=started_at))
        print(f"push: {e.reason}: {e.message}", file=sys.stderr)
        return 1
    except (OSError, workspace.WorkspaceError) as e:
        error = PushError(PushReason.PUSH_FAILED, one_line(f"{type(e).__name__}: {e}", 2000))
        writer.result(result_of(spec, error=error, started_at=started_at))
        return 1
    pr_url = ""
    if spec.pull_request is not None:
        try:
            pr_url = open_pull_request(spec, token or "", allow_plaintext_credentials=args.allow_plaintext_credentials)
        except PushError as e:
            writer.result(result_of(spec, commit=commit, error=e, started_at=started_at))
            print(f"push: {spec.branch} at {commit}; {e.reason}: {e.message}", file=sys.stderr)
            return 1
    writer.result(result_of(spec, commit=commit, started_at=started_at, tries=tries, pr_url=pr_url))
    print(f"push: {spec.branch} at {commit}", file=sys.stderr)
    return 0
