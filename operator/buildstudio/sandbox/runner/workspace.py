"""The workspace: clone repo@ref with plain ``git``, write the reporter's pristine base, find the base commit.

Whatever the dispatch author wrote (URL, ref) reaches git as data: it is checked by
``core.inputs`` again here (defence in depth: the API refused it already), passed after
``--end-of-options``, and the ref is resolved to a commit before anything is checked out. Git
runs with explicit argv (no GitPython clone: CVE-2022-24439), a transport allow-list, a scrubbed
environment and a deadline on every call. The git token, when there is one, reaches git only as
``http.<origin>.extraHeader`` through ``GIT_CONFIG_*`` in that git's environment: never argv, the
URL or ``.git/config``.

GitPython is imported only where it is used: importing it costs ≈ 45 ms of the runner's
start-up, and the usual case (a plain repo already in the workspace) gets its base commit
from one ``git rev-parse`` instead. Anything unusual takes the GitPython path, as before.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from buildstudio.api import inputs
from buildstudio.protocol.spec import RepoSource

# Environment that changes how GitPython (or git) finds the repository: leave those cases to GitPython.
_GIT_LOCATION_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")
REV_PARSE_TIMEOUT_SECONDS = 30.0
# The whole clone (every try and the ref's fetch) ends by then; the runner's own bound may be shorter.
CLONE_TIMEOUT_SECONDS = 300.0
BASE_TIMEOUT_SECONDS = 120.0
# A clone that fails to reach the remote is tried again: in a cluster the pod's egress policy is
# created together with the pod and may take effect a moment after the container starts.
CLONE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
_TRANSIENT_GIT_ERRORS = (
    "could not resolve host",
    "temporary failure in name resolution",
    "connection refused",
    "connection timed out",
    "failed to connect",
    "couldn't connect to server",
    "network is unreachable",
    "no route to host",
    "the remote end hung up unexpectedly",
    "early eof",
)
DEFAULT_GIT_USERNAME = "x-access-token"  # GitHub's; GitLab takes oauth2
BASE_REPO = "repo.git"
BASE_COMMIT_FILE = "base-commit"
# Transports git may use: none but these (remote helpers such as ext:: included).
_REMOTE_PROTOCOLS = (
    "-c", "protocol.allow=never",
    "-c", "protocol.https.allow=always",
    "-c", "protocol.ssh.allow=always",
    "-c", "protocol.http.allow=always",
)  # fmt: skip
_FILE_PROTOCOL = ("-c", "protocol.file.allow=always")
# Inherited git variables kept; every other GIT_* (GIT_DIR, GIT_CONFIG_*, GIT_ALLOW_PROTOCOL,
# GIT_TRACE*, …) could redirect git, widen its transports or log what it sends.
_GIT_ENV_KEPT = frozenset(
    {
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSH_VARIANT",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_NOSYSTEM",
    }
)
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class WorkspaceError(Exception):
    """The workspace cannot be used: clone failed, not a git repo, no commit."""


class _GitFailed(Exception):
    """One git command failed; ``detail`` is its stderr on one line."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def prepare(workspace: Path, repo: RepoSource | None) -> str:
    """Make ``workspace`` a git work tree at the wanted commit; returns the base commit SHA.

    Blocking (git subprocesses): call it from a thread. Without a token: the single-process
    runner has none (the sandbox's clone container calls ``clone`` itself).
    """
    if repo is not None:
        clone(workspace, repo, local_paths=repo.local_paths)
    return base_commit(workspace)


def credential_env(url: str, token: str, username: str = DEFAULT_GIT_USERNAME) -> dict[str, str]:
    """Git config, as environment, that sends ``token`` as Basic auth to ``url``'s origin only
    (``http.<origin>.extraHeader``); nothing for a URL that is not http(s)."""
    parts = urlsplit(url)
    if not token or parts.scheme not in ("https", "http") or not parts.hostname:
        return {}
    host = parts.netloc.rpartition("@")[2]  # the origin, without any user
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{parts.scheme}://{host}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def git_env(extra: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a git subprocess: no inherited GIT_* beyond ``_GIT_ENV_KEPT``, no prompts."""
    base = os.environ if environ is None else environ
    env = {k: v for k, v in base.items() if not k.startswith("GIT_") or k in _GIT_ENV_KEPT}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.update(extra or {})
    return env


