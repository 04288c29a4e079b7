"""Engine integration: the runner with the real pinned opencode against the scripted server on loopback,
in real git repos: answers, file edits and the diff, the prompt delivered verbatim, cancel, exit timer."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.protocol import records
from tests.runner_harness import OPENCODE, REPO_ROOT, SKIP_REASON, make_repo, run_runner, spec, user_messages

pytestmark = [pytest.mark.opencode, pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runner"


def tricky_prompt(size: int) -> str:
    head = 'Say "hi" to `whoami` and $(rm -rf /) and $HOME, it\'s fine;\n\ttab\n\\n literal\n'
    filler = "The quick brown fox jumps over the lazy dog. " * (size // 45 + 1)
    return (head + filler)[:size] + "\nEND"


@pytest.mark.parametrize("size", [100_000, 200_000], ids=["100KB", "200KB"])
async def test_text_answer_and_prompt_verbatim(tmp_path: Path, size: int) -> None:
    ws = tmp_path / "ws"
    make_repo(ws)
    prompt = tricky_prompt(size)
    async with ScriptedServer([{"text": "The repository contains calc.py with an add function."}]) as srv:
        run = await run_runner(tmp_path, spec(srv.base_url, prompt, outputLimit=4096), ws=ws)
    res = run.result
    assert res.outcome is records.Outcome.NO_CHANGES, res.message
    assert run.rc == 0 and res.exit_code == 0
    assert res.summary.final_text == "The repository contains calc.py with an add function."
    assert res.diff_stat.files == 0 and res.diff == ""
    assert res.base_commit and not res.replay
    agent = srv.chat_requests(with_tools=True)
    assert len(agent) == 1
    # Byte for byte: no quotes added, nothing expanded, no 128 KiB argv cap.
    assert user_messages(agent) == [prompt]
    assert agent[0]["max_tokens"] == 4096
    assert not any("authorization" in {k.lower() for k in r["headers"]} for r in srv.requests)
    assert any(isinstance(r, records.ProgressRecord) for r in run.lines)
    # The prompt file lives in the runner's home, not in the workspace (it is not in the diff).
    assert not any(p.name == "prompt.txt" for p in ws.rglob("*"))


async def test_tool_calls_write_and_edit_in_a_cloned_repo(tmp_path: Path) -> None:
    src = make_repo(tmp_path / "src")
    src.git.checkout("-b", "feature")
    (tmp_path / "src" / "NOTES.md").write_text("notes\n")
    src.index.add(["NOTES.md"])
    feature = src.index.commit("notes").hexsha
    src.git.checkout("HEAD~1")
    script = [
        {"tool": "write", "args": {"filePath": "hello.py", "content": "print('hello')\n"}},
        {
            "tool": "edit",
            "args": {
                "filePath": "calc.py",
                "oldString": "return a + b",
                "newString": "return a + b\n\n\ndef sub(a, b):\n    return a - b",
            },
        },
        {"text": "Added hello.py and sub()."},
    ]
    async with ScriptedServer(script) as srv:
        run = await run_runner(
            tmp_path,
            spec(
                srv.base_url,
                "Add hello.py and sub().",
                repo={"url": str(tmp_path / "src"), "ref": "feature", "localPaths": True},
            ),
            ws=tmp_path / "ws",
        )
    res = run.result
    assert res.outcome is records.Outcome.COMPLETED, res.message
    assert res.base_commit == feature
    assert res.diff_stat.files == 2 and res.diff_stat.additions == 5
    assert "+print('hello')" in res.diff and "+def sub(a, b):" in res.diff
    assert res.patch.data and res.patch.bytes == res.diff_bytes
    assert sorted(res.summary.files_touched) == ["calc.py", "hello.py"]
    assert res.summary.tools_by_name == {"write": 1, "edit": 1}
    assert res.summary.steps == 3 and res.summary.tokens.total == 360
    tools = [e.message for e in run.events("tool")]
    assert tools[0].startswith("write hello.py completed") and tools[1].startswith("edit calc.py completed")


async def test_untrusted_repo_config_is_ignored(tmp_path: Path) -> None:
    """A repo's own opencode.json (which could redirect the model or deny tools) has no effect."""
    ws = tmp_path / "ws"
    make_repo(
        ws,
        {
            "calc.py": "x = 1\n",
            "opencode.json": '{"provider": {"local": {"options": '
            '{"baseURL": "http://127.0.0.1:9/v1"}}}, "permission": {"bash": "deny"}}',
            "CLAUDE.md": "SECRET-CLAUDE-INSTRUCTIONS",
        },
    )
    async with ScriptedServer([{"text": "ok"}]) as srv:
        run = await run_runner(tmp_path, spec(srv.base_url), ws=ws)
    assert run.result.outcome is records.Outcome.NO_CHANGES, run.result.message
    agent = srv.chat_requests(with_tools=True)
    assert "bash" in [t["function"]["name"] for t in agent[0]["tools"]]
    assert "SECRET-CLAUDE-INSTRUCTIONS" not in str(agent[0]["messages"][0])


