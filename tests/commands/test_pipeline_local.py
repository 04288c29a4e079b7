"""`buildstudio pipeline --local`: plan → build → review → approval → ship as local processes with a
replay model (real opencode, real tools, a real diff, a real push) against a bare repository, and
the refusals (a review that requests changes, no approval): nothing is pushed then."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import gzip
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildstudio import cli
from buildstudio.commands import localbase
from buildstudio.commands import pipeline_local as pipe
from buildstudio.commands.errors import CliError
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.protocol import records
from tests.operator.smartgit import git, make_remote
from tests.runner_harness import OPENCODE, REPO_ROOT, SKIP_REASON

REPLAYS = REPO_ROOT / "examples" / "replays"
PIPELINE_REPLAY = "replay:examples/replays/pipelines/add-subtract.json"
CHANGES_REPLAY = "replay:examples/replays/pipelines/review-requests-changes.json"
# What the build replay writes (examples/replays/add-subtract.json), on the sample repository.
SUBTRACT = "def add(a, b):\n    return a + b\n\n\ndef subtract(a, b):\n    return a - b\n"
TEST_CALC = (
    "from calc import add, subtract\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_subtract():\n    assert subtract(5, 3) == 2\n"
)


def remote(tmp: Path) -> tuple[Path, str]:
    """A bare repository holding the sample calculator on main: (path, base commit)."""
    return make_remote(tmp / "remotes", "calc.git", localbase.SAMPLE_REPO)


def branches(bare: Path) -> set[str]:
    return set(git("-C", str(bare), "for-each-ref", "--format=%(refname:short)", "refs/heads").split())


def cli_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "OPENCODE_BIN": OPENCODE or "", "TMPDIR": str(tmp)}


def run_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a process, stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "buildstudio.cli", "pipeline", "--local", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(tmp),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# ------------------------------------------------------------------ pure parts


def test_a_pipeline_replay_names_one_replay_per_step_each_of_its_own_phase(tmp_path: Path) -> None:
    replays, name = pipe.load_replays(PIPELINE_REPLAY)
    assert name == "examples/replays/pipelines/add-subtract.json"
    assert {k: v[1] for k, v in replays.items()} == {
        "plan": "../plan-add-subtract.json",
        "build": "../add-subtract.json",
        "review": "../review-approve.json",
    }
    one, _ = pipe.load_replays("replay:examples/replays/add-subtract.json")
    assert list(one) == ["build"]  # a plain replay drives the one phase it declares
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"replay": {"name": "w"}, "phases": {"review": str(REPLAYS / "plan.json")}}))
    with pytest.raises(CliError, match="records a plan conversation, not review"):
        pipe.load_replays(f"replay:{wrong}")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"phases": {"ship": "x.json"}}))
    with pytest.raises(CliError, match=r"phases\.ship"):
        pipe.load_replays(f"replay:{unknown}")


def test_the_review_judges_the_whole_patch_by_its_recomputed_sha256() -> None:
    patch = b"diff --git a/x b/x\n+x\n"
    result = records.ResultRecord(
        outcome=records.Outcome.COMPLETED,
        message="m",
        diff="(excerpt)",
        patch=records.Patch(data=base64.b64encode(gzip.compress(patch)).decode(), bytes=len(patch), sha256="0" * 64),
    )
    source = pipe.review_source("calc-build", result)
    assert source.diff == patch.decode() and source.digest == hashlib.sha256(patch).hexdigest()
    cut = result.model_copy(update={"patch": records.Patch(truncated=True, bytes=len(patch))})
    assert pipe.patch_bytes(cut) is None
    assert pipe.review_source("calc-build", cut).digest == ""  # a cut patch is never judged as the whole


def test_exit_codes_follow_the_pipelines_end() -> None:
    assert pipe.exit_code({"phase": "Succeeded", "reason": "Shipped"}) == 0
    assert pipe.exit_code({"phase": "Failed", "reason": "ReviewRequestedChanges"}) == 1
    assert pipe.exit_code({"phase": "Failed", "reason": "ApprovalRefused"}) == 3
    assert pipe.exit_code({"phase": "Cancelled", "reason": "Cancelled"}) == 130


def test_flags_that_contradict_each_other_are_refused_before_any_work(tmp_path: Path) -> None:
    bare, _ = remote(tmp_path)
    base = ["pipeline", "--local", "--repo", str(bare), "--prompt", "p"]
    for extra, said in (
        (["--no-review", "--approve"], "nothing is shipped"),
        (["--no-review", "--no-ship"], "--no-review already"),
        (["--name", "Not_A_Name"], "--name"),
        (["--ref=bad..ref"], "refusing the repository"),
    ):
        args = cli.build_parser().parse_args([*base, *extra])
        with pytest.raises(CliError, match=said):
            args.func(args)
    args = argparse.Namespace(plan=True, no_review=False)
    assert pipe.stages(args) == ["plan", "build", "review"]


# ------------------------------------------------------------------ with the real opencode


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_plan_build_review_approve_ship_pushes_a_branch_with_the_trailers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process, so the replay servers' requests can be read: the plan reaches the build's prompt,
    marked; the review sees the patch; the branch holds base + patch with the provenance."""
    bare, base = remote(tmp_path)
    servers: list[ScriptedServer] = []

    class Recorded(ScriptedServer):
        async def start(self) -> ScriptedServer:
            servers.append(self)
            return await super().start()

    monkeypatch.setattr(pipe, "ScriptedServer", Recorded)
    monkeypatch.setenv("OPENCODE_BIN", OPENCODE or "")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["pipeline", "--local", "--repo", str(bare), "--model-server", PIPELINE_REPLAY, "--plan", "--approve"]
    code = cli.main([*argv, "--name", "add-subtract", "-o", "yaml"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    doc = yaml.safe_load(out)
    status: dict[str, Any] = doc["status"]
    assert (doc["name"], doc["replay"]) == ("add-subtract", True)
    assert (status["phase"], status["reason"], status["approvedBy"]) == ("Succeeded", "Shipped", getpass.getuser())
    assert [c["name"] for c in status["children"]] == [f"add-subtract-{s}" for s in ("plan", "build", "review", "ship")]
    assert status["review"] == {"dispatch": "add-subtract-review", "verdict": "Approve"}
    assert status["branch"] == "buildstudio/add-subtract-build"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Planned": "True", "Built": "True", "Reviewed": "True", "Approved": "True", "Shipped": "True",
        "Succeeded": "True", "Ready": "True",
    }  # fmt: skip

    plan, build, review = servers
    [build_ask] = [b for b in build.chat_requests(with_tools=True)][:1]
    user = "\n".join(str(m.get("content")) for m in build_ask["messages"] if m.get("role") == "user")
    assert "## Plan (from dispatch add-subtract-plan)" in user and "`subtract(a, b)` returning `a - b`" in user
    [review_ask] = review.chat_requests()
    assert "+def subtract(a, b):" in json.dumps(review_ask["messages"])
    assert plan.consumed == 1

    branch = "buildstudio/add-subtract-build"
    assert branches(bare) == {"main", branch}
    commit = git("-C", str(bare), "rev-parse", branch).strip()
    assert commit == status["commit"]
    assert git("-C", str(bare), "rev-parse", f"{branch}^").strip() == base  # on the base commit
    message = git("-C", str(bare), "log", "-1", "--format=%B", branch)
    assert message.splitlines()[0].startswith("buildstudio: Add a subtract(a, b) function to calc.py")
    assert "## Plan" not in message
    patch = git("-C", str(bare), "diff", "--binary", "main", branch)
    trailers = dict(line.split(": ", 1) for line in message.splitlines() if line.startswith("Build-Studio-"))
    assert trailers == {
        "Build-Studio-Dispatch": "add-subtract-build",
        "Build-Studio-Ship": "add-subtract-ship",
        "Build-Studio-Engine": "opencode",
        "Build-Studio-Model": "qwen3-coder",
        "Build-Studio-Review": "add-subtract-review",
        "Build-Studio-Verdict": "Approve",
        "Build-Studio-Diff-Sha256": hashlib.sha256(patch.encode()).hexdigest(),  # the reviewed patch, exactly
        "Build-Studio-Approved-By": getpass.getuser(),
    }
    tree = git("-C", str(bare), "ls-tree", "-r", "--name-only", branch).split()
    assert sorted(tree) == ["README.md", "calc.py", "test_calc.py"]
    assert git("-C", str(bare), "show", f"{branch}:calc.py") == SUBTRACT
    assert git("-C", str(bare), "show", f"{branch}:test_calc.py") == TEST_CALC
    assert git("-C", str(bare), "show", f"{branch}:README.md") == localbase.SAMPLE_REPO["README.md"]


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_a_review_that_requests_changes_fails_with_its_reason_and_pushes_nothing(tmp_path: Path) -> None:
    bare, _ = remote(tmp_path)
    done = run_cli(tmp_path, "--repo", str(bare), "--model-server", CHANGES_REPLAY, "--approve", "--name", "calc")
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("buildstudio: pipeline calc failed: ReviewRequestedChanges: review calc-review requested")
    assert "no docstring" in last  # the review's own words
    assert "REVIEW    calc-review: RequestChanges" in done.stdout
    assert branches(bare) == {"main"}


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_without_a_terminal_or_approve_it_refuses_with_exit_3_and_pushes_nothing(tmp_path: Path) -> None:
    bare, _ = remote(tmp_path)
    done = run_cli(tmp_path, "--repo", str(bare), "--model-server", PIPELINE_REPLAY, "--name", "calc", "-o", "json")
    assert done.returncode == 3, done.stderr[-3000:]
    status = json.loads(done.stdout)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ApprovalRefused")
    assert [c["stage"] for c in status["children"]] == ["build", "review"]  # no ship child
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "buildstudio: pipeline calc failed: ApprovalRefused: no approval: stdin is not a terminal and --approve "
        "was not given; nothing was pushed"
    )
    assert branches(bare) == {"main"}


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
def test_on_a_terminal_it_shows_the_patch_and_the_review_and_ships_on_yes(tmp_path: Path) -> None:
    bare, _ = remote(tmp_path)
    primary, terminal = pty.openpty()
    argv = [sys.executable, "-m", "buildstudio.cli", "pipeline", "--local", "--repo", str(bare), "--name", "tty"]
    try:
        os.write(primary, b"y\n")  # typed ahead: the terminal holds it until the question reads it
        done = subprocess.run([*argv, "--model-server", PIPELINE_REPLAY], stdin=terminal, capture_output=True,
                              text=True, timeout=300, env=cli_env(tmp_path), cwd=REPO_ROOT, check=False)  # fmt: skip
    finally:
        os.close(terminal)
        os.close(primary)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stderr.split("--- the patch of tty-build ---", 1)[1]
    assert shown.index("+def subtract(a, b):") < shown.index("--- review tty-review: Approve ---")
    assert shown.index("VERDICT: APPROVE") < shown.index(f"approved by {getpass.getuser()}? [y/N]")
    assert branches(bare) == {"main", "buildstudio/tty-build"}


