"""A git remote for operator tests: a repository served over dumb HTTP on loopback (a cluster
dispatch takes no local path or file:// URL), and operator settings whose egress admits it."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buildstudio.core.settings import Settings
from tests.operator.conftest import FAST


async def _git(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec("git", "-c", "user.email=t@e", "-c", "user.name=t", *args)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, args


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@asynccontextmanager
async def served_repo(tmp_path: Path, files: Mapping[str, str]) -> AsyncIterator[str]:
    """A one-commit repository on branch main, served read-only; yields its clone URL."""
    repo = tmp_path / "src"
    repo.mkdir()
    for name, text in files.items():
        (repo / name).write_text(text)
    await _git("-C", str(repo), "init", "-q", "-b", "main")
    await _git("-C", str(repo), "add", ".")
    await _git("-C", str(repo), "commit", "-q", "-m", "init")
    www = tmp_path / "www"
    await _git("clone", "-q", "--bare", str(repo), str(www / "r.git"))
    await _git("-C", str(www / "r.git"), "update-server-info")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/r.git"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def settings_for(url: str, *, credential_secrets: frozenset[str] = frozenset()) -> Settings:
    """The tests' settings with the served repo's port among the admin's git ports (and, for
    tests with credentials, plain http allowed: everything here is on loopback)."""
    port = urlsplit(url).port
    assert port is not None
    egress = dataclasses.replace(FAST.egress, git_ports=(*FAST.egress.git_ports, port))
    sandbox = dataclasses.replace(
        FAST.sandbox, credential_secrets=credential_secrets, allow_plaintext_credentials=bool(credential_secrets)
    )
    return dataclasses.replace(FAST, egress=egress, sandbox=sandbox)
