"""Issue #14, findings 4 and 2 (git side): the clone takes the URL and ref as data, restricts
git's transports, holds the credential only in git's environment, and writes the reporter's base.

Real git throughout: a local bare repository is the remote (file://, allowed in local mode), or
a dumb-HTTP server on loopback when the credential is under test.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from buildstudio.api import inputs
from buildstudio.protocol.spec import RepoSource
from buildstudio.sandbox.runner import workspace

TOKEN = "s3cr3t-t0ken-value"
REAL_GIT = shutil.which("git") or "git"


def _git(cwd: Path, *args: str) -> str:
    cmd = [REAL_GIT, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def _commit(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    _git(repo, "add", name)
    _git(repo, "commit", "-q", "-m", f"{name}: {text.strip()}")
    return _git(repo, "rev-parse", "HEAD")


class Remote:
    """A bare repository with main (2 commits), feature, an annotated tag and a pull ref off every branch."""

    def __init__(self, root: Path) -> None:
        src = root / "src"
        src.mkdir()
        _git(src, "init", "-q")
        self.first = _commit(src, "a.txt", "one\n")
        self.main = _commit(src, "a.txt", "two\n")
        _git(src, "tag", "-a", "-m", "release", "v1.2.3", self.first)
        _git(src, "checkout", "-q", "-b", "feature", self.first)
        self.feature = _commit(src, "b.txt", "feature\n")
        _git(src, "checkout", "-q", "--detach", self.first)
        self.pull = _commit(src, "c.txt", "pull\n")  # on no branch or tag
        _git(src, "checkout", "-q", "main")
        self.bare = root / "remote.git"
        _git(root, "clone", "-q", "--bare", str(src), str(self.bare))
        _git(self.bare, "update-ref", "refs/pull/1/head", self.pull)
        self.url = f"file://{self.bare}"


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


@pytest.fixture
def git_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` on PATH that records each argv (one line, NUL-separated) before running the real one."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log = tmp_path / "git-argv.log"
    log.write_text("")
    script = bindir / "git"
    script.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> "{log}"\nprintf "\\n" >> "{log}"\nexec "{REAL_GIT}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def _argvs(log: Path) -> list[list[str]]:
    return [line.rstrip("\0").split("\0") for line in log.read_text().splitlines() if line]


# ---------------------------------------------------------------- repo@ref


@pytest.mark.parametrize(
    "ref", ["", "main", "feature", "v1.2.3", "first-sha", "short-sha", "refs/pull/1/head", "pull-sha"]
)
def test_clone_checks_out_the_commit_of_a_branch_a_tag_or_a_sha(remote: Remote, tmp_path: Path, ref: str) -> None:
    wanted = {
        "": remote.main,
        "main": remote.main,
        "feature": remote.feature,
        "v1.2.3": remote.first,  # an annotated tag: its commit
        "first-sha": remote.first,
        "short-sha": remote.first,
        "refs/pull/1/head": remote.pull,  # not brought by the clone: fetched
        "pull-sha": remote.pull,
    }[ref]
    ref = {"first-sha": remote.first, "short-sha": remote.first[:10], "pull-sha": remote.pull}.get(ref, ref)
    ws = tmp_path / "ws"
    sha = workspace.clone(ws, RepoSource(url=remote.url, ref=ref), local_paths=True)
    assert sha == wanted == _git(ws, "rev-parse", "HEAD")
    assert _git(ws, "status", "--porcelain") == ""
    detached = subprocess.run([REAL_GIT, "symbolic-ref", "-q", "HEAD"], cwd=ws, capture_output=True, timeout=30)
    assert detached.returncode == 1  # detached at the resolved commit, whatever the ref named


def test_an_unknown_ref_is_a_clear_error_and_leaves_the_workspace_empty(remote: Remote, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with pytest.raises(workspace.WorkspaceError, match="no-such-branch") as e:
        workspace.clone(ws, RepoSource(url=remote.url, ref="no-such-branch"), local_paths=True, delays=(60.0,))
    assert "tries" not in str(e.value) and not any(ws.iterdir())


# ---------------------------------------------------------------- input is data (finding 4)


@pytest.mark.parametrize("ref", ["--pathspec-from-file=/etc/passwd", "-f", "--orphan=x", "a..b", "x.lock"])
def test_option_like_refs_never_reach_git(remote: Remote, tmp_path: Path, git_log: Path, ref: str) -> None:
    with pytest.raises(workspace.WorkspaceError, match="refusing to clone") as e:
        workspace.clone(tmp_path / "ws", RepoSource(url=remote.url, ref=ref), local_paths=True)
    assert "root:" not in str(e.value)  # no file read into the message
    assert _argvs(git_log) == []


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("ssh://-oProxyCommand=touch${IFS}/tmp/pwned/y", False),
        ("git@-oProxyCommand=x:y", False),
        ("https://h:99999/x.git", False),
        ("ext::sh -c touch% /tmp/pwned", True),
        ("file:///srv/r.git", False),
        ("/srv/r.git", False),
        ("--upload-pack=touch /tmp/pwned", True),
    ],
)
def test_bad_urls_never_reach_git(tmp_path: Path, git_log: Path, url: str, local: bool) -> None:
    with pytest.raises(workspace.WorkspaceError, match="refusing to clone"):
        workspace.clone(tmp_path / "ws", RepoSource(url=url), local_paths=local)
    assert _argvs(git_log) == []


def test_user_input_comes_after_end_of_options(remote: Remote, tmp_path: Path, git_log: Path) -> None:
    workspace.clone(tmp_path / "ws", RepoSource(url=remote.url, ref="refs/pull/1/head"), local_paths=True)
    argvs = _argvs(git_log)
    for value in (remote.url, "refs/pull/1/head"):
        uses = [argv for argv in argvs if any(value in a for a in argv)]
        assert uses, value
        for argv in uses:
            first = min(i for i, a in enumerate(argv) if value in a)
            assert "--end-of-options" in argv[:first], argv
    clone = next(argv for argv in argvs if "clone" in argv)
    assert clone[:8] == ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
                         "-c", "protocol.ssh.allow=always", "-c", "protocol.http.allow=always"]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "local", "transport"),
    [("ext::sh -c touch% {marker}", True, "ext"), ("file://{bare}", False, "file"), ("{bare}", False, "file")],
)
def test_git_itself_refuses_other_transports(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, local: bool, transport: str
) -> None:
    """Defence in depth: with the validators out of the way, git's protocol allow-list still holds."""
    monkeypatch.setattr(inputs, "check_repo_url", lambda url, *, local: None)
    marker = tmp_path / "pwned"
    url = url.format(marker=marker, bare=remote.bare)
    with pytest.raises(workspace.WorkspaceError, match=f"transport '{transport}' not allowed"):
        workspace.clone(tmp_path / "ws", RepoSource(url=url), local_paths=local, delays=())
    assert not marker.exists()


