from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.preflight.scripted import Reply, ScriptedServer, ServeFn


@pytest.fixture
async def serve() -> AsyncIterator[ServeFn]:
    """Start scripted servers on 127.0.0.1 (ephemeral ports); all stopped after the test."""
    started: list[ScriptedServer] = []

    async def _serve(routes: dict[str, Reply]) -> ScriptedServer:
        server = await ScriptedServer(routes).start()
        started.append(server)
        return server

    yield _serve
    for server in started:
        await server.stop()
