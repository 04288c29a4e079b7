"""Service quirks the scripted server does not play, from a small hand-written aiohttp server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from buildstudio.adapters.modelservice.textgen import Completion, CompletionError, ErrorKind, Timeouts, chat_completion
from buildstudio.core.prompts import ChatMessage

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MESSAGES = [ChatMessage(role="user", content="hi")]
FAST = Timeouts(connect=2.0, read=3.0, total=6.0)


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def ask(handler: Handler, *, stream: bool = True) -> Completion | CompletionError:
    async with serve(handler) as base:
        return await chat_completion(base, "m", MESSAGES, stream=stream, timeouts=FAST)


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode()


async def sse(request: web.Request, events: list[bytes], sep: bytes = b"\n\n") -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(event + sep)
    return resp


async def test_stream_requested_but_one_json_body_answered() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "plain"},
                                               "finish_reason": "stop"}]})

    done = await ask(handler)
    assert isinstance(done, Completion) and done.text == "plain" and not done.usage_reported


async def test_keepalive_comments_crlf_and_no_usage() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        events = [b": ping", chunk({"content": "a"}), b"event: message\r\n" + chunk({"content": "b"}),
                  chunk({}, "stop"), b"data: [DONE]"]
        return await sse(request, events, sep=b"\r\n\r\n")

    done = await ask(handler)
    assert isinstance(done, Completion)
    assert (done.text, done.finish_reason, done.usage_reported) == ("ab", "stop", False)


async def test_finish_reason_without_done_is_accepted() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse(request, [chunk({"content": "ok"}), chunk({}, "stop")])

    done = await ask(handler)
    assert isinstance(done, Completion) and done.text == "ok"


async def test_error_object_inside_a_200_stream() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        error = b'data: {"error": {"message": "model unloaded", "code": 503}}'
        return await sse(request, [chunk({"content": "par"}), error])

    err = await ask(handler)
    assert isinstance(err, CompletionError)
    assert err.kind == ErrorKind.SERVICE_ERROR and "model unloaded" in err.message and err.partial_text == "par"


async def test_content_as_a_list_of_parts() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        parts = [{"type": "text", "text": "one "}, {"type": "image_url"}, {"type": "text", "text": "two"}]
        body = {"choices": [{"message": {"content": parts}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                          "completion_tokens_details": {"reasoning_tokens": 1},
                          "prompt_tokens_details": {"cached_tokens": 2}}}
        return web.json_response(body)

    done = await ask(handler, stream=False)
    assert isinstance(done, Completion) and done.text == "one two"
    assert (done.usage.input, done.usage.output, done.usage.reasoning, done.usage.cache_read, done.usage.total) == (
        3, 2, 1, 2, 5)


async def test_not_json_and_no_choices_are_malformed() -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>gateway</html>", content_type="text/html")

    async def empty(request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "chat.completion", "choices": []})

    async def bad_sse(request: web.Request) -> web.StreamResponse:
        return await sse(request, [b"data: {not json"])

    for handler, stream, phrase in ((garbage, False, "not JSON"), (empty, False, "no choices"),
                                    (bad_sse, True, "not JSON")):
        err = await ask(handler, stream=stream)
        assert isinstance(err, CompletionError) and err.kind == ErrorKind.MALFORMED and phrase in err.message


async def test_html_error_page_is_excerpted_on_one_line() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="<html>\n<body>Bad   Gateway</body>\n</html>\n" + "x" * 10_000,
                            content_type="text/html")

    err = await ask(handler)
    assert isinstance(err, CompletionError) and (err.kind, err.status) == (ErrorKind.HTTP_STATUS, 502)
    assert err.message.startswith("HTTP 502: <html> <body>Bad Gateway</body>") and len(err.message) < 400
    assert "\n" not in err.body_excerpt and len(err.body_excerpt) <= 300


async def test_connection_reset_mid_stream() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(chunk({"content": "half"}) + b"\n\n")
        assert request.transport is not None
        request.transport.abort()  # RST with the chunked body unfinished
        return resp

    err = await ask(handler)
    assert isinstance(err, CompletionError) and err.kind == ErrorKind.MALFORMED and err.partial_text == "half"
