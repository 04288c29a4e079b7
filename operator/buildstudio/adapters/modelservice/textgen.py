"""One chat completion against an OpenAI-compatible model service (async httpx), bounded every way.

Explicit connect and read (silence) timeouts, an overall deadline, a cap on the answer's bytes
(streaming stops reading there; a non-streaming body is read up to a multiple of it), an
optional bearer key. Never raises for what the service does: the result is a ``Completion`` or a
``CompletionError`` of a small set of kinds.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from buildstudio.core.prompts import ChatMessage
from buildstudio.protocol.records import TokenUsage
from buildstudio.protocol.sse import EventTooLarge, SSEDecoder

DEFAULT_MAX_OUTPUT_BYTES = 128 * 1024
ERROR_BODY_BYTES = 4096  # enough of a 4xx/5xx body for the message
EXCERPT_CHARS = 300
JSON_OVERHEAD_BYTES = 64 * 1024
MIN_FRAME_BYTES = 4 * 1024 * 1024  # a service may send a long answer in few big deltas


class ErrorKind(enum.StrEnum):
    UNREACHABLE = "Unreachable"  # connect failed or timed out, bad URL
    HTTP_STATUS = "HttpStatus"  # 4xx/5xx, with a body excerpt
    TIMEOUT = "Timeout"  # silence past the read timeout, or the overall deadline
    MALFORMED = "Malformed"  # not a chat completion, cut short, or the connection dropped mid-answer
    SERVICE_ERROR = "ServiceError"  # an error object inside an HTTP 200 stream


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 300.0  # longest silence: prefill of a long prompt on a CPU sends nothing for minutes
    total: float = 600.0  # overall deadline of the whole request


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "" when the service gave none
    usage: TokenUsage
    usage_reported: bool
    latency_s: float
    first_token_s: float | None = None  # streaming: time to the first content delta
    truncated: bool = False  # the answer was cut at the byte cap (reading stopped there)
    reasoning_chars: int = 0  # reasoning deltas seen (counted, not kept)
    model: str = ""  # as the service named it


@dataclass(frozen=True)
class CompletionError:
    kind: ErrorKind
    message: str  # one line
    status: int | None = None
    body_excerpt: str = ""
    latency_s: float = 0.0
    partial_text: str = ""
    deadline: bool = False  # TIMEOUT: the overall deadline passed (not a silent read)


CompletionResult = Completion | CompletionError


def _int(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def usage_of(raw: Any) -> TokenUsage | None:
    """OpenAI ``usage`` → TokenUsage (reasoning and cached tokens when the service details them)."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = _int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens"))
    details = raw.get("completion_tokens_details")
    cached = raw.get("prompt_tokens_details")
    return TokenUsage(
        input=prompt,
        output=completion,
        reasoning=_int(details.get("reasoning_tokens")) if isinstance(details, dict) else 0,
        cache_read=_int(cached.get("cached_tokens")) if isinstance(cached, dict) else 0,
        total=_int(raw.get("total_tokens")) or prompt + completion,
    )


def content_text(content: Any) -> str:
    """A message's or delta's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _reasoning_chars(obj: dict[str, Any]) -> int:
    return sum(len(v) for k in ("reasoning_content", "reasoning") if isinstance(v := obj.get(k), str))


@dataclass
class Answer:
    """The answer folded from a body or from stream chunks, its text capped at ``limit`` bytes."""

    limit: int
    parts: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    finish_reason: str = ""
    usage: TokenUsage | None = None
    reasoning_chars: int = 0
    model: str = ""
    first_token_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, piece: str) -> None:
        if not piece or self.truncated:
            return
        raw = piece.encode()
        if self.size + len(raw) > self.limit:
            raw = raw[: self.limit - self.size]
            piece = raw.decode("utf-8", "ignore")
            self.truncated = True
        self.parts.append(piece)
        self.size += len(piece.encode())

    def fold(self, obj: dict[str, Any], *, now: float | None = None) -> None:
        """One ``chat.completion`` body or ``chat.completion.chunk``."""
        self.model = str(obj.get("model") or self.model)
        usage = usage_of(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        part = choice.get("message") if "message" in choice else choice.get("delta")
        if isinstance(part, dict):
            text = content_text(part.get("content"))
            if text and self.first_token_at is None:
                self.first_token_at = now
            self.add(text)
            self.reasoning_chars += _reasoning_chars(part)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])


def request_body(
    model: str,
    messages: Sequence[ChatMessage],
    *,
    stream: bool,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


def one_line(text: str, limit: int = EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's head."""
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return one_line(text)
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return one_line(str(err["message"]))
    if isinstance(err, str):
        return one_line(err)
    return one_line(text)