async def test_cancel_stops_everything_and_keeps_the_partial_diff(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_repo(ws)
    # Tool commands in their own sessions outlive opencode unless the runner kills them itself.
    cmd = (
        "echo partial > partial.txt; setsid sleep 300 >/dev/null 2>&1 & echo $! > pid1.txt; "
        "nohup sleep 301 >/dev/null 2>&1 & echo $! > pid2.txt"
    )
    script = [{"tool": "bash", "args": {"command": cmd, "description": "start sleepers"}}, {"hang": 120}]
    cancelled_at: list[float] = []

    async def cancel_when_started(proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + 60
        while not ((ws / "pid2.txt").exists() and (ws / "pid2.txt").read_text().strip()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # opencode is now waiting on the hung model request
        cancelled_at.append(time.monotonic())
        proc.terminate()

    async with ScriptedServer(script) as srv:
        run = await run_runner(
            tmp_path, spec(srv.base_url, timeouts={"cancelGraceSeconds": 10}), ws=ws, during=cancel_when_started
        )
    finished = time.monotonic()
    res = run.result
    assert res.outcome is records.Outcome.CANCELLED, res.message
    assert cancelled_at and finished - cancelled_at[0] < 10, "result within the cancel grace"
    assert res.diff_stat.files == 3 and "+partial" in res.diff  # partial.txt, pid1.txt, pid2.txt
    for name in ("pid1.txt", "pid2.txt"):
        pid = int((ws / name).read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any("cancel" in e.message for e in run.events("watchdog"))


async def test_exit_timer_when_opencode_lingers_after_its_final_event(tmp_path: Path) -> None:
    """FAKE opencode (the real one always exits ≈ 100 ms after its last event): it prints a real captured
    text-only stream, then sleeps, as in opencode issue #44901."""
    fake = tmp_path / "fake-opencode"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        f"sys.stdout.write(open({str(FIXTURES / 'text-only.jsonl')!r}).read())\n"
        "sys.stdout.flush()\n"
        "time.sleep(300)\n"
    )
    fake.chmod(0o755)
    ws = tmp_path / "ws"
    make_repo(ws)
    run = await run_runner(
        tmp_path, spec("http://127.0.0.1:9/v1", timeouts={"exitAfterFinalSeconds": 1.5}), ws=ws, opencode=str(fake)
    )
    res = run.result
    assert res.outcome is records.Outcome.NO_CHANGES, res.message
    assert "did not exit" in res.message
    assert res.summary.final_text.startswith("The repository contains calc.py")
    assert run.elapsed < 15
    assert run.rc == 0


def test_replay_examples_exist() -> None:
    assert (REPO_ROOT / "examples" / "replays" / "add-subtract.json").exists()


async def test_relay_repairs_text_format_tool_calls(tmp_path: Path) -> None:
    """opencode 1.18.33 prints qwen3-coder's text-format calls as text (contract §6); with `relay` on,
    the runner's repair relay turns them into API tool calls and the record counts them."""
    markup = (
        "<tool_call>\n<function=write>\n<parameter=filePath>\nx.py\n</parameter>\n"
        "<parameter=content>\nprint(1)\n</parameter>\n</function>\n</tool_call>"
    )
    ws = tmp_path / "ws"
    make_repo(ws)
    async with ScriptedServer([{"text": markup}, {"text": "Wrote x.py."}]) as srv:
        run = await run_runner(tmp_path, spec(srv.base_url, relay=True), ws=ws)
    res = run.result
    assert res.outcome is records.Outcome.COMPLETED, res.message
    assert (ws / "x.py").read_text() == "print(1)\n" or (ws / "x.py").read_text() == "print(1)"
    assert res.summary.repaired_tool_calls == 1 and res.summary.tools_by_name == {"write": 1}
    assert any(e.type == "repair" for e in run.events())
