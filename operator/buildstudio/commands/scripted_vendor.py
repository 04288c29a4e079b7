"""Common parts of the scripted vendor servers (Anthropic Messages for claude, OpenAI Responses for
codex) of the engine tests and of ``buildstudio run --local --engine claude|codex --model-server
replay:FILE`` (grok speaks chat completions: ``scripted_server.ScriptedServer``).

The script vocabulary is the one of ``buildstudio.commands.scripted_server`` (engine-neutral): a list of
entries, the last one repeating once the script is exhausted.

  {"text": "final answer"}
  {"tool": "Write", "args": {...}, "text": "optional"}     one tool call
  {"tool_calls": [{"name": ..., "arguments": {...}}]}      several
  {"reasoning": "...", "text": "..."}                      a thinking / reasoning block first
  {"text": "...", "finish": "length"}                      the model ran out of output tokens
  {"text": "...", "drop": true}                            stream cut after the first delta
  {"text": "...", "stall": 30}                             stream stalls N s after the first delta
  {"status": 500, "body": {...}}                           HTTP error (body: the vendor's error JSON)
  {"hang": 60}                                             accept, answer nothing for N s, close
  {"malformed": true}                                      200 text/event-stream with a line of garbage
  {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}  (optional on text/tool entries)

Only requests that ``consumes(body)`` says are agent steps take the next entry (default: the body
carries tools); the others (titles, quota probes, summaries) get ``aux_text``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

ScriptEntry = dict[str, Any]
DEFAULT_USAGE = {"prompt_tokens": 100, "completion_tokens": 20}
AUX_TEXT = "Scripted aux reply"


def has_tools(body: dict[str, Any]) -> bool:
    return bool(body.get("tools"))


def usage_of(entry: ScriptEntry) -> tuple[int, int]:
    u = entry.get("usage") or DEFAULT_USAGE
    return int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))


def calls_of(entry: ScriptEntry) -> list[tuple[str, str]]:
    """(name, arguments as a JSON string) of each scripted tool call."""
    specs: list[dict[str, Any]] = list(entry.get("tool_calls") or [])
    if "tool" in entry:
        specs = [{"name": entry["tool"], "arguments": entry.get("args", {})}]
    out = []
    for spec in specs:
        args = spec.get("arguments", {})
        out.append((str(spec["name"]), args if isinstance(args, str) else json.dumps(args)))
    return out


class ScriptServer:
    """aiohttp server on 127.0.0.1; subclasses answer ``POST`` agent/aux requests."""

    def __init__(
        self,
        script: Sequence[ScriptEntry],
        *,
        consumes: Callable[[dict[str, Any]], bool] = has_tools,
        aux_text: str = AUX_TEXT,
        models: Sequence[str] = (),
    ) -> None:
        if not script:
            raise ValueError("empty script")
        self.script = list(script)
        # Listed on GET /v1/models (as a local model service lists them for the preflight); none: 404.
        self.models = tuple(models)
        self.consumes = consumes
        self.aux_text = aux_text
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self.consumed = 0
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ScriptServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def next_entry(self) -> tuple[ScriptEntry, int]:
        seq = self.consumed
        self.consumed += 1
        return self.script[min(seq, len(self.script) - 1)], seq

    async def _any(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        self.requests.append(
            {
                "t": time.time(),
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        if request.method != "POST" or not isinstance(body, dict):
            return await self.other(request)
        if self.consumes(body):
            entry, seq = self.next_entry()
        else:
            entry, seq = {"text": self.aux_text}, -1
        if "hang" in entry:
            await asyncio.sleep(float(entry["hang"]))
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if "status" in entry:
            return web.json_response(
                entry.get("body") or self.error_body(int(entry["status"])), status=int(entry["status"])
            )
        if entry.get("malformed"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: {this is not json\n\n")
            return resp
        return await self.answer(request, body, entry, seq)

    async def other(self, request: web.Request) -> web.StreamResponse:
        if self.models and request.method == "GET" and request.path.rstrip("/").endswith("/models"):
            return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        return web.json_response({"error": {"type": "not_found_error", "message": "not found"}}, status=404)

    def error_body(self, status: int) -> dict[str, Any]:
        return {"error": {"type": "api_error", "message": f"scripted error {status}"}}

    async def answer(
        self, request: web.Request, body: dict[str, Any], entry: ScriptEntry, seq: int
    ) -> web.StreamResponse:
        raise NotImplementedError

    def log_lines(self) -> list[str]:
        """The requests seen, one JSON line each (for fixtures)."""
        return [json.dumps(r, sort_keys=True) for r in self.requests]
