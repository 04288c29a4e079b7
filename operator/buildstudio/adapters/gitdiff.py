"""Capture what a run changed in a git workspace: the diff against the base commit.

The diff covers the working tree (tracked changes, deletions, renames and new untracked
files that are not ignored) against `base_commit`, also when the agent made commits
itself. Nothing of the user's repository state changes: the working tree is staged into
a *copy* of the index, and the blobs that staging writes go into a temporary object
directory (the real one is only read, as an alternate).

`capture_from_base` is the trusted form (the sandbox's reporter): it never reads the
workspace's `.git` (config, hooks, index, objects are the agent's), but copies the work tree
without any `.git` entry and diffs the copy with the base repository the clone wrote.

`git diff` output is streamed: it goes through a gzip compressor and a sha256 in
chunks, and only a bounded excerpt is kept in memory, so a 50 MB patch costs about the
size of the compressed cap. Blocking (subprocesses): call it from asyncio through
`asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from buildstudio.protocol.records import DiffStat, Patch, ResultRecord

EXCERPT_BYTES = 16 * 1024
PATCH_CAP_BYTES = 768 * 1024  # compressed; base64 makes it ≈ 1 MiB, the ConfigMap limit
GIT_TIMEOUT_S = 300.0
READ_CHUNK = 64 * 1024
# Compression granularity: the kept prefix of a capped patch loses less than this.
PIECE_BYTES = 8 * 1024
# Stable output whatever the user's git config says.
GIT_OPTS = (
    "-c",
    "core.quotePath=false",
    "-c",
    "color.ui=never",
    "-c",
    "diff.noprefix=false",
    "-c",
    "core.safecrlf=false",
)
DIFF_OPTS = (
    "--cached",
    "-M",
    "--no-ext-diff",
    "--no-textconv",
    "--no-color",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)
# gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty fixed-Huffman deflate block: closes a stream cut at a sync-flush point.
_FINAL_EMPTY_BLOCK = b"\x03\x00"
_TRAILER_ROOM = 16


class GitDiffError(RuntimeError):
    """git failed or timed out while capturing the diff."""


@dataclass(frozen=True)
class DiffResult:
    stat: DiffStat
    excerpt: str  # bounded, cut at a line boundary, with a marker line when cut
    excerpt_truncated: bool
    bytes: int  # size of the whole `git diff` output
    patch: Patch  # gzip+base64 of the whole patch (a prefix when `patch.truncated`)
    # capture_from_base only: `.git` entries below the top that were skipped (their repositories'
    # files are in the diff as ordinary files), and special files (FIFOs, sockets, devices) left out.
    nested_repos: tuple[str, ...] = ()
    special_files: tuple[str, ...] = ()

    def fill(self, rec: ResultRecord) -> None:
        """Put this diff into a result record (its diff fields only)."""
        rec.diff_stat = self.stat
        rec.diff = self.excerpt
        rec.diff_bytes = self.bytes
        rec.diff_truncated = self.excerpt_truncated
        rec.patch = self.patch


# --------------------------------------------------------------------------- pure parts


def parse_numstat(raw: bytes) -> DiffStat:
    """DiffStat from `git diff --numstat -z` output (renames are `a\\td\\t\\0old\\0new\\0`)."""
    fields = raw.split(b"\0")
    files = additions = deletions = binary = 0
    i = 0
    while i < len(fields):
        head = fields[i]
        i += 1
        if not head:
            continue
        parts = head.split(b"\t", 2)
        if len(parts) < 3:
            continue
        added, deleted, path = parts
        if not path:  # rename/copy: the two paths follow as separate fields
            i += 2
        files += 1
        if added == b"-" or deleted == b"-":
            binary += 1
        else:
            additions += int(added) if added.isdigit() else 0
            deletions += int(deleted) if deleted.isdigit() else 0
    return DiffStat(files=files, additions=additions, deletions=deletions, binary_files=binary)


def excerpt_of(head: bytes, total: int, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes of a patch cut at a line boundary, plus a marker when cut."""
    if total <= limit:
        return head.decode("utf-8", errors="replace"), False
    window = head[:limit]
    cut = window.rfind(b"\n") + 1 or limit
    text = window[:cut].decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        text += "\n"
    return text + f"... [diff truncated: showing {cut} of {total} bytes]\n", True


