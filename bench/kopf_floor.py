"""kopf's own floor: what an operator that only watches pays per status event, at the rate N running dispatches make.

    nice .venv/bin/python bench/kopf_floor.py [--objects 200] [--interval 2] [--window 30] [--repeats 3]

The question it answers: of the operator's CPU at N running dispatches (``bench/operator_scale.py``),
how much is kopf's fixed cost per watch event, which no handler code can remove? Three processes:
the API emulator (``bench/_cluster.py``, no kubelet), a floor operator — real kopf with the
project's storage settings (``handlers.configure``), and the same
handler shapes on BuildDispatch (an index and a daemon per object) that do nothing —
and this bench, which creates N dispatches and then, from its own process, patches each one's
status at a runner's pace (every ``--interval`` s ±30 %) with a progress write shaped like the
operator's. Measured over ``--window`` s once every daemon runs: the floor operator's CPU (% of
one core), its RSS, the writes (= watch events) per second, and CPU per event (ms). Compare with
``operator_scale.py``'s operator CPU at the same N: the difference is what the project's handlers
cost (following logs, deciding, writing). Each figure: min/median/max over the repeats. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BD_PATH,
    PARENT_GUARD,
    cancel_on_sigterm,
    cluster,
    cpu_seconds,
    dispatch,
    host_load,
    operator,
    rss_mb,
    spread,
)

FLOOR_OPERATOR = PARENT_GUARD + """
import logging, kopf
from buildstudio.handlers import DISPATCHES, configure, login, tune_gc
logging.basicConfig(level=logging.WARNING)
registry = kopf.OperatorRegistry()
kopf.on.login(registry=registry, id="login")(login)

@kopf.on.startup(registry=registry, id="startup")
async def startup(settings, **_):
    configure(settings)

@kopf.index(*DISPATCHES, registry=registry, id="dispatch_queue", field="status.conditions")
async def dispatch_queue(namespace, name, status, **_):
    return {(namespace, name): status.get("phase")}

@kopf.daemon(*DISPATCHES, registry=registry, id="dispatch", cancellation_timeout=1.0)
async def drive(stopped, **_):
    await stopped.wait()

tune_gc()
kopf.run(registry=registry, standalone=True, clusterwide=True)
"""

MERGE = {"Content-Type": "application/merge-patch+json"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status() -> dict[str, Any]:
    """A running dispatch's status as the operator leaves it after the launch."""
    t = now()
    return {
        "phase": "Running", "reason": "AgentRunning", "message": "step 1", "attempt": 1, "engine": "opencode",
        "model": "qwen3-coder", "pod": "x-1", "startedAt": t, "observedGeneration": 1,
        "conditions": [
            {"type": t_, "status": "True", "reason": r, "message": m, "lastTransitionTime": t}
            for t_, r, m in (("Admitted", "Admitted", "opencode drives local model qwen3-coder"),
                             ("PreflightPassed", "ModelReady", "qwen3-coder ready, context 65536"),
                             ("PodScheduled", "PodRunning", "sandbox pod x-1 runs"),
                             ("Succeeded", "Running", "the agent runs"))
        ],
    }


def progress_patch(i: int) -> dict[str, Any]:
    """What one progress write carries (``core.status``'s shape): the progress and the recent events."""
    return {"status": {
        "message": f"step {i}", "progress": {
            "stage": "running", "steps": i, "toolCalls": i // 2, "tokens": 180 * i, "elapsedSeconds": 2 * i,
            "lastTool": f"edit src/module_{i % 7}.py", "updatedAt": now()},
        "recentEvents": [{"type": "tool", "message": f"edit src/module_{k % 7}.py", "ts": now()}
                         for k in range(max(0, i - 5), i)],
    }}


