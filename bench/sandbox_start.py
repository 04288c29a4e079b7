"""Sandbox start -> first model request: the runner with real opencode against the scripted model service.

    nice .venv/bin/python bench/sandbox_start.py [--rounds 5]

One-process runner (``python -m buildstudio.sandbox.runner --spec ...``, the development layout: clone
of a local repo, opencode, diff, result) with the real opencode (``.tools/opencode``, ``make setup``;
or ``$OPENCODE_BIN``) against ``ScriptedServer`` on loopback. Per round, times from spawning the runner:
- ``python up``: the runner's first record on stdout ("preparing workspace": interpreter, imports,
  spec read);
- ``workspace + config``: to its "opencode started" record (workspace prepared, opencode config and
  prompt written, opencode spawned);
- ``opencode to first request``: from there until the scripted server logs the first chat completion
  request (opencode's own start, config load, session, the request);
- total.
Then opencode alone (spawned directly, same config, ``--print-logs``): spawn -> first chat request,
split by opencode's own log into boot (spawn -> its first log line) and the rest; and ``opencode
--version`` alone. Each figure: min/median/max over the rounds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cancel_on_sigterm, host_load, spread

from buildstudio.commands.localbase import make_sample_repo
from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.engines import opencode_config
from buildstudio.protocol import records
from buildstudio.protocol.spec import RunnerSpec
from buildstudio.sandbox.runner.launch import find_opencode, start_runner, write_spec
from buildstudio.sandbox.runner.supervise import opencode_argv, opencode_env

SCRIPT = [{"tool": "write", "args": {"filePath": "hello.py", "content": "print('hello')\n"}},
          {"text": "Wrote hello.py."}]
PROMPT = "Write hello.py that prints hello."
MODEL = "qwen3-coder"
BOUND = 120.0


async def first_chat(srv: ScriptedServer, since: float, proc: asyncio.subprocess.Process) -> float:
    """Wall time of the first chat completion request after ``since`` (nan if the process ended first)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        for r in srv.requests:
            if r["t"] >= since and r["method"] == "POST" and "chat/completions" in r["path"]:
                return float(r["t"])
        if proc.returncode is not None:
            return float("nan")
        await asyncio.sleep(0.005)
    return float("nan")


async def stop(proc: asyncio.subprocess.Process, finish: float = 60.0) -> None:
    """Let the run end on its own (the script answers the rest at once), within a bound; then SIGTERM
    (the runner stops opencode and its descendants), then SIGKILL to the group."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), finish if sig is None else 10)
        if proc.returncode is not None:
            return


async def runner_round(opencode: str, tmp: Path) -> dict[str, float]:
    async with ScriptedServer(SCRIPT, model=MODEL) as srv:
        ws = tmp / "ws"
        make_sample_repo(ws)
        spec = RunnerSpec(prompt=PROMPT, model=MODEL, base_url=srv.base_url)
        spec_file = write_spec(spec, tmp / "spec.json")
        marks: dict[str, float] = {}
        t0 = time.time()
        proc = await start_runner(spec_file, workspace=ws, home=tmp / "home", opencode_bin=opencode,
                                  stderr=asyncio.subprocess.DEVNULL, new_session=True)

        async def read() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                rec = records.parse_line(line)
                now = time.time()
                marks.setdefault("first record", now)
                if isinstance(rec, records.ProgressRecord) and rec.message.startswith("opencode started"):
                    marks.setdefault("opencode started", now)

        reader = asyncio.create_task(read())
        try:
            t_req = await first_chat(srv, t0, proc)
        finally:
            await stop(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)
    first, started = marks.get("first record", float("nan")), marks.get("opencode started", float("nan"))
    return {"python up": first - t0, "workspace + config": started - first,
            "opencode to first request": t_req - started, "total": t_req - t0}


async def opencode_round(opencode: str, tmp: Path) -> dict[str, float]:
    async with ScriptedServer(SCRIPT, model=MODEL) as srv:
        ws, home = tmp / "ws", tmp / "home"
        make_sample_repo(ws)
        spec = RunnerSpec(prompt=PROMPT, model=MODEL, base_url=srv.base_url)
        cfg = opencode_config.build_config(base_url=srv.base_url, model=MODEL, context=65536, output=8192)
        opencode_config.write_config(home, cfg)
        (tmp / "prompt.txt").write_text(PROMPT)
        first_log: list[float] = []
        t0 = time.time()
        with (tmp / "prompt.txt").open("rb") as stdin:
            proc = await asyncio.create_subprocess_exec(
                *opencode_argv(opencode, ws, MODEL), "--print-logs", "--log-level", "INFO",
                stdin=stdin, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env=opencode_env(spec, home, dict(os.environ)), cwd=ws, start_new_session=True,
            )

            async def read() -> None:
                assert proc.stderr is not None
                while line := await proc.stderr.readline():
                    if not first_log and line.strip():
                        first_log.append(time.time())

            reader = asyncio.create_task(read())
            try:
                t_req = await first_chat(srv, t0, proc)
            finally:
                await stop(proc)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader, 5)
    boot = (first_log[0] if first_log else float("nan")) - t0
    return {"opencode boot (spawn -> first log line)": boot,
            "opencode first log -> first request": t_req - t0 - boot, "opencode alone total": t_req - t0}


async def version_round(opencode: str) -> float:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(opencode, "--version", stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        await stop(proc, 0)
    return time.monotonic() - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cancel_on_sigterm()
    opencode = find_opencode() or sys.exit("opencode not found: run `make setup` or set OPENCODE_BIN")
    figures: dict[str, list[float]] = {}
    for i in range(args.rounds):
        # Alternate the order so drift in host load hits both sides alike.
        order = ["runner", "opencode", "version"] if i % 2 == 0 else ["version", "opencode", "runner"]
        for what in order:
            with tempfile.TemporaryDirectory(prefix="bs-bench-start-", ignore_cleanup_errors=True) as d:
                if what == "runner":
                    got = await runner_round(opencode, Path(d))
                elif what == "opencode":
                    got = await opencode_round(opencode, Path(d))
                else:
                    got = {"opencode --version": await version_round(opencode)}
            for k, v in got.items():
                figures.setdefault(k, []).append(v)
    print(f"sandbox start -> first model request, {args.rounds} rounds, min/median/max s ({host_load()}):")
    for k, vals in figures.items():
        print(f"  {k:42s} {spread(vals, '{:.3f}')}")
    ours = [a + b for a, b in zip(figures["python up"], figures["workspace + config"], strict=True)]
    print(f"  {'our part (python up + workspace + config)':42s} {spread(ours, '{:.3f}')}  (goal <= 0.3 s)")


if __name__ == "__main__":
    asyncio.run(main())
