"""A tiny programmable upstream (aiohttp, loopback) for the relay's HTTP tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from buildstudio.sandbox.relay import Relay

Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    """Answers every request with ``handler``; records what it got."""

    handler: Handler | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {"method": request.method, "path": request.path_qs, "headers": dict(request.headers), "body": body}
        )
        assert self.handler is not None, "test did not set a handler"
        return await self.handler(request, body)


def raw_reply(
    parts: list[bytes],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    gap: float = 0.0,
    outcome: list[str] | None = None,
) -> Handler:
    """Send ``parts`` as separate writes (so the relay sees them as separate reads).

    ``outcome`` gets "complete", or "client gone" when the relay dropped the connection.
    """

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers=headers or {"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for p in parts:
                await resp.write(p)
                await asyncio.sleep(gap)
            await resp.write_eof()
        except ConnectionResetError:
            if outcome is not None:
                outcome.append("client gone")
            raise
        if outcome is not None:
            outcome.append("complete")
        return resp

    return handler


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", up._any)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield up
    finally:
        await runner.cleanup()


@pytest.fixture
async def relay(upstream: Upstream) -> AsyncIterator[Relay]:
    async with Relay(upstream.base_url, read_timeout=10.0) as r:
        yield r
