"""The relay over real loopback HTTP: pass-through, repair, errors, headers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from buildstudio.sandbox.relay import Relay
from tests.sandbox.relay.cases import CANONICAL
from tests.sandbox.relay.conftest import Upstream, raw_reply
from tests.sandbox.relay.helpers import opencode_tools, read_sse, splits, sse_stream

TIMEOUT = aiohttp.ClientTimeout(total=20)


def agent_request(stream: bool = True, tools: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "qwen3-coder", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"], body["tool_choice"] = opencode_tools(), "auto"
    return body


async def post(relay: Relay, body: dict[str, Any], **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False) as s,
        s.post(relay.base_url + "/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_streamed_text_passes_byte_for_byte(upstream: Upstream, relay: Relay) -> None:
    data = sse_stream(splits("Plain answer with a < sign and <tool_c at the end", 4))
    upstream.handler = raw_reply(splits(data, 37), headers={"Content-Type": "text/event-stream", "X-Request-Id": "r1"})
    status, headers, body = await post(relay, agent_request(), **{"x-session-id": "ses_1"})
    assert status == 200 and body == data
    assert headers["X-Request-Id"] == "r1" and headers["Content-Type"] == "text/event-stream"
    sent = upstream.requests[0]
    sent_headers = CIMultiDict(sent["headers"])
    assert sent["path"] == "/v1/chat/completions" and sent_headers["x-session-id"] == "ses_1"
    assert json.loads(sent["body"]) == agent_request()  # the request body goes on unchanged
    assert sent_headers["Accept-Encoding"] == "identity"
    assert relay.counters.repaired == 0 and relay.counters.left_as_text == 0


async def test_streamed_text_call_is_repaired(upstream: Upstream, relay: Relay) -> None:
    data = sse_stream(["Writing the file.\n", *splits(CANONICAL, 5)])
    upstream.handler = raw_reply(splits(data, 64))
    status, _, body = await post(relay, agent_request())
    r = read_sse(body)
    assert status == 200 and r.done and r.finish == "tool_calls"
    assert r.content == "Writing the file.\n"
    assert r.tool_calls() == [("write", {"filePath": "/workspace/textcall.py", "content": "print('from text')"})]
    assert r.usage is not None
    assert relay.counters.model_dump(by_alias=True) == {
        "repaired": 1,
        "leftAsText": 0,
        "reasons": {},
        "requests": 1,
        "inputTokens": 0,
        "outputTokens": 0,
    }


async def test_whole_reply_is_repaired(upstream: Upstream, relay: Relay) -> None:
    reply = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CANONICAL}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(reply)

    upstream.handler = handler
    status, headers, body = await post(relay, agent_request(stream=False))
    obj = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert int(headers["Content-Length"]) == len(body)
    msg = obj["choices"][0]["message"]
    assert msg["content"] is None and obj["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"][0]["function"]["name"] == "write" and obj["usage"] == reply["usage"]


async def test_whole_text_reply_passes_byte_for_byte(upstream: Upstream, relay: Relay) -> None:
    raw = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "a <b"}, "finish_reason": "stop"}]}'

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(body=raw, content_type="application/json")

    upstream.handler = handler
    assert (await post(relay, agent_request(stream=False)))[2] == raw


async def test_requests_without_tools_are_never_rewritten(upstream: Upstream, relay: Relay) -> None:
    data = sse_stream(splits(CANONICAL, 9))  # e.g. opencode's title request
    upstream.handler = raw_reply(splits(data, 50))
    status, _, body = await post(relay, agent_request(tools=False))
    assert status == 200 and body == data and relay.counters.repaired == 0
    assert (
        "Accept-Encoding" not in upstream.requests[0]["headers"]
        or upstream.requests[0]["headers"]["Accept-Encoding"] != "identity"
    )


async def test_errors_pass_through(upstream: Upstream, relay: Relay) -> None:
    err = b'{"error": {"message": "internal boom", "type": "server_error", "code": "context_length_exceeded"}}'
    for status in (400, 404, 500, 503):

        async def handler(request: web.Request, body: bytes, status: int = status) -> web.StreamResponse:
            return web.Response(status=status, body=err, content_type="application/json", headers={"Retry-After": "3"})

        upstream.handler = handler
        got, headers, body = await post(relay, agent_request())
        assert (got, body, headers["Retry-After"]) == (status, err, "3")


async def test_models_and_other_paths_pass_through(upstream: Upstream, relay: Relay) -> None:
    models = b'{"object":"list","data":[{"id":"qwen3-coder","object":"model","owned_by":"me"}]}'

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(body=models, content_type="application/json")

    upstream.handler = handler
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        async with s.get(relay.base_url + "/models?x=1") as r:
            assert r.status == 200 and await r.read() == models
        async with s.get(f"http://127.0.0.1:{relay.port}/health") as r:
            assert r.status == 404  # only /v1 is relayed
    assert upstream.requests[0]["path"] == "/v1/models?x=1" and upstream.requests[0]["method"] == "GET"


async def test_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Relay(f"http://127.0.0.1:{port}/v1", connect_timeout=2) as relay:
        status, _, body = await post(relay, agent_request())
    assert status == 502 and json.loads(body)["error"]["type"] == "upstream_unreachable"


async def test_upstream_cut_mid_stream_ends_the_reply(upstream: Upstream, relay: Relay) -> None:
    data = sse_stream(["Hello ", "there"])
    cut = data[: data.index(b"there") + 20]  # inside the second content event

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(cut)
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the client sees a broken body
        return resp

    upstream.handler = handler
    status, _, body = await post(relay, agent_request())
    r = read_sse(body[: body.rindex(b"\n\n") + 2])
    assert status == 200 and r.content == "Hello " and r.finish is None and not r.done


async def test_client_going_away_stops_the_upstream_reply(upstream: Upstream, relay: Relay) -> None:
    data = sse_stream(splits("word " * 200, 5))
    outcome: list[str] = []
    upstream.handler = raw_reply(splits(data, 200), gap=0.01, outcome=outcome)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as s,
        s.post(relay.base_url + "/chat/completions", json=agent_request()) as r,
    ):
        await r.content.readany()  # then drop the connection
    for _ in range(300):
        if outcome:
            break
        await asyncio.sleep(0.01)
    assert outcome == ["client gone"]
    upstream.handler = raw_reply([sse_stream(["ok"])])
    status, _, body = await post(relay, agent_request())
    assert status == 200 and read_sse(body).content == "ok"
