"""The ship pod and what it pushes (pure): branch name, commit message with provenance
trailers, the push container's spec, the pod manifest, and the push-failure classifier.

An allowed ship (``phases.ship.decide_ship``) runs one pod ``<ship>-<attempt>`` with ONE
container, ``push``: no agent, no model, the git credential mounted only there. It clones the
source's repository at its base commit, checks the stored patch against the reviewed sha256,
applies it, commits with the trailers below and pushes a new branch (never forced). Its log is
the result channel, read once the container has terminated, as the reporter's.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from buildstudio.api import inputs
from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import manifests as mf
from buildstudio.core import names
from buildstudio.core.credentials import credential_refusal
from buildstudio.core.forge import Forge, project_of
from buildstudio.core.settings import SandboxDefaults
from buildstudio.core.ship import ShipPlan

PUSH_CONTAINER = "push"
DEFAULT_BRANCH_PREFIX = "buildstudio/"
SHIP_SPEC_KEY = "ship.json"
SHIP_SPEC_FILE = f"{mf.CONFIG_MOUNT}/{SHIP_SPEC_KEY}"
PATCH_MOUNT = "/var/run/buildstudio/patch"
PATCH_FILE = f"{PATCH_MOUNT}/{mf.PATCH_KEY}"
PUSH_TMP = "/tmp"
TRAILER_PREFIX = "Build-Studio-"
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class PushReason(enum.StrEnum):
    """The ship dispatch's ``Succeeded`` reason after its pod ran."""

    PUSHED = "Pushed"
    AUTH_FAILED = "PushAuthFailed"  # the remote refused the credential (or none was given)
    REJECTED = "PushRejected"  # non-fast-forward, protected branch, pre-receive hook refusal
    UNREACHABLE = "RemoteUnreachable"  # retried a bounded number of times first
    PATCH_MISMATCH = "PatchMismatch"  # the stored patch is not the reviewed one: nothing pushed
    PATCH_DOES_NOT_APPLY = "PatchDoesNotApply"  # not on the base commit
    PULL_REQUEST_FAILED = "PullRequestFailed"  # pushed, but the forge refused the pull request
    PUSH_FAILED = "PushFailed"  # any other git failure, with git's words in the message


# ---------------------------------------------------------------- branch and message


def branch_name(prefix: str, source: str) -> str:
    """``<prefix><source>``; ValueError when that is not a git branch name."""
    branch = f"{prefix}{source}"
    problem = inputs.check_ref(branch)
    if problem is not None or branch.startswith("-") or _SHA.match(branch):
        raise ValueError(f"branch {branch!r} is not usable: {problem or 'option-like or a commit id'}")
    return branch


def _value(text: str, limit: int = 256) -> str:
    """A trailer value: one line, no control characters (user data must not add trailers)."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


@dataclass(frozen=True)
class Provenance:
    """Who made, judged and approved the diff: the commit's trailers."""

    dispatch: str  # the source (build) dispatch that produced the diff
    ship: str  # the ship dispatch that pushes it
    engine: str
    model: str
    review: str
    verdict: str
    diff_sha256: str
    approved_by: str

    def trailers(self) -> list[tuple[str, str]]:
        return [
            ("Dispatch", self.dispatch),
            ("Ship", self.ship),
            ("Engine", self.engine),
            ("Model", self.model),
            ("Review", self.review),
            ("Verdict", self.verdict),
            ("Diff-Sha256", self.diff_sha256),
            ("Approved-By", self.approved_by),
        ]


def subject_of(prompt: str) -> str:
    """The prompt's first non-blank line: a pipeline's build prompt goes on with a marked plan or
    review section, which must not run into the subject."""
    first = next((line for line in prompt.splitlines() if line.strip()), "")
    return _value(first, 72)


