"""Scripted OpenAI-compatible chat-completions server on loopback (tests, benchmarks, replay model).

Replays canned replies, one per ``POST /v1/chat/completions`` that carries a non-empty
``tools`` list (opencode's agent steps). Requests without ``tools`` (opencode's title and
compaction requests) get a fixed short reply and do not consume the script, unless
``no_aux`` is set (then every request consumes the next entry).

Script entries (a JSON list; the last entry repeats once the script is exhausted):
  {"text": "final answer"}
  {"tool_calls": [{"name": "write", "arguments": {...}}], "text": "optional"}
  {"tool": "write", "args": {...}}                 one API tool call (shorthand)
  {"reasoning": "...", "text": "..."}              adds ``reasoning_content`` deltas
  {"text": "...", "finish": "length"}              override finish_reason
  {"text": "...", "drop": true}                    stream: role + first delta, then end the body
                                                   (no finish_reason, no [DONE])
  {"text": "...", "stall": 30}                     stream: role + first delta, then wait N s
  {"status": 500, "body": {...}}                   HTTP error with a JSON body
  {"hang": 60}                                     accept, wait N s, close without answering
  {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}   (optional on text/tool entries)

A replay file (``--model-server replay:FILE`` of ``buildstudio run --local``) is a JSON object
``{"replay": {"name", "description", "recordedWith", ...}, "model": "...", "script": [...]}``.

In-process::

    async with ScriptedServer(script) as srv:
        srv.base_url    # http://127.0.0.1:PORT/v1
        srv.requests    # every request: method, path, headers, body

As a process: ``python -m buildstudio.commands.scripted_server --script F [--port-file F] [--log F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from buildstudio.protocol import sse

_DOC_TITLE = (__doc__ or "").split("\n")[0]
TITLE_REPLY = "Scripted session title"
DEFAULT_MODEL = "qwen3-coder"
DEFAULT_USAGE = {"prompt_tokens": 100, "completion_tokens": 20}

ScriptEntry = dict[str, Any]


@dataclass(frozen=True)
class Replay:
    """A recorded model conversation: metadata plus the script that replays it."""

    name: str
    description: str
    model: str
    script: list[ScriptEntry]
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_script(raw: Any) -> list[ScriptEntry]:
    """A script is a non-empty list of objects; a replay object carries it under ``script``."""
    if isinstance(raw, dict):
        raw = raw.get("script")
    if not isinstance(raw, list) or not raw or not all(isinstance(e, dict) for e in raw):
        raise ValueError("a script must be a non-empty JSON list of objects (or a replay with 'script')")
    return list(raw)


def load_replay(path: Path) -> Replay:
    """Read a replay file (or a bare script list, which gets empty metadata)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    script = parse_script(raw)
    meta: dict[str, Any] = dict(raw.get("replay") or {}) if isinstance(raw, dict) else {}
    model = str(raw.get("model") or DEFAULT_MODEL) if isinstance(raw, dict) else DEFAULT_MODEL
    return Replay(
        name=str(meta.get("name") or path.stem),
        description=str(meta.get("description") or ""),
        model=model,
        script=script,
        metadata=meta,
    )