class PatchSink:
    """Streaming gzip + sha256 + excerpt of a patch, with a cap on the compressed size.

    Input is compressed in pieces of whole lines (≤ PIECE_BYTES) with a sync flush after
    each, so the output is always a valid cut point: when the next piece would exceed the
    cap, the stream is closed there (final empty block + gzip trailer) and the rest is only
    counted. An empty patch gives empty `data`.
    """

    def __init__(self, excerpt_bytes: int = EXCERPT_BYTES, cap_bytes: int = PATCH_CAP_BYTES) -> None:
        self.excerpt_bytes = excerpt_bytes
        self.cap_bytes = cap_bytes
        self.total = 0
        self.kept = 0
        self.truncated = False
        self._head = bytearray()
        self._carry = bytearray()
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._out = bytearray(_GZIP_HEADER)
        self._crc = 0
        self._sha = hashlib.sha256()
        self._closed = False

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.excerpt_bytes + 1 - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        if self.truncated:
            return
        self._carry += chunk
        self._drain(PIECE_BYTES)

    def _drain(self, keep_below: int) -> None:
        """Compress whole lines, PIECE_BYTES at most at a time, until under `keep_below` remain."""
        carry = self._carry
        while carry and len(carry) >= keep_below and not self.truncated:
            # Cut after the last newline of the piece; a longer line is cut where it must be.
            cut = carry.rfind(b"\n", 0, PIECE_BYTES) + 1 or min(PIECE_BYTES, len(carry))
            piece = bytes(carry[:cut])
            del carry[:cut]
            self._commit(piece)

    def _commit(self, piece: bytes) -> None:
        out = self._deflate.compress(piece) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        if len(self._out) + len(out) + _TRAILER_ROOM > self.cap_bytes:
            self.truncated = True
            self._carry.clear()
            return
        self._out += out
        self._crc = zlib.crc32(piece, self._crc)
        self._sha.update(piece)
        self.kept += len(piece)

    def close(self) -> bytes:
        """The gzip bytes of the kept patch."""
        if not self._closed:
            self._closed = True
            self._drain(1)
            tail = _FINAL_EMPTY_BLOCK if self.truncated else self._deflate.flush(zlib.Z_FINISH)
            self._out += tail + struct.pack("<II", self._crc, self.kept & 0xFFFFFFFF)
        return bytes(self._out)

    def result(self) -> tuple[Patch, str, bool]:
        """(Patch, excerpt, excerpt_truncated) once the whole patch was written."""
        data = self.close()
        patch = Patch(
            data=base64.b64encode(data).decode("ascii") if self.total else "",
            bytes=self.total,
            truncated=self.truncated,
            sha256=self._sha.hexdigest(),
        )
        excerpt, cut = excerpt_of(bytes(self._head), self.total, self.excerpt_bytes)
        return patch, excerpt, cut


# --------------------------------------------------------------------------- git IO


def is_git_repo(path: Path) -> bool:
    """True when `path` is the top of a git work tree."""
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False
    try:
        return not repo.bare and Path(repo.working_tree_dir or "").resolve() == Path(path).resolve()
    finally:
        repo.close()


def head_commit(workspace: Path) -> str:
    """The full hash of HEAD in `workspace`."""
    repo = git.Repo(workspace)
    try:
        return str(repo.head.commit.hexsha)
    finally:
        repo.close()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise GitDiffError("git diff capture timed out")
    return left


def _git(repo: git.Repo, *args: str, env: Mapping[str, str], deadline: float) -> bytes:
    timeout_s = _remaining(deadline)
    try:
        out: Any = repo.git.execute(
            ["git", *GIT_OPTS, *args],
            env=dict(env),
            kill_after_timeout=timeout_s,
            stdout_as_string=False,
            strip_newline_in_stdout=False,
        )
    except git.GitCommandError as exc:
        raise GitDiffError(f"git {args[0]} failed: {str(exc)[:500]}") from exc
    return bytes(out)


