"""Shared by the runner's engine-integration tests: find opencode, make repos, run the runner."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from buildstudio.protocol import records
from buildstudio.sandbox.runner.launch import find_opencode, start_runner, write_spec

REPO_ROOT = Path(__file__).resolve().parent.parent


OPENCODE = find_opencode()  # $OPENCODE_BIN, the repo's .tools install, PATH
SKIP_REASON = "opencode binary not found (set OPENCODE_BIN, or install it under .tools/opencode, or on PATH)"


def make_repo(path: Path, files: dict[str, str] | None = None) -> git.Repo:
    path.mkdir(parents=True, exist_ok=True)
    files = files or {"calc.py": "def add(a, b):\n    return a + b\n"}
    for name, text in files.items():
        (path / name).write_text(text)
    repo = git.Repo.init(path)
    repo.index.add(list(files))
    actor = git.Actor("t", "t@example.com")
    repo.index.commit("init", author=actor, committer=actor)
    return repo


def spec(base_url: str, prompt: str = "Describe the repository.", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": prompt, "model": "qwen3-coder", "baseUrl": base_url}
    out.update(extra)
    return out


@dataclass
class Run:
    rc: int | None
    lines: list[records.ProgressRecord | records.EventRecord | records.ResultRecord]
    stderr: str
    elapsed: float

    @property
    def result(self) -> records.ResultRecord:
        last = self.lines[-1] if self.lines else None
        assert isinstance(last, records.ResultRecord), f"no result record; stderr: {self.stderr[-2000:]}"
        return last

    def events(self, type_: str | None = None) -> list[records.EventRecord]:
        return [r for r in self.lines if isinstance(r, records.EventRecord) and (type_ is None or r.type == type_)]


async def run_runner(
    tmp: Path,
    spec_dict: dict[str, Any],
    *,
    ws: Path,
    opencode: str | None = None,
    during: Callable[[asyncio.subprocess.Process], Awaitable[None]] | None = None,
    limit: float = 90.0,
    extra_env: dict[str, str] | None = None,
) -> Run:
    """Run ``python -m buildstudio.sandbox.runner`` like the pod would; ``during`` runs alongside (e.g. cancel)."""
    spec_file = write_spec(spec_dict, tmp / "spec.json")
    # opencode's Bun leaves a 5.5 MB library in TMPDIR on every start: keep it in the test's tmp.
    (tmp / "tmp").mkdir(exist_ok=True)
    t0 = time.monotonic()
    proc = await start_runner(
        spec_file,
        workspace=ws,
        home=tmp / "home",
        opencode_bin=opencode or OPENCODE or "",
        env={**os.environ, "TMPDIR": str(tmp / "tmp"), **(extra_env or {})},
    )
    side = asyncio.ensure_future(during(proc)) if during else None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"runner did not finish within {limit} s; stderr: {err.decode()[-2000:]}") from None
    finally:
        if side is not None:
            side.cancel()
    recs = [r for r in (records.parse_line(line) for line in out.splitlines()) if r is not None]
    assert len(recs) == len(out.splitlines()), "every stdout line is a record"
    return Run(proc.returncode, recs, err.decode("utf-8", "replace"), time.monotonic() - t0)


def user_messages(bodies: list[dict[str, Any]]) -> list[str]:
    """The user messages of the agent requests (content may be a string or a list of parts)."""
    out = []
    for body in bodies:
        for m in body.get("messages", []):
            if m.get("role") != "user":
                continue
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            out.append(c)
    return out