@pytest.mark.opencode
@pytest.mark.skipif(OPENCODE is None, reason=SKIP_REASON)
async def test_ctrl_c_during_the_build_cancels_the_pipeline_with_130_and_pushes_nothing(tmp_path: Path) -> None:
    bare, _ = remote(tmp_path)
    hang = tmp_path / "hang.json"
    hang.write_text(json.dumps({"replay": {"name": "hang", "phase": "build"}, "script": [{"hang": 120}]}))
    replay = tmp_path / "pipeline.json"
    replay.write_text(json.dumps({"phases": {"build": str(hang), "review": str(REPLAYS / "review-approve.json")}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "buildstudio.cli", "pipeline", "--local", "--repo", str(bare), "--prompt", "Add it",
        "--model-server", f"replay:{replay}", "--approve", "--name", "stop", "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = b""
    while b"[preparing]" not in seen:
        seen += await asyncio.wait_for(proc.stderr.readline(), 60)
    await asyncio.sleep(3)  # opencode is up and waiting on the model
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, (seen + err).decode()[-3000:]
    status = json.loads(out)["status"]
    assert (status["phase"], status["reason"]) == ("Cancelled", "Cancelled")
    assert [c["stage"] for c in status["children"]] == ["build"]  # no review, no ship
    assert branches(bare) == {"main"}
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("buildstudio-pipeline-*")))  # cleaned up
