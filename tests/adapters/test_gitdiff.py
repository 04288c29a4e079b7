"""The workspace diff against real temporary git repositories."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import secrets
import stat
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from buildstudio.adapters.gitdiff import (
    Entry,
    GitDiffError,
    PatchSink,
    capture,
    capture_from_base,
    classify,
    copy_tree,
    excerpt_of,
    head_commit,
    is_git_repo,
    parse_check_ignore,
    parse_numstat,
)

IDENT = ("-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *IDENT, *args], cwd=repo, check=True, capture_output=True, text=True, timeout=60
    ).stdout


def unpack(data: str) -> bytes:
    return gzip.decompress(base64.b64decode(data))


def loose_objects(repo: Path) -> set[str]:
    root = repo / ".git" / "objects"
    return {str(p.relative_to(root)) for p in root.glob("??/*")}


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    (ws / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (ws / "gone.txt").write_text("old\n")
    (ws / "src.txt").write_text("".join(f"line {i}\n" for i in range(20)))
    (ws / ".gitignore").write_text("*.log\n")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "base")
    return ws, git(ws, "rev-parse", "HEAD").strip()


def test_after_opencode_ran(repo: tuple[Path, str]) -> None:
    ws, base = repo
    (ws / "calc.py").write_text("def add(a, b):\n    return int(a) + int(b)\n")
    (ws / "hello.py").write_text('print("hello")\n')  # untracked
    (ws / "debug.log").write_text("ignored\n")
    index_before = (ws / ".git" / "index").read_bytes()
    status_before = git(ws, "status", "--porcelain")
    objects_before = loose_objects(ws)

    r = capture(ws, base)

    assert (r.stat.files, r.stat.additions, r.stat.deletions, r.stat.binary_files) == (2, 2, 1, 0)
    assert "+    return int(a) + int(b)" in r.excerpt
    assert "diff --git a/hello.py b/hello.py\nnew file mode 100644" in r.excerpt
    assert "debug.log" not in r.excerpt
    assert not r.excerpt_truncated and r.bytes == len(r.excerpt.encode())
    patch = unpack(r.patch.data)
    assert patch.decode() == r.excerpt and r.patch.bytes == r.bytes and not r.patch.truncated
    assert r.patch.sha256 == hashlib.sha256(patch).hexdigest()
    # The user's repository is untouched: index, status, object store.
    assert (ws / ".git" / "index").read_bytes() == index_before
    assert git(ws, "status", "--porcelain") == status_before
    assert loose_objects(ws) == objects_before
    # The patch applies to the base commit and reproduces the work tree.
    clone = ws.parent / "clone"
    git(ws.parent, "clone", "-q", str(ws), str(clone))
    (clone / "p.diff").write_bytes(patch)
    git(clone, "apply", "p.diff")
    assert (clone / "hello.py").read_text() == 'print("hello")\n'
    assert (clone / "calc.py").read_text() == (ws / "calc.py").read_text()


def test_agent_committed_itself(repo: tuple[Path, str]) -> None:
    ws, base = repo
    (ws / "new.py").write_text("x = 1\n")
    git(ws, "add", "new.py")
    git(ws, "commit", "-qm", "agent commit")
    (ws / "later.py").write_text("y = 2\n")  # and left something uncommitted
    r = capture(ws, base)
    assert r.stat.files == 2 and r.stat.additions == 2
    assert "b/new.py" in r.excerpt and "b/later.py" in r.excerpt
    assert head_commit(ws) != base


def test_empty_diff(repo: tuple[Path, str]) -> None:
    ws, base = repo
    (ws / "noise.log").write_text("ignored\n")
    r = capture(ws, base)
    assert r.stat.files == 0 and r.bytes == 0 and r.excerpt == ""
    assert r.patch.data == "" and r.patch.bytes == 0 and not r.patch.truncated


def test_delete_rename_binary_and_odd_names(repo: tuple[Path, str]) -> None:
    ws, base = repo
    (ws / "gone.txt").unlink()
    (ws / "src.txt").rename(ws / "moved dir ü.txt")
    (ws / "blob.bin").write_bytes(bytes(range(256)) * 40)
    (ws / "with space é.py").write_text("z = 3\n")
    r = capture(ws, base)
    assert r.stat.files == 4 and r.stat.binary_files == 1
    assert r.stat.deletions == 1 and r.stat.additions == 1
    assert "deleted file mode" in r.excerpt and "-old" in r.excerpt
    assert "rename from src.txt\nrename to moved dir ü.txt" in r.excerpt
    assert "Binary files /dev/null and b/blob.bin differ" in r.excerpt
    assert "+++ b/with space é.py" in r.excerpt
    assert "\x00" not in r.excerpt  # binary content is never dumped


def test_truncated_excerpt_and_capped_patch(repo: tuple[Path, str]) -> None:
    ws, base = repo
    # Incompressible-ish text: sha256 hex lines.
    lines = [hashlib.sha256(str(i).encode()).hexdigest() + "\n" for i in range(20_000)]
    (ws / "big.txt").write_text("".join(lines))
    r = capture(ws, base, excerpt_bytes=4096, patch_cap_bytes=64 * 1024)
    assert r.excerpt_truncated and r.bytes > 1_000_000
    body, marker = r.excerpt.rsplit("... [diff truncated: showing ", 1)
    assert marker == f"{len(body.encode())} of {r.bytes} bytes]\n" and len(body.encode()) <= 4096
    assert body.endswith("\n")
    assert r.patch.truncated and r.patch.bytes == r.bytes
    assert len(base64.b64decode(r.patch.data)) <= 64 * 1024
    kept = unpack(r.patch.data)  # still a valid gzip stream
    assert 100_000 < len(kept) < r.bytes and kept.endswith(b"\n")
    assert r.patch.sha256 == hashlib.sha256(kept).hexdigest()
    assert kept.startswith(body.encode())


def test_errors(tmp_path: Path, repo: tuple[Path, str]) -> None:
    ws, _ = repo
    with pytest.raises(GitDiffError, match="not a git repository"):
        capture(tmp_path / "nope", "HEAD")
    with pytest.raises(GitDiffError):
        capture(ws, "0" * 40)
    assert is_git_repo(ws) and not is_git_repo(tmp_path) and not is_git_repo(ws / "missing")
    (ws / "sub").mkdir()
    assert not is_git_repo(ws / "sub")  # inside a repo, but not its top


def test_timeout_bounds_the_whole_capture(repo: tuple[Path, str]) -> None:
    ws, base = repo
    (ws / "x.py").write_text("x = 1\n")
    with pytest.raises(GitDiffError, match="timed out"):
        capture(ws, base, timeout_s=0.0)
    assert git(ws, "status", "--porcelain") == "?? x.py\n"  # nothing left behind


@pytest.mark.slow
def test_50_megabyte_file_bounded(repo: tuple[Path, str]) -> None:
    ws, base = repo
    with (ws / "huge.txt").open("w") as fh:
        block = "".join(hashlib.sha256(str(i).encode()).hexdigest() + "\n" for i in range(16_384))
        while fh.tell() < 50 * 1024 * 1024:
            fh.write(block)
    tracemalloc.start()
    try:
        r = capture(ws, base)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.bytes > 50 * 1024 * 1024 and r.patch.truncated and r.excerpt_truncated
    assert len(base64.b64decode(r.patch.data)) <= 768 * 1024
    assert peak < 8 * 1024 * 1024, peak  # Python side: ~cap + chunks, never the whole patch
    assert unpack(r.patch.data).startswith(b"diff --git a/huge.txt b/huge.txt\nnew file mode")


# --------------------------------------------------------------------------- pure parts


def test_parse_numstat() -> None:
    fields = ["3\t1\tcalc.py", "-\t-\tblob.bin", "0\t0\t", "old name.txt", "new ü.txt", "2\t0\tx", ""]
    raw = "\0".join(fields).encode()
    stat = parse_numstat(raw)
    assert (stat.files, stat.additions, stat.deletions, stat.binary_files) == (4, 5, 1, 1)
    assert parse_numstat(b"") == parse_numstat(b"\x00garbage\x00")


def test_excerpt_of() -> None:
    assert excerpt_of(b"a\nb\n", 4, 10) == ("a\nb\n", False)
    text, cut = excerpt_of(b"aaa\nbbb\nccc\n", 12, 9)
    assert cut and text == "aaa\nbbb\n... [diff truncated: showing 8 of 12 bytes]\n"
    text, cut = excerpt_of(b"x" * 20, 20, 5)  # one long line: cut mid-line, still ends the line
    assert text == "xxxxx\n... [diff truncated: showing 5 of 20 bytes]\n"
    text, _ = excerpt_of("é".encode() * 10, 20, 5)  # a split UTF-8 sequence does not raise
    assert text.startswith("éé")


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_patch_sink_roundtrip_any_chunking(chunk: int) -> None:
    data = b"".join(f"+line {i} {'x' * (i % 50)}\n".encode() for i in range(5000)) + b"no newline at end"
    sink = PatchSink(excerpt_bytes=100, cap_bytes=1 << 20)
    for i in range(0, len(data), chunk):
        sink.write(data[i : i + chunk])
    patch, excerpt, cut = sink.result()
    assert unpack(patch.data) == data and not patch.truncated and patch.bytes == len(data)
    assert cut and excerpt.startswith("+line 0 \n")


def test_patch_sink_cap_keeps_valid_prefix() -> None:
    data = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() + b"\n" for i in range(50_000))
    sink = PatchSink(cap_bytes=20_000)
    for i in range(0, len(data), 65536):
        sink.write(data[i : i + 65536])
    patch, _, _ = sink.result()
    raw = base64.b64decode(patch.data)
    assert len(raw) <= 20_000 and patch.truncated
    kept = gzip.decompress(raw)
    assert data.startswith(kept) and kept.endswith(b"\n") and len(kept) > 10_000


# --------------------------------------------------------------------------- trusted capture


@pytest.fixture
def cloned(tmp_path: Path) -> tuple[Path, Path, str]:
    """(workspace, trusted bare base, base commit): what the sandbox's clone role leaves behind."""
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q", "-b", "main")
    (src / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (src / "gone.txt").write_text("old\n")
    (src / "lib").mkdir()
    (src / "lib" / "util.py").write_text("X = 1\n")
    (src / ".gitignore").write_text("*.log\nbuild/\n")
    (src / "build").mkdir()
    (src / "build" / "tracked.cfg").write_text("v1\n")
    git(src, "add", "-A")
    git(src, "add", "-f", "build/tracked.cfg")
    git(src, "commit", "-qm", "base")
    base = tmp_path / "base" / "repo.git"
    git(tmp_path, "clone", "-q", "--bare", str(src), str(base))
    ws = tmp_path / "ws"
    git(tmp_path, "clone", "-q", str(src), str(ws))
    return ws, base, git(src, "rev-parse", "HEAD").strip()


def test_capture_from_base_trusts_nothing_in_the_workspace(tmp_path: Path, cloned: tuple[Path, Path, str]) -> None:
    ws, base, commit = cloned
    # The agent's work: an edit, a new file, a deletion, a crate with its own repository.
    (ws / "calc.py").write_text("def add(a, b):\n    return int(a) + int(b)\n")
    (ws / "hello.py").write_text('print("hello")\n')
    (ws / "gone.txt").unlink()
    crate = ws / "crate"
    (crate / "src").mkdir(parents=True)
    git(crate, "init", "-q")  # as `cargo new` does: no commit in it
    (crate / "src" / "main.rs").write_text("fn main() {}\n")
    # The agent's traps: config that runs programs, attributes naming them, a link out.
    marker = tmp_path / f"PWNED-{secrets.token_hex(4)}"
    trap = f"touch {marker}"
    for repo in (ws, crate):
        with (repo / ".git" / "config").open("a") as fh:
            fh.write(f'[core]\n\tfsmonitor = {trap}\n[filter "evil"]\n\tclean = {trap}\n\tsmudge = {trap}\n')
            fh.write(f'[diff "evil"]\n\tcommand = {trap}\n\ttextconv = {trap}\n')
    (ws / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (ws / "passwd").symlink_to("/etc/passwd")
    index_before = (ws / ".git" / "index").read_bytes()
    scratch = tmp_path / "scratch"

    r = capture_from_base(ws, base, commit, scratch, max_copy_bytes=1 << 20)

    assert not marker.exists()
    assert r.nested_repos == ("crate/.git",) and r.special_files == ()
    patch = unpack(r.patch.data).decode()
    assert patch == r.excerpt and r.patch.sha256 == hashlib.sha256(patch.encode()).hexdigest()
    assert "+    return int(a) + int(b)" in patch and "diff --git a/gone.txt b/gone.txt\ndeleted file" in patch
    assert "diff --git a/crate/src/main.rs b/crate/src/main.rs\nnew file mode 100644" in patch
    assert "diff --git a/passwd b/passwd\nnew file mode 120000" in patch and "+/etc/passwd\n" in patch
    assert "root:" not in patch  # the link is captured as a link, its target never read
    assert not [line for line in patch.splitlines() if line.startswith("diff --git") and ".git/" in line]
    assert (r.stat.files, r.stat.binary_files) == (6, 0)  # calc, hello, gone, main.rs, passwd, .gitattributes
    assert (ws / ".git" / "index").read_bytes() == index_before  # the workspace is only read
    assert list(scratch.iterdir()) == []  # the copy and objects are gone
    # The patch applied to the base reproduces the agent's tree (the nested repository as plain files).
    check = tmp_path / "check"
    git(tmp_path, "clone", "-q", str(base), str(check))
    (tmp_path / "p.diff").write_text(patch)
    git(check, "apply", str(tmp_path / "p.diff"))
    assert (check / "crate" / "src" / "main.rs").read_text() == "fn main() {}\n"
    assert (check / "passwd").is_symlink() and not (check / "gone.txt").exists()
    # The traps were armed: plain git in the workspace runs them.
    git(ws, "status")
    assert marker.exists()


def test_capture_from_base_skips_ignored_build_output(tmp_path: Path, cloned: tuple[Path, Path, str]) -> None:
    ws, base, commit = cloned
    (ws / "build" / "tracked.cfg").write_text("v2\n")  # tracked, in an ignored directory
    (ws / "build" / "out.o").write_bytes(b"\0" * 100)  # untracked there: ignored
    crate = ws / "crate"
    (crate / "target").mkdir(parents=True)
    (crate / ".gitignore").write_text("/target\n")
    (crate / "target" / "huge.bin").write_bytes(b"\0" * (2 << 20))  # over the copy limit, but ignored
    (crate / "lib.rs").write_text("pub fn f() {}\n")
    (ws / ":odd name").mkdir()  # not pathspec magic
    (ws / ":odd name" / "f.txt").write_text("odd\n")
    os.mkfifo(ws / "pipe")  # never opened (it would block)
    r = capture_from_base(ws, base, commit, tmp_path / "scratch", max_copy_bytes=1 << 20)
    patch = unpack(r.patch.data).decode()
    assert "-v1\n+v2" in patch and "out.o" not in patch and "huge.bin" not in patch
    assert "b/crate/lib.rs" in patch and "b/crate/.gitignore" in patch and "b/:odd name/f.txt" in patch
    assert r.special_files == ("pipe",) and r.nested_repos == ()


def test_capture_from_base_limits_and_errors(tmp_path: Path, cloned: tuple[Path, Path, str]) -> None:
    ws, base, commit = cloned
    (ws / "big.bin").write_bytes(b"\1" * (2 << 20))
    scratch = tmp_path / "scratch"
    with pytest.raises(GitDiffError, match=r"more than 1048576 bytes .* at big\.bin"):
        capture_from_base(ws, base, commit, scratch, max_copy_bytes=1 << 20)
    assert list(scratch.iterdir()) == []  # the partial copy is removed
    for rev in ("HEAD", "--output=/tmp/x", commit[:12]):
        with pytest.raises(GitDiffError, match="full object name"):
            capture_from_base(ws, base, rev, scratch)
    with pytest.raises(GitDiffError, match="not in the base repository"):
        capture_from_base(ws, base, "0" * 40, scratch)
    with pytest.raises(GitDiffError, match="timed out"):
        capture_from_base(ws, base, commit, scratch, timeout_s=0.0)
    with pytest.raises(GitDiffError, match="not a directory"):
        capture_from_base(tmp_path / "missing", base, commit, scratch)


def test_copy_tree_prunes_level_by_level(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "deep").mkdir(parents=True)
    (src / "a" / ".git").mkdir()
    (src / "a" / ".git" / "HEAD").write_text("ref: x\n")
    (src / ".GIT").write_text("gitdir: /elsewhere\n")  # any case, file or directory
    bad = os.fsdecode(b"bad\xff")  # not UTF-8: listed printable, the record stays valid JSON
    (src / bad / ".git").mkdir(parents=True)
    (src / "a" / "deep" / "f").write_text("f\n")
    (src / "skip").mkdir()
    (src / "skip" / "big").write_bytes(b"x" * 1000)
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    asked: list[list[str]] = []

    def prune(dirs: list[str]) -> set[str]:
        asked.append(dirs)
        assert all((tmp_path / "dst" / d).is_dir() for d in dirs)
        return {"skip"} & set(dirs)

    copy = copy_tree(src, tmp_path / "dst", max_bytes=100, deadline=time.monotonic() + 60, prune=prune)
    assert asked == [["a", bad, "skip"], ["a/deep"]]
    assert copy.nested_repos == ("a/.git", "bad\\xff/.git") and copy.bytes == len("f\n#!/bin/sh\n")
    assert sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*")) == [
        "a",
        "a/deep",
        "a/deep/f",
        bad,
        "run.sh",
    ]
    assert os.access(tmp_path / "dst" / "run.sh", os.X_OK)


def test_classify_and_parse_check_ignore() -> None:
    assert classify(".git", stat.S_IFDIR) is Entry.GIT and classify(".Git", stat.S_IFREG) is Entry.GIT
    assert classify(".gitignore", stat.S_IFREG) is Entry.FILE and classify("x", stat.S_IFLNK) is Entry.LINK
    assert classify("x", stat.S_IFIFO) is Entry.SPECIAL and classify("x", stat.S_IFDIR) is Entry.DIR
    out = b"a/.gitignore\x001\x00/target\x00./a/target\x00\x00\x00\x00./src\x00.gitignore\x002\x00!keep/\x00./keep\x00"
    assert parse_check_ignore(out) == {"a/target"}
    assert parse_check_ignore(b"") == set()