async def writer(http: httpx.AsyncClient, name: str, interval: float, until: float, rng: random.Random,
                 counts: list[int]) -> None:
    await asyncio.sleep(rng.uniform(0, interval))
    i = 1
    while time.monotonic() < until:
        i += 1
        r = await http.patch(f"{BD_PATH}/{name}/status", json=progress_patch(i), headers=MERGE)
        r.raise_for_status()
        counts[0] += 1
        await asyncio.sleep(interval * rng.uniform(0.7, 1.3))


async def one_run(args: argparse.Namespace, seed: int) -> dict[str, float]:
    names = [f"floor-{i:04d}" for i in range(args.objects)]
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bs-bench-floor-") as tmpdir:
        tmp = Path(tmpdir)
        async with cluster(tmp) as cl:
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(base_url=cl.url, timeout=httpx.Timeout(20.0), limits=limits) as http:
                for name in names:  # created with a running status, as the operator's launch leaves them
                    (await http.post(BD_PATH, json=dispatch(name))).raise_for_status()
                    r = await http.patch(f"{BD_PATH}/{name}/status", json={"status": running_status()}, headers=MERGE)
                    r.raise_for_status()
                async with operator(tmp, cl.url, FLOOR_OPERATOR) as op:
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:  # every daemon started: kopf has added its finalizer
                        items = (await http.get(BD_PATH)).json()["items"]
                        if sum(bool(o["metadata"].get("finalizers")) for o in items) == len(names):
                            break
                        if op.proc.returncode is not None:
                            raise RuntimeError(f"the floor operator exited: see {tempfile.gettempdir()}"
                                               "/buildstudio-bench-operator.log")
                        await asyncio.sleep(1.0)
                    counts = [0]
                    warm = 5.0
                    until = time.monotonic() + warm + args.window
                    tasks = [asyncio.create_task(writer(http, n, args.interval, until, rng, counts)) for n in names]
                    await asyncio.sleep(warm)
                    c0, w0, t0 = cpu_seconds(op.proc.pid), counts[0], time.monotonic()
                    rss = 0.0
                    while time.monotonic() < until - 0.5:
                        rss = max(rss, rss_mb(op.proc.pid))
                        await asyncio.sleep(1.0)
                    c1, w1, t1 = cpu_seconds(op.proc.pid), counts[0], time.monotonic()
                    await asyncio.gather(*tasks)
    cpu = c1 - c0
    events = w1 - w0
    return {"cpu_pct": 100 * cpu / (t1 - t0), "events_per_s": events / (t1 - t0),
            "ms_per_event": 1000 * cpu / max(events, 1), "rss_mb": rss}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=200, help="dispatches, each written at a runner's pace")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between one object's writes (±30 %%)")
    ap.add_argument("--window", type=float, default=30.0, help="measured seconds")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cancel_on_sigterm()
    print(f"kopf floor: {args.objects} dispatches, a status write each every ~{args.interval:g} s from another "
          f"process; an operator with only kopf's index and an idle daemon per dispatch; {args.repeats} repeats; "
          f"{host_load()}", flush=True)
    runs = []
    for seed in range(1, args.repeats + 1):
        fig = await one_run(args, seed)
        print("  run {}: {}".format(seed, ", ".join(f"{k}={v:.3g}" for k, v in fig.items())), flush=True)
        runs.append(fig)
    print(f"figures, min/median/max over {len(runs)} runs ({host_load()}):")
    rows = [("floor operator CPU, % of one core", "cpu_pct", "{:.1f}"),
            ("watch events/s (status writes)", "events_per_s", "{:.1f}"),
            ("CPU per event, ms", "ms_per_event", "{:.2f}"),
            ("floor operator RSS, MB (max)", "rss_mb", "{:.0f}")]
    for label, key, fmt in rows:
        print(f"  {label:<52} {spread([r[key] for r in runs], fmt)}")
    print(f"  median CPU per event x the events of {args.objects} dispatches at this pace: "
          f"{statistics.median(r['ms_per_event'] for r in runs) * args.objects / args.interval / 10:.1f} % of a core")


if __name__ == "__main__":
    asyncio.run(main())
