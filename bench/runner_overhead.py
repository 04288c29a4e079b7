"""Runner overhead: wall time of `python -m buildstudio.runner` vs bare `opencode run`, same scripted model,
same repo content, same config and environment. Goal: ≤ +5 % or ≤ +300 ms (median). Prints figures only.

    .venv/bin/python bench/runner_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "operator"))

import git  # noqa: E402

from buildstudio import opencode_config, records  # noqa: E402
from buildstudio.runner.spec import RunnerSpec, dump_spec  # noqa: E402
from buildstudio.runner.supervise import opencode_argv, opencode_env  # noqa: E402
from buildstudio.scripted_server import ScriptedServer  # noqa: E402

SCRIPT = [
    {"tool": "write", "args": {"filePath": "hello.py", "content": "print('hello')\n"}},
    {"text": "Wrote hello.py."},
]
PROMPT = "Write hello.py that prints hello."


def find_opencode() -> str:
    local = REPO_ROOT / ".tools" / "opencode" / "node_modules" / ".bin" / "opencode"
    found = os.environ.get("OPENCODE_BIN") or (str(local) if local.exists() else shutil.which("opencode"))
    if not found:
        sys.exit("opencode not found: set OPENCODE_BIN")
    return found


def make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    repo = git.Repo.init(path)
    repo.index.add(["calc.py"])
    actor = git.Actor("b", "b@b")
    repo.index.commit("init", author=actor, committer=actor)


async def bare(opencode: str, base_url: str, tmp: Path) -> float:
    ws, home = tmp / "ws", tmp / "home"
    make_repo(ws)
    spec = RunnerSpec(prompt=PROMPT, model="qwen3-coder", base_url=base_url)
    cfg = opencode_config.build_config(base_url=base_url, model="qwen3-coder", context=65536, output=8192)
    opencode_config.write_config(home, cfg)
    (tmp / "prompt.txt").write_text(PROMPT)
    t0 = time.monotonic()
    with (tmp / "prompt.txt").open("rb") as stdin:
        proc = await asyncio.create_subprocess_exec(
            *opencode_argv(opencode, ws, "qwen3-coder"),
            stdin=stdin,
            stdout=asyncio.subprocess.DEVNULL,
            env=opencode_env(spec, home, dict(os.environ)),
            cwd=ws,
        )
        await asyncio.wait_for(proc.wait(), 120)
    return time.monotonic() - t0


OWN: list[float] = []  # runner wall time minus opencode's lifetime inside it (load-independent)


async def runner(opencode: str, base_url: str, tmp: Path) -> float:
    ws = tmp / "ws"
    make_repo(ws)
    spec = RunnerSpec(prompt=PROMPT, model="qwen3-coder", base_url=base_url)
    (tmp / "spec.json").write_text(dump_spec(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "OPENCODE_BIN": opencode}
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "buildstudio.runner",
        "--spec",
        str(tmp / "spec.json"),
        "--workspace",
        str(ws),
        "--home",
        str(tmp / "home"),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    elapsed = time.monotonic() - t0
    recs = [records.parse_line(line) for line in out.splitlines()]
    last = recs[-1]
    if not isinstance(last, records.ResultRecord) or last.outcome is not records.Outcome.COMPLETED:
        sys.exit(f"runner run did not complete: {last}")
    marks = {r.message or r.stage: r.elapsed_seconds for r in recs if isinstance(r, records.ProgressRecord)}
    OWN.append(elapsed - (marks["capturing the diff"] - marks["opencode started"]))
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    opencode = find_opencode()
    times: dict[str, list[float]] = {"bare": [], "runner": []}
    for i in range(args.rounds):
        # Alternate the order so drift in host load hits both sides alike.
        order = [("bare", bare), ("runner", runner)] if i % 2 == 0 else [("runner", runner), ("bare", bare)]
        for name, fn in order:
            with tempfile.TemporaryDirectory(prefix="bs-bench-") as d:
                async with ScriptedServer(SCRIPT) as srv:
                    times[name].append(await fn(opencode, srv.base_url, Path(d)))
    b, r = statistics.median(times["bare"]), statistics.median(times["runner"])
    print(f"rounds: {args.rounds} (scripted model: write hello.py, then answer; {os.cpu_count()} CPUs)")
    for name, ts in times.items():
        print(
            f"{name:>7}: median {statistics.median(ts):.3f} s  min {min(ts):.3f} s  max {max(ts):.3f} s  "
            f"[{', '.join(f'{t:.2f}' for t in ts)}]"
        )
    print(f"overhead: {r - b:+.3f} s ({(r - b) / b:+.1%}) median; goal ≤ +5 % or ≤ +0.300 s")
    print(
        f"runner's own time (wall minus opencode's lifetime; start-up, clone/prepare, diff, result): "
        f"median {statistics.median(OWN):.3f} s  min {min(OWN):.3f} s  max {max(OWN):.3f} s"
    )
    print("note: on a loaded host the bare/runner difference is dominated by noise; the own-time line is not")


if __name__ == "__main__":
    asyncio.run(main())
