"""The relay: an HTTP server on loopback that forwards ``/v1/*`` to the model service.

Everything passes through unchanged (status, headers that matter, body bytes, SSE framing),
except 200 replies to chat-completion requests that carry ``tools``: those go through
:mod:`buildstudio.sandbox.relay.rewrite`, which turns text-format tool calls into API ``tool_calls``.

It is also the sandbox's credential proxy for every engine's vendor protocol: the engine talks to
it on loopback with a placeholder key, and it forwards with the real one in the vendor's header —
``Authorization: Bearer`` (OpenAI chat completions and Responses: opencode, codex, grok) or
``x-api-key`` (Anthropic Messages: claude) — dropping whatever credential header the engine sent.
The paths are the vendor's own (``/v1/messages``, ``/v1/responses``, ``/v1/chat/completions``),
streamed or not. ``strip_fields`` drops request fields the upstream may refuse (grok's xAI-only
``search_parameters``); ``count_usage`` counts the tokens of whole JSON replies (grok prints none).

    async with Relay("http://model:8000/v1") as relay:
        relay.base_url      # http://127.0.0.1:PORT/v1, for opencode's provider baseURL
        relay.counters      # RelayCounters(repaired=..., leftAsText=..., reasons={...})
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from buildstudio.sandbox.relay.coerce import tool_schemas
from buildstudio.sandbox.relay.counters import RelayCounters
from buildstudio.sandbox.relay.parse import DEFAULT_MAX_CALL_CHARS
from buildstudio.sandbox.relay.rewrite import StreamRewriter, rewrite_completion

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
# The headers a vendor takes the key in: the relay drops any the engine sends once it holds the key.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})
MAX_COUNTED_BODY = 16 * 1024 * 1024  # whole JSON replies read to count their usage (larger: passed on)


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
        auth_header: str = "authorization",
        strip_fields: tuple[str, ...] = (),
        count_usage: bool = False,
    ) -> None:
        self.upstream = upstream_base_url.rstrip("/")
        # Off: a plain forwarding proxy (it still holds the credential for the engine).
        self.repair = repair
        # The model service's key lives only in the relay's process: the engine sends none, and
        # whatever Authorization it sends is replaced.
        if auth_header.lower() not in CREDENTIAL_HEADERS:
            raise ValueError(f"auth header must be one of {sorted(CREDENTIAL_HEADERS)}, got {auth_header!r}")
        self._auth_header = "x-api-key" if auth_header.lower() == "x-api-key" else "Authorization"
        self._auth = (api_key if self._auth_header == "x-api-key" else f"Bearer {api_key}") if api_key else None
        self.strip_fields = tuple(strip_fields)
        self.count_usage = count_usage
        # Monotonic time of the last model request's start or end (an activity signal for the runner).
        self.last_activity: float | None = None
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
        post = request.method == "POST"
        if post:
            self.counters.requests += 1
            self._activity()

        schemas: dict[str, Any] = {}
        chat = raw_path.split("?", 1)[0].rstrip("/").endswith("/chat/completions")
        if post and ((self.repair and chat) or self.strip_fields):
            try:
                req = json.loads(body)
            except ValueError:
                req = None
            if isinstance(req, dict):
                if self.repair and chat:
                    schemas = tool_schemas(req)
                if any(f in req for f in self.strip_fields):
                    for f in self.strip_fields:
                        req.pop(f, None)
                    body = json.dumps(req).encode("utf-8")
        counting = post and self.count_usage
        # Replies we may rewrite or count must arrive uncompressed; the rest keep the client's choice.
        drop = set(CREDENTIAL_HEADERS) if self._auth else set()
        if schemas or counting:
            drop.add("accept-encoding")
        headers = _forward_headers(request.headers, frozenset(drop))
        if self._auth:
            headers[self._auth_header] = self._auth
        if schemas or counting:
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
            return await self._reply(request, up, schemas, counting)
        finally:
            up.release()  # a reply not read to the end closes its connection (upstream stops generating)
            if post:
                self._activity()

    def _activity(self) -> None:
        self.last_activity = time.monotonic()
        if self.on_counters is not None:
            try:
                self.on_counters(self.counters.model_dump(by_alias=True))
            except OSError as e:
                log.warning("relay: cannot write the counters: %s", e)

    async def _reply(
        self, request: web.Request, up: aiohttp.ClientResponse, schemas: dict[str, Any], counting: bool = False
    ) -> web.StreamResponse:
        ctype = up.headers.get("Content-Type", "").lower()
        encoded = up.headers.get("Content-Encoding", "identity").lower() != "identity"
        if (schemas or counting) and up.status == 200 and not encoded:
            if schemas and ctype.startswith("text/event-stream"):
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
        if self.count_usage and size <= MAX_COUNTED_BODY:
            try:
                reply = json.loads(body)
            except ValueError:
                reply = None
            if isinstance(reply, dict):
                self.counters.add_usage(reply.get("usage"))
        new = rewrite_completion(body, schemas, self.counters, **self._kw()) if schemas else None
        return web.Response(
            status=up.status,
            reason=up.reason,
            body=new if new is not None else body,
            headers=_forward_headers(up.headers),
        )
