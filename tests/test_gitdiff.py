"""The workspace diff against real temporary git repositories."""

from __future__ import annotations

import base64
import gzip
import hashlib
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from buildstudio.gitdiff import (
    GitDiffError,
    PatchSink,
    capture,
    excerpt_of,
    head_commit,
    is_git_repo,
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