def commit_message(prompt: str, prov: Provenance, *, comment: str = "") -> str:
    """Subject from the task's first line, a short body, then the provenance trailers (the last
    paragraph, one ``Key: value`` a line, as ``git interpret-trailers`` reads them)."""
    subject = subject_of(prompt) or f"Build Studio change from {prov.dispatch}"
    body = [
        f"Applied by Build Studio from dispatch {_value(prov.dispatch)} after review "
        f"{_value(prov.review)} ({_value(prov.verdict)}) and approval by {_value(prov.approved_by)}."
    ]
    if comment.strip():
        body.append(f"Approval comment: {_value(comment, 512)}")
    trailers = [f"{TRAILER_PREFIX}{key}: {_value(value) or '-'}" for key, value in prov.trailers()]
    return "\n\n".join([f"buildstudio: {subject}", "\n".join(body), "\n".join(trailers)]) + "\n"


# ---------------------------------------------------------------- the push container's spec


class PullRequestSpec(BaseModel):
    """The pull/merge request the push container opens after the push (``core/forge.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    forge: Forge
    api_url: str = Field(alias="apiUrl", pattern=r"^https?://[^\s@/]+(/[^\s]*)?$")
    project: str = Field(min_length=1, max_length=512)
    base: str = Field(min_length=1, max_length=255)
    title: str = Field(min_length=1, max_length=256)
    body: str = Field("", max_length=60000)


class ShipSpec(BaseModel):
    """``ship.json``: everything the push container does, written by the operator."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    repo_url: str = Field(alias="repoUrl", min_length=1)
    base_commit: str = Field(alias="baseCommit", pattern=_SHA.pattern)
    patch_sha256: str = Field(alias="patchSha256", pattern=r"^[0-9a-f]{64}$")
    branch: str = Field(min_length=1, max_length=255)
    message: str = Field(min_length=1, max_length=16384)
    commit_date: str = Field("", alias="commitDate")  # fixed: a re-run makes the same commit
    author_name: str = Field("Build Studio", alias="authorName", max_length=256)
    author_email: str = Field("buildstudio@localhost", alias="authorEmail", max_length=256)
    timeout_seconds: float = Field(600.0, alias="timeoutSeconds", gt=0)
    pull_request: PullRequestSpec | None = Field(None, alias="pullRequest")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


# ---------------------------------------------------------------- push failures


_AUTH = (
    "authentication failed",
    "http basic: access denied",
    "invalid username or password",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "permission denied (publickey",
    "the requested url returned error: 401",
    "the requested url returned error: 403",
    "http 401",
    "http 403",
)
_REJECTED = (
    "[rejected]",
    "[remote rejected]",
    "non-fast-forward",
    "fetch first",
    "pre-receive hook declined",
    "update hook declined",
    "protected branch",
    "hook declined",
    "failed to push some refs",
)
_UNREACHABLE = (
    "could not resolve host",
    "temporary failure in name resolution",
    "connection refused",
    "connection timed out",
    "connection reset",
    "failed to connect",
    "couldn't connect to server",
    "network is unreachable",
    "no route to host",
    "the remote end hung up unexpectedly",
    "early eof",
    "operation timed out",
    "returned error: 502",
    "returned error: 503",
    "returned error: 504",
)


def classify_push_failure(stderr: str) -> tuple[PushReason, bool]:
    """``(reason, retryable)`` for a failed git clone/push from its stderr. A refusal wins over
    a hang-up (git prints both when the remote rejects): only an unreachable remote is retried."""
    text = stderr.lower()
    if any(m in text for m in _AUTH):
        return PushReason.AUTH_FAILED, False
    if any(m in text for m in _REJECTED):
        return PushReason.REJECTED, False
    if any(m in text for m in _UNREACHABLE):
        return PushReason.UNREACHABLE, True
    return PushReason.PUSH_FAILED, False


# ---------------------------------------------------------------- the pod


@dataclass(frozen=True)
class ShipPodRequest:
    owner: mf.Owner  # the ship dispatch
    attempt: int
    patch_config_map: str  # the source's patch ConfigMap, mounted read-only
    credential: mf.SecretKey | None = None  # the git token: this pod's only Secret


