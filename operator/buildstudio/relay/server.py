"""The relay: an OpenAI-compatible HTTP server on loopback that forwards to the model service.

Everything passes through unchanged (status, headers that matter, body bytes, SSE framing),
except 200 replies to chat-completion requests that carry ``tools``: those go through
:mod:`buildstudio.relay.rewrite`, which turns text-format tool calls into API ``tool_calls``.

    async with Relay("http://model:8000/v1") as relay:
        relay.base_url      # http://127.0.0.1:PORT/v1, for opencode's provider baseURL
        relay.counters      # RelayCounters(repaired=..., leftAsText=..., reasons={...})
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from buildstudio.relay.coerce import tool_schemas
from buildstudio.relay.counters import RelayCounters
from buildstudio.relay.parse import DEFAULT_MAX_CALL_CHARS
from buildstudio.relay.rewrite import StreamRewriter, rewrite_completion

log = logging.getLogger(__name__)

PREFIX = "/v1"
# Per-hop headers (RFC 9110 §7.6.1) and the ones aiohttp recomputes for the body it sends.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Headers aiohttp would add on its own: the model service sees only what the client sent.
_NO_AUTO = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
MAX_BODY = 64 * 1024 * 1024  # opencode's requests carry the whole conversation


def _forward_headers(headers: Any, drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in _HOP and k.lower() not in drop:
            out.add(k, v)
    return out


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


class Relay:
    """One relay on ``host:port`` (port 0 picks a free one) in front of ``upstream_base_url``."""

    def __init__(
        self,
        upstream_base_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        total_timeout: float = 3600.0,
        max_body: int = MAX_BODY,
        max_call_chars: int = DEFAULT_MAX_CALL_CHARS,
        repair: bool = True,
        api_key: str | None = None,
    ) -> None:
        self.upstream = upstream_base_url.rstrip("/")
        # Off: a plain forwarding proxy (it still holds the credential for the engine).
        self.repair = repair
        # The model service's key lives only in the relay's process: the engine sends none, and
        # whatever Authorization it sends is replaced.
        self._auth = f"Bearer {api_key}" if api_key else None
        self.host = host
        self.port = port
        self.counters = RelayCounters()
        # Called with the counters after every request (the sandbox's relay writes them to a file).
        self.on_counters: Callable[[dict[str, Any]], None] | None = None
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, connect=connect_timeout, sock_read=read_timeout)
        self._max_body = max_body
        self._max_call_chars = max_call_chars
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{PREFIX}"

    async def start(self) -> Relay:
        # auto_decompress off: bodies we do not rewrite go out byte for byte, encoding header and all.
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # shutdown_timeout bounds how long stop() waits for replies still streaming.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Relay:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- request handling -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if raw_path != PREFIX and not raw_path.startswith(PREFIX + "/"):
            return _error(404, f"relay serves {PREFIX}/* only", "not_found")
        assert self._session is not None
        target = self.upstream + raw_path[len(PREFIX) :]
        if request.rel_url.raw_query_string:
            target += "?" + request.rel_url.raw_query_string
        body = await request.read()

        schemas: dict[str, Any] = {}
        if self.repair and request.method == "POST" and raw_path.rstrip("/").endswith("/chat/completions"):
            try:
                req = json.loads(body)
            except ValueError:
                req = None
            if isinstance(req, dict):
                schemas = tool_schemas(req)
        # Replies we may rewrite must arrive uncompressed; the rest keep the client's choice.
        drop = {"authorization"} if self._auth else set()
        if schemas:
            drop.add("accept-encoding")
        headers = _forward_headers(request.headers, frozenset(drop))
        if self._auth:
            headers["Authorization"] = self._auth
        if schemas:
            headers["Accept-Encoding"] = "identity"

        try:
            up = await self._session.request(
                request.method,
                URL(target, encoded=True),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=_NO_AUTO,
            )
        except TimeoutError as e:
            return _error(504, f"relay: model service timed out: {e}", "upstream_timeout")
        except (aiohttp.ClientError, OSError) as e:
            return _error(502, f"relay: cannot reach the model service: {e}", "upstream_unreachable")
        try:
            return await self._reply(request, up, schemas)
        finally:
            up.release()  # a reply not read to the end closes its connection (upstream stops generating)
            if self.on_counters is not None and schemas:
                try:
                    self.on_counters(self.counters.model_dump(by_alias=True))
                except OSError as e:
                    log.warning("relay: cannot write the counters: %s", e)

    async def _reply(
        self, request: web.Request, up: aiohttp.ClientResponse, schemas: dict[str, Any]
    ) -> web.StreamResponse:
        ctype = up.headers.get("Content-Type", "").lower()
        encoded = up.headers.get("Content-Encoding", "identity").lower() != "identity"
        if schemas and up.status == 200 and not encoded:
            if ctype.startswith("text/event-stream"):
                return await self._stream(request, up, StreamRewriter(schemas, self.counters, **self._kw()))
            if ctype.startswith("application/json"):
                return await self._whole(request, up, schemas)
        return await self._stream(request, up, None)

    def _kw(self) -> dict[str, Any]:
        return {"max_call_chars": self._max_call_chars}

    async def _stream(
        self, request: web.Request, up: aiohttp.ClientResponse, rw: StreamRewriter | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=_forward_headers(up.headers))
        if rw is None and up.content_length is not None and "Transfer-Encoding" not in up.headers:
            resp.content_length = up.content_length
        await resp.prepare(request)
        try:
            try:
                async for data in up.content.iter_any():
                    out = rw.feed(data) if rw is not None else data
                    if out:
                        await resp.write(out)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
                # Upstream cut the reply: pass on what was settled and end, as it did.
                log.info("relay: upstream reply ended early: %s", e)
            if rw is not None:
                tail = rw.close()
                if tail:
                    await resp.write(tail)
            await resp.write_eof()
        except ConnectionResetError:
            log.info("relay: client went away mid-reply")  # closing `up` drops the upstream request too
        return resp

    async def _whole(
        self, request: web.Request, up: aiohttp.ClientResponse, schemas: dict[str, Any]
    ) -> web.StreamResponse:
        parts: list[bytes] = []
        size = 0
        async for data in up.content.iter_any():
            parts.append(data)
            size += len(data)
            if size > self._max_body:  # too big to hold: the rest goes through as it is
                resp = web.StreamResponse(status=up.status, reason=up.reason, headers=_forward_headers(up.headers))
                await resp.prepare(request)
                for p in parts:
                    await resp.write(p)
                async for more in up.content.iter_any():
                    await resp.write(more)
                await resp.write_eof()
                return resp
        body = b"".join(parts)
        new = rewrite_completion(body, schemas, self.counters, **self._kw())
        return web.Response(
            status=up.status,
            reason=up.reason,
            body=new if new is not None else body,
            headers=_forward_headers(up.headers),
        )
