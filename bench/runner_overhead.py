"""Runner overhead: wall time of `python -m buildstudio.sandbox.runner` vs bare `opencode run`, same scripted model,
same repo content, same config and environment. Goal: ≤ +5 % or ≤ +300 ms (median). Prints figures only.

    .venv/bin/python bench/runner_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "operator"))


from buildstudio.commands.localbase import make_sample_repo  # noqa: E402
from buildstudio.commands.scripted_server import ScriptedServer  # noqa: E402
from buildstudio.engines import opencode_config  # noqa: E402
from buildstudio.protocol import records  # noqa: E402
from buildstudio.protocol.spec import RunnerSpec  # noqa: E402
from buildstudio.sandbox.runner.launch import find_opencode, start_runner, write_spec  # noqa: E402
from buildstudio.sandbox.runner.supervise import opencode_argv, opencode_env  # noqa: E402

SCRIPT = [
    {"tool": "write", "args": {"filePath": "hello.py", "content": "print('hello')\n"}},
    {"text": "Wrote hello.py."},
]
PROMPT = "Write hello.py that prints hello."


async def bare(opencode: str, base_url: str, tmp: Path) -> float:
    ws, home = tmp / "ws", tmp / "home"
    make_sample_repo(ws)
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
    make_sample_repo(ws)
    spec = RunnerSpec(prompt=PROMPT, model="qwen3-coder", base_url=base_url)
    spec_file = write_spec(spec, tmp / "spec.json")
    t0 = time.monotonic()
    proc = await start_runner(spec_file, workspace=ws, home=tmp / "home", opencode_bin=opencode, stderr=None)
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
    opencode = find_opencode() or sys.exit("opencode not found: set OPENCODE_BIN")
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