def check_source(repo: RepoSource, *, local_paths: bool) -> str | None:
    """Why git must not be given this URL or ref (option-like, unknown transport, …); None if fine."""
    problem = inputs.check_repo_url(repo.url, local=local_paths)
    if problem is None and repo.ref:
        problem = inputs.check_ref(repo.ref)
    return problem


def clone(
    workspace: Path,
    repo: RepoSource,
    *,
    token: str | None = None,
    allow_plaintext_credentials: bool = False,
    local_paths: bool = False,
    username: str = DEFAULT_GIT_USERNAME,
    delays: tuple[float, ...] = CLONE_RETRY_DELAYS,
    timeout: float = CLONE_TIMEOUT_SECONDS,
) -> str:
    """Clone ``repo`` into the empty ``workspace`` and check out its ref, detached; returns the commit.

    ``token`` (read from a file by the caller) goes to an http(s) remote as a header; over plain
    http:// only with ``allow_plaintext_credentials``. ``local_paths``: local mode, where local
    paths and file:// are allowed. Failures to reach the remote are retried after ``delays``.
    """
    label = f"{repo.url}@{repo.ref or 'default branch'}"
    problem = check_source(repo, local_paths=local_paths)
    if problem:
        raise WorkspaceError(f"refusing to clone {label!r}: {problem}")
    extra: dict[str, str] = {}
    if token:
        if urlsplit(repo.url).scheme == "http" and not allow_plaintext_credentials:
            raise WorkspaceError(
                f"refusing to send the git credential over plain http:// to {repo.url}: use https:// "
                "(or have the admin allow plaintext credentials)"
            )
        extra = credential_env(repo.url, token, username)
    if workspace.exists() and any(workspace.iterdir()):
        raise WorkspaceError(f"cannot clone {repo.url} into {workspace}: the directory is not empty")
    workspace.mkdir(parents=True, exist_ok=True)
    protocols = _REMOTE_PROTOCOLS + (_FILE_PROTOCOL if local_paths else ())
    env = git_env(extra)
    deadline = time.monotonic() + timeout
    for attempt in range(len(delays) + 1):
        try:
            return _clone_once(workspace, repo, protocols, env, deadline)
        except _GitFailed as e:
            _empty(workspace)
            retry = attempt < len(delays) and is_transient(e.detail)
            if retry and time.monotonic() + delays[attempt] < deadline:
                time.sleep(delays[attempt])
                continue
            tries = f" (after {attempt + 1} tries)" if attempt else ""
            raise WorkspaceError(f"clone of {label} failed{tries}: {e.detail}") from None
    raise AssertionError("unreachable")


def _clone_once(
    workspace: Path, repo: RepoSource, protocols: Sequence[str], env: Mapping[str, str], deadline: float
) -> str:
    # No cwd: a relative local path (local mode) is relative to where the runner was started.
    _git([*protocols, "clone", "--quiet", "--no-checkout", "--end-of-options", repo.url, str(workspace)],
         cwd=None, env=env, deadline=deadline)  # fmt: skip
    sha = _resolve(workspace, repo.ref, env, deadline)
    if sha is None:
        # Not a branch or tag the clone brought (a sha off every branch, refs/pull/…): fetch it.
        _git([*protocols, "fetch", "--quiet", "--no-tags", "origin", "--end-of-options", repo.ref],
             cwd=workspace, env=env, deadline=deadline)  # fmt: skip
        sha = _rev_parse(workspace, "FETCH_HEAD", env, deadline)
    if sha is None:
        raise _GitFailed(f"{repo.ref!r} is not a commit")
    _git(["checkout", "--quiet", "--detach", sha], cwd=workspace, env=env, deadline=deadline)
    return sha


def _resolve(workspace: Path, ref: str, env: Mapping[str, str], deadline: float) -> str | None:
    """The commit of ``ref`` among what the clone brought: a branch, a tag, then any name or sha."""
    if not ref:
        sha = _rev_parse(workspace, "HEAD", env, deadline)
        if sha is None:
            raise _GitFailed("the repository has no commit on its default branch")
        return sha
    for name in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        sha = _rev_parse(workspace, name, env, deadline)
        if sha is not None:
            return sha
    return None


