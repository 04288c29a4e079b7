"""The workspace: clone repo@ref (GitPython) or take the repo already there; the diff needs git."""

from __future__ import annotations

from pathlib import Path

import git

from buildstudio.runner.spec import RepoSource


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


def clone(workspace: Path, repo: RepoSource) -> None:
    if workspace.exists() and any(workspace.iterdir()):
        raise WorkspaceError(f"cannot clone {repo.url} into {workspace}: the directory is not empty")
    workspace.mkdir(parents=True, exist_ok=True)
    try:
        r = git.Repo.clone_from(repo.url, workspace, no_checkout=bool(repo.ref))
        if repo.ref:
            r.git.checkout(repo.ref)
    except git.GitCommandError as e:
        detail = " ".join(str(e.stderr or e).split())[:500]
        raise WorkspaceError(f"clone of {repo.url}@{repo.ref or 'default branch'} failed: {detail}") from e


def base_commit(workspace: Path) -> str:
    if not workspace.is_dir():
        raise WorkspaceError(f"workspace {workspace} does not exist")
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
