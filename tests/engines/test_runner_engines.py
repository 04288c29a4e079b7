"""The runner with the real pinned claude, codex and grok CLIs, each against its scripted vendor
server behind the runner's credential relay, in a real git repo: the diff, the summary and the
outcome of a write-and-edit run; a model error (grok exits 0 on it: never Completed); a hung
service ended by the watchdog; the credential in neither the engine's environment nor its argv.

Like tests/test_runner_opencode.py: ``python -m buildstudio.sandbox.runner --spec`` as a process.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from buildstudio.protocol import records
from tests.engines import harness as h
from tests.engines.scenarios import MODELS, _subst, make_server, tool_errors_script, write_edit_script
from tests.runner_harness import make_repo, run_runner

pytestmark = pytest.mark.engines

ENGINES = ("claude", "codex", "grok")
SECRET = "sk-SECRET-vendor-key-0123456789"
KEY_ENV = "BUILDSTUDIO_TEST_VENDOR_KEY"
SUB = "def sub(a, b):\n    return a - b\n"
# The header each vendor takes the key in (the relay puts it there; the engine sends a placeholder).
AUTH = {"claude": ("x-api-key", SECRET), "codex": ("authorization", f"Bearer {SECRET}")}
AUTH["grok"] = AUTH["codex"]


def need(engine: str) -> Path:
    binary = h.engine_binary(engine)
    if binary is None:
        pytest.skip(f"{engine} CLI not installed (hack/install-engines.sh)")
    return binary


def wrapper(tmp: Path, real: Path) -> Path:
    """An engine binary that records its argv and environment, then runs the real CLI."""
    script = tmp / "engine-wrapper.sh"
    script.write_text(
        f'#!/bin/sh\nenv > "{tmp}/engine-env.txt"\nprintf "%s\\n" "$@" > "{tmp}/engine-argv.txt"\nexec "{real}" "$@"\n',
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def run_engine(
    engine: str, tmp: Path, script: list[dict[str, Any]], *, limit: float = 90.0, **spec_extra: Any
) -> tuple[Any, Any, Path]:
    """Start the engine's scripted server, run the runner with the spec's engine; (run, server, ws)."""
    real = need(engine)
    ws = tmp / "ws"
    make_repo(ws)
    server = make_server(engine, _subst(script, str(ws)))
    await server.start()
    spec: dict[str, Any] = {
        "prompt": "Add a sub(a, b) function in sub.py and swap the operands in calc.py.",
        "model": MODELS[engine],
        "engine": engine,
        "baseUrl": f"http://127.0.0.1:{server.port}/v1",
        "apiKeyEnv": KEY_ENV,
        "outputLimit": 16384,
    }
    spec.update(spec_extra)
    env = {f"{engine.upper()}_BIN": str(wrapper(tmp, real)), KEY_ENV: SECRET}
    try:
        run = await run_runner(tmp, spec, ws=ws, limit=limit, extra_env=env)
    finally:
        await server.stop()
    return run, server, ws


def model_requests(server: Any) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["method"] == "POST"]


@pytest.mark.parametrize("engine", ENGINES)
async def test_write_and_edit_end_in_the_diff_with_the_summary(tmp_path: Path, engine: str) -> None:
    run, server, ws = await run_engine(engine, tmp_path, write_edit_script(engine))
    res = run.result
    assert res.outcome is records.Outcome.COMPLETED, (res.message, run.stderr[-2000:])
    assert run.rc == 0
    assert (ws / "sub.py").read_text() == SUB
    assert "return b + a" in (ws / "calc.py").read_text()
    assert res.diff_stat.files == 2, res.diff
    assert "sub.py" in res.diff and "calc.py" in res.diff
    assert ".grok" not in res.diff  # grok's own settings file is excluded, not the agent's work
    s = res.summary
    steps, tools = {"claude": (4, 3), "codex": (1, 2), "grok": (3, 2)}[engine]
    assert (s.steps, s.tool_calls, s.tool_errors) == (steps, tools, 0), s
    assert sorted(s.files_touched) == ["calc.py", "sub.py"]
    assert s.final_text == "Added sub() and swapped the operands."
    # Tokens: the engine's own total (claude, codex), the relay's count for grok (it prints none).
    expected_in = {"claude": 21400, "codex": 16400, "grok": 16400}[engine]
    assert s.tokens.input == expected_in, s.tokens
    assert engine in res.message or res.message.startswith("2 files changed"), res.message
    # The vendor saw the key from the runner's environment, in its own header; the engine never had it.
    header, value = AUTH[engine]
    reqs = model_requests(server)
    assert reqs and all({k.lower(): v for k, v in r["headers"].items()}.get(header) == value for r in reqs)
    if engine == "grok":
        assert all("search_parameters" not in r["body"] for r in reqs)  # dropped by the relay
    env_text = (tmp_path / "engine-env.txt").read_text()
    argv_text = (tmp_path / "engine-argv.txt").read_text()
    assert SECRET not in env_text and SECRET not in argv_text
    assert KEY_ENV not in env_text
    assert "sk-buildstudio-placeholder" in env_text  # what the engine holds instead
    assert "127.0.0.1" in env_text or "127.0.0.1" in (tmp_path / "home").joinpath(".codex", "config.toml").read_text()


@pytest.mark.parametrize("engine", ENGINES)
async def test_tool_errors_do_not_end_the_run(tmp_path: Path, engine: str) -> None:
    run, _, ws = await run_engine(engine, tmp_path, tool_errors_script(engine))
    res = run.result
    # Each script's failing shell command still wrote ran.txt: the run goes on and ends with an answer.
    assert res.outcome is records.Outcome.COMPLETED, res.message
    assert (ws / "ran.txt").exists() and res.diff_stat.files == 1
    assert res.summary.final_text == "Some tools failed."


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_model_error_is_a_model_error_whatever_the_exit_code(tmp_path: Path, engine: str) -> None:
    run, server, _ = await run_engine(engine, tmp_path, [{"status": 500}])
    res = run.result
    assert res.outcome is records.Outcome.MODEL_ERROR, res.message
    assert run.rc == 1 and res.diff_stat.files == 0
    assert "500" in res.message or "high demand" in res.message, res.message
    if engine == "grok":
        assert res.exit_code == 0  # grok exits 0 on a model error: the stream decides
    assert len(model_requests(server)) >= 2  # the CLI's own retries, through the relay


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_hung_service_ends_by_the_watchdog(tmp_path: Path, engine: str) -> None:
    run, _, _ = await run_engine(
        engine, tmp_path, [{"hang": 60}], limit=60, timeouts={"idleSeconds": 4, "runSeconds": 40}
    )
    res = run.result
    assert res.outcome is records.Outcome.IDLE_TIMEOUT, res.message
    assert f"no event from {engine}" in res.message
    assert run.elapsed < 30


async def test_old_specs_without_an_engine_still_mean_opencode(tmp_path: Path) -> None:
    from buildstudio.protocol.spec import RunnerSpec

    spec = RunnerSpec.model_validate({"prompt": "p", "model": "m", "baseUrl": "http://127.0.0.1:1/v1"})
    assert spec.engine == "opencode"
    assert json.loads(spec.model_dump_json(by_alias=True))["engine"] == "opencode"
    assert os.environ.get(KEY_ENV) is None


# --------------------------------------------------------------------------- the pod's roles, locally
async def _role(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import asyncio
    import sys

    from tests.runner_harness import REPO_ROOT

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_pods_roles_clone_relay_sidecar_agent_reporter(tmp_path: Path, engine: str) -> None:
    """clone → relay (``--engine``, the key in its file only) → agent (no key) → report: the result
    the reporter prints holds the diff without the engine's own files, and the relay's tokens for grok."""
    import asyncio
    import sys

    from tests.runner_harness import REPO_ROOT

    real = need(engine)
    src = tmp_path / "src"
    make_repo(src)
    ws, base, run_dir = tmp_path / "ws", tmp_path / "base", tmp_path / "relay"
    run_dir.mkdir()
    server = make_server(engine, _subst(write_edit_script(engine), str(ws)))
    await server.start()
    spec = {
        "prompt": "Add a sub(a, b) function in sub.py and swap the operands in calc.py.",
        "model": MODELS[engine],
        "engine": engine,
        "baseUrl": f"http://127.0.0.1:{server.port}/v1",
        "repo": {"url": str(src), "localPaths": True},
        "outputLimit": 16384,
    }
    spec_file = tmp_path / "runner.json"
    spec_file.write_text(json.dumps(spec))
    (tmp_path / "key").write_text(SECRET + "\n")
    runner = ("buildstudio.sandbox.runner",)
    relay = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "buildstudio.sandbox.relay",
        "--upstream",
        spec["baseUrl"],
        "--engine",
        engine,
        "--api-key-file",
        str(tmp_path / "key"),
        "--allow-plaintext-credentials",
        "--no-repair",
        "--url-file",
        str(run_dir / "url"),
        "--counters-file",
        str(run_dir / "counters.json"),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        common = ("--spec", str(spec_file), "--workspace", str(ws))
        assert (await _role(tmp_path, *runner, "clone", *common, "--base", str(base), "--local-paths"))[0] == 0
        # In the pod the CLI is on PATH (the agent container passes no *_BIN through): so here.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / engine).symlink_to(wrapper(tmp_path, real))
        agent_env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        agent = (*runner, "agent", *common, "--home", str(tmp_path / "home"), "--report", str(tmp_path / "claim"))
        rc, out, err = await _role(tmp_path, *agent, "--relay-url-file", str(run_dir / "url"), env=agent_env)
        assert rc == 0, err[-2000:]
        report = (*runner, "report", *common, "--base", str(base), "--agent-report", str(tmp_path / "claim"))
        report += ("--scratch", str(tmp_path / "scratch"), "--relay-counters", str(run_dir / "counters.json"))
        rc, out, err = await _role(tmp_path, *report)
    finally:
        relay.terminate()
        await relay.wait()
        await server.stop()
    result = records.parse_line(out.strip().splitlines()[-1])
    assert isinstance(result, records.ResultRecord), out
    assert result.outcome is records.Outcome.COMPLETED, result.message
    # The agent claims a final answer (it computes no diff: "NoChanges"); the reporter found two files.
    assert result.agent_claim == "NoChanges" and result.diff_stat.files == 2, result.diff
    assert ".grok" not in result.diff
    assert result.summary.tokens.input == {"claude": 21400, "codex": 16400, "grok": 16400}[engine]
    header, value = AUTH[engine]
    assert all({k.lower(): v for k, v in r["headers"].items()}.get(header) == value for r in model_requests(server))
    env_text = (tmp_path / "engine-env.txt").read_text()
    assert SECRET not in env_text and SECRET not in (tmp_path / "engine-argv.txt").read_text()