def _rev_parse(workspace: Path, name: str, env: Mapping[str, str], deadline: float) -> str | None:
    try:
        out = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
                   cwd=workspace, env=env, deadline=deadline)  # fmt: skip
    except _GitFailed:
        return None
    sha = out.strip()
    return sha if _SHA.match(sha) else None


def _git(args: Sequence[str], *, cwd: Path | None, env: Mapping[str, str], deadline: float) -> str:
    """Run git; its stdout, or ``_GitFailed`` with its stderr. Killed (with its children) at ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise WorkspaceError(f"git {_subcommand(args)} not started: out of time")
    proc = subprocess.Popen(
        ["git", *args],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: a timeout kills git's helpers too
    )
    try:
        out, err = proc.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5.0)
        raise WorkspaceError(f"git {_subcommand(args)} did not finish in time") from None
    if proc.returncode != 0:
        detail = " ".join(err.decode("utf-8", "replace").split())[:500]
        raise _GitFailed(detail or f"git {_subcommand(args)} exited with {proc.returncode}")
    return out.decode("utf-8", "replace")


def _subcommand(args: Sequence[str]) -> str:
    """The git subcommand of ``args`` (past ``-c x=y`` and ``--git-dir=…``), for messages."""
    it = iter(args)
    for arg in it:
        if arg == "-c":
            next(it, None)
        elif not arg.startswith("--git-dir="):
            return arg
    return "git"


def write_base(workspace: Path, base: Path) -> str:
    """Write the reporter's pristine base: ``base/repo.git`` (bare, the workspace's HEAD commit as
    ``refs/heads/base``, no remote in its config) and ``base/base-commit``; returns that commit.

    Works on a fresh clone and on an existing local repo (local mode): the objects are fetched
    (no hardlinks, nothing shared), so later changes in the workspace cannot reach the base.
    """
    sha = base_commit(workspace)
    repo_git = base / BASE_REPO
    base.mkdir(parents=True, exist_ok=True)
    if repo_git.exists():
        shutil.rmtree(repo_git)  # a re-run of the clone container: start over
    env = git_env()
    deadline = time.monotonic() + BASE_TIMEOUT_SECONDS
    git_dir = f"--git-dir={repo_git}"
    try:
        _git(["init", "--quiet", "--bare", "--template=", str(repo_git)], cwd=None, env=env, deadline=deadline)
        _git([*_REMOTE_PROTOCOLS, *_FILE_PROTOCOL, git_dir, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
              "--depth=1", "--end-of-options", str(workspace.resolve()), f"{sha}:refs/heads/base"],
             cwd=None, env=env, deadline=deadline)  # fmt: skip
        _git([git_dir, "symbolic-ref", "HEAD", "refs/heads/base"], cwd=None, env=env, deadline=deadline)
        head = _git([git_dir, "rev-parse", "--verify", "HEAD^{commit}"], cwd=None, env=env, deadline=deadline)
    except _GitFailed as e:
        raise WorkspaceError(f"cannot write the base of {workspace} to {repo_git}: {e.detail}") from None
    if head.strip() != sha:
        raise WorkspaceError(f"the base in {repo_git} is {head.strip()!r}, not the workspace's {sha}")
    tmp = base / f".{BASE_COMMIT_FILE}.tmp"
    tmp.write_text(sha, encoding="utf-8")
    tmp.replace(base / BASE_COMMIT_FILE)
    return sha


EXCLUDE_TIMEOUT_SECONDS = 30.0


def exclude_engine_files(workspace: Path, paths: Sequence[str], *, base_git_dir: Path | None = None) -> list[str]:
    """Add ``paths`` — files an engine's CLI creates in the work tree by itself (grok's
    ``.grok/settings.json``) — to ``info/exclude`` of the workspace's git dir, and of the reporter's
    base (``base_git_dir``) when given, unless the repository tracks them (then a change to them is
    the agent's work and stays in the diff). Returns the paths excluded. Blocking (git): a thread.
    """
    if not paths:
        return []
    env = git_env()
    deadline = time.monotonic() + EXCLUDE_TIMEOUT_SECONDS
    safe = ["-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false"]
    try:
        tracked = _git([*safe, "ls-files", "-z", "--end-of-options", *paths], cwd=workspace, env=env, deadline=deadline)
        exclude = _git([*safe, "rev-parse", "--git-path", "info/exclude"], cwd=workspace, env=env, deadline=deadline)
    except _GitFailed as e:
        raise WorkspaceError(f"cannot exclude the engine's own files in {workspace}: {e.detail}") from None
    known = {p for p in tracked.split("\0") if p}
    wanted = [p for p in paths if p not in known and "\n" not in p]
    targets = [(workspace / exclude.strip()) if not Path(exclude.strip()).is_absolute() else Path(exclude.strip())]
    if base_git_dir is not None:
        targets.append(base_git_dir / "info" / "exclude")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        present = target.read_text(encoding="utf-8", errors="replace").splitlines() if target.exists() else []
        missing = ["/" + p.lstrip("/") for p in wanted if "/" + p.lstrip("/") not in present]
        if missing:
            with target.open("a", encoding="utf-8") as f:
                if present:
                    f.write("\n")
                f.write("# written by the Build Studio runner: the engine CLI's own files\n")
                f.writelines(line + "\n" for line in missing)
    return wanted


def precreate_engine_dirs(workspace: Path, paths: Sequence[str]) -> list[Path]:
    """Create the missing directories of ``paths`` (an engine CLI's own files) readable by all.

    grok makes ``.grok/`` with mode 0700; in the pod the reporter runs under another uid and could
    not list it (DiffCaptureFailed). A directory that exists (the repository's) is left alone.
    Returns the directories created."""
    made: list[Path] = []
    for rel in paths:
        parent = (workspace / rel).parent
        missing = []
        while parent != workspace and not parent.exists() and not parent.is_symlink():
            missing.append(parent)
            parent = parent.parent
        for d in reversed(missing):
            d.mkdir()
            d.chmod(0o755)
            made.append(d)
    return made


def is_transient(git_error: str) -> bool:
    """A git failure to reach the remote (worth another try), not a refusal or a bad ref."""
    text = git_error.lower()
    return any(marker in text for marker in _TRANSIENT_GIT_ERRORS)


def _empty(workspace: Path) -> None:
    for child in workspace.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def base_commit(workspace: Path) -> str:
    if not workspace.is_dir():
        raise WorkspaceError(f"workspace {workspace} does not exist")
    return _plain_repo_head(workspace) or _base_commit_gitpython(workspace)


def _plain_repo_head(workspace: Path) -> str | None:
    """HEAD's commit when ``workspace`` is plainly the top of a non-bare repo, else None.

    None means "not sure": the caller asks GitPython, whose verdict (and error message) counts.
    Sure means: a ``.git`` directory here (no worktree/submodule gitfile, no reftable), no git
    location variables, and git agreeing that this is the top of the work tree and that HEAD is
    a commit (not unborn, not a tag) — exactly the case where GitPython returns the same hash.
    """
    text = str(workspace)
    dot_git = workspace / ".git"
    if (
        "$" in text
        or "~" in text  # GitPython expands these in paths
        or any(name in os.environ for name in _GIT_LOCATION_ENV)
        or not dot_git.is_dir()
        or (dot_git / "commondir").exists()
        or (dot_git / "reftable").exists()  # GitPython cannot read reftable refs
    ):
        return None
    argv = [
        "git",
        "rev-parse",
        "--is-bare-repository",
        "--absolute-git-dir",
        "--show-toplevel",
        "HEAD",
        "HEAD^{commit}",
    ]
    try:
        done = subprocess.run(argv, cwd=workspace, capture_output=True, timeout=REV_PARSE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    if done.returncode != 0 or len(lines) != 5:
        return None
    bare, git_dir, top, head, commit = lines
    try:
        same_place = Path(git_dir).resolve() == dot_git.resolve() and Path(top).resolve() == workspace.resolve()
    except OSError:
        return None
    if bare != "false" or not same_place or head != commit or len(commit) not in (40, 64):
        return None
    return commit


def _base_commit_gitpython(workspace: Path) -> str:
    import git

    try:
        r = git.Repo(workspace)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
        raise WorkspaceError(
            f"workspace {workspace} is not a git repository "
            "(the diff needs one: give a repo, or `git init` and commit it)"
        ) from e
    if r.working_tree_dir is None or Path(r.working_tree_dir).resolve() != workspace.resolve():
        raise WorkspaceError(f"workspace {workspace} is not the top of a git work tree")
    try:
        return str(r.head.commit.hexsha)
    except ValueError as e:
        raise WorkspaceError(f"workspace {workspace} has no commit to diff against") from e
