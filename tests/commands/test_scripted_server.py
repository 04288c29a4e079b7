"""The scripted OpenAI-compatible server: what a client sees over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from buildstudio.commands.scripted_server import TITLE_REPLY, ScriptedServer, load_replay, parse_script

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = [{"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}}]


def chat(stream: bool, tools: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "qwen3-coder", "messages": [{"role": "user", "content": "hi"}]}
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = TOOLS
    body.update(extra)
    return body


def sse_chunks(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assemble(chunks: list[Any]) -> dict[str, Any]:
    """What an OpenAI client makes of a stream: text, tool calls, finish reason, usage, [DONE]."""
    text, reasoning, finish, usage, done = "", "", None, None, False
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        if c == "[DONE]":
            done = True
            continue
        if c.get("usage"):
            usage = c["usage"]
        for ch in c.get("choices", []):
            d = ch["delta"]
            text += d.get("content") or ""
            reasoning += d.get("reasoning_content") or ""
            for tc in d.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                fn = tc.get("function", {})
                slot["name"] += fn.get("name", "")
                slot["arguments"] += fn.get("arguments", "")
                slot.setdefault("id", tc.get("id"))
            finish = ch.get("finish_reason") or finish
    return {
        "text": text,
        "reasoning": reasoning,
        "calls": [calls[k] for k in sorted(calls)],
        "finish": finish,
        "usage": usage,
        "done": done,
    }


async def test_models_and_non_streaming_reply() -> None:
    async with (
        ScriptedServer(
            [{"text": "hello there", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}], model="m1"
        ) as srv,
        httpx.AsyncClient(timeout=5) as client,
    ):
        assert srv.base_url.startswith("http://127.0.0.1:")
        models = (await client.get(srv.base_url + "/models")).json()
        assert [m["id"] for m in models["data"]] == ["m1"]
        r = await client.post(srv.base_url + "/chat/completions", json=chat(stream=False))
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "hello there"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        assert [q["method"] for q in srv.requests] == ["GET", "POST"]
        assert srv.chat_requests(with_tools=True)[0]["messages"][0]["content"] == "hi"


async def test_streamed_tool_calls_text_reasoning_and_usage() -> None:
    script = [
        {
            "tool_calls": [
                {"name": "write", "arguments": {"filePath": "a.py", "content": "x"}},
                {"name": "read", "arguments": '{"filePath": "b.py"}'},
            ],
            "text": "writing",
            "reasoning": "think",
        },
        {"text": "all done", "finish": "length"},
    ]
    async with ScriptedServer(script) as srv, httpx.AsyncClient(timeout=5) as client:
        r1 = assemble(sse_chunks((await client.post(srv.base_url + "/chat/completions", json=chat(True))).text))
        assert r1["text"] == "writing" and r1["reasoning"] == "think"
        assert [(c["name"], json.loads(c["arguments"])) for c in r1["calls"]] == [
            ("write", {"filePath": "a.py", "content": "x"}),
            ("read", {"filePath": "b.py"}),
        ]
        assert r1["finish"] == "tool_calls" and r1["done"]
        assert r1["usage"]["total_tokens"] == 120
        r2 = assemble(sse_chunks((await client.post(srv.base_url + "/chat/completions", json=chat(True))).text))
        assert (r2["text"], r2["finish"]) == ("all done", "length")
        # Exhausted: the last entry repeats.
        r3 = assemble(sse_chunks((await client.post(srv.base_url + "/chat/completions", json=chat(True))).text))
        assert r3["text"] == "all done"
        assert srv.consumed == 3


async def test_tool_shorthand_and_title_requests_do_not_consume() -> None:
    async with (
        ScriptedServer([{"tool": "bash", "args": {"command": "ls"}}, {"text": "end"}]) as srv,
        httpx.AsyncClient(timeout=5) as client,
    ):
        title = (await client.post(srv.base_url + "/chat/completions", json=chat(False, tools=False))).json()
        assert title["choices"][0]["message"]["content"] == TITLE_REPLY
        first = (await client.post(srv.base_url + "/chat/completions", json=chat(False))).json()
        call = first["choices"][0]["message"]["tool_calls"][0]
        assert call["function"] == {"name": "bash", "arguments": '{"command": "ls"}'}
        assert srv.consumed == 1
        assert len(srv.chat_requests(with_tools=False)) == 1


async def test_no_aux_makes_every_request_consume() -> None:
    async with (
        ScriptedServer([{"text": "one"}, {"text": "two"}], no_aux=True) as srv,
        httpx.AsyncClient(timeout=5) as client,
    ):
        a = (await client.post(srv.base_url + "/chat/completions", json=chat(False, tools=False))).json()
        b = (await client.post(srv.base_url + "/chat/completions", json=chat(False))).json()
        assert [a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]] == ["one", "two"]


async def test_status_drop_and_stall() -> None:
    script = [
        {"status": 404, "body": {"error": {"message": "The model `x` does not exist."}}},
        {"text": "abcdefghi", "drop": True},
        {"text": "abcdefghi", "stall": 0.3},
    ]
    async with ScriptedServer(script) as srv, httpx.AsyncClient(timeout=5) as client:
        r = await client.post(srv.base_url + "/chat/completions", json=chat(True))
        assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
        dropped = assemble(sse_chunks((await client.post(srv.base_url + "/chat/completions", json=chat(True))).text))
        assert dropped["text"] == "abc" and dropped["finish"] is None and not dropped["done"]
        t0 = time.monotonic()
        stalled = assemble(sse_chunks((await client.post(srv.base_url + "/chat/completions", json=chat(True))).text))
        assert stalled["text"] == "abcdefghi" and stalled["done"]
        assert time.monotonic() - t0 >= 0.3


async def test_hang_never_answers_and_does_not_block_the_server() -> None:
    async with ScriptedServer([{"hang": 30}], no_aux=False) as srv, httpx.AsyncClient(timeout=5) as client:
        hung = asyncio.ensure_future(client.post(srv.base_url + "/chat/completions", json=chat(True), timeout=0.5))
        # Other requests are still served while one hangs.
        assert (await client.get(srv.base_url + "/models")).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await hung
    # stop() returned promptly although a handler was still sleeping (bounded shutdown).


def test_parse_script_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        parse_script([])
    with pytest.raises(ValueError):
        parse_script({"script": "nope"})
    f = tmp_path / "plain.json"
    f.write_text(json.dumps([{"text": "x"}]))
    rep = load_replay(f)
    assert (rep.name, rep.model, rep.script) == ("plain", "qwen3-coder", [{"text": "x"}])


def test_shipped_replays_load() -> None:
    files = sorted((REPO_ROOT / "examples" / "replays").glob("*.json"))
    assert files, "examples/replays/ holds at least one replay"
    for f in files:
        rep = load_replay(f)
        assert rep.description and rep.script, f


def test_runs_as_a_process_with_port_file(tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"replay": {"name": "t"}, "model": "m9", "script": [{"text": "hey"}]}))
    port_file, log = tmp_path / "port", tmp_path / "req.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buildstudio.commands.scripted_server",
            "--script",
            str(script),
            "--port-file",
            str(port_file),
            "--log",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}/v1"
        assert httpx.get(base + "/models", timeout=5).json()["data"][0]["id"] == "m9"
        r = httpx.post(base + "/chat/completions", json=chat(False), timeout=5).json()
        assert r["choices"][0]["message"]["content"] == "hey"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [q["method"] for q in logged] == ["GET", "POST"]