# ---------------------------------------------------------------- the credential (finding 2, git side)


class _AuthServer:
    """Dumb HTTP git on loopback that records every Authorization header and requires one."""

    def __init__(self, root: Path) -> None:
        seen: list[str | None] = []
        self.seen = seen

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/remote.git"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_remote(remote: Remote, tmp_path: Path) -> Iterator[_AuthServer]:
    _git(remote.bare, "update-server-info")
    srv = _AuthServer(tmp_path)
    yield srv
    srv.close()


def test_the_token_reaches_the_remote_only_as_a_header(
    remote: Remote, http_remote: _AuthServer, tmp_path: Path, git_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BUILDSTUDIO_GIT_TOKEN", raising=False)
    ws = tmp_path / "ws"
    sha = workspace.clone(
        ws, RepoSource(url=http_remote.url, ref="feature"), token=TOKEN, allow_plaintext_credentials=True
    )
    assert sha == remote.feature
    basic = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert http_remote.seen and set(http_remote.seen) == {basic}
    encoded = basic.split()[1]
    for argv in _argvs(git_log):
        assert not any(TOKEN in a or encoded in a for a in argv), argv
    for path in (ws / ".git").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and encoded.encode() not in data, path
    assert _git(ws, "config", "--get", "remote.origin.url") == http_remote.url


def test_the_token_is_not_taken_from_the_environment(
    http_remote: _AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDSTUDIO_GIT_TOKEN", TOKEN)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # nor any other inherited git config
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "http.extraHeader")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "Authorization: Basic eDp5")
    with pytest.raises(workspace.WorkspaceError, match="clone of"):
        workspace.clone(tmp_path / "ws", RepoSource(url=http_remote.url), delays=())
    assert http_remote.seen and set(http_remote.seen) == {None}


def test_a_token_is_never_sent_over_plain_http(http_remote: _AuthServer, tmp_path: Path, git_log: Path) -> None:
    with pytest.raises(workspace.WorkspaceError, match="plain http://"):
        workspace.clone(tmp_path / "ws", RepoSource(url=http_remote.url), token=TOKEN)
    assert http_remote.seen == [] and _argvs(git_log) == []


def test_a_hung_remote_is_cut_at_the_deadline(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/r.git"
        t0 = time.monotonic()
        with pytest.raises(workspace.WorkspaceError, match="did not finish in time"):
            workspace.clone(tmp_path / "ws", RepoSource(url=url), timeout=2.0, delays=())
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------- the reporter's base


def _base_checks(ws: Path, base: Path, sha: str) -> None:
    repo_git = base / "repo.git"
    assert (base / "base-commit").read_text().strip() == sha
    assert _git(repo_git, "rev-parse", "--is-bare-repository") == "true"
    assert _git(repo_git, "rev-parse", "HEAD") == sha == _git(ws, "rev-parse", "HEAD")
    config = _git(repo_git, "config", "--file", str(repo_git / "config"), "--list")
    assert "url" not in config and "remote." not in config, config
    assert not (repo_git / "objects" / "info" / "alternates").exists()  # nothing shared with the workspace


def test_write_base_after_a_clone(remote: Remote, tmp_path: Path) -> None:
    ws, base = tmp_path / "ws", tmp_path / "base"
    sha = workspace.clone(ws, RepoSource(url=remote.url, ref="feature"), local_paths=True)
    assert workspace.write_base(ws, base) == sha
    _base_checks(ws, base, sha)
    # What happens in the workspace afterwards cannot reach the base.
    _commit(ws, "a.txt", "changed by the agent\n")
    _git(ws, "gc", "-q", "--prune=now")
    assert _git(base / "repo.git", "rev-parse", "HEAD") == sha
    assert _git(base / "repo.git", "show", f"{sha}:b.txt") == "feature"


def test_write_base_of_an_existing_local_repo(tmp_path: Path) -> None:
    ws, base = tmp_path / "mine", tmp_path / "base"
    ws.mkdir()
    _git(ws, "init", "-q")
    _commit(ws, "a.txt", "one\n")
    sha = _commit(ws, "a.txt", "two\n")
    (ws / "a.txt").write_text("uncommitted\n")
    assert workspace.write_base(ws, base) == sha
    _base_checks(ws, base, sha)
    assert workspace.write_base(ws, base) == sha  # again, over the first: a re-run starts over
    assert _git(base / "repo.git", "show", f"{sha}:a.txt") == "two"
