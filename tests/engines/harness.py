"""Run a real engine CLI in a throw-away git repo (engine tests and the measurements of docs/engines/).

Blocking on purpose: the scripted vendor server runs in a ThreadedServer meanwhile. The CLI gets
its own session (process group) so a timeout ends it and every tool process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildstudio.engines.base import FileSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINES_BIN = REPO_ROOT / ".tools" / "engines" / "bin"
CALC = "def add(a, b):\n    return a + b\n"


def engine_binary(name: str) -> Path | None:
    """The CLI installed by hack/install-engines.sh, else one on PATH, else None."""
    local = ENGINES_BIN / name
    if local.exists():
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def make_repo(root: Path) -> Path:
    """A git repo with one committed file, calc.py (like the opencode tests' sample repo)."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text(CALC, encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "init")
    return repo


def changed_files(repo: Path) -> list[str]:
    """Paths the run changed or created, as `git status` sees them (untracked included)."""
    out = git(repo, "status", "--porcelain", "--untracked-files=all")
    return sorted(line[3:] for line in out.splitlines() if line)


def write_files(files: Sequence[FileSpec], dirs: Mapping[str, Path]) -> None:
    """Write an adapter's FileSpecs; ``spec.root`` names one of ``dirs`` (home, workspace …)."""
    for spec in files:
        path = dirs[spec.root] / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec.content, encoding="utf-8")
        path.chmod(spec.mode)


@dataclass
class Run:
    exit_code: int | None  # None: killed by the harness at the timeout
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_cli(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    stdin_text: str | None = None,
) -> Run:
    """Run argv (no shell) with exactly ``env``; stdin is ``stdin_text`` or /dev/null."""
    start = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin_text, timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        code = None
    return Run(code, out, err, time.monotonic() - start)


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the CLI's process group, SIGKILL what is left after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def base_env(home: Path) -> dict[str, str]:
    """A minimal environment: PATH, a private HOME/XDG set, nothing inherited that could leak a key."""
    env = {
        "PATH": f"{ENGINES_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "LANG": "C.UTF-8",
    }
    for name in ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env
