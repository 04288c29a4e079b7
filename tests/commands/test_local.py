"""`buildstudio run --local`: the quick start (replay model, air-gapped), a dispatch.yaml against a
model service, auto-detection, and the record/diff output."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from buildstudio.commands import local as localrun
from buildstudio.commands import localbase
from buildstudio.commands.scripted_server import ScriptedServer
from tests.runner_harness import OPENCODE, REPO_ROOT, SKIP_REASON, make_repo

needs_opencode = [pytest.mark.opencode, pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)]
QUICK_START = ["run", "--local", "--model-server", "replay:examples/replays/add-subtract.json"]


def cli_env(tmp: Path) -> dict[str, str]:
    # TMPDIR: `run --local` keeps its workspace in a temp dir for the user to inspect; keep it in the test's.
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "OPENCODE_BIN": OPENCODE or "", "TMPDIR": str(tmp)}


def netns_available() -> str | None:
    """None when `unshare -n` + `ip link set lo up` works here, else why not."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare or ip not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
    return None if probe.returncode == 0 else f"unshare -n failed: {probe.stderr.decode()[:200]}"


def in_netns(args: list[str]) -> list[str]:
    """Run `python -m buildstudio.cli ARGS` in a network namespace that has only loopback."""
    inner = " ".join(["exec", sys.executable, "-m", "buildstudio.cli", *(f"'{a}'" for a in args)])
    return ["unshare", "-n", "sh", "-c", f"ip link set lo up && {inner}"]


# ------------------------------------------------------------------ pure parts


def test_local_gate_uses_the_registry_and_the_local_binary() -> None:
    admitted = localrun.local_gate({"prompt": "p", "model": "qwen3-coder"}, opencode_present=True)
    assert (admitted.admit, admitted.engine, admitted.tool_call_repair) == (True, "opencode", True)
    missing = localrun.local_gate({"prompt": "p", "model": "qwen3-coder"}, opencode_present=False)
    assert (missing.admit, missing.reason) == (False, "EngineNotPresent")
    cloud = localrun.local_gate({"prompt": "p", "engine": "claude"}, opencode_present=True)
    assert (cloud.admit, cloud.reason) == (False, "EngineNotPresent")  # until run --local finds its CLI (present=)
    plan = localrun.local_gate({"prompt": "p", "phase": "plan"}, opencode_present=False)
    assert (plan.admit, plan.text_only, plan.model) == (True, True, "qwen3-coder")


# ------------------------------------------------------------------ with the real opencode


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_quick_start_replay_air_gapped(tmp_path: Path) -> None:
    """The README's one command, inside a network namespace with only loopback: real opencode, real tools,
    real diff, canned model words — and nothing needs the network."""
    why = netns_available()
    if why:
        pytest.skip(why)
    out = subprocess.run(
        in_netns([*QUICK_START, "-o", "json"]),
        capture_output=True,
        text=True,
        timeout=180,
        env=cli_env(tmp_path),
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    view = json.loads(out.stdout)
    res = view["result"]
    assert res["outcome"] == "Completed" and res["replay"] is True and view["replay"] is True
    assert res["diffStat"]["files"] == 2
    assert "+def subtract(a, b):" in res["diff"] and "+def test_subtract():" in res["diff"]
    assert "REPLAY MODEL" in out.stderr and "canned" in out.stderr


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_no_model_service_anywhere_says_what_was_tried(tmp_path: Path) -> None:
    why = netns_available()
    if why:
        pytest.skip(why)
    out = subprocess.run(
        in_netns(["run", "--local", "--model", "m", "--prompt", "p"]),
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(tmp_path),
        cwd=REPO_ROOT,
    )
    assert out.returncode == 3
    assert "no local model service answered" in out.stderr and "11434" in out.stderr and "ollama" in out.stderr


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
async def test_dispatch_yaml_against_a_model_service(tmp_path: Path) -> None:
    make_repo(tmp_path / "src")
    manifest = {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildDispatch",
        "metadata": {"name": "d"},
        "spec": {
            "prompt": "Create notes.md",
            "model": "qwen3-coder",
            "repo": {"url": f"file://{tmp_path / 'src'}", "ref": "master"},
        },
    }
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(manifest))
    script = [{"tool": "write", "args": {"filePath": "notes.md", "content": "# Notes\n"}}, {"text": "Created."}]
    async with ScriptedServer(script) as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "buildstudio.cli",
            "run",
            "--local",
            str(tmp_path / "d.yaml"),
            "--base-url",
            srv.base_url,
            "--context",
            "32768",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(tmp_path),
            cwd=tmp_path,
        )
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "Completed (succeeded)" in out and "REPLAY" not in out
    assert "+# Notes" in out and "diff --git a/notes.md b/notes.md" in out
    assert "preflight:" in err
    agent = srv.chat_requests(with_tools=True)
    assert agent[0]["messages"][-1]["content"] == "Create notes.md"


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
async def test_ctrl_c_cancels_and_still_prints_the_record(tmp_path: Path) -> None:
    replay = tmp_path / "hang.json"
    replay.write_text(
        json.dumps({"replay": {"name": "hang", "description": "never answers"}, "script": [{"hang": 120}]})
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "buildstudio.cli",
        "run",
        "--local",
        "--model-server",
        f"replay:{replay}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    seen = b""
    while b"[preparing]" not in seen:
        seen += await asyncio.wait_for(proc.stderr.readline(), 60)
    await asyncio.sleep(3)  # opencode is up and waiting on the model
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, (seen + err).decode()[-2000:]
    assert b"Cancelled (failed)" in out and b"REPLAY" in out
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("buildstudio-local-*")))  # cleaned up too


