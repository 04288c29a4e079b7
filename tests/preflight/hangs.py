"""Endpoints that hang in every way a model service can, on loopback (shared by tests and bench).

Each context manager yields a base URL. No root tricks: the black-holed SYN is a listener whose
accept queue is full (Linux then drops further SYNs, so the client sees no SYN-ACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HANG_CASES = ("refused", "syn-blackhole", "accept-silent", "tls-silent", "headers-then-stall", "drip", "dns")
HOLD = 30.0  # a hung handler's own bound: far beyond any probe, short enough to never leak


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read the request, never answer."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.read(-1), HOLD)
    writer.close()


async def _headers_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{")
    await writer.drain()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.read(-1), HOLD)
    writer.close()


async def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Headers, then one body byte every 0.3 s: no single read ever times out."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n")
    with contextlib.suppress(Exception):
        for _ in range(int(HOLD / 0.3)):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.3)
    writer.close()


@contextlib.asynccontextmanager
async def _server(handler: Handler, scheme: str = "http") -> AsyncIterator[str]:
    running: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            writer.close()  # torn down with the server: end quietly
        finally:
            running.discard(task)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{scheme}://127.0.0.1:{port}/v1"
    finally:
        server.close()
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)


@contextlib.contextmanager
def _syn_blackhole() -> Iterator[str]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            for filler in fillers:
                filler.close()


@contextlib.asynccontextmanager
async def hung_endpoint(case: str) -> AsyncIterator[str]:
    """The base URL of an endpoint that fails in the named way, for as long as the block runs."""
    if case == "refused":
        yield f"http://127.0.0.1:{closed_port()}/v1"
    elif case == "dns":
        yield "http://model-service.invalid:8000/v1"  # RFC 6761: never resolves
    elif case == "syn-blackhole":
        with _syn_blackhole() as url:
            yield url
    else:
        handler, scheme = {
            "accept-silent": (_silent, "http"),
            "tls-silent": (_silent, "https"),  # the TLS handshake never gets a ServerHello
            "headers-then-stall": (_headers_then_stall, "http"),
            "drip": (_drip, "http"),
        }[case]
        async with _server(handler, scheme) as url:
            yield url