def tool_calls_of(entry: ScriptEntry, seq: int) -> list[dict[str, Any]]:
    """The OpenAI ``tool_calls`` list of an entry (pure)."""
    specs: list[dict[str, Any]] = list(entry.get("tool_calls") or [])
    if "tool" in entry:
        specs = [{"name": entry["tool"], "arguments": entry.get("args", {})}]
    calls = []
    for k, tc in enumerate(specs):
        args = tc.get("arguments", {})
        calls.append(
            {
                "id": tc.get("id", f"call_{seq}_{k}"),
                "type": "function",
                "function": {
                    "name": tc["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    return calls


def usage_of(entry: ScriptEntry) -> dict[str, int]:
    u = entry.get("usage") or DEFAULT_USAGE
    prompt, completion = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(entry: ScriptEntry, *, model: str, seq: int) -> dict[str, Any]:
    """Non-streaming ``chat.completion`` response for an entry (pure)."""
    calls = tool_calls_of(entry, seq)
    msg: dict[str, Any] = {"role": "assistant", "content": entry.get("text")}
    if entry.get("reasoning"):
        msg["reasoning_content"] = entry["reasoning"]
    if calls:
        msg["tool_calls"] = calls
    return {
        "id": f"chatcmpl-scripted-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": msg, "finish_reason": finish_of(entry, calls)}],
        "usage": usage_of(entry),
    }


def finish_of(entry: ScriptEntry, calls: Sequence[object]) -> str:
    return str(entry.get("finish") or ("tool_calls" if calls else "stop"))


def text_pieces(text: str) -> list[str]:
    """Split text into about three deltas, to exercise the client's delta handling."""
    step = max(1, len(text) // 3)
    return [text[p : p + step] for p in range(0, len(text), step)]


class ScriptedServer:
    """aiohttp server on 127.0.0.1 replaying a script; an async context manager."""

    def __init__(
        self,
        script: Sequence[Any],  # checked by parse_script
        *,
        model: str = DEFAULT_MODEL,
        no_aux: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        api_key: str | None = None,
    ) -> None:
        self.script = parse_script(list(script))
        self.api_key = api_key  # when set, requests without `Authorization: Bearer <key>` get 401
        self.model = model
        self.no_aux = no_aux
        self.host = host
        self.port = port
        self.log_path = log_path
        self.requests: list[dict[str, Any]] = []
        self.consumed = 0  # script entries handed out so far
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def chat_requests(self, *, with_tools: bool | None = None) -> list[dict[str, Any]]:
        """Bodies of chat-completion requests; ``with_tools`` filters agent (True) or aux (False)."""
        out = []
        for r in self.requests:
            body = r.get("body")
            if r["method"] != "POST" or not isinstance(body, dict):
                continue
            if with_tools is None or bool(body.get("tools")) == with_tools:
                out.append(body)
        return out

    async def start(self) -> ScriptedServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/{tail:.*}", self._get)
        app.router.add_post("/{tail:.*}", self._post)
        # shutdown_timeout bounds how long stop() waits for hanging handlers.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedServer:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _log(self, request: web.Request, body: Any) -> None:
        rec = {
            "t": time.time(),
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
            "body": body,
        }
        self.requests.append(rec)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def _next_entry(self) -> tuple[ScriptEntry, int]:
        seq = self.consumed
        self.consumed += 1
        return self.script[min(seq, len(self.script) - 1)], seq

    def _refused(self, request: web.Request) -> web.StreamResponse | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        err = {"error": {"message": "invalid api key", "type": "invalid_request_error", "code": "invalid_api_key"}}
        return web.json_response(err, status=401)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self._log(request, None)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.path.rstrip("/").endswith("/models"):
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "scripted"}
            return web.json_response({"object": "list", "data": [model]})
        return web.json_response({"error": {"message": "not found", "type": "not_found"}}, status=404)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        self._log(request, body)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not request.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
            return web.json_response({"error": {"message": "not found", "type": "not_found"}}, status=404)
        if not body.get("tools") and not self.no_aux:
            entry, seq = {"text": TITLE_REPLY}, -1
        else:
            entry, seq = self._next_entry()
        if "hang" in entry:
            await asyncio.sleep(float(entry["hang"]))
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client: the connection is gone
        if "status" in entry:
            err = entry.get("body", {"error": {"message": "scripted error"}})
            return web.json_response(err, status=int(entry["status"]))
        model = str(body.get("model") or self.model)
        if not body.get("stream"):
            return web.json_response(completion_body(entry, model=model, seq=seq))
        return await self._stream(request, body, entry, model=model, seq=seq)

    async def _stream(
        self, request: web.Request, req: dict[str, Any], entry: ScriptEntry, *, model: str, seq: int
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.force_close()
        await resp.prepare(request)
        cid, created = f"chatcmpl-scripted-{seq}", int(time.time())

        async def chunk(delta: dict[str, Any], fr: str | None = None, use: dict[str, int] | None = None) -> None:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": fr}],
            }
            if use is not None:
                obj["choices"], obj["usage"] = [], use
            await resp.write(sse.encode(obj))

        await chunk({"role": "assistant", "content": ""})
        if entry.get("reasoning"):
            await chunk({"reasoning_content": entry["reasoning"]})
        for n, piece in enumerate(text_pieces(str(entry.get("text") or ""))):
            await chunk({"content": piece})
            if n == 0 and entry.get("drop"):
                return resp  # the body ends here: no finish_reason, no [DONE]
            if n == 0 and entry.get("stall"):
                await asyncio.sleep(float(entry["stall"]))
        calls = tool_calls_of(entry, seq)
        for k, c in enumerate(calls):
            fn = c["function"]
            head = {"index": k, "id": c["id"], "type": "function"}
            head["function"] = {"name": fn["name"], "arguments": ""}
            await chunk({"tool_calls": [head]})
            await chunk({"tool_calls": [{"index": k, "function": {"arguments": fn["arguments"]}}]})
        await chunk({}, fr=finish_of(entry, calls))
        if (req.get("stream_options") or {}).get("include_usage"):
            await chunk({}, use=usage_of(entry))
        await resp.write(sse.DONE)
        return resp


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(port), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees an empty file


async def _serve(args: argparse.Namespace) -> None:
    path = Path(args.script)
    replay = load_replay(path)
    srv = ScriptedServer(
        replay.script,
        model=args.model or replay.model,
        no_aux=args.no_aux,
        host=args.host,
        port=args.port,
        log_path=Path(args.log) if args.log else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with srv:
        if args.port_file:
            _write_port_file(Path(args.port_file), srv.port)
        print(f"listening on {srv.base_url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m buildstudio.commands.scripted_server", description=_DOC_TITLE)
    ap.add_argument("--script", required=True, help="script JSON list, or a replay file")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument(
        "--host", default="127.0.0.1", help="address to bind (loopback by default; 0.0.0.0 only in a cluster pod)"
    )
    ap.add_argument("--port-file", help="write the chosen port here once listening")
    ap.add_argument("--log", help="append every request as a JSON line")
    ap.add_argument("--model", default="", help="model id served by GET /v1/models")
    ap.add_argument("--no-aux", action="store_true", help="tool-less requests consume script entries too")
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
