"""Capture what a run changed in a git workspace: the diff against the base commit.

The diff covers the working tree (tracked changes, deletions, renames and new untracked
files that are not ignored) against `base_commit`, also when the agent made commits
itself. Nothing of the user's repository state changes: the working tree is staged into
a *copy* of the index, and the blobs that staging writes go into a temporary object
directory (the real one is only read, as an alternate).

`git diff` output is streamed: it goes through a gzip compressor and a sha256 in
chunks, and only a bounded excerpt is kept in memory, so a 50 MB patch costs about the
size of the compressed cap. Blocking (subprocesses): call it from asyncio through
`asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from buildstudio.records import DiffStat, Patch

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
    timer = threading.Timer(_remaining(deadline), popen.kill)  # bound the wait on a stuck git
    timer.start()
    try:
        while chunk := popen.stdout.read(READ_CHUNK):
            sink.write(chunk)
        stderr = popen.stderr.read(64 * 1024)
        code = popen.wait()
    finally:
        timer.cancel()
    if time.monotonic() >= deadline:
        raise GitDiffError("git diff capture timed out")
    if code != 0:
        raise GitDiffError(f"git diff exited {code}: {stderr.decode(errors='replace')[:500]}")


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
