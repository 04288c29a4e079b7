"""The real opencode binary, the scripted model and the relay (opencode-contract §6).

A qwen3-coder text-format ``write`` call is only executed when the relay sits in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.engines.opencode_config import (
    DEFAULT_CHUNK_TIMEOUT_MS,
    build_config,
    model_ref,
    sandbox_env,
    write_config,
)
from buildstudio.sandbox.relay import Relay
from tests.sandbox.relay.helpers import chunk

REPO_ROOT = Path(__file__).resolve().parents[3]
FINAL = "I wrote textcall.py."

pytestmark = pytest.mark.opencode


def opencode_bin() -> str | None:
    env = os.environ.get("OPENCODE_BIN")
    if env:
        return env if Path(env).exists() else None
    local = REPO_ROOT / ".tools/opencode/node_modules/.bin/opencode"
    return str(local) if local.exists() else shutil.which("opencode")


def text_call(path: Path) -> str:
    return (
        "I'll create the file.\n<tool_call>\n<function=write>\n<parameter=filePath>\n"
        f"{path}\n</parameter>\n<parameter=content>\nprint('from text')\n</parameter>\n</function>\n</tool_call>"
    )


def git_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True, timeout=30)
    subprocess.run([*git, "add", "."], cwd=repo, check=True, timeout=30)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True, timeout=30)
    return repo


async def run_opencode(
    binary: str, base_url: str, tmp: Path, repo: Path, *, chunk_timeout_ms: int = DEFAULT_CHUNK_TIMEOUT_MS
) -> tuple[int, list[dict[str, Any]]]:
    home = tmp / "home"
    config = build_config(
        base_url=base_url, model="qwen3-coder", context=65536, output=8192, chunk_timeout_ms=chunk_timeout_ms
    )
    write_config(home, config)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **sandbox_env(home)}
    proc = await asyncio.create_subprocess_exec(
        binary, "run", "--dir", str(repo), "-m", model_ref("qwen3-coder"), "--format", "json",
        "--dangerously-skip-permissions", "Create textcall.py",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        out, _err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode is not None
    return proc.returncode, events


@pytest.fixture
def binary() -> str:
    b = opencode_bin()
    if b is None:
        pytest.skip("opencode binary missing (set OPENCODE_BIN or install .tools/opencode)")
    return b


async def test_text_format_write_runs_through_the_relay(binary: str, tmp_path: Path) -> None:
    repo = git_repo(tmp_path)
    target = repo / "textcall.py"
    async with ScriptedServer([{"text": text_call(target)}, {"text": FINAL}]) as srv, Relay(srv.base_url) as relay:
        code, events = await run_opencode(binary, relay.base_url, tmp_path, repo)
        counters = relay.counters
    assert code == 0, events
    assert target.read_text() == "print('from text')"
    tools = [e["part"] for e in events if e["type"] == "tool_use"]
    assert [(t["tool"], t["state"]["status"]) for t in tools] == [("write", "completed")]
    assert tools[0]["state"]["input"] == {"filePath": str(target), "content": "print('from text')"}
    finishes = [e["part"]["reason"] for e in events if e["type"] == "step_finish"]
    assert finishes == ["tool-calls", "stop"]
    assert [e["part"]["text"] for e in events if e["type"] == "text"][-1] == FINAL
    assert counters.repaired == 1 and counters.left_as_text == 0


async def test_bare_calls_with_preamble_and_two_calls_in_one_reply(binary: str, tmp_path: Path) -> None:
    """ollama #16686/#18530 shape: prose, no <tool_call> opener, orphan closer; two calls, one integer arg."""
    repo = git_repo(tmp_path)
    reply = (
        "I'll add the file and then look at calc.py.\n\n<function=write>\n<parameter=filePath>\n"
        f"{repo / 'b.py'}\n</parameter>\n<parameter=content>\nif 1 < 2 > 0:\n    print('</b>')\n</parameter>\n"
        "</function>\n</tool_call>\n<function=read>\n<parameter=filePath>\ncalc.py\n</parameter>\n"
        "<parameter=limit>\n5\n</parameter>\n</function>\n</tool_call>"
    )
    async with ScriptedServer([{"text": reply}, {"text": FINAL}]) as srv, Relay(srv.base_url) as relay:
        code, events = await run_opencode(binary, relay.base_url, tmp_path, repo)
        agent = srv.chat_requests(with_tools=True)
    assert code == 0, events
    assert (repo / "b.py").read_text() == "if 1 < 2 > 0:\n    print('</b>')"
    tools = [e["part"] for e in events if e["type"] == "tool_use"]
    assert [(t["tool"], t["state"]["status"]) for t in tools] == [("write", "completed"), ("read", "completed")]
    assert tools[1]["state"]["input"] == {"filePath": "calc.py", "limit": 5}
    assert relay.counters.repaired == 2
    # opencode sent the repaired calls back as API tool_calls with their results
    assistant = [m for m in agent[1]["messages"] if m.get("role") == "assistant"]
    assert [c["function"]["name"] for c in assistant[-1]["tool_calls"]] == ["write", "read"]


