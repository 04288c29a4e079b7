"""A real git remote for push tests: ``git http-backend`` (smart HTTP, the protocol forges
speak) behind a small threaded HTTP server on loopback with Basic auth on every request.

``smart_git_server(root, token)`` serves every bare repository under ``root`` at
``http://127.0.0.1:<port>/<name>.git``; only ``Authorization: Basic base64(<any user>:<token>)``
gets in (401 otherwise, as a forge answers a private repository). Pushes are allowed for an
authenticated user (``REMOTE_USER``), and the repository's own hooks run (a ``pre-receive``
that refuses is a protected branch).
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

BACKEND_TIMEOUT_SECONDS = 60.0
MAX_BODY = 64 * 1024 * 1024


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run git for test setup (bounded); its stdout."""
    done = subprocess.run(
        ["git", "-c", "user.email=t@e", "-c", "user.name=t", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (args, done.stderr.decode())
    return done.stdout.decode()


@dataclass
class GitServer:
    url: str  # http://127.0.0.1:<port>
    root: Path
    token: str
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # (method, path, authorised)

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def bare(self, name: str) -> Path:
        return self.root / name


def make_remote(root: Path, name: str, files: Mapping[str, str]) -> tuple[Path, str]:
    """A bare repository ``root/name`` with one commit of ``files`` on ``main``; (path, commit)."""
    src = root.parent / f"{name}-src"
    src.mkdir(parents=True)
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    git("init", "-q", "-b", "main", str(src))
    git("-C", str(src), "add", ".")
    git("-C", str(src), "commit", "-q", "-m", "init")
    bare = root / name
    git("clone", "-q", "--bare", str(src), str(bare))
    return bare, git("-C", str(bare), "rev-parse", "main").strip()


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _authorised(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                _user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return password == server.token

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
                    if len(out) > MAX_BODY:
                        raise ValueError("body too large")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("body too large")
            return self.rfile.read(length)

        def _serve(self) -> None:
            ok = self._authorised()
            parts = urlsplit(self.path)
            server.requests.append((self.command, parts.path, ok))
            if not ok:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="buildstudio-test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self._body() if self.command == "POST" else b""
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REMOTE_USER": "pusher",
                "REMOTE_ADDR": "127.0.0.1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(server.root),
            }
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            done = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=BACKEND_TIMEOUT_SECONDS
            )
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = done.stdout.partition(b"\n\n")
            status = 200
            headers: list[tuple[str, str]] = []
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.strip().split()[0])
                elif key:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

    return Handler


@contextmanager
def smart_git_server(root: Path, token: str) -> Iterator[GitServer]:
    """Serve the bare repositories under ``root`` over smart HTTP with Basic auth on loopback."""
    server = GitServer(url="", root=root, token=token)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def refuse_pushes(bare: Path, message: str = "protected branch: pushes are refused") -> None:
    """A pre-receive hook that refuses every push (a protected branch)."""
    hook = bare / "hooks" / "pre-receive"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    hook.chmod(0o755)