def ship_pod(req: ShipPodRequest, defaults: SandboxDefaults) -> mf.Manifest:
    """The ship pod ``<ship>-<attempt>``: restricted PSS, no SA token, one container ``push``
    under the clone's uid. Labelled a sandbox, so the namespace's baseline policy and the
    attempt's egress policy (the git remote only) select it."""
    args = ["-m", "buildstudio.sandbox.runner", "push", "--spec", SHIP_SPEC_FILE, "--patch", PATCH_FILE]
    args += ["--scratch", f"{PUSH_TMP}/push"]
    mounts = [
        mf._mount("config", mf.CONFIG_MOUNT, read_only=True),
        mf._mount("patch", PATCH_MOUNT, read_only=True),
        mf._mount("tmp", PUSH_TMP),
    ]
    volumes: list[mf.Manifest] = [
        {"name": "config", "configMap": {"name": names.config_name(req.owner.name)}},
        {
            "name": "patch",
            "configMap": {"name": req.patch_config_map, "items": [{"key": mf.PATCH_KEY, "path": mf.PATCH_KEY}]},
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": defaults.workspace_size}},
    ]
    if req.credential is not None:
        volumes.append(mf._secret_volume("git-credential", req.credential, "token"))
        mounts.append(mf._mount("git-credential", mf.GIT_CREDENTIAL_MOUNT, read_only=True))
        args += ["--credential-file", f"{mf.GIT_CREDENTIAL_MOUNT}/token"]
    if defaults.allow_plaintext_credentials:
        args.append("--allow-plaintext-credentials")
    container: mf.Manifest = {
        "name": PUSH_CONTAINER,
        "image": defaults.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*defaults.python, *args],
        "env": [{"name": "HOME", "value": PUSH_TMP}],
        "resources": mf._helper_resources(),
        "securityContext": {**mf._container_security(), "runAsUser": defaults.uid, "runAsGroup": defaults.uid},
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: mf.Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": defaults.termination_grace_seconds,
        "securityContext": mf._pod_security(defaults.uid),
        "containers": [container],
        "volumes": volumes,
    }
    if defaults.service_account_name:
        spec["serviceAccountName"] = defaults.service_account_name
    if defaults.node_selector:
        spec["nodeSelector"] = dict(defaults.node_selector)
    if defaults.runtime_class_name:
        spec["runtimeClassName"] = defaults.runtime_class_name
    extra = {names.LABEL_ATTEMPT: str(req.attempt)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": mf._meta(names.pod_name(req.owner.name, req.attempt), req.owner, "sandbox", extra),
        "spec": spec,
    }


