"""Scripted OpenAI Responses API (``POST /v1/responses``, streaming SSE) on loopback, for codex (engine tests,
``run --local --engine codex``).

Script vocabulary: see ``scripted_vendor``. Text becomes a ``message`` output item, each tool call
a ``function_call`` item (its arguments in two ``response.function_call_arguments.delta``), or a
``custom_tool_call`` item when the request declared that tool as ``type: custom`` (codex's
``apply_patch``: ``args`` is then the raw patch text, or ``{"input": "..."}``); ``reasoning``
a ``reasoning`` item. ``finish: length`` ends with ``response.incomplete``
(``max_output_tokens``). Usage: ``prompt_tokens`` → ``input_tokens``, ``completion_tokens`` →
``output_tokens``, in ``response.completed``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from buildstudio.commands.scripted_server import text_pieces as pieces
from buildstudio.commands.scripted_vendor import ScriptEntry, ScriptServer, calls_of, usage_of

OVERFLOW_BODY = {
    "error": {
        "message": "Your input exceeds the context window of this model. Please adjust your input and try again.",
        "type": "invalid_request_error",
        "param": "input",
        "code": "context_length_exceeded",
    }
}


def custom_tools(body: dict[str, Any]) -> set[str]:
    return {str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "custom"}


class ResponsesServer(ScriptServer):
    def error_body(self, status: int) -> dict[str, Any]:
        return {
            "error": {
                "message": f"scripted error {status}",
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "param": None,
                "code": None,
            }
        }

    async def other(self, request: web.Request) -> web.StreamResponse:
        if not self.models and request.method == "GET" and request.path.rstrip("/").endswith("/models"):
            return web.json_response({"object": "list", "data": [], "models": []})
        return await super().other(request)

    async def answer(
        self, request: web.Request, body: dict[str, Any], entry: ScriptEntry, seq: int
    ) -> web.StreamResponse:
        if not request.path.rstrip("/").endswith("/responses"):
            return web.json_response(self.error_body(404), status=404)
        model = str(body.get("model") or "scripted")
        inp, out = usage_of(entry)
        custom = custom_tools(body)
        rid = f"resp_scripted_{seq if seq >= 0 else 'aux'}"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.force_close()
        await resp.prepare(request)
        n = 0

        async def event(kind: str, data: dict[str, Any]) -> None:
            nonlocal n
            data = {"type": kind, "sequence_number": n, **data}
            n += 1
            await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        base = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "output": [],
            "usage": None,
        }
        await event("response.created", {"response": {**base, "status": "in_progress"}})
        await event("response.in_progress", {"response": {**base, "status": "in_progress"}})
        output: list[dict[str, Any]] = []
        if entry.get("reasoning"):
            item = {
                "type": "reasoning",
                "id": f"rs_{seq}",
                "summary": [{"type": "summary_text", "text": str(entry["reasoning"])}],
            }
            await event("response.output_item.added", {"output_index": len(output), "item": {**item, "summary": []}})
            await event("response.output_item.done", {"output_index": len(output), "item": item})
            output.append(item)
        text = str(entry.get("text") or "")
        if text:
            idx, item_id = len(output), f"msg_{seq}"
            item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
            await event("response.output_item.added", {"output_index": idx, "item": item})
            await event(
                "response.content_part.added",
                {
                    "item_id": item_id,
                    "output_index": idx,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            )
            for k, piece in enumerate(pieces(text)):
                await event(
                    "response.output_text.delta",
                    {"item_id": item_id, "output_index": idx, "content_index": 0, "delta": piece},
                )
                if k == 0 and entry.get("drop"):
                    return resp  # cut: no response.completed
                if k == 0 and entry.get("stall"):
                    await asyncio.sleep(float(entry["stall"]))
            part = {"type": "output_text", "text": text, "annotations": []}
            await event(
                "response.output_text.done", {"item_id": item_id, "output_index": idx, "content_index": 0, "text": text}
            )
            await event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": idx, "content_index": 0, "part": part},
            )
            done = {**item, "status": "completed", "content": [part]}
            await event("response.output_item.done", {"output_index": idx, "item": done})
            output.append(done)
        for k, (name, args) in enumerate(calls_of(entry)):
            idx, item_id, call_id = len(output), f"fc_{seq}_{k}", f"call_{seq}_{k}"
            if name in custom:
                try:  # a raw patch text, or {"input": "..."}
                    raw = json.loads(args)
                except ValueError:
                    raw = args
                patch = str(raw.get("input", "")) if isinstance(raw, dict) else str(raw)
                item = {
                    "type": "custom_tool_call",
                    "id": item_id,
                    "call_id": call_id,
                    "name": name,
                    "input": patch,
                    "status": "completed",
                }
                await event("response.output_item.added", {"output_index": idx, "item": {**item, "input": ""}})
                await event(
                    "response.custom_tool_call_input.delta", {"item_id": item_id, "output_index": idx, "delta": patch}
                )
                await event(
                    "response.custom_tool_call_input.done", {"item_id": item_id, "output_index": idx, "input": patch}
                )
            else:
                item = {
                    "type": "function_call",
                    "id": item_id,
                    "call_id": call_id,
                    "name": name,
                    "arguments": args,
                    "status": "completed",
                }
                await event(
                    "response.output_item.added",
                    {"output_index": idx, "item": {**item, "arguments": "", "status": "in_progress"}},
                )
                half = len(args) // 2
                for piece in (args[:half], args[half:]):
                    await event(
                        "response.function_call_arguments.delta",
                        {"item_id": item_id, "output_index": idx, "delta": piece},
                    )
                await event(
                    "response.function_call_arguments.done",
                    {"item_id": item_id, "output_index": idx, "arguments": args},
                )
            await event("response.output_item.done", {"output_index": idx, "item": item})
            output.append(item)
        usage = {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out,
        }
        if entry.get("finish") == "length":
            await event(
                "response.incomplete",
                {
                    "response": {
                        **base,
                        "status": "incomplete",
                        "output": output,
                        "incomplete_details": {"reason": "max_output_tokens"},
                        "usage": usage,
                    }
                },
            )
        else:
            await event(
                "response.completed", {"response": {**base, "status": "completed", "output": output, "usage": usage}}
            )
        return resp
