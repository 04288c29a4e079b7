"""The `preflight` subcommand through a parser built here, as the top-level CLI will build it."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
from collections.abc import Iterator

import pytest

from buildstudio.commands.preflight import register, run_async
from tests.preflight.scripted import Reply, ScriptedServer, ServeFn, closed_port, scenario_routes


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="buildstudio")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["preflight", *argv])


async def test_ready_table(serve: ServeFn, capsys: pytest.CaptureFixture[str]) -> None:
    server = await serve(scenario_routes("ollama", "ready"))
    code = await run_async(parse("--base-url", server.url + "/v1", "--model", "qwen3-coder"))
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^MODEL READY +True \(Ready\)$", out, re.MULTILINE)
    assert "65536 (ollama:/api/ps context_length)" in out and "limit.context = 65536" in out
    assert "found as qwen3-coder:latest" in out and re.search(r"^ADMIT +yes$", out, re.MULTILINE)


async def test_too_small_json(serve: ServeFn, capsys: pytest.CaptureFixture[str]) -> None:
    server = await serve(scenario_routes("vllm", "small"))
    args = parse("--base-url", server.url + "/v1", "--model", "qwen3-coder", "-o", "json", "--backend", "vllm")
    code = await run_async(args)
    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document["verdict"]["reason"] == "ContextTooSmall" and document["verdict"]["admit"] is False
    assert document["observation"]["context"] == {
        "allocated": 8192,
        "allocatedSource": "vllm:/v1/models max_model_len",
    }
    assert document["observation"]["backendEvidence"] == "backend hint"


async def test_floor_flag_and_api_key_env(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    server = ScriptedServer(scenario_routes("vllm", "below"), require_token="tok")
    await server.start()
    try:
        monkeypatch.setenv("PREFLIGHT_TEST_KEY", "tok")
        base = ["--base-url", server.url + "/v1", "--model", "qwen3-coder", "--api-key-env", "PREFLIGHT_TEST_KEY"]
        assert await run_async(parse(*base)) == 0  # 32768 < 64k floor: admitted with a warning
        assert "ContextBelowFloor" in capsys.readouterr().out
        assert await run_async(parse(*base, "--floor", "32768")) == 0
        assert "True (Ready)" in capsys.readouterr().out
    finally:
        await server.stop()


@pytest.fixture
def threaded_server() -> Iterator[ScriptedServer]:
    """A scripted server on its own loop in a thread, for the synchronous `func` entry point."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(ScriptedServer(scenario_routes("dmr", "small")).start(), loop).result(
        timeout=10
    )
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_sync_entry_point_exit_codes(threaded_server: ScriptedServer, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--base-url", threaded_server.url + "/engines/v1", "--model", "qwen3-coder")
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "ContextTooSmall" in out and "docker model configure --context-size 65536" in out

    refused = parse("--base-url", f"http://127.0.0.1:{closed_port()}/v1", "--model", "m", "-o", "json")
    assert refused.func(refused) == 1
    assert json.loads(capsys.readouterr().out)["verdict"]["reason"] == "EndpointUnreachable"


async def test_smoke_flag_warns_without_refusing(serve: ServeFn, capsys: pytest.CaptureFixture[str]) -> None:
    routes = scenario_routes("vllm", "ready")
    leaked = {"role": "assistant", "content": "<function=read_file>\n<parameter=path>\nREADME.md", "tool_calls": []}
    routes["POST /v1/chat/completions"] = Reply(json={"choices": [{"message": leaked, "finish_reason": "stop"}]})
    server = await serve(routes)
    code = await run_async(parse("--base-url", server.url + "/v1", "--model", "qwen3-coder", "--smoke", "-o", "json"))
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["verdict"]["reason"] == "Ready"
    assert document["toolSmoke"]["status"] == "ToolCallAsText" and document["toolSmoke"]["warning"] is True
