"""Pull/merge requests after the push: fakes of GitHub's, GitLab's and Gitea/Forgejo's REST
endpoints on loopback that accept only the documented request shape (method, path, auth
header, body fields) and answer as documented; the push role run as a process against them and
a real smart-HTTP git server."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core.forge import project_of, pull_request, pull_request_url
from buildstudio.core.ship import ShipPlan
from buildstudio.core.shippod import PullRequestSpec, PushPlan, plan_push
from buildstudio.protocol.records import DiffStat
from tests.operator.smartgit import git, make_remote, smart_git_server
from tests.test_push import FILES, PATCH, TOKEN, _run_push, _spec

# What each forge documents: the path, the auth header, the body fields it requires, and where
# the answer puts the request's web URL.
SHAPES: dict[str, dict[str, Any]] = {
    "github": {
        "path": "/repos/acme/calc/pulls",
        "auth": ("Authorization", f"Bearer {TOKEN}"),
        "also": {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
        "fields": {"title", "head", "base", "body"},
        "head": "head",
        "base": "base",
        "answer": {"number": 7, "html_url": "https://github.example/acme/calc/pull/7"},
    },
    "gitlab": {
        "path": "/api/v4/projects/acme%2Fcalc/merge_requests",
        "auth": ("PRIVATE-TOKEN", TOKEN),
        "also": {},
        "fields": {"source_branch", "target_branch", "title", "description"},
        "head": "source_branch",
        "base": "target_branch",
        "answer": {"iid": 7, "web_url": "https://gitlab.example/acme/calc/-/merge_requests/7"},
    },
    "gitea": {
        "path": "/api/v1/repos/acme/calc/pulls",
        "auth": ("Authorization", f"token {TOKEN}"),
        "also": {},
        "fields": {"head", "base", "title", "body"},
        "head": "head",
        "base": "base",
        "answer": {"number": 7, "html_url": "https://gitea.example/acme/calc/pulls/7"},
    },
}


@dataclass
class FakeForge:
    kind: str
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    refuse: int | None = None  # answer this status to everything


@contextmanager
def fake_forge(kind: str, *, refuse: int | None = None) -> Iterator[FakeForge]:
    forge = FakeForge(kind, refuse=refuse)
    shape = SHAPES[kind]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            forge.seen.append({"method": "POST", "path": self.path, "headers": dict(self.headers), "json": body})
            if forge.refuse is not None:
                return self._answer(forge.refuse, {"message": "Bad credentials"})
            key, value = shape["auth"]
            if self.headers.get(key) != value:
                return self._answer(401, {"message": "401 Unauthorized"})
            if self.path != shape["path"] or any(self.headers.get(k) != v for k, v in shape["also"].items()):
                return self._answer(404, {"message": "Not Found"})
            if not shape["fields"] <= set(body) or self.headers.get("Content-Type") != "application/json":
                return self._answer(422, {"message": "Validation Failed"})
            return self._answer(201, shape["answer"])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    forge.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield forge
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.mark.parametrize("kind", ["github", "gitlab", "gitea"])
def test_the_push_opens_the_documented_pull_request_on_each_forge(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    bare, base = make_remote(root, "calc.git", FILES)
    with smart_git_server(root, TOKEN) as server, fake_forge(kind) as forge:
        pr = PullRequestSpec(
            forge=kind,  # type: ignore[arg-type]
            api_url=forge.url,
            project="acme/calc",
            base="main",
            title="Add subtract",
            body="Summary\n\n## Review\n\nLooks right.",
        )
        spec = _spec(server, base).model_copy(update={"pull_request": pr})
        code, result, err = _run_push(tmp_path / "run", spec, PATCH.encode(), TOKEN)
    assert code == 0 and result.push is not None, (result, err)
    assert result.push.reason == "Pushed" and result.push.pull_request_url == SHAPES[kind]["answer"].get(
        "web_url", SHAPES[kind]["answer"].get("html_url")
    )
    (sent,) = forge.seen
    shape = SHAPES[kind]
    assert sent["method"] == "POST" and sent["path"] == shape["path"]
    assert sent["json"][shape["head"]] == "buildstudio/fix" and sent["json"][shape["base"]] == "main"
    assert "Looks right." in json.dumps(sent["json"])
    # The branch it names was pushed first.
    assert git("-C", str(bare), "rev-parse", "refs/heads/buildstudio/fix").strip() == result.push.commit


def test_a_forge_that_refuses_ends_in_pull_request_failed_with_the_pushed_commit(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    _bare, base = make_remote(root, "calc.git", FILES)
    with smart_git_server(root, TOKEN) as server, fake_forge("github", refuse=401) as forge:
        pr = PullRequestSpec(forge="github", api_url=forge.url, project="acme/calc", base="main", title="t")
        spec = _spec(server, base).model_copy(update={"pull_request": pr})
        code, result, _ = _run_push(tmp_path / "run", spec, PATCH.encode(), TOKEN)
    assert code == 1 and result.push is not None and result.push.reason == "PullRequestFailed", result
    assert len(result.push.commit) == 40 and "401" in result.message and TOKEN not in result.message


def test_request_shapes_and_urls_are_pure() -> None:
    gh = pull_request("github", "https://api.github.com/", "acme/calc", "t", head="h", base="main", title="T", body="B")
    assert (gh.method, gh.url) == ("POST", "https://api.github.com/repos/acme/calc/pulls")
    gl = pull_request("gitlab", "https://gitlab.example", "grp/sub/calc", "t", head="h", base="b", title="T", body="")
    assert gl.url == "https://gitlab.example/api/v4/projects/grp%2Fsub%2Fcalc/merge_requests"
    with pytest.raises(ValueError):
        pull_request("gitea", "https://g", "../etc", "t", head="h", base="b", title="T", body="")
    assert project_of("https://github.com/acme/calc.git") == "acme/calc"
    assert project_of("git@gitlab.example:grp/sub/calc.git") == "grp/sub/calc"
    assert project_of("https://h/calc.git") == ""
    assert pull_request_url("gitlab", {"web_url": "https://x/mr/1"}) == "https://x/mr/1"
    assert pull_request_url("github", {"html_url": "javascript:alert(1)"}) == ""


def test_plan_push_fills_the_pull_request_from_the_source_and_the_review() -> None:
    url = "https://github.com/acme/calc.git"
    source = BuildDispatchSpec.model_validate(
        {
            "prompt": "Add subtract",
            "repo": {"url": url, "ref": "develop", "credentialsSecret": {"name": "tok", "key": "t"}},
        }
    )
    ship = BuildDispatchSpec.model_validate(
        {
            "prompt": "ship",
            "phase": "ship",
            "source": {"dispatch": "fix"},
            "approval": {"approvedBy": "alice"},
            "pullRequest": {"forge": "github", "apiUrl": "https://api.github.com"},
        }
    )
    sha = hashlib.sha256(PATCH.encode()).hexdigest()
    got = plan_push(
        ship="ship-fix",
        ship_spec=ship,
        source="fix",
        source_spec=source,
        base_commit="b" * 40,
        engine="opencode",
        model="m",
        plan=ShipPlan("fix", "fix-patch", sha, DiffStat(files=1), 10, "rev", "alice"),
        verdict="Approve",
        commit_date="",
        namespace="default",
        review_text="The change is right.\n\nVERDICT: APPROVE",
        allowed_secrets=frozenset({"tok"}),
        allow_plaintext=False,
    )
    assert isinstance(got, PushPlan) and got.spec.pull_request is not None
    pr = got.spec.pull_request
    assert (pr.project, pr.base, pr.forge) == ("acme/calc", "develop", "github")
    assert pr.title == "buildstudio: Add subtract"
    assert "The change is right." in pr.body and f"Build-Studio-Diff-Sha256: {sha}" in pr.body
    assert "Build-Studio-Approved-By: alice" in pr.body  # the same provenance the commit carries
