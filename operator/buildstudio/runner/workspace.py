"""The workspace: clone repo@ref (GitPython) or take the repo already there; the diff needs git.

GitPython is imported only where it is used: importing it costs ≈ 45 ms of the runner's
start-up, and the usual case (a plain repo already in the workspace) gets its base commit
from one ``git rev-parse`` instead. Anything unusual takes the GitPython path, as before.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from buildstudio.runner.spec import RepoSource

# Environment that changes how GitPython (or git) finds the repository: leave those cases to GitPython.
_GIT_LOCATION_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")
REV_PARSE_TIMEOUT_SECONDS = 30.0
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


class WorkspaceError(Exception):
    """The workspace cannot be used: clone failed, not a git repo, no commit."""


def prepare(workspace: Path, repo: RepoSource | None) -> str:
    """Make ``workspace`` a git work tree at the wanted commit; returns the base commit SHA.

    Blocking (git subprocesses): call it from a thread. The runner's kill of its descendants
    bounds a clone that hangs.
    """
    if repo is not None:
        clone(workspace, repo)
    return base_commit(workspace)


def credential_env(url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Git config, as environment, that sends ``BUILDSTUDIO_GIT_TOKEN`` (from the dispatch's
    ``repo.credentialsSecret``) to an http(s) remote: never in argv, the URL or ``.git/config``,
    and only for the clone. The user name defaults to ``x-access-token`` (GitHub; GitLab takes
    ``oauth2``), set with ``BUILDSTUDIO_GIT_USERNAME``."""
    token = environ.get("BUILDSTUDIO_GIT_TOKEN", "")
    if not token or not url.startswith(("https://", "http://")):
        return {}
    user = environ.get("BUILDSTUDIO_GIT_USERNAME") or "x-access-token"
    basic = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        "GIT_TERMINAL_PROMPT": "0",
    }


def clone(workspace: Path, repo: RepoSource, *, delays: tuple[float, ...] = CLONE_RETRY_DELAYS) -> None:
    """Clone ``repo`` into the empty ``workspace``; network failures are retried after ``delays``."""
    import git

    if workspace.exists() and any(workspace.iterdir()):
        raise WorkspaceError(f"cannot clone {repo.url} into {workspace}: the directory is not empty")
    workspace.mkdir(parents=True, exist_ok=True)
    extra = credential_env(repo.url, os.environ)
    for attempt in range(len(delays) + 1):
        try:
            r = git.Repo.clone_from(
                repo.url, workspace, no_checkout=bool(repo.ref), env={**os.environ, **extra} if extra else None
            )
            if repo.ref:
                r.git.checkout(repo.ref)
            return
        except git.GitCommandError as e:
            detail = " ".join(str(e.stderr or e).split())[:500]
            if attempt < len(delays) and is_transient(detail):
                _empty(workspace)
                time.sleep(delays[attempt])
                continue
            tries = f" (after {attempt + 1} tries)" if attempt else ""
            raise WorkspaceError(f"clone of {repo.url}@{repo.ref or 'default branch'} failed{tries}: {detail}") from e


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
