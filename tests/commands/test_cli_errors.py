"""Every CLI error is one line on stderr (what failed, why, what to do) with its documented exit
code, and no traceback: table-driven over the defects of issue #19, through the real console
entry (`python -m buildstudio.cli`) in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buildstudio.commands import errors as clierrors
from buildstudio.commands import local as localrun
from tests.runner_harness import REPO_ROOT, make_repo

REPLAY = "replay:examples/replays/add-subtract.json"
PLAN_REPLAY = "replay:examples/replays/plan.json"


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    code: int
    says: list[str]  # words the one line must hold
    stdin: str = ""
    env: dict[str, str] = field(default_factory=dict)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temp HOME (no ~/.kube/config), a kubeconfig to a closed port, a dirty repo, a clean one."""
    root = tmp_path_factory.mktemp("cli")
    (root / "home").mkdir()
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "dead", "user": {}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "dead"}}],
    }  # fmt: skip
    (root / "dead.kubeconfig").write_text(json.dumps(kubeconfig))
    make_repo(root / "dirty")
    (root / "dirty" / "mine.txt").write_text("my own uncommitted work\n")
    make_repo(root / "clean")
    (root / "bad-engines.yaml").write_text("engines:\n  - engine: opencode\n")
    yield root


def cases(root: Path) -> list[Case]:
    dead = str(root / "dead.kubeconfig")
    nothing = str(root / "no-such-kubeconfig")
    run = ["run", "--local", "--model-server", REPLAY]
    return [
        # cluster commands: no kubeconfig, or an API server that does not answer
        Case("diff-no-kubeconfig", ["diff", "x"], 2, ["no usable kubeconfig", "KUBECONFIG"]),
        Case("watch-no-kubeconfig", ["watch", "x", "--kubeconfig", nothing], 2, ["no usable kubeconfig"]),
        Case("submit-unreachable", ["submit", "p", "--repo", "https://git.example/r.git", "--kubeconfig", dead], 1,
             ["cannot reach the Kubernetes API server", "kubectl cluster-info"]),
        # submit checks its input with the CRD's models before it contacts the cluster
        Case("submit-blank-prompt", ["submit", " ", "--repo", "https://git.example/r.git"], 2, ["no text"]),
        Case("submit-no-repo", ["submit", "p", "--kubeconfig", dead], 2, ["build needs spec.repo"]),
        Case("cancel-unreachable", ["cancel", "x", "--kubeconfig", dead], 1, ["cannot reach"]),
        Case("diff-unreachable", ["diff", "x", "--kubeconfig", dead], 1, ["cannot reach"]),
        Case("watch-unreachable", ["watch", "x"], 1, ["cannot reach"], env={"KUBECONFIG": dead}),
        Case("unknown-context", ["diff", "x", "--kubeconfig", dead, "--context", "nope"], 2, ["kubeconfig", "nope"]),
        # run --local: flags validated through the CRD's models before any work
        Case("timeout-0", [*run, "--timeout", "0"], 2, ["spec.timeouts.runSeconds (--timeout)", "30"]),
        Case("step-budget-0", [*run, "--step-budget", "0"], 2, ["spec.stepBudget (--step-budget)", "1"]),
        Case("idle-negative", [*run, "--idle-timeout", "-5"], 2, ["spec.timeouts.idleSeconds (--idle-timeout)"]),
        Case("idle-over-run", [*run, "--timeout", "60", "--idle-timeout", "90"], 2,
             ["idleSeconds must not exceed timeouts.runSeconds"]),
        Case("timeout-not-a-number", [*run, "--timeout", "soon"], 2, ["--timeout", "invalid int value", "--help"]),
        Case("unknown-flag", [*run, "--frobnicate"], 2, ["unrecognized arguments: --frobnicate"]),
        # prompts: empty and whitespace-only are refused, never replaced by the sample task
        Case("prompt-empty", [*run, "--prompt", ""], 2, ["empty prompt", "--prompt-file"]),
        Case("prompt-whitespace", [*run, "--prompt", "  \n\t "], 2, ["empty prompt"]),
        Case("prompt-unicode-whitespace", [*run, "--prompt", "\u3000\xa0\u2028"], 2, ["empty prompt"]),  # as the CRD
        Case("prompt-stdin-empty", [*run, "--prompt", "-"], 2, ["empty prompt"], stdin="\n"),
        Case("prompt-file-missing", [*run, "--prompt-file", str(root / "nope.txt")], 2, ["cannot read --prompt-file"]),
        Case("prompt-too-long", [*run, "--prompt", "-"], 2, ["256 Ki"], stdin="x" * (4 * 262_144 + 1)),
        Case("prompt-and-file", [*run, "--prompt", "a", "--prompt-file", "b"], 2, ["not allowed with"]),
        Case("no-prompt-with-repo", ["run", "--local", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                     "--repo", str(root / "clean")], 2, ["no prompt"]),
        # replays declare their phase
        Case("replay-phase-mismatch", ["run", "--local", "--model-server", PLAN_REPLAY, "--phase", "build"], 2,
             ["records a plan conversation, not build", "--phase plan"]),
        Case("patch-of-a-text-phase", ["run", "--local", "--model-server", PLAN_REPLAY, "-o", "patch"], 2,
             ["-o patch", "no patch"]),
        # in place: a dirty work tree is refused
        Case("workspace-dirty", [*run, "--workspace", str(root / "dirty")], 2,
             ["uncommitted changes", "mine.txt", "--allow-dirty"]),
        Case("workspace-not-git", [*run, "--workspace", str(root / "home")], 2, ["not a git work tree"]),
        Case("allow-dirty-alone", [*run, "--allow-dirty"], 2, ["--workspace"]),
        Case("manifest-missing", [*run, str(root / "nope.yaml")], 2, ["cannot read", "nope.yaml"]),
        # `engines --check`, documented in the registry file's header
        Case("engines-check-invalid", ["engines", "--check", "-f", str(root / "bad-engines.yaml")], 2,
             ["invalid engine registry", "BuildEngineRegistry"]),
        Case("engines-check-missing", ["engines", "--check", "-f", str(root / "nope.yaml")], 2,
             ["cannot read", "nope.yaml", "-f FILE"]),
    ]