@contextmanager
def _scratch_index(repo: git.Repo, deadline: float) -> Iterator[dict[str, str]]:
    """Env for git commands that stage into a throw-away index and object directory."""
    top = Path(repo.working_tree_dir or ".")
    index_rel, objects_rel = (
        _git(repo, "rev-parse", "--git-path", "index", "--git-path", "objects", env={}, deadline=deadline)
        .decode()
        .splitlines()
    )
    index = top / index_rel
    objects = (top / objects_rel).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="bs-gitdiff-"))
    try:
        scratch_index = scratch / "index"
        if index.exists():
            shutil.copyfile(index, scratch_index)
        (scratch / "objects").mkdir()
        alternates = os.pathsep.join(filter(None, [str(objects), os.environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES")]))
        yield {
            "GIT_INDEX_FILE": str(scratch_index),
            "GIT_OBJECT_DIRECTORY": str(scratch / "objects"),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": alternates,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stream_diff(repo: git.Repo, base_commit: str, env: Mapping[str, str], sink: PatchSink, deadline: float) -> None:
    proc: Any = repo.git.execute(
        ["git", *GIT_OPTS, "diff", *DIFF_OPTS, base_commit, "--"],
        env=dict(env),
        as_process=True,
        stdout_as_string=False,
    )
    popen = proc.proc
    code, stderr = _pump(popen, sink, deadline, lambda: bytes(popen.stderr.read(64 * 1024)))
    if code != 0:
        raise GitDiffError(f"git diff exited {code}: {stderr.decode(errors='replace')[:500]}")


def _pump(popen: Any, sink: PatchSink, deadline: float, read_stderr: Callable[[], bytes]) -> tuple[int, bytes]:
    """Stream a process's stdout into `sink`; (exit code, what `read_stderr` read)."""
    timer = threading.Timer(_remaining(deadline), popen.kill)  # bound the wait on a stuck git
    timer.start()
    try:
        while chunk := popen.stdout.read(READ_CHUNK):
            sink.write(chunk)
        stderr = read_stderr()
        code = int(popen.wait())
    finally:
        timer.cancel()
    if time.monotonic() >= deadline:
        raise GitDiffError("git diff capture timed out")
    return code, stderr


def capture(
    workspace: Path,
    base_commit: str,
    *,
    excerpt_bytes: int = EXCERPT_BYTES,
    patch_cap_bytes: int = PATCH_CAP_BYTES,
    timeout_s: float = GIT_TIMEOUT_S,
) -> DiffResult:
    """Diff of the working tree (untracked files included) against `base_commit`.

    `timeout_s` bounds the whole capture (all git commands together).
    Raises GitDiffError when git fails (not a repo, unknown commit, timeout).
    """
    deadline = time.monotonic() + timeout_s
    try:
        repo = git.Repo(workspace)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise GitDiffError(f"not a git repository: {workspace}") from exc
    try:
        _git(repo, "rev-parse", "--verify", "--quiet", f"{base_commit}^{{commit}}", env={}, deadline=deadline)
        with _scratch_index(repo, deadline) as env:
            _git(repo, "add", "-A", "--", ".", env=env, deadline=deadline)
            numstat = _git(repo, "diff", *DIFF_OPTS, "--numstat", "-z", base_commit, "--", env=env, deadline=deadline)
            sink = PatchSink(excerpt_bytes, patch_cap_bytes)
            _stream_diff(repo, base_commit, env, sink, deadline)
    finally:
        repo.close()
    patch, excerpt, cut = sink.result()
    return DiffResult(
        stat=parse_numstat(numstat), excerpt=excerpt, excerpt_truncated=cut, bytes=sink.total, patch=patch
    )


# --------------------------------------------------------------------------- trusted capture

MAX_COPY_BYTES = 4 * 1024**3
COPY_CHUNK = 1 << 20
# The base commit comes from the trusted clone: a full object name, never a rev expression.
_OBJECT_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Nothing the repository's own config could name runs, and no cache of the agent's is consulted.
TRUSTED_OPTS = (
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.untrackedCache=false",
)


class Entry(enum.Enum):
    GIT = "git"  # a `.git` file, directory or link: the agent's repository metadata
    DIR = "dir"
    FILE = "file"
    LINK = "link"
    SPECIAL = "special"  # FIFO, socket, device: never opened


def classify(name: str, mode: int) -> Entry:
    """What the copy does with a directory entry, from its name and lstat mode."""
    if name.lower() == ".git":  # any case: `.GIT` is `.git` on case-insensitive file systems
        return Entry.GIT
    if stat.S_ISDIR(mode):
        return Entry.DIR
    if stat.S_ISREG(mode):
        return Entry.FILE
    if stat.S_ISLNK(mode):
        return Entry.LINK
    return Entry.SPECIAL


def parse_check_ignore(out: bytes) -> set[str]:
    """Paths `git check-ignore -z -v -n` reports as ignored (a `!` pattern re-includes)."""
    fields = out.split(b"\0")
    ignored: set[str] = set()
    for i in range(0, len(fields) - 3, 4):
        pattern, path = fields[i + 2], fields[i + 3]
        if pattern and not pattern.startswith(b"!"):
            ignored.add(os.fsdecode(path[2:] if path.startswith(b"./") else path))
    return ignored


@dataclass(frozen=True)
class TreeCopy:
    bytes: int  # file contents and link targets copied
    nested_repos: tuple[str, ...]
    special_files: tuple[str, ...]


def copy_tree(
    src: Path,
    dst: Path,
    *,
    max_bytes: int,
    deadline: float,
    prune: Callable[[list[str]], Collection[str]] = lambda dirs: (),
) -> TreeCopy:
    """Copy `src` into the empty directory `dst`: no `.git` entry at any depth, links as links.

    Never follows a symlink and never opens a special file. Breadth-first, one level at a time:
    `prune` gets the level's new sub-directories (relative posix paths, already created empty in
    `dst`, with every `.gitignore` above them copied) and returns those not to descend into.
    Raises GitDiffError past `max_bytes`, past the deadline, or when something cannot be read.
    """
    copied = 0
    nested: list[str] = []
    special: list[str] = []
    dst.mkdir(exist_ok=True)
    level = [""]
    while level:
        subdirs: list[str] = []
        for rel in level:
            here = src / rel
            try:
                with os.scandir(here) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise GitDiffError(f"cannot list {_shown(rel or '.')} in the workspace: {exc.strerror}") from exc
            for entry in entries:
                _remaining(deadline)
                path = f"{rel}/{entry.name}" if rel else entry.name
                target = dst / path
                try:
                    kind = classify(entry.name, entry.stat(follow_symlinks=False).st_mode)
                    if kind is Entry.GIT:
                        if rel:
                            nested.append(_shown(path))
                    elif kind is Entry.DIR:
                        target.mkdir()
                        subdirs.append(path)
                    elif kind is Entry.LINK:
                        link = os.readlink(entry.path)  # noqa: PTH115 - Path.readlink would normalise it
                        copied += len(os.fsencode(link))
                        if copied > max_bytes:
                            raise GitDiffError(_too_big(max_bytes, path))
                        target.symlink_to(link)
                    elif kind is Entry.FILE:
                        copied = _copy_file(entry.path, target, path, copied, max_bytes, deadline)
                    else:
                        special.append(_shown(path))
                except OSError as exc:
                    raise GitDiffError(f"cannot copy {_shown(path)} from the workspace: {exc.strerror}") from exc
        if subdirs:
            skip = set(prune(subdirs))
            if skip:
                for path in skip:
                    (dst / path).rmdir()
                subdirs = [d for d in subdirs if d not in skip]
        level = subdirs
    return TreeCopy(copied, tuple(nested), tuple(special))


def _shown(path: str) -> str:
    """A path for messages and records: a name that is not UTF-8 must not break JSON output."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _too_big(max_bytes: int, path: str) -> str:
    return f"the workspace holds more than {max_bytes} bytes to diff (the limit was reached at {_shown(path)})"


def _copy_file(src: str, dst: Path, path: str, copied: int, max_bytes: int, deadline: float) -> int:
    """Copy one regular file (its executable bit too); the byte count after it."""
    # O_NOFOLLOW / O_NONBLOCK: a link or FIFO swapped in after the listing is neither followed
    # nor waited on; the fstat below refuses it.
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GitDiffError(f"{_shown(path)} changed while the workspace was copied")
        if copied + st.st_size > max_bytes:
            raise GitDiffError(_too_big(max_bytes, path))
        mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            while data := os.read(fd, COPY_CHUNK):
                copied += len(data)
                if copied > max_bytes:  # the file grew since its fstat
                    raise GitDiffError(_too_big(max_bytes, path))
                os.write(out, data)  # a regular file: writes are whole
                _remaining(deadline)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return copied


def _run(
    argv: list[str], env: Mapping[str, str], cwd: Path, deadline: float, stdin: bytes = b"", ok: tuple[int, ...] = (0,)
) -> bytes:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, env=dict(env), cwd=cwd, timeout=_remaining(deadline), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GitDiffError("git diff capture timed out") from exc
    if done.returncode not in ok:
        sub = next((a for a in argv[1:] if not a.startswith("-") and "=" not in a), "?")
        raise GitDiffError(f"git {sub} exited {done.returncode}: {done.stderr.decode(errors='replace')[:500]}")
    return done.stdout


def trusted_env(scratch: Path, base_git_dir: Path) -> dict[str, str]:
    """The environment of every git command of `capture_from_base`: no config but the base's."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(scratch),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_INDEX_FILE": str(scratch / "index"),
        "GIT_OBJECT_DIRECTORY": str(scratch / "objects"),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(base_git_dir / "objects"),
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_TERMINAL_PROMPT": "0",
    }


def capture_from_base(
    workspace: Path,
    base_git_dir: Path,
    base_commit: str,
    scratch: Path,
    *,
    excerpt_bytes: int = EXCERPT_BYTES,
    patch_cap_bytes: int = PATCH_CAP_BYTES,
    timeout_s: float = GIT_TIMEOUT_S,
    max_copy_bytes: int = MAX_COPY_BYTES,
) -> DiffResult:
    """Diff of the work tree in `workspace` against `base_commit` of the trusted `base_git_dir`.

    Nothing is read from the workspace's own `.git` (nor from any nested one): the work tree is
    copied into `scratch/tree` without them (nested repositories' files become ordinary files,
    listed in `nested_repos`), untracked directories the repository ignores are left out, and
    git runs on the copy with the base's config only, the index and new objects in `scratch`
    (the base, read-only, is an alternate). Staged with `add -A`, like `capture`.
    `timeout_s` bounds the whole capture. Raises GitDiffError with the reason otherwise.
    """
    deadline = time.monotonic() + timeout_s
    if not _OBJECT_NAME.fullmatch(base_commit):
        raise GitDiffError(f"the base commit must be a full object name, got {base_commit[:80]!r}")
    if not workspace.is_dir():
        raise GitDiffError(f"the workspace {workspace} is not a directory")
    base_git_dir = base_git_dir.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()
    tree = scratch / "tree"
    _clear_scratch(scratch)
    env = trusted_env(scratch, base_git_dir)
    git_argv = ["git", f"--git-dir={base_git_dir}", f"--work-tree={tree}", *GIT_OPTS, *TRUSTED_OPTS]

    def git_run(*args: str, stdin: bytes = b"", ok: tuple[int, ...] = (0,)) -> bytes:
        return _run([*git_argv, *args], env, tree, deadline, stdin, ok)

    try:
        (scratch / "objects").mkdir()
        tree.mkdir()  # git's cwd from here on
        if not git_run("rev-parse", "--verify", "--quiet", f"{base_commit}^{{commit}}", ok=(0, 1, 128)).strip():
            raise GitDiffError(f"base commit {base_commit} is not in the base repository {base_git_dir}")
        listing = git_run("ls-tree", "-r", "-d", "-z", "--name-only", base_commit)
        tracked_dirs = {os.fsdecode(p) for p in listing.split(b"\0") if p}

        def ignored(dirs: list[str]) -> set[str]:
            # Untracked directories git ignores would not be staged anyway (build output such
            # as target/ or node_modules/ must not count against the copy's bound). A tracked
            # one is copied whole: add -A updates tracked files inside ignored directories.
            asked = [d for d in dirs if d not in tracked_dirs]
            if not asked:
                return set()
            # "./" keeps a name that starts with ':' from being read as pathspec magic.
            query = b"".join(b"./" + os.fsencode(d) + b"\0" for d in asked)
            out = git_run("check-ignore", "-z", "-v", "-n", "--no-index", "--stdin", stdin=query, ok=(0, 1))
            return parse_check_ignore(out)

        copy = copy_tree(workspace, tree, max_bytes=max_copy_bytes, deadline=deadline, prune=ignored)
        git_run("read-tree", base_commit)  # tracked files stay tracked, even in ignored directories
        git_run("add", "-A", "--", ".")
        numstat = git_run("diff", *DIFF_OPTS, "--numstat", "-z", base_commit, "--")
        sink = PatchSink(excerpt_bytes, patch_cap_bytes)
        with tempfile.TemporaryFile(dir=scratch) as err:
            popen = subprocess.Popen(
                [*git_argv, "diff", *DIFF_OPTS, base_commit, "--"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,  # a file: a chatty git can never block on a full pipe
                env=env,
                cwd=tree,
            )
            with popen:
                code, _ = _pump(popen, sink, deadline, lambda: b"")
            if code != 0:
                err.seek(0)
                raise GitDiffError(f"git diff exited {code}: {err.read(64 * 1024).decode(errors='replace')[:500]}")
    finally:
        _clear_scratch(scratch)
    patch, excerpt, cut = sink.result()
    return DiffResult(
        stat=parse_numstat(numstat),
        excerpt=excerpt,
        excerpt_truncated=cut,
        bytes=sink.total,
        patch=patch,
        nested_repos=copy.nested_repos,
        special_files=copy.special_files,
    )


def _clear_scratch(scratch: Path) -> None:
    for name in ("tree", "objects"):
        shutil.rmtree(scratch / name, ignore_errors=True)
    for name in ("index", "index.lock"):
        with contextlib.suppress(FileNotFoundError):
            (scratch / name).unlink()