async def test_same_reply_without_the_relay_writes_nothing(binary: str, tmp_path: Path) -> None:
    repo = git_repo(tmp_path)
    target = repo / "textcall.py"
    async with ScriptedServer([{"text": text_call(target)}, {"text": FINAL}]) as srv:
        code, events = await run_opencode(binary, srv.base_url, tmp_path, repo)
    assert code == 0
    assert not target.exists()
    assert not [e for e in events if e["type"] == "tool_use"]
    texts = [e["part"]["text"] for e in events if e["type"] == "text"]
    assert len(texts) == 1 and "<tool_call>" in texts[0]
    assert [e["part"]["reason"] for e in events if e["type"] == "step_finish"] == ["stop"]


SLOW_CHUNK = 4  # characters per upstream chunk, about one token
SLOW_GAP = 0.01  # seconds between chunks
CHUNK_TIMEOUT_MS = 2000  # opencode's own chunk timeout, far below the ~7 s the call takes to arrive


async def slow_upstream(reply: str, gap: float = SLOW_GAP) -> tuple[web.AppRunner, str, list[int]]:
    """A model that streams ``reply`` (first agent step) at a slow local model's pace, then a final text."""
    steps: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if body.get("tools"):
            steps.append(len(steps))
            text, pace = (reply, gap) if len(steps) == 1 else (FINAL, 0.0)
        else:
            text, pace = "Slow write", 0.0  # the title request
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": text[i : i + SLOW_CHUNK]}) for i in range(0, len(text), SLOW_CHUNK)]
        for ev in [*events, chunk({}, "stop")]:
            await resp.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
            await asyncio.sleep(pace)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1", steps


async def test_a_long_write_streamed_slowly_runs_within_the_chunk_timeout(binary: str, tmp_path: Path) -> None:
    """Issue #18: the call streams as tool_calls deltas, so opencode's chunk timeout never fires."""
    repo = git_repo(tmp_path)
    target = repo / "long.py"
    content = "".join(f"def f{i}(x):\n    return x < {i} and '</div>' or x > 1  # <b>\n" for i in range(50))
    reply = (
        "I'll write the file.\n<tool_call>\n<function=write>\n<parameter=filePath>\n"
        f"{target}\n</parameter>\n<parameter=content>\n{content}\n</parameter>\n</function>\n</tool_call>"
    )
    assert len(reply) / SLOW_CHUNK * SLOW_GAP > 2.5 * CHUNK_TIMEOUT_MS / 1000  # buffered, this would time out
    runner, base, steps = await slow_upstream(reply)
    try:
        async with Relay(base) as relay:
            code, events = await run_opencode(binary, relay.base_url, tmp_path, repo, chunk_timeout_ms=CHUNK_TIMEOUT_MS)
            counters = relay.counters
    finally:
        await runner.cleanup()
    assert code == 0, events
    assert target.read_text() == content
    tools = [e["part"] for e in events if e["type"] == "tool_use"]
    assert [(t["tool"], t["state"]["status"]) for t in tools] == [("write", "completed")]
    assert [e["part"]["text"] for e in events if e["type"] == "text"][-1] == FINAL
    assert counters.repaired == 1 and counters.left_as_text == 0 and len(steps) == 2


async def test_a_call_cut_off_after_its_first_delta_is_never_run(binary: str, tmp_path: Path) -> None:
    """The reply ends mid-value after the call's first delta went out: a valid stream, a call never run."""
    repo = git_repo(tmp_path)
    target = repo / "cut.py"
    reply = f"<tool_call>\n<function=write>\n<parameter=filePath>\n{target}\n</parameter>\n<parameter=content>\nprint("
    runner, base, steps = await slow_upstream(reply, gap=0.0)
    try:
        async with Relay(base) as relay:
            code, events = await run_opencode(binary, relay.base_url, tmp_path, repo)
            counters = relay.counters
    finally:
        await runner.cleanup()
    assert not target.exists()  # a truncated file is never written
    assert counters.repaired == 0 and counters.reasons == {"unterminated": 1}
    tools = [e["part"] for e in events if e["type"] == "tool_use"]
    # opencode's AI SDK hands the unparseable call to its "invalid" tool: the model is told, nothing runs
    assert [(t["tool"], t["state"]["status"]) for t in tools] == [("invalid", "completed")]
    assert "JSON Parse error" in tools[0]["state"]["output"]
    assert code == 0 and len(steps) == 2
    assert [e["part"]["text"] for e in events if e["type"] == "text"][-1] == FINAL
