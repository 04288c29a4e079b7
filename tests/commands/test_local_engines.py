"""``buildstudio run --local --engine claude|codex|grok`` (issue #21): the gate and key rules (pure),
then the real pinned CLIs (hack/install-engines.sh) on the quick-start replay, on their vendor's API
(a scripted one here) with the key from the environment, and on a local model service.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buildstudio.adapters import registry
from buildstudio.cli import build_parser
from buildstudio.commands import local as localrun
from buildstudio.commands.errors import CliError
from buildstudio.commands.local_engine import cloud_cli, engines_for_gate, vendor_key
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.engines.adapters import ADAPTERS
from buildstudio.engines.replay import translate_script
from tests.engines import harness as h
from tests.engines.scenarios import make_server
from tests.engines.vendor_server import ThreadedServer
from tests.runner_harness import REPO_ROOT

ENGINES = ("claude", "codex", "grok")
REPLAY = "replay:examples/replays/add-subtract.json"
# The tools each CLI ran for the replay's read, edit and write (engines.replay), as its summary names them.
TOOLS = {
    "claude": {"Read": 1, "Edit": 1, "Write": 1},
    "codex": {"shell": 1, "apply_patch": 2},
    "grok": {"view_file": 1, "str_replace_editor": 1, "create_file": 1},
}
KEY_ENVS = {"claude": "ANTHROPIC_API_KEY", "codex": "OPENAI_API_KEY", "grok": "GROK_API_KEY"}
AUTH = {"claude": "x-api-key", "codex": "authorization", "grok": "authorization"}
SECRET = "sk-SECRET-local-vendor-key-42"


def need(engine: str) -> Path:
    binary = h.engine_binary(engine)
    if binary is None:
        pytest.skip(f"{engine} CLI not installed (hack/install-engines.sh {engine})")
    return binary


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in KEY_ENVS.values()}
    return {**keep, "PYTHONPATH": str(REPO_ROOT / "operator"), "TMPDIR": str(tmp), **extra}


def run_cli(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildstudio.cli", "run", "--local", *args],
        cwd=REPO_ROOT, env=cli_env(tmp, **env), capture_output=True, text=True, timeout=240,
    )  # fmt: skip


# ------------------------------------------------------------------ pure parts


def test_the_gate_sees_a_cloud_cli_present_once_found_and_on_a_service_as_local() -> None:
    rows = [(e.name, e.spec) for e in registry.load()]
    found = {n: p for n, _, p in engines_for_gate(rows, opencode_present=False, present={"claude": True})}
    assert found == {"opencode": False, "claude": True, "codex": False, "grok": False}
    moved = engines_for_gate(rows, opencode_present=True, present={"grok": True}, local_service=("grok", "http://s/v1"))
    grok = next(spec for n, spec, _ in moved if n == "grok")
    assert (grok.endpoint, grok.credential) == ("local", None)
    assert grok.model_service is not None and grok.model_service.base_url == "http://s/v1"


@pytest.mark.parametrize(
    ("engine", "service", "expected"),
    [
        ("claude", None, (True, "Admitted", False)),  # a replay or the vendor: the cloud rule
        ("grok", "http://127.0.0.1:11434/v1", (True, "Admitted", True)),  # chat: the repair relay
        ("claude", "http://127.0.0.1:11434/v1", (False, "LocalModelsUnsupported", False)),
        ("codex", "http://127.0.0.1:11434/v1", (False, "LocalModelsUnsupported", False)),
    ],
)
def test_local_gate_of_a_cloud_cli(engine: str, service: str | None, expected: tuple[bool, str, bool]) -> None:
    fields = {"prompt": "p", "engine": engine, "model": "qwen3-coder"}
    d = localrun.local_gate(fields, opencode_present=True, present={engine: True}, local_service=service)
    assert (d.admit, d.reason, d.tool_call_repair) == expected, d.message
    absent = localrun.local_gate(fields, opencode_present=True)
    assert (absent.admit, absent.reason) == (False, "EngineNotPresent")


@pytest.mark.parametrize("engine", ENGINES)
def test_the_vendor_key_comes_from_the_variable_the_registry_names(engine: str) -> None:
    cli = cloud_cli(engine)
    assert cli is not None and cli.key_env == KEY_ENVS[engine] and cli.default_model
    assert vendor_key(cli, {KEY_ENVS[engine]: f" {SECRET}\n"}) == SECRET
    with pytest.raises(CliError, match=f"needs a key in \\${KEY_ENVS[engine]}, which is not set"):
        vendor_key(cli, {})
    assert cloud_cli("opencode") is None and cloud_cli(None) is None and cloud_cli("nope") is None


# ------------------------------------------------------------------ the real CLIs


@pytest.mark.engines
@pytest.mark.parametrize("engine", ENGINES)
def test_the_quick_start_replay_runs_on_each_engine(tmp_path: Path, engine: str) -> None:
    need(engine)
    out = run_cli(tmp_path, "--engine", engine, "--model-server", REPLAY, "-o", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(out.stdout)
    res = record["result"]
    assert (record["engine"], record["replay"], res["outcome"]) == (engine, True, "Completed")
    assert record["model"] == cloud_cli(engine).default_model  # type: ignore[union-attr]
    assert res["diffStat"]["files"] == 2 and "+def subtract(a, b):" in record["patch"]
    assert "+def test_subtract():" in record["patch"]
    assert res["summary"]["toolsByName"] == TOOLS[engine] and res["summary"]["toolErrors"] == 0
    assert res["summary"]["tokens"]["input"] == 40303  # the replay's usage, whoever counted it
    assert f"as the {engine} API" in record["modelService"] and "REPLAY MODEL" in out.stderr
    assert f"{engine}: credential relay on" in out.stderr and "(no key)" in out.stderr


def recording_wrapper(tmp: Path, real: Path) -> Path:
    """The engine's binary behind a script that records its environment and argv."""
    script = tmp / "engine-wrapper.sh"
    script.write_text(
        f'#!/bin/sh\nenv > "{tmp}/engine-env.txt"\nprintf "%s\\n" "$@" > "{tmp}/engine-argv.txt"\nexec "{real}" "$@"\n',
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.engines
@pytest.mark.parametrize("engine", ENGINES)
def test_on_the_vendor_api_the_key_reaches_the_relay_and_never_the_engine(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --model-server, no --base-url: the vendor's API (a scripted one at the adapter's
    vendor_base_url) with the key from the registry's variable, in the vendor's header."""
    real = need(engine)
    replay = json.loads((REPO_ROOT / "examples" / "replays" / "add-subtract.json").read_text())
    server = make_server(engine, replay["script"])  # re-targeted to the workspace below
    monkeypatch.setenv(KEY_ENVS[engine], SECRET)
    monkeypatch.setenv(f"{engine.upper()}_BIN", str(recording_wrapper(tmp_path, real)))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    ws = tmp_path / "ws"
    h.make_repo(tmp_path)  # tmp_path/repo, committed calc.py
    subprocess.run(["git", "clone", "-q", str(tmp_path / "repo"), str(ws)], check=True)
    server.script = translate_script(engine, replay["script"], str(ws))
    with ThreadedServer(server):
        origin = f"http://127.0.0.1:{server.port}/v1"
        monkeypatch.setattr(ADAPTERS[engine], "vendor_base_url", origin)
        args = build_parser().parse_args(
            ["run", "--local", "--engine", engine, "--workspace", str(ws), "--prompt", "Add subtract()", "-o", "json"]
        )
        rc = localrun.command(args)
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    record = json.loads(out)
    assert record["result"]["outcome"] == "Completed" and "+def subtract(a, b):" in record["patch"]
    assert f"vendor API {origin}" in record["modelService"] and "(holds the key)" in err
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert posts and all({k.lower(): v for k, v in r["headers"].items()}.get(AUTH[engine], "").endswith(SECRET)
                         for r in posts)  # fmt: skip
    env_text = (tmp_path / "engine-env.txt").read_text()
    argv_text = (tmp_path / "engine-argv.txt").read_text()
    assert SECRET not in env_text and SECRET not in argv_text
    assert "sk-buildstudio-placeholder" in env_text or "sk-buildstudio-placeholder" in _codex_home_text(tmp_path)
    assert SECRET not in out and SECRET not in err


def _codex_home_text(tmp: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in tmp.rglob("config.toml"))


def test_a_missing_vendor_key_is_one_line_before_any_work(tmp_path: Path) -> None:
    if h.engine_binary("claude") is None:
        pytest.skip("claude CLI not installed (hack/install-engines.sh claude)")
    res = run_cli(tmp_path, "--engine", "claude")
    assert res.returncode == 2, res.stderr
    assert "needs a key in $ANTHROPIC_API_KEY, which is not set" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.engines
def test_grok_on_a_local_model_service_goes_through_the_gate_preflight_and_repair_relay(tmp_path: Path) -> None:
    """A cloud CLI on the local model service: preflight as for opencode, admitted (grok speaks chat
    completions) with the tool-call repair relay, no key sent to the service."""
    need("grok")
    replay = json.loads((REPO_ROOT / "examples" / "replays" / "add-subtract.json").read_text())
    server = ScriptedServer(translate_script("grok", replay["script"], ""), model="qwen3-coder")
    with ThreadedServer(server):
        res = run_cli(tmp_path, "--engine", "grok", "--base-url", server.base_url, "--model", "qwen3-coder",
                      "--context", "32768", "-o", "json", GROK_API_KEY=SECRET)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    record: dict[str, Any] = json.loads(res.stdout)
    assert record["result"]["outcome"] == "Completed" and record["result"]["diffStat"]["files"] == 2
    assert "preflight:" in res.stderr and "through the tool-call repair relay" in res.stderr
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert posts and all(SECRET not in json.dumps(r["headers"]) for r in posts)  # the vendor key stays home


@pytest.mark.engines
def test_claude_on_a_local_model_service_without_tool_use_is_refused(tmp_path: Path) -> None:
    if h.engine_binary("claude") is None:
        pytest.skip("claude CLI not installed (hack/install-engines.sh claude)")
    res = run_cli(tmp_path, "--engine", "claude", "--base-url", "http://127.0.0.1:9/v1", "--model", "qwen3-coder")
    assert res.returncode == 3, res.stderr
    assert "gate: LocalModelsUnsupported" in res.stderr and "messages API" in res.stderr
