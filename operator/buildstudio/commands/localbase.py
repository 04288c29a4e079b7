"""The work tree a local run starts from, so that its diff is exactly the agent's work.

``worktree_changes`` lists a repository's uncommitted changes (``git status``): ``run --local``
refuses ``--workspace`` on a dirty tree and warns when ``--repo PATH`` leaves changes out.
``snapshot_base`` (``--workspace --allow-dirty``) commits the work tree as it is into the
reporter's pristine base — never into the user's repository: no ref, index or object of theirs
is touched. It stages exactly as the reporter's diff does (``gitdiff.capture_from_base``: a
``.git``-free copy, ``.gitignore`` rules only, ``add -A``), so whatever was there before the
agent started is in the base, and only the agent's changes are in the diff.
``make_sample_repo`` is the work tree of a run that names no repository: a tiny calculator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import git

from buildstudio.adapters import gitdiff

STATUS_TIMEOUT_SECONDS = 60.0
SNAPSHOT_TIMEOUT_SECONDS = 300.0
SNAPSHOT_IDENT = {
    "GIT_AUTHOR_NAME": "buildstudio",
    "GIT_AUTHOR_EMAIL": "buildstudio@localhost",
    "GIT_COMMITTER_NAME": "buildstudio",
    "GIT_COMMITTER_EMAIL": "buildstudio@localhost",
}

# The sample repository of the quick start (materialised when no repo is given), and its task.
SAMPLE_REPO: dict[str, str] = {
    "README.md": "# calc\n\nA tiny calculator, the sample repository of `buildstudio run --local`.\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
}
SAMPLE_PROMPT = "Add a subtract(a, b) function to calc.py, next to add(), and a test_calc.py that checks both."


def make_sample_repo(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLE_REPO.items():
        (path / name).write_text(text, encoding="utf-8")
    repo = git.Repo.init(path)
    repo.index.add(list(SAMPLE_REPO))
    actor = git.Actor("buildstudio", "buildstudio@localhost")
    repo.index.commit("sample repository", author=actor, committer=actor)
    repo.close()


class SnapshotError(Exception):
    """The work tree could not be snapshotted into the base."""


def parse_status(raw: bytes) -> list[str]:
    """Paths of ``git status --porcelain=v1 -z`` (a rename's source is its own entry after it)."""
    out: list[str] = []
    entries = iter(raw.split(b"\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        out.append(os.fsdecode(entry[3:]))
        if entry[:1] in (b"R", b"C"):
            next(entries, None)  # the rename's or copy's source
    return out


def worktree_changes(path: Path, timeout: float = STATUS_TIMEOUT_SECONDS) -> list[str] | None:
    """Uncommitted changes (tracked and untracked, not ignored) of the repository at ``path``;
    None when ``path`` is not a git work tree or git cannot tell. Blocking."""
    argv = ["git", "-C", str(path), "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_status(done.stdout) if done.returncode == 0 else None


def changes_summary(paths: list[str], shown: int = 5) -> str:
    """``3 files: a.py, b.py, c.py`` (the first ``shown``)."""
    head = ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
    return f"{len(paths)} {'file' if len(paths) == 1 else 'files'}: {head}"


def snapshot_base(
    workspace: Path,
    base: Path,
    scratch: Path,
    *,
    max_copy_bytes: int = gitdiff.MAX_COPY_BYTES,
    timeout: float = SNAPSHOT_TIMEOUT_SECONDS,
) -> str:
    """Commit ``workspace``'s work tree on top of the base commit in ``base/repo.git`` (written by
    the clone role), point the base at it and return its id. Blocking."""
    from buildstudio.sandbox.runner.roles import BASE_COMMIT, BASE_REPO

    deadline = time.monotonic() + timeout
    repo_git = (base / BASE_REPO).resolve()
    parent = (base / BASE_COMMIT).read_text(encoding="utf-8").strip()
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()
    tree = scratch / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    env = gitdiff.trusted_env(scratch, repo_git)
    # New objects go into the base itself (no alternates): the base stays self-contained.
    env["GIT_OBJECT_DIRECTORY"] = str(repo_git / "objects")
    del env["GIT_ALTERNATE_OBJECT_DIRECTORIES"]
    env.update(SNAPSHOT_IDENT)
    argv = ["git", f"--git-dir={repo_git}", f"--work-tree={tree}", *gitdiff.GIT_OPTS, *gitdiff.TRUSTED_OPTS]

    def git(*args: str, stdin: bytes = b"", ok: tuple[int, ...] = (0,)) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SnapshotError("out of time")
        try:
            done = subprocess.run([*argv, *args], input=stdin, capture_output=True, env=env, cwd=tree,
                                  timeout=remaining, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise SnapshotError(f"git {args[0]} did not finish in time") from None
        if done.returncode not in ok:
            raise SnapshotError(f"git {args[0]} failed: {done.stderr.decode('utf-8', 'replace').strip()[:300]}")
        return done.stdout

    try:
        listing = git("ls-tree", "-r", "-d", "-z", "--name-only", parent)
        tracked_dirs = {os.fsdecode(p) for p in listing.split(b"\0") if p}

        def ignored(dirs: list[str]) -> set[str]:
            # As the reporter's capture does: untracked directories .gitignore names are not copied.
            asked = [d for d in dirs if d not in tracked_dirs]
            if not asked:
                return set()
            query = b"".join(b"./" + os.fsencode(d) + b"\0" for d in asked)
            return gitdiff.parse_check_ignore(
                git("check-ignore", "-z", "-v", "-n", "--no-index", "--stdin", stdin=query, ok=(0, 1))
            )

        gitdiff.copy_tree(workspace, tree, max_bytes=max_copy_bytes, deadline=deadline, prune=ignored)
        git("read-tree", parent)
        git("add", "-A", "--", ".")
        tree_id = git("write-tree").decode().strip()
        if tree_id == git("rev-parse", f"{parent}^{{tree}}").decode().strip():
            return parent  # nothing uncommitted after all (e.g. only files git ignores)
        message = "buildstudio: snapshot of the uncommitted work tree (--allow-dirty)"
        commit = git("commit-tree", tree_id, "-p", parent, "-m", message).decode().strip()
        git("update-ref", "refs/heads/base", commit, parent)
    except (OSError, gitdiff.GitDiffError) as e:
        raise SnapshotError(str(e)) from e
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        for name in ("index", "index.lock"):
            (scratch / name).unlink(missing_ok=True)
    tmp = base / f".{BASE_COMMIT}.tmp"
    tmp.write_text(commit, encoding="utf-8")
    tmp.replace(base / BASE_COMMIT)
    return commit
