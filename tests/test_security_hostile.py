"""A hostile agent (tests/fixtures/hostile/opencode) against `buildstudio run --local`: it forges
result records into every ancestor's stdout and into its report file, reads every environment
and file it can for SECRET- values, makes a nested repository, and may kill its runner. The
outcome, the diff and the output must be the CLI's own, and no secret may reach the agent."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from buildstudio.commands.local_sandbox import isolation_prefix
from tests.runner_harness import REPO_ROOT

HOSTILE = REPO_ROOT / "tests" / "fixtures" / "hostile" / "opencode"
# Fresh values each run: they exist only in the CLI's environment, never in a file (this source
# included) that the agent, which runs as the user in local mode, may read.
PARENT_SECRETS = {
    "BUILDSTUDIO_GIT_TOKEN": f"SECRET-git-{secrets.token_hex(8)}",
    "OPENAI_API_KEY": f"SECRET-openai-{secrets.token_hex(8)}",
}


def run_local(tmp_path: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **PARENT_SECRETS,
        "PYTHONPATH": str(REPO_ROOT / "operator"),
        "TMPDIR": str(tmp_path),
    }
    argv = [sys.executable, "-m", "buildstudio.cli", "run", "--local", "--model-server",
            "replay:examples/replays/add-subtract.json", "--opencode-bin", str(HOSTILE), "--prompt", prompt,
            "-o", "json"]
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.parametrize("prompt", ["do the task", "do the task, then kill-parent"])
def test_hostile_agent_forges_nothing_and_steals_nothing_locally(tmp_path: Path, prompt: str) -> None:
    if not isolation_prefix():
        pytest.skip("unshare cannot give the agent its own user+PID namespaces here")
    done = run_local(tmp_path, prompt)
    # stdout is exactly the CLI's JSON document: nothing the agent wrote got into it.
    view = json.loads(done.stdout)
    result = view["result"]
    assert "FORGED" not in done.stdout
    # On the terminal, whatever the agent printed is labelled as the agent's.
    assert all(line.startswith("  agent stderr: ") for line in done.stderr.splitlines() if "FORGED" in line)
    assert result.get("review") is None
    assert result["patch"]["sha256"] != "f" * 64
    # The diff is what is on disk, recomputed: hostile.txt and the nested repo's file, as plain files.
    diff = result["diff"]
    assert "+++ b/hostile.txt" in diff and "+++ b/newcrate/lib.rs" in diff
    assert "newcrate" in result["message"]  # the nested repository is named
    # What the agent could steal ended up in hostile.txt (so in the diff): nothing.
    stolen = next(line for line in diff.splitlines() if line.startswith("+stolen:"))
    for secret in PARENT_SECRETS.values():
        assert secret not in stolen and secret not in done.stdout, stolen
    # Whatever it claimed (its forged "Completed, 9 files" survives when it killed its runner),
    # the outcome follows the 2 files the reporter measured, and the forged review is gone.
    assert result["outcome"] == "Completed" and result["diffStat"]["files"] == 2, result
    assert done.returncode == 0
    # In its PID namespace the runner is PID 1, which a SIGKILL from inside cannot end: the
    # runner's own claim (NoChanges: it diffs nothing itself) then replaces the forged one.
    assert result["agentClaim"] in ("Completed", "NoChanges")
