"""The relay as the sandbox's credential holder: `python -m buildstudio.sandbox.relay` with the key in a
file, as the pod's relay sidecar runs it; the engine sends no key (or a wrong one) and the model
service sees the right one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.sandbox.relay.__main__ import plaintext_refusal
from tests.runner_harness import REPO_ROOT

KEY = "SECRET-model-key-1234"
TIMEOUT = aiohttp.ClientTimeout(total=20)


async def _start_relay(tmp_path: Path, upstream: str, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    url_file = tmp_path / "url"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "buildstudio.sandbox.relay",
        "--upstream",
        upstream,
        "--api-key-file",
        str(key_file),
        "--url-file",
        str(url_file),
        "--counters-file",
        str(tmp_path / "counters.json"),
        "--no-repair",
        *extra,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    for _ in range(200):
        if url_file.exists() or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert url_file.exists(), "relay did not publish its URL"
    return proc, url_file.read_text()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await asyncio.wait_for(proc.wait(), 10)


async def test_the_relay_adds_the_key_and_replaces_whatever_the_engine_sends(tmp_path: Path) -> None:
    script = [{"text": "one"}, {"text": "two"}]
    async with ScriptedServer(script, model="m", api_key=KEY) as model:
        proc, url = await _start_relay(tmp_path, model.base_url, "--allow-plaintext-credentials")
        try:
            assert url.startswith("http://127.0.0.1:")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
                for headers in ({}, {"Authorization": "Bearer stolen-or-wrong"}):
                    async with s.post(url + "/chat/completions", json=body, headers=headers) as r:
                        assert r.status == 200, await r.text()
                        assert KEY not in await r.text()
        finally:
            await _stop(proc)
    assert len(model.chat_requests()) == 2


async def test_a_key_over_plain_http_is_refused_unless_allowed(tmp_path: Path) -> None:
    assert plaintext_refusal("http://ollama.models:11434/v1", True, False)
    assert plaintext_refusal("http://ollama.models:11434/v1", True, True) is None
    assert plaintext_refusal("http://ollama.models:11434/v1", False, False) is None
    assert plaintext_refusal("https://models.example.com/v1", True, False) is None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "buildstudio.sandbox.relay",
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--api-key-file",
        str(_key(tmp_path)),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and b"plain http" in err and KEY.encode() not in err


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(KEY)
    return path


def test_counters_file_format_is_what_the_reporter_reads(tmp_path: Path) -> None:
    from buildstudio.sandbox.runner.roles import read_counters

    path = tmp_path / "counters.json"
    path.write_text(json.dumps({"repaired": 3, "leftAsText": 1, "reasons": {}}))
    assert read_counters(path) == (3, 1)
    path.write_text("[" * 100000)
    assert read_counters(path) is None  # malformed: no counters, no crash