# ------------------------------------------------ relay, text phases and the gate through the CLI


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildstudio.cli", *args],
        cwd=REPO_ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=240,
    )


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_text_format_tool_calls_build_through_the_relay_and_not_without(tmp_path: Path) -> None:
    replay = ["run", "--local", "--model-server", "replay:examples/replays/text-toolcalls.json", "-o", "json"]
    with_relay = _cli(tmp_path, *replay)
    assert with_relay.returncode == 0, with_relay.stderr[-2000:]
    rec = json.loads(with_relay.stdout)["result"]
    assert rec["outcome"] == "Completed" and rec["summary"]["repairedToolCalls"] == 1
    assert "+def subtract(a, b):" in rec["diff"]
    assert "with tool-call repair (relay on)" in with_relay.stderr
    without = _cli(tmp_path, *replay, "--relay", "off")
    # Tool calls nobody executed are a failure with advice, never a success (exit 1, not 0).
    assert without.returncode == 1, without.stderr[-2000:]
    rec = json.loads(without.stdout)["result"]
    assert rec["outcome"] == "ToolCallsNotExecuted" and rec["diffStat"]["files"] == 0
    assert "text-format tool call" in rec["message"] and "--relay on" in rec["message"]
    assert "with tool-call repair" not in without.stderr and "tool-call repair off" in without.stderr


def test_plan_phase_is_text_generation_without_opencode(tmp_path: Path) -> None:
    out = _cli(tmp_path, "run", "--local", "--phase", "plan", "--model-server", "replay:examples/replays/plan.json",
               "--opencode-bin", "/nonexistent/opencode")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gate: Admitted: plan: text generation with qwen3-coder" in out.stderr
    assert "PHASE          plan" in out.stdout and "## Risks" in out.stdout
    assert "REPLAY         yes" in out.stdout


def test_gate_refusal_and_invalid_manifest_exit_non_zero(tmp_path: Path) -> None:
    refused = _cli(tmp_path, "run", "--local", "--engine", "nope", "--model-server",
                   "replay:examples/replays/add-subtract.json")
    assert refused.returncode == 3 and "gate: EngineNotFound" in refused.stderr
    invalid = _cli(tmp_path, "run", "--local", "examples/invalid/bd-idle-exceeds-run.yaml")
    assert invalid.returncode == 2
    assert "timeouts.idleSeconds must not exceed timeouts.runSeconds" in invalid.stderr


