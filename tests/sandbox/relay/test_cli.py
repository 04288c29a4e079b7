"""``python -m buildstudio.sandbox.relay`` as the runner starts it: port file, SIGTERM, counters line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp

from buildstudio.commands.scripted_server import ScriptedServer
from tests.sandbox.relay.cases import CANONICAL
from tests.sandbox.relay.helpers import opencode_tools, read_sse


async def test_cli_serves_and_reports_counters_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    async with ScriptedServer([{"text": CANONICAL}]) as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "buildstudio.sandbox.relay", "--upstream", srv.base_url, "--port", "0",
            "--port-file", str(port_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not port_file.exists():
                assert proc.returncode is None, "relay exited early"
                assert time.monotonic() < deadline, "relay did not write its port file"
                await asyncio.sleep(0.05)
            base = f"http://127.0.0.1:{int(port_file.read_text())}/v1"
            body = {"model": "qwen3-coder", "messages": [], "stream": True, "tools": opencode_tools()}
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s,
                s.post(base + "/chat/completions", json=body) as r,
            ):
                reply = read_sse(await r.read())
            assert [n for n, _ in reply.tool_calls()] == ["write"]
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, err
    assert json.loads(out.decode().strip().splitlines()[-1]) == {
        "repaired": 1,
        "leftAsText": 0,
        "reasons": {},
        "requests": 1,
        "inputTokens": 0,
        "outputTokens": 0,
    }
