"""Starting the runner as a local process: the one way ``run --local``, the engine tests
(``tests/runner_harness.py``) and the benchmarks do it.

``python -m buildstudio.sandbox.runner [ROLE] --spec FILE --workspace DIR --home DIR ...`` with
this source tree on ``PYTHONPATH`` and the opencode binary in ``OPENCODE_BIN``; stdin is
``/dev/null`` and stdout is the record protocol (``buildstudio.protocol.records``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from buildstudio.protocol.spec import RunnerSpec, dump_spec

SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the directory holding the buildstudio package
REPO_ROOT = SOURCE_ROOT.parent
LOCAL_OPENCODE = REPO_ROOT / ".tools" / "opencode" / "node_modules" / ".bin" / "opencode"

# The cloud engines' CLIs of hack/install-engines.sh (the engine tests and `run --local --engine X`).
LOCAL_ENGINES_BIN = REPO_ROOT / ".tools" / "engines" / "bin"

Stream = int | IO[Any] | None


def find_opencode(explicit: str | None = None) -> str | None:
    """``explicit`` (--opencode-bin), then $OPENCODE_BIN, then the repo's ``.tools`` install (``make setup``),
    then ``opencode`` on PATH; None when there is none."""
    if explicit:
        return explicit
    if os.environ.get("OPENCODE_BIN"):
        return os.environ["OPENCODE_BIN"]
    if LOCAL_OPENCODE.exists():
        return str(LOCAL_OPENCODE)
    return shutil.which("opencode")


def find_engine(binary: str, explicit: str | None = None) -> str | None:
    """A cloud engine's CLI (``claude``, ``codex``, ``grok``): ``explicit``, then $<BINARY>_BIN, then
    ``.tools/engines/bin/`` (hack/install-engines.sh), then PATH; None when there is none."""
    if explicit:
        return explicit
    from_env = os.environ.get(f"{binary.upper()}_BIN")
    if from_env:
        return from_env
    local = LOCAL_ENGINES_BIN / binary
    if local.exists():
        return str(local)
    return shutil.which(binary)


def runner_env(opencode_bin: str, inherit: Mapping[str, str]) -> dict[str, str]:
    """``inherit`` plus what the runner needs: this source tree first on PYTHONPATH, the opencode binary."""
    env = dict(inherit)
    env["OPENCODE_BIN"] = opencode_bin
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), inherit.get("PYTHONPATH")]))
    return env


def write_spec(spec: RunnerSpec | Mapping[str, Any], path: Path) -> Path:
    """The spec as the runner reads it (a ``RunnerSpec``, or its camelCase dict as is)."""
    path.write_text(dump_spec(spec) if isinstance(spec, RunnerSpec) else json.dumps(dict(spec)), encoding="utf-8")
    return path


async def start_runner(
    spec_file: Path,
    *,
    workspace: Path,
    home: Path,
    opencode_bin: str,
    role: str | None = None,
    extra_args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stdout: Stream = asyncio.subprocess.PIPE,
    stderr: Stream = asyncio.subprocess.PIPE,
    limit: int = 2**16,
    new_session: bool = False,
) -> asyncio.subprocess.Process:
    """Start ``python -m buildstudio.sandbox.runner``: the whole run in one process (``role`` None),
    or one of the sandbox pod's roles (``agent``: ``extra_args`` then carry ``--report FILE``).

    ``prefix``: a command the runner runs under (``unshare …``); ``env``: the environment it
    starts from (default: this process's whole environment); ``limit``: the longest stdout line
    asyncio's reader takes; ``new_session``: its own session, so that its process group can be
    signalled as one."""
    argv = [*prefix, sys.executable, "-m", "buildstudio.sandbox.runner", *([role] if role else [])]
    argv += ["--spec", str(spec_file), "--workspace", str(workspace), "--home", str(home), *extra_args]
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=runner_env(opencode_bin, os.environ if env is None else env),
        limit=limit,
        start_new_session=new_session,
    )