# ------------------------------------------------ the diff is exactly the agent's work; outputs; clean-up


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_allow_dirty_reports_only_the_agents_changes(tmp_path: Path) -> None:
    """--workspace on a dirty tree: refused without --allow-dirty (test_cli_errors.py); with it, the
    user's uncommitted edits (tracked, staged, untracked) are in the base, not in the diff, and
    the user's repository (HEAD, refs, index) is left as it was."""
    repo = tmp_path / "mine"
    make_repo(repo, {"calc.py": "def add(a, b):\n    return a + b\n"})
    (repo / "calc.py").write_text("# my own note\ndef add(a, b):\n    return a + b\n")
    (repo / "notes.txt").write_text("untracked, mine\n")
    (repo / "staged.txt").write_text("staged, mine\n")
    _git(repo, "add", "staged.txt")
    before = (_git(repo, "rev-parse", "HEAD"), _git(repo, "show-ref"), _git(repo, "diff", "--cached", "--name-only"))
    out = _cli(tmp_path, *QUICK_START, "--workspace", str(repo), "--allow-dirty", "-o", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    view = json.loads(out.stdout)
    assert view["result"]["diffStat"]["files"] == 2, view["patch"]
    patch = view["patch"]
    assert "+def subtract(a, b):" in patch and "+def test_subtract():" in patch
    for mine in ("my own note", "notes.txt", "staged.txt"):
        assert f"+{mine}" not in patch and f"b/{mine}" not in patch, patch
    assert "a snapshot of the uncommitted work tree" in out.stderr
    after = (_git(repo, "rev-parse", "HEAD"), _git(repo, "show-ref"), _git(repo, "diff", "--cached", "--name-only"))
    assert after == before
    assert (repo / "notes.txt").read_text() == "untracked, mine\n"


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_json_carries_the_whole_patch_and_patch_output_applies(tmp_path: Path) -> None:
    kept = _cli(tmp_path, *QUICK_START, "-o", "json", "--keep")
    assert kept.returncode == 0, kept.stderr[-3000:]
    view = json.loads(kept.stdout)
    assert "(kept;" in view["workspace"] and "patchNote" not in view
    workspace = Path(view["workspace"].split(" (kept")[0])
    assert (workspace / "test_calc.py").exists()  # --keep: the agent's work is there to inspect
    patch = view["patch"]
    assert patch.startswith("diff --git a/calc.py b/calc.py") and patch.endswith("+    assert subtract(5, 3) == 2\n")
    only = _cli(tmp_path, *QUICK_START, "-o", "patch")
    assert only.returncode == 0, only.stderr[-3000:]
    assert only.stdout == patch  # only the patch on stdout
    fresh = tmp_path / "fresh"
    localbase.make_sample_repo(fresh)
    subprocess.run(["git", "-C", str(fresh), "apply", "-"], input=only.stdout, text=True, check=True)
    assert "def subtract" in (fresh / "calc.py").read_text()
    # Each run removes its temp directory unless --keep: only the kept one is left.
    assert [p.name for p in tmp_path.glob("buildstudio-local-*")] == [workspace.parent.name]


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
async def test_a_200k_prompt_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    """--prompt-file and --prompt - carry a 200 KB task verbatim (no argv limit); a manifest with
    no spec.repo is completed by --repo before it is validated."""
    make_repo(tmp_path / "src")
    big = "Create notes.md. " + "".join(f"Line {i}: keep this exact text.\n" for i in range(7000))
    assert len(big.encode()) > 200_000
    (tmp_path / "task.txt").write_text(big, encoding="utf-8")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildDispatch", "metadata": {"name": "d"},
         "spec": {"prompt": "replaced by the file", "model": "qwen3-coder"}}
    ))  # fmt: skip
    script = [{"tool": "write", "args": {"filePath": "notes.md", "content": "# Notes\n"}}, {"text": "Created."}]
    for how in (["--prompt-file", str(tmp_path / "task.txt")], ["--prompt", "-"]):
        async with ScriptedServer(script) as srv:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "buildstudio.cli", "run", "--local", str(tmp_path / "d.yaml"),
                "--repo", str(tmp_path / "src"), *how, "--base-url", srv.base_url, "--context", "262144",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=cli_env(tmp_path), cwd=tmp_path,
            )  # fmt: skip
            out_b, err_b = await asyncio.wait_for(proc.communicate(big.encode() if "-" in how else b""), 180)
        assert proc.returncode == 0, err_b.decode()[-3000:]
        assert "Completed (succeeded)" in out_b.decode()
        agent = srv.chat_requests(with_tools=True)
        assert agent[0]["messages"][-1]["content"] == big


def test_snapshot_base_takes_the_dirty_tree_and_leaves_the_repo_alone(tmp_path: Path) -> None:
    """The base of an --allow-dirty run: the work tree as it is (tracked edits, staged and untracked
    files; not what .gitignore names), committed in the base only; a later change is the whole diff."""
    from buildstudio.adapters import gitdiff
    from buildstudio.protocol.spec import RunnerSpec
    from buildstudio.sandbox.runner import roles

    ws = tmp_path / "ws"
    make_repo(ws, {"calc.py": "x = 1\n", ".gitignore": "build/\n"})
    (ws / "calc.py").write_text("x = 2  # mine\n")
    (ws / "notes.txt").write_text("mine\n")
    (ws / "build").mkdir()
    (ws / "build" / "out.bin").write_text("ignored\n")
    before = (_git(ws, "rev-parse", "HEAD"), _git(ws, "show-ref"), _git(ws, "status", "--porcelain"))
    spec = RunnerSpec(prompt="p", model="m", base_url="http://127.0.0.1:9/v1")
    base = tmp_path / "base"
    assert roles.clone_role(spec, ws=ws, base=base, token=None, local_paths=True) is None
    head = (base / roles.BASE_COMMIT).read_text()
    snap = localbase.snapshot_base(ws, base, tmp_path / "scratch")
    assert snap != head and (base / roles.BASE_COMMIT).read_text() == snap
    assert (_git(ws, "rev-parse", "HEAD"), _git(ws, "show-ref"), _git(ws, "status", "--porcelain")) == before
    # Nothing changed since: an empty diff (the user's edits are in the base).
    diff = gitdiff.capture_from_base(ws, base / roles.BASE_REPO, snap, tmp_path / "report")
    assert diff.stat.files == 0, diff.excerpt
    (ws / "calc.py").write_text("x = 3  # the agent\n")
    diff = gitdiff.capture_from_base(ws, base / roles.BASE_REPO, snap, tmp_path / "report")
    assert diff.stat.files == 1 and "-x = 2  # mine" in diff.excerpt and "+x = 3  # the agent" in diff.excerpt
    # A clean tree snapshots to its HEAD: nothing new in the base.
    clean = tmp_path / "clean"
    make_repo(clean)
    base2 = tmp_path / "base2"
    assert roles.clone_role(spec, ws=clean, base=base2, token=None, local_paths=True) is None
    assert localbase.snapshot_base(clean, base2, tmp_path / "scratch2") == (base2 / roles.BASE_COMMIT).read_text()
