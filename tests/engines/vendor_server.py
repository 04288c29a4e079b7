"""Run a scripted vendor server on its own event loop in a thread, so a test can drive a blocking
subprocess meanwhile. The servers themselves live in ``buildstudio.commands.scripted_vendor``
(``run --local`` serves replays with them too); re-exported here for the tests.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any, Protocol

from buildstudio.commands.scripted_vendor import (  # noqa: F401  (re-exported)
    AUX_TEXT,
    DEFAULT_USAGE,
    ScriptEntry,
    ScriptServer,
    calls_of,
    has_tools,
    usage_of,
)


class _Startable(Protocol):
    port: int

    async def start(self) -> Any: ...
    async def stop(self) -> None: ...


class ThreadedServer:
    """Run an async server (``start``/``stop`` coroutines) on a private loop in a daemon thread."""

    def __init__(self, server: _Startable) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