async def _read_bounded(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body; (body, over) — reading stops at the limit."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def frame_cap(limit: int) -> int:
    """Most bytes of one SSE event or JSON body read for an answer capped at ``limit`` bytes."""
    return max(limit * 6 + JSON_OVERHEAD_BYTES, MIN_FRAME_BYTES)  # \uXXXX escapes: 6 bytes a byte at worst


class _Failed(Exception):
    def __init__(self, kind: ErrorKind, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.kind, self.message, self.extra = kind, message, extra


async def _read_stream(response: httpx.Response, answer: Answer, started: float) -> bool:
    """Fold SSE chunks into ``answer``; True when the stream ended properly ([DONE] or a finish_reason)."""
    parser = SSEDecoder(max_event=frame_cap(answer.limit))
    async for chunk in response.aiter_raw():
        try:
            payloads = parser.feed_data(chunk)
        except EventTooLarge as exc:
            raise _Failed(ErrorKind.MALFORMED, str(exc)) from None
        for data in payloads:
            if data.strip() == "[DONE]":
                return True
            try:
                obj = json.loads(data)
            except ValueError:
                raise _Failed(ErrorKind.MALFORMED, f"SSE data is not JSON: {one_line(data, 120)}") from None
            if not isinstance(obj, dict):
                raise _Failed(ErrorKind.MALFORMED, f"SSE data is not an object: {one_line(data, 120)}")
            if obj.get("error"):
                raise _Failed(
                    ErrorKind.SERVICE_ERROR,
                    f"error in stream: {error_message(data.encode())}",
                    body_excerpt=one_line(data),
                )
            answer.fold(obj, now=time.monotonic() - started)
            if answer.truncated:
                return True  # the cap: stop reading; leaving the block closes the connection
    return bool(answer.finish_reason)


async def _read_body(response: httpx.Response, answer: Answer) -> None:
    """Fold one ``chat.completion`` JSON body, read up to a multiple of the answer's cap."""
    cap = frame_cap(answer.limit)
    raw, over = await _read_bounded(response, cap)
    if over:
        raise _Failed(
            ErrorKind.MALFORMED,
            f"the reply exceeds {cap} bytes; not read further (streaming keeps a bounded head instead)",
        )
    head = one_line(raw.decode("utf-8", "replace"), 120)
    try:
        obj = json.loads(raw)
    except ValueError:
        raise _Failed(ErrorKind.MALFORMED, f"the reply is not JSON: {head}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list) or not obj["choices"]:
        raise _Failed(ErrorKind.MALFORMED, f"the reply has no choices: {head}")
    answer.fold(obj)


def new_client() -> httpx.AsyncClient:
    # trust_env=False: the model service is local (in-cluster or loopback), never behind HTTP(S)_PROXY.
    return httpx.AsyncClient(trust_env=False, follow_redirects=False)


async def chat_completion(
    base_url: str,
    model: str,
    messages: Sequence[ChatMessage],
    *,
    stream: bool = True,
    max_tokens: int | None = None,
    temperature: float | None = None,
    api_key: str | None = None,
    timeouts: Timeouts = Timeouts(),  # frozen: a safe default
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    client: httpx.AsyncClient | None = None,
) -> CompletionResult:
    """POST ``{base_url}/chat/completions`` once; the answer or a typed error, within ``timeouts.total``."""
    url = base_url.rstrip("/") + "/chat/completions"
    body = request_body(model, messages, stream=stream, max_tokens=max_tokens, temperature=temperature)
    headers = {"Accept": "text/event-stream" if stream else "application/json", "Accept-Encoding": "identity"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    per_op = httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect)
    answer = Answer(limit=max_output_bytes)
    started = time.monotonic()

    def failed(kind: ErrorKind, message: str, **extra: Any) -> CompletionError:
        return CompletionError(kind, message, latency_s=time.monotonic() - started, partial_text=answer.text, **extra)

    http = client or new_client()
    try:
        async with (
            asyncio.timeout(timeouts.total),
            http.stream("POST", url, json=body, headers=headers, timeout=per_op) as response,
        ):
            if not 200 <= response.status_code < 300:
                raw, _ = await _read_bounded(response, ERROR_BODY_BYTES)
                return failed(
                    ErrorKind.HTTP_STATUS,
                    f"HTTP {response.status_code}: {error_message(raw)}",
                    status=response.status_code,
                    body_excerpt=one_line(raw.decode("utf-8", "replace")),
                )
            is_sse = "text/event-stream" in response.headers.get("content-type", "")
            if stream and is_sse:
                if not await _read_stream(response, answer, started):
                    return failed(
                        ErrorKind.MALFORMED,
                        "the stream ended before the answer did (no finish_reason, "
                        f"no [DONE]) after {answer.size} bytes of text",
                    )
            else:  # a service may ignore stream=true and answer with one JSON body
                await _read_body(response, answer)
    except _Failed as exc:
        return failed(exc.kind, exc.message, **exc.extra)
    except TimeoutError:
        return failed(ErrorKind.TIMEOUT, f"no complete answer within the {timeouts.total:g} s deadline", deadline=True)
    except httpx.ConnectTimeout:
        return failed(ErrorKind.UNREACHABLE, f"connect to {url} timed out after {timeouts.connect:g} s")
    except httpx.TimeoutException as exc:
        return failed(ErrorKind.TIMEOUT, f"the service was silent for {timeouts.read:g} s ({type(exc).__name__})")
    except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return failed(ErrorKind.UNREACHABLE, f"cannot reach {url}: {one_line(str(exc), 160) or type(exc).__name__}")
    except httpx.HTTPError as exc:
        return failed(
            ErrorKind.MALFORMED, f"the connection broke mid-answer: {one_line(str(exc), 160) or type(exc).__name__}"
        )
    finally:
        if client is None:
            await http.aclose()
    return Completion(
        text=answer.text,
        finish_reason=answer.finish_reason,
        usage=answer.usage or TokenUsage(),
        usage_reported=answer.usage is not None,
        latency_s=time.monotonic() - started,
        first_token_s=answer.first_token_at,
        truncated=answer.truncated,
        reasoning_chars=answer.reasoning_chars,
        model=answer.model,
    )