def ship_config_map(owner: mf.Owner, spec: ShipSpec) -> mf.Manifest:
    """The ConfigMap mounted at /etc/buildstudio in the ship pod: ``ship.json``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": mf._meta(names.config_name(owner.name), owner, "config"),
        "data": {SHIP_SPEC_KEY: spec.to_json()},
    }


def trailer_lines(message: str) -> Sequence[str]:
    """The ``Build-Studio-*`` trailer lines of a commit message (for tests and the CLI)."""
    return [line for line in message.splitlines() if line.startswith(TRAILER_PREFIX)]


# ---------------------------------------------------------------- what a launch pushes


@dataclass(frozen=True)
class PushPlan:
    """What the ship pod gets: its spec, and the git credential to mount (if any)."""

    spec: ShipSpec
    credential: mf.SecretKey | None


@dataclass(frozen=True)
class PushRefusal:
    reason: str
    message: str


def plan_push(
    *,
    ship: str,
    ship_spec: BuildDispatchSpec,
    source: str,
    source_spec: BuildDispatchSpec,
    base_commit: str,
    engine: str,
    model: str,
    plan: ShipPlan,
    verdict: str,
    commit_date: str,
    namespace: str,
    review_text: str = "",
    allowed_secrets: Collection[str],
    allow_plaintext: bool,
) -> PushPlan | PushRefusal:
    """The push of an allowed ship, or why it cannot run. The remote is always the source's
    repository (its base commit is there, and the review judged the diff against it). The
    credential: the ship's own ``spec.repo.credentialsSecret`` when the ship names that same
    repository (a push often needs a write token the build's clone did not), else the source's;
    either only if the admin allows it (``core.credentials``)."""
    repo = source_spec.repo
    if repo is None:
        return PushRefusal("NoRepository", f"source dispatch {source} has no spec.repo: nowhere to push")
    if not _SHA.match(base_commit):
        return PushRefusal(
            "NoBaseCommit", f"source dispatch {source} records no base commit (status.baseCommit): build it again"
        )
    secret = repo.credentials_secret
    if ship_spec.repo is not None:
        if ship_spec.repo.url != repo.url:
            return PushRefusal(
                "RepoMismatch",
                f"spec.repo.url {ship_spec.repo.url} is not the source's repository {repo.url}: a ship pushes "
                "where the diff was made",
            )
        secret = ship_spec.repo.credentials_secret or secret
    refusal = credential_refusal(
        namespace=namespace,
        repo_url=repo.url,
        repo_secret=secret.name if secret is not None else None,
        model_base_url="",
        model_key=False,
        allowed_secrets=allowed_secrets,
        allow_plaintext=allow_plaintext,
    )
    if refusal is not None:
        return PushRefusal(refusal.reason, refusal.message)
    prefix = ship_spec.ship.branch_prefix if ship_spec.ship is not None else DEFAULT_BRANCH_PREFIX
    try:
        branch = branch_name(prefix, source)
    except ValueError as e:
        return PushRefusal("InvalidBranch", f"spec.ship.branchPrefix: {e}")
    prov = Provenance(
        dispatch=source,
        ship=ship,
        engine=engine,
        model=model,
        review=plan.review,
        verdict=verdict,
        diff_sha256=plan.sha256,
        approved_by=plan.approved_by,
    )
    spec = ShipSpec(
        repo_url=repo.url,
        base_commit=base_commit,
        patch_sha256=plan.sha256,
        branch=branch,
        message=commit_message(source_spec.prompt, prov, comment=plan.comment),
        commit_date=commit_date,
        timeout_seconds=float(ship_spec.timeouts.run_seconds),
    )
    opts = ship_spec.pull_request
    if opts is not None:
        project = opts.project or project_of(repo.url)
        base = opts.base or repo.ref
        if not project:
            return PushRefusal("InvalidPullRequest", f"spec.pullRequest.project: none given and none in {repo.url}")
        if _SHA.match(base) or inputs.check_ref(base) is not None:
            return PushRefusal("InvalidPullRequest", f"spec.pullRequest.base: {base!r} is not a branch to merge into")
        if opts.api_url.startswith("http://") and not allow_plaintext:
            return PushRefusal(
                "PlaintextCredential",
                f"spec.pullRequest.apiUrl: {opts.api_url} is plain http; the token goes only over https",
            )
        if secret is None:
            return PushRefusal("InvalidPullRequest", "spec.pullRequest needs a credentialsSecret for the forge's API")
        pr = PullRequestSpec(
            forge=opts.forge,
            api_url=opts.api_url,
            project=project,
            base=base,
            title=opts.title or spec.message.splitlines()[0],
            body=pull_request_body(spec.message, review_text),
        )
        spec = spec.model_copy(update={"pull_request": pr})
    credential = mf.SecretKey(secret.name, secret.key) if secret is not None else None
    return PushPlan(spec, credential)


def pull_request_body(message: str, review_text: str) -> str:
    """The summary (the commit message's body), the review's text, and the provenance."""
    paragraphs = message.rstrip("\n").split("\n\n")
    summary = "\n\n".join(paragraphs[1:-1]) or paragraphs[0]
    review = review_text.strip()[:16000] or "(no review text)"
    return f"{summary}\n\n## Review\n\n{review}\n\n## Provenance\n\n```\n{paragraphs[-1]}\n```\n"
