"""One chat completion against the scripted OpenAI-compatible server on loopback: answers and every failure."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from buildstudio.adapters.modelservice.textgen import (
    MIN_FRAME_BYTES,
    Completion,
    CompletionError,
    ErrorKind,
    Timeouts,
    chat_completion,
)
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core.prompts import ChatMessage

MESSAGES = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hi")]
FAST = Timeouts(connect=2.0, read=5.0, total=10.0)


@asynccontextmanager
async def server(*script: dict[str, Any]) -> AsyncIterator[ScriptedServer]:
    # no_aux: our requests carry no tools, and each must consume the script.
    async with ScriptedServer(list(script), no_aux=True) as srv:
        yield srv


async def complete(srv: ScriptedServer, *, messages: Sequence[ChatMessage] = MESSAGES, **kw: Any) -> Completion:
    kw.setdefault("timeouts", FAST)
    result = await chat_completion(srv.base_url, "qwen3-coder", messages, **kw)
    assert isinstance(result, Completion), result
    return result


async def fail(base_url: str, **kw: Any) -> CompletionError:
    kw.setdefault("timeouts", FAST)
    result = await chat_completion(base_url, "qwen3-coder", MESSAGES, **kw)
    assert isinstance(result, CompletionError), result
    assert "\n" not in result.message
    return result


@pytest.mark.parametrize("stream", [True, False])
async def test_answer_usage_and_finish(stream: bool) -> None:
    entry = {"text": "Step one.\nStep two.", "usage": {"prompt_tokens": 42, "completion_tokens": 7}}
    async with server(entry) as srv:
        done = await complete(srv, stream=stream, max_tokens=321, temperature=0.2)
    assert done.text == "Step one.\nStep two."
    assert done.finish_reason == "stop" and not done.truncated
    assert done.usage_reported and (done.usage.input, done.usage.output, done.usage.total) == (42, 7, 49)
    assert done.model == "qwen3-coder" and done.latency_s > 0
    assert (done.first_token_s is not None) is stream
    body = srv.chat_requests()[0]
    assert body["messages"] == [dict(m) for m in MESSAGES]
    assert (body["model"], body["stream"], body["max_tokens"], body["temperature"]) == ("qwen3-coder", stream, 321, 0.2)
    assert ("stream_options" in body) is stream


async def test_reasoning_is_counted_not_kept() -> None:
    async with server({"reasoning": "let me think " * 10, "text": "answer"}) as srv:
        done = await complete(srv)
    assert done.text == "answer" and done.reasoning_chars == len("let me think " * 10)


async def test_finish_length_is_reported() -> None:
    async with server({"text": "cut", "finish": "length"}) as srv:
        assert (await complete(srv)).finish_reason == "length"


async def test_bearer_key_is_sent_only_when_given() -> None:
    async with server({"text": "a"}) as srv:
        await complete(srv, api_key="sekret-123")
        await complete(srv)
    first, second = (r["headers"] for r in srv.requests)
    assert first.get("Authorization") == "Bearer sekret-123"
    assert "Authorization" not in second


@pytest.mark.parametrize("stream", [True, False])
async def test_http_500_with_body_excerpt(stream: bool) -> None:
    async with server({"status": 500, "body": {"error": {"message": "CUDA out of memory"}}}) as srv:
        err = await fail(srv.base_url, stream=stream)
    assert (err.kind, err.status) == (ErrorKind.HTTP_STATUS, 500)
    assert err.message == "HTTP 500: CUDA out of memory"
    assert "CUDA out of memory" in err.body_excerpt


async def test_http_404_unknown_model() -> None:
    async with server({"status": 404, "body": {"error": {"message": "model 'nope' not found"}}}) as srv:
        err = await fail(srv.base_url)
    assert (err.kind, err.status) == (ErrorKind.HTTP_STATUS, 404) and "model 'nope' not found" in err.message


async def test_unreachable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await fail(f"http://127.0.0.1:{port}/v1")
    assert err.kind == ErrorKind.UNREACHABLE and f"127.0.0.1:{port}" in err.message
    assert (await fail("ftp://127.0.0.1/v1")).kind == ErrorKind.UNREACHABLE


async def test_hang_ends_at_the_read_timeout() -> None:
    async with server({"hang": 5}) as srv:
        err = await fail(srv.base_url, timeouts=Timeouts(connect=2.0, read=0.4, total=10.0))
    assert err.kind == ErrorKind.TIMEOUT and not err.deadline
    assert 0.3 < err.latency_s < 3.0


async def test_hang_ends_at_the_overall_deadline() -> None:
    async with server({"hang": 5}) as srv:
        err = await fail(srv.base_url, timeouts=Timeouts(connect=2.0, read=10.0, total=0.4))
    assert err.kind == ErrorKind.TIMEOUT and err.deadline and "deadline" in err.message
    assert 0.3 < err.latency_s < 3.0


async def test_stall_mid_stream_keeps_the_partial_text() -> None:
    async with server({"text": "abcdefghi", "stall": 5}) as srv:
        err = await fail(srv.base_url, timeouts=Timeouts(connect=2.0, read=0.4, total=10.0))
    assert err.kind == ErrorKind.TIMEOUT and err.partial_text == "abc"


async def test_stream_cut_short_is_malformed() -> None:
    async with server({"text": "abcdefghi", "drop": True}) as srv:
        err = await fail(srv.base_url)
    assert err.kind == ErrorKind.MALFORMED and "no finish_reason" in err.message and err.partial_text == "abc"


async def test_huge_streamed_reply_is_cut_at_the_byte_cap() -> None:
    cap = 64 * 1024
    async with server({"text": "é" + "x" * (1024 * 1024)}) as srv:
        done = await complete(srv, max_output_bytes=cap)
    assert done.truncated and len(done.text.encode()) == cap
    assert done.text.startswith("éxxx")


async def test_huge_plain_reply_is_cut_or_refused_but_never_read_whole() -> None:
    cap = 64 * 1024
    async with server({"text": "y" * (200 * 1024)}, {"text": "z" * (5 * 1024 * 1024)}) as srv:
        done = await complete(srv, stream=False, max_output_bytes=cap)
        assert done.truncated and done.text == "y" * cap
        err = await fail(srv.base_url, stream=False, max_output_bytes=cap)
    assert err.kind == ErrorKind.MALFORMED and f"exceeds {MIN_FRAME_BYTES} bytes" in err.message


async def test_an_endless_sse_event_is_refused_not_buffered() -> None:
    async with server({"text": "q" * (15 * 1024 * 1024)}) as srv:  # three 5 MiB deltas: each over the frame cap
        err = await fail(srv.base_url, max_output_bytes=1024)
    assert err.kind == ErrorKind.MALFORMED and f"exceeded {MIN_FRAME_BYTES} bytes" in err.message


async def test_cut_never_splits_a_character() -> None:
    async with server({"text": "€" * 100}) as srv:
        done = await complete(srv, max_output_bytes=10)  # 3 bytes each: 3 fit
    assert done.text == "€€€" and done.truncated
