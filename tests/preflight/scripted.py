"""A scripted model server on loopback: replays fixture replies, counts hits, misbehaves on demand."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"
ENDLESS_CAP_BYTES = 256 * 1024 * 1024  # the endless body still has a bound


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    text: str | None = None
    delay: float = 0.0  # seconds before the status line
    endless: bool = False  # 200 with a body that never ends (until ENDLESS_CAP_BYTES)
    declared_length: int | None = None  # a Content-Length header, for the "declared huge" case

    @classmethod
    def from_fixture(cls, spec: dict[str, Any]) -> Reply:
        return cls(status=spec.get("status", 200), json=spec.get("json"), text=spec.get("text"))


@dataclass
class ScriptedServer:
    routes: dict[str, Reply]
    hits: Counter[str] = field(default_factory=Counter)
    require_token: str | None = None  # answer 401 unless "Authorization: Bearer <token>"
    bodies: dict[str, Any] = field(default_factory=dict)  # last JSON request body per route
    bytes_sent: int = 0
    endless_done: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        self.hits[key] += 1
        if request.can_read_body:
            self.bodies[key] = await request.json()
        if self.require_token and request.headers.get("Authorization") != f"Bearer {self.require_token}":
            return web.json_response({"error": {"message": "Unauthorized", "type": "invalid_api_key"}}, status=401)
        reply = self.routes.get(key)
        if reply is None:
            return web.json_response({"error": f"no route {key}"}, status=404)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.endless:
            return await self._endless(request)
        if reply.declared_length is not None:
            response = web.StreamResponse(headers={"Content-Length": str(reply.declared_length)})
            await response.prepare(request)
            await response.write(b'{"data": [')
            return response
        if reply.text is not None:
            return web.Response(status=reply.status, text=reply.text)
        return web.json_response(reply.json, status=reply.status, dumps=json.dumps)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b'{"id": "filler-model", "object": "model", "owned_by": "x"},' * 1024
        try:
            await response.write(b'{"object": "list", "data": [')
            while self.bytes_sent < ENDLESS_CAP_BYTES:
                await response.write(chunk)
                self.bytes_sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading and closed: what the test wants
        finally:
            self.endless_done.set()
        return response

    async def start(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


ServeFn = Callable[[dict[str, Reply]], Awaitable[ScriptedServer]]  # the `serve` fixture


def load_backend(backend: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{backend}.json").read_text())
    return data


def scenario_routes(backend: str, scenario: str) -> dict[str, Reply]:
    spec = load_backend(backend)["scenarios"][scenario]
    return {route: Reply.from_fixture(reply) for route, reply in spec.items()}


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released: connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
