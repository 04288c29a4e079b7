"""Contract guard for opencode version bumps (opencode-contract.md): fails, naming what changed, when the
pinned binary no longer behaves the way the runner relies on. Re-measure the contract when it fails."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from buildstudio import pins
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.engines import opencode_config
from buildstudio.protocol.spec import RunnerSpec
from buildstudio.sandbox.runner.supervise import opencode_argv, opencode_env
from tests.runner_harness import OPENCODE, SKIP_REASON, make_repo, user_messages

pytestmark = [pytest.mark.opencode, pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)]


def _bin() -> str:
    assert OPENCODE is not None
    return OPENCODE


def test_version_is_the_pin() -> None:
    out = subprocess.run([_bin(), "--version"], capture_output=True, text=True, timeout=60)
    got = out.stdout.strip()
    assert got == pins.OPENCODE_VERSION, (
        f"opencode --version says {got!r}, pins.OPENCODE_VERSION is {pins.OPENCODE_VERSION!r}: "
        "re-measure docs/opencode-contract facts, then bump the pin"
    )


def test_run_help_lists_the_flags_the_runner_passes(tmp_path: Path) -> None:
    out = subprocess.run([_bin(), "run", "--help"], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    argv = opencode_argv(_bin(), tmp_path, "m")
    passed = [a for a in argv if a.startswith("-")]
    # 1.18.33 does not list --dangerously-skip-permissions (it is accepted: see the run test below).
    unlisted = {"--dangerously-skip-permissions"}
    missing = [f for f in passed if f not in unlisted and not re.search(rf"(^|\s){re.escape(f)}[\s,]", text)]
    assert not missing, f"`opencode run --help` no longer lists {missing}"
    assert re.search(r'--format\s[\s\S]{0,300}?"json"', text), "`--format json` is no longer a listed choice"
    still_unlisted = [f for f in unlisted if f in text]
    assert not still_unlisted, f"{still_unlisted} is now listed by --help: update this guard and the contract"


async def _run(tmp_path: Path, config: dict[str, Any], srv: ScriptedServer, prompt: str) -> tuple[int, str, str]:
    home, ws = tmp_path / "home", tmp_path / "ws"
    make_repo(ws)
    opencode_config.write_config(home, config)
    spec = RunnerSpec(prompt=prompt, model="qwen3-coder", base_url=srv.base_url)
    (tmp_path / "prompt.txt").write_text(prompt)
    with (tmp_path / "prompt.txt").open("rb") as stdin:
        proc = await asyncio.create_subprocess_exec(
            *opencode_argv(_bin(), ws, "qwen3-coder"),
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=opencode_env(spec, home, {"PATH": "/usr/bin:/bin"}),
            cwd=ws,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_run_with_the_generated_config_is_accepted(tmp_path: Path) -> None:
    async with ScriptedServer([{"text": "fine"}]) as srv:
        cfg = opencode_config.build_config(base_url=srv.base_url, model="qwen3-coder", context=65536, output=2048)
        rc, out, err = await _run(tmp_path, cfg, srv, "Say fine.")
    assert rc == 0 and err == "", f"generated config rejected: exit {rc}, stderr {err[:2000]!r}"
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["step_start", "text", "step_finish"], "event schema changed"
    assert events[-1]["part"]["reason"] == "stop" and events[1]["part"]["text"] == "fine"
    assert set(events[-1]["part"]["tokens"]) >= {"input", "output", "reasoning", "cache", "total"}
    agent = srv.chat_requests(with_tools=True)
    assert agent and agent[0]["max_tokens"] == 2048, "limit.output is no longer sent as max_tokens"
    assert user_messages(agent) == ["Say fine."], "the stdin prompt no longer arrives verbatim"
    assert not any(r["method"] == "GET" for r in srv.requests)


async def test_skip_permissions_flag_is_accepted_and_effective(tmp_path: Path) -> None:
    """With permission "ask", a bash call runs only because of --dangerously-skip-permissions."""
    script = [{"tool": "bash", "args": {"command": "touch ran.txt", "description": "t"}}, {"text": "done"}]
    async with ScriptedServer(script) as srv:
        cfg = opencode_config.build_config(base_url=srv.base_url, model="qwen3-coder", context=65536, output=2048)
        cfg["permission"] = "ask"
        rc, _out, err = await _run(tmp_path, cfg, srv, "Touch it.")
    assert rc == 0, f"exit {rc}: {err[:2000]}"
    assert "auto-rejecting" not in err, "--dangerously-skip-permissions no longer approves tool calls"
    assert (tmp_path / "ws" / "ran.txt").exists(), "the bash tool call did not run"