CASE_IDS = [c.id for c in cases(Path("/x"))]


def cli(argv: list[str], *, home: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    base.update(HOME=str(home), PYTHONPATH=str(REPO_ROOT / "operator"), OPENCODE_BIN="/bin/true",
                TMPDIR=str(home), **env)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "buildstudio.cli", *argv], input=stdin, capture_output=True,
                          text=True, timeout=60, env=base, cwd=REPO_ROOT)  # fmt: skip


def assert_one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    return lines[0]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_error_is_one_line_with_its_exit_code(place: Path, case_id: str) -> None:
    case = next(c for c in cases(place) if c.id == case_id)
    done = cli(case.argv, home=place / "home", env=case.env, stdin=case.stdin)
    assert done.returncode == case.code, done.stderr
    line = assert_one_line(done.stderr)
    for word in case.says:
        assert word in line, line
    assert done.stdout == ""
    # Refused before any work: no gate, no preflight, no replay server, no temp directory.
    assert "gate:" not in done.stderr and "preflight:" not in done.stderr and "REPLAY MODEL" not in done.stderr
    assert not list((place / "home").glob("buildstudio-local-*"))


def test_engines_check_validates_the_shipped_registry(place: Path) -> None:
    done = cli(["engines", "--check"], home=place / "home", env={})
    assert done.returncode == 0 and done.stdout.strip().endswith("engines valid (the CRD's models and CEL rules)")
    assert done.stderr == ""


def test_a_local_plan_run_records_its_phase(place: Path) -> None:
    """The dispatch record of a text phase says which phase it was (it said "build")."""
    done = cli(["run", "--local", "--model-server", PLAN_REPLAY, "-o", "json"], home=place / "home", env={})
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["phase"], record["result"]["phase"], record["result"]["outcome"]) == ("plan", "plan", "Completed")


def test_debug_shows_the_traceback(place: Path) -> None:
    done = cli(["diff", "x", "--debug"], home=place / "home", env={})
    assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigException" in done.stderr


def test_exit_codes_are_in_the_help(place: Path) -> None:
    for argv in (["--help"], ["run", "--help"], ["watch", "--help"]):
        done = cli(argv, home=place / "home", env={})
        assert done.returncode == 0
        assert "exit codes:" in done.stdout and "130  interrupted" in done.stdout and "--debug" in done.stdout


async def test_ctrl_c_exits_130_with_one_line(place: Path) -> None:
    """Interrupted during the preflight (a model service that accepts and never answers)."""
    hung: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        hung.append(w)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {**os.environ, "HOME": str(place / "home"), "PYTHONPATH": str(REPO_ROOT / "operator"),
           "OPENCODE_BIN": "/bin/true", "TMPDIR": str(place / "home")}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "buildstudio.cli", "run", "--local", "--base-url", f"http://127.0.0.1:{port}/v1",
        "--model", "m", "--prompt", "p", "--repo", str(place / "clean"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        for _ in range(200):
            if hung:
                break
            await asyncio.sleep(0.05)
        assert hung, "the preflight never connected"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        server.close()
    text = err.decode()
    assert proc.returncode == 130, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1] == "buildstudio: interrupted" and "Traceback" not in text


# ------------------------------------------------------------------ the pure parts behind them


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (KeyboardInterrupt(), 130, ["interrupted"]),
        (clierrors.CliError("what", "why", "do this"), 2, ["what: why; do this"]),
        (ConnectionRefusedError(111, "Connection refused"), 1, ["cannot reach"]),
        (TimeoutError("read"), 1, ["timed out"]),
        (RuntimeError("boom"), 1, ["unexpected error (RuntimeError: boom)", "--debug"]),
    ],
)
def test_describe(exc: BaseException, code: int, words: list[str]) -> None:
    got_code, line = clierrors.describe(exc)
    assert got_code == code and "\n" not in line
    for word in words:
        assert word in line


def test_one_line_strips_colour_and_newlines() -> None:
    assert clierrors.one_line("\x1b[91merror\x1b[0m:\n  bad  thing") == "error: bad thing"


def test_repo_path_with_uncommitted_work_warns(place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    args = argparse.Namespace(workspace=None, allow_dirty=False)
    localrun._check_workspace(args, {"repo": str(place / "dirty")})
    err = capsys.readouterr().err
    assert "warning:" in err and "1 file: mine.txt" in err and "committed HEAD" in err and "--allow-dirty" in err
    localrun._check_workspace(args, {"repo": str(place / "clean")})
    assert capsys.readouterr().err == ""


def test_parse_status() -> None:
    from buildstudio.commands import localbase

    raw = b" M calc.py\0?? new dir/x.txt\0A  staged.txt\0R  new.py\0old.py\0"
    assert localbase.parse_status(raw) == ["calc.py", "new dir/x.txt", "staged.txt", "new.py"]
    assert localbase.changes_summary(["a", "b"]) == "2 files: a, b"
