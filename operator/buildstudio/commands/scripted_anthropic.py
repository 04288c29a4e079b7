"""Scripted Anthropic Messages API (``POST /v1/messages``, streaming SSE) on loopback, for claude (engine tests,
``run --local --engine claude``).

Script vocabulary: see ``scripted_vendor``. Text becomes a ``text`` block, each tool call a
``tool_use`` block (``input_json_delta`` in two pieces), ``reasoning`` a ``thinking`` block;
``stop_reason`` is ``tool_use`` / ``end_turn`` / ``max_tokens`` (``finish: length``).
``usage.prompt_tokens`` is reported as ``input_tokens`` in ``message_start``,
``completion_tokens`` as ``output_tokens`` in ``message_delta`` (as the real API does).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from buildstudio.commands.scripted_server import text_pieces as pieces
from buildstudio.commands.scripted_vendor import ScriptEntry, ScriptServer, calls_of, usage_of

OVERFLOW_BODY = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "prompt is too long: 215000 tokens > 200000 maximum"},
}
OVERLOADED_BODY = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _stop_reason(entry: ScriptEntry, has_calls: bool) -> str:
    finish = entry.get("finish")
    if finish == "length":
        return "max_tokens"
    if finish:
        return str(finish)
    return "tool_use" if has_calls else "end_turn"


class AnthropicServer(ScriptServer):
    def error_body(self, status: int) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": f"scripted error {status}"}}

    async def other(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/count_tokens"):
            return web.json_response({"input_tokens": 100})
        return await super().other(request)

    async def answer(
        self, request: web.Request, body: dict[str, Any], entry: ScriptEntry, seq: int
    ) -> web.StreamResponse:
        if request.path.endswith("/count_tokens"):
            return web.json_response({"input_tokens": 100})
        model = str(body.get("model") or "claude-scripted")
        inp, out = usage_of(entry)
        calls = calls_of(entry)
        msg_id = f"msg_scripted_{seq if seq >= 0 else 'aux'}"
        if not body.get("stream"):
            content: list[dict[str, Any]] = []
            if entry.get("text"):
                content.append({"type": "text", "text": str(entry["text"])})
            for k, (name, args) in enumerate(calls):
                content.append({"type": "tool_use", "id": f"toolu_{seq}_{k}", "name": name, "input": json.loads(args)})
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": _stop_reason(entry, bool(calls)),
                    "stop_sequence": None,
                    "usage": {"input_tokens": inp, "output_tokens": out},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.force_close()
        await resp.prepare(request)

        async def event(kind: str, data: dict[str, Any]) -> None:
            data = {"type": kind, **data}
            await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        await event(
            "message_start",
            {
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": inp,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                }
            },
        )
        index = 0
        if entry.get("reasoning"):
            await event("content_block_start", {"index": index, "content_block": {"type": "thinking", "thinking": ""}})
            await event(
                "content_block_delta",
                {"index": index, "delta": {"type": "thinking_delta", "thinking": str(entry["reasoning"])}},
            )
            await event(
                "content_block_delta",
                {"index": index, "delta": {"type": "signature_delta", "signature": "c2NyaXB0ZWQ="}},
            )
            await event("content_block_stop", {"index": index})
            index += 1
        text = str(entry.get("text") or "")
        if text:
            await event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            for n, piece in enumerate(pieces(text)):
                await event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
                if n == 0 and entry.get("drop"):
                    return resp  # the body ends: no content_block_stop, no message_stop
                if n == 0 and entry.get("stall"):
                    await asyncio.sleep(float(entry["stall"]))
            await event("content_block_stop", {"index": index})
            index += 1
        for k, (name, args) in enumerate(calls):
            await event(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "tool_use", "id": f"toolu_{seq}_{k}", "name": name, "input": {}},
                },
            )
            half = len(args) // 2
            for part in (args[:half], args[half:]):
                await event(
                    "content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": part}}
                )
            await event("content_block_stop", {"index": index})
            index += 1
        await event(
            "message_delta",
            {
                "delta": {"stop_reason": _stop_reason(entry, bool(calls)), "stop_sequence": None},
                "usage": {"output_tokens": out},
            },
        )
        await event("message_stop", {})
        return resp
