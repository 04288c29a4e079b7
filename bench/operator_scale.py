"""Operator at scale: many dispatches running at once, their pods streaming progress at a runner's pace.

    nice .venv/bin/python bench/operator_scale.py [--running 50] [--queued 25] [--repeats 3]
        [--run-seconds 30:60] [--progress-interval 2] [--status-interval 2]

Three processes: the cluster (``bench/_cluster.py``: the API emulator of ``tests/kube`` and the
kubelet fixture, whose every sandbox pod's agent logs a progress record every ~``progress-interval``
seconds (±30 %, an event record every third) for a random run time, then its reporter logs a result),
the operator (real kopf with the project's handlers, default Settings: 2 s progress throttle; only
egress is set to an admin CIDR as there is no DNS here) and this bench (the scripted model service for
the preflight, watches on pods and dispatches). ``--running`` is the engine's maxRunning; ``running +
queued`` dispatches are created at once, so the queued ones start as slots free.

Measured in the steady window (every first-wave pod created + 5 s → the last queued pod created,
when ``running`` dispatches run throughout): the operator's CPU (% of one core) and the cluster's, RSS
and threads (max), the operator's log-following threads and tasks (sampled inside it), API writes/s
by the operator, status writes per running dispatch per minute. Over the whole run: progress
staleness (per record the agent logged: time until the bench's watch sees a status with that
record or a newer one, p50/p95), records never shown before the dispatch finished, and slot
hand-over (reporter terminated → next queued pod ADDED on the bench's watch, FIFO pairing, p50/p95).
Staleness is also split at the operator's own status write (its trace says which record each write
carried): the operator's part (record → write) and the API's watch delivery (write → the bench's
watch). Inside the operator, once a second: its loop's lateness, its bounded pools' busy connections
and waiters, status patch round trips; the cluster process's loop lateness. ``--status-interval`` is
the operator's progress throttle (``Settings.status_patch_interval``).
Each figure: min/median/max over the repeats. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BD_PATH,
    MODEL,
    OPERATOR,
    cancel_on_sigterm,
    cluster,
    connections_to,
    cpu_seconds,
    dispatch,
    host_load,
    operator,
    pct,
    proc_status,
    rss_mb,
    setup_engine,
    spread,
    with_pool_size,
)

from buildstudio.commands.scripted_server import ScriptedServer

TERMINAL = ("Succeeded", "Failed")


class Watches:
    """The bench's view: pods ADDED, dispatch status changes (progress steps, phase)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.pod_added: dict[str, float] = {}
        self.steps: dict[str, list[tuple[float, int]]] = {}  # dispatch -> (seen at, steps) on change
        self.first_status: dict[str, float] = {}
        self.phase: dict[str, str] = {}
        self.finished_at: dict[str, float] = {}

    async def _watch(self, path: str, on_event: Any) -> None:
        params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "900"}
        while True:
            with contextlib.suppress(httpx.HTTPError):
                async with self.http.stream("GET", path, params=params,
                                            timeout=httpx.Timeout(5, read=960)) as r:
                    async for line in r.aiter_lines():
                        if line.strip():
                            on_event(json.loads(line), time.time())
            await asyncio.sleep(0.2)

    def _pod(self, ev: dict[str, Any], now: float) -> None:
        if ev.get("type") == "ADDED":
            self.pod_added.setdefault(ev["object"]["metadata"]["name"], now)

    def _bd(self, ev: dict[str, Any], now: float) -> None:
        obj = ev.get("object") or {}
        name = (obj.get("metadata") or {}).get("name")
        status = obj.get("status") or {}
        if not name or not status:
            return
        self.first_status.setdefault(name, now)
        steps = int(((status.get("progress") or {}).get("steps")) or 0)
        seen = self.steps.setdefault(name, [])
        if not seen or seen[-1][1] != steps:
            seen.append((now, steps))
        phase = str(status.get("phase") or "")
        self.phase[name] = phase
        if phase in TERMINAL:
            self.finished_at.setdefault(name, now)

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._watch("/api/v1/pods", self._pod)),
                asyncio.create_task(self._watch(BD_PATH, self._bd))]


async def one_run(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    n_total = args.running + args.queued
    names = [f"run-{i:04d}" for i in range(n_total)]
    samples: list[tuple[float, float, float, float, float, float]] = []  # t, op cpu, cluster cpu, rss, threads
    with tempfile.TemporaryDirectory(prefix="bs-bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        trace = tmp / "operator-trace.jsonl"  # the operator's status writes (_common.OPERATOR)
        os.environ["BENCH_TRACE_OUT"] = str(trace)
        extra = ["--kubelet", "--run-seconds", args.run_seconds, "--progress-interval", str(args.progress_interval),
                 "--seed", str(seed)]
        async with (
            ScriptedServer([{"text": "x"}], model=MODEL) as model,
            cluster(tmp, *extra) as cl,
        ):
            limits = httpx.Limits(max_connections=args.clients + 4)
            async with httpx.AsyncClient(base_url=cl.url, timeout=httpx.Timeout(20.0), limits=limits) as http:
                await setup_engine(http, model.base_url, args.running)
                watches = Watches(http)
                tasks = watches.start()
                try:
                    code = with_pool_size(args.pool_size) if args.pool_size else OPERATOR
                    async with operator(tmp, cl.url, code) as op:
                        await asyncio.sleep(3.0)  # imports, login, the initial listings
                        sem = asyncio.Semaphore(args.clients)

                        async def create(name: str) -> None:
                            async with sem:
                                (await http.post(BD_PATH, json=dispatch(name))).raise_for_status()

                        port = int(cl.url.rsplit(":", 1)[1])
                        t_created = time.time()
                        await asyncio.gather(*(create(n) for n in names))
                        low, high = (float(x) for x in args.run_seconds.split(":"))
                        deadline = time.monotonic() + args.timeout
                        while time.monotonic() < deadline:
                            if op.proc.returncode is not None or cl.proc.returncode is not None:
                                raise RuntimeError("the operator or the cluster exited: see "
                                                   f"{tempfile.gettempdir()}/buildstudio-bench-operator.log")
                            now = time.time()
                            samples.append((now, cpu_seconds(op.proc.pid), cpu_seconds(cl.proc.pid),
                                            rss_mb(op.proc.pid), proc_status(op.proc.pid, "Threads"),
                                            time.process_time(), connections_to(op.proc.pid, port)))
                            if sum(watches.phase.get(n) in TERMINAL for n in names) == n_total:
                                break
                            await asyncio.sleep(1.0)
                        probes = op.probes()
                        lines = trace.read_text().splitlines() if trace.exists() else []
                        writes_seen = [json.loads(x) for x in lines if x.strip()]
                        timed_out = time.monotonic() >= deadline
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        stats = cl.stats or {}
    if args.dump:
        Path(f"{args.dump}.{seed}.json").write_text(json.dumps({  # noqa: ASYNC240
            "t_created": t_created, "pod_added": watches.pod_added, "steps": watches.steps,
            "finished_at": watches.finished_at, "samples": samples, "probes": probes, "stats": stats,
            "trace": writes_seen}))
    stats["trace"] = writes_seen
    return analyse(args, names, watches, samples, probes, stats, t_created, timed_out, (low, high))


def analyse(args: argparse.Namespace, names: list[str], w: Watches, samples: list[Any], probes: list[Any],
            stats: dict[str, Any], t_created: float, timed_out: bool, run_range: tuple[float, float]) -> dict[str, Any]:
    pods = [f"{n}-1" for n in names]
    added = sorted(w.pod_added.get(p, float("inf")) for p in pods)
    first_wave = added[: args.running]
    t0 = max(first_wave) + 5.0
    t1 = added[-1] if args.queued else t0 + 20.0
    if t1 - t0 < 5.0:  # the queue drained too soon for a steady window: take the first wave's run
        t1 = t0 + max(5.0, run_range[0] - 10.0)
    window = [s for s in samples if t0 <= s[0] <= t1]
    out: dict[str, Any] = {"window_s": t1 - t0, "timed_out": timed_out,
                           "finished": sum(w.phase.get(n) in TERMINAL for n in names),
                           "succeeded": sum(w.phase.get(n) == "Succeeded" for n in names)}
    if len(window) >= 2:
        dt = window[-1][0] - window[0][0]
        out["op_cpu_pct"] = (window[-1][1] - window[0][1]) / dt * 100
        out["cluster_cpu_pct"] = (window[-1][2] - window[0][2]) / dt * 100
        out["bench_cpu_pct"] = (window[-1][5] - window[0][5]) / dt * 100
    out["rss_mb"] = max((s[3] for s in samples), default=float("nan"))
    out["threads"] = max((s[4] for s in samples), default=float("nan"))
    out["connections"] = max((s[6] for s in samples), default=float("nan"))
    out["log_threads"] = max((p["log_threads"] for p in probes), default=float("nan"))
    out["follow_tasks"] = max((p["follow_tasks"] for p in probes), default=float("nan"))
    out["tasks"] = max((p["tasks"] for p in probes), default=float("nan"))
    # Inside the operator, once a second: the loop's lateness and its bounded pools' use and waiters.
    lags = [p["lag"] for p in probes if "lag" in p]
    out["loop_lag_p95"], out["loop_lag_max"] = pct(lags, 95), max(lags, default=float("nan"))
    in_window = [p for p in probes if t0 <= p["t"] <= t1 and "patches" in p]
    n_patch = sum(p["patches"][0] for p in in_window)
    out["patch_ms_mean"] = sum(p["patches"][1] for p in in_window) / n_patch * 1000 if n_patch else float("nan")
    out["patch_ms_max"] = max((p["patches"][2] * 1000 for p in probes if "patches" in p), default=float("nan"))
    late = [x[1] for x in stats.get("lateness") or [] if t0 <= x[0] <= t1]
    out["cluster_lag_p95"], out["cluster_lag_max"] = pct(late, 95), max(late, default=float("nan"))
    bounded = [pool for p in probes for pool in p.get("pools", []) if pool[0]]
    out["pool_busy_max"] = max((pool[1] for pool in bounded), default=float("nan"))
    out["pool_waiters_max"] = max((pool[2] for pool in bounded), default=float("nan"))
    writes = stats.get("writes") or []
    op_w = [x for x in writes if x[1] == "operator" and t0 <= x[0] <= t1]
    if t1 > t0:
        out["writes_per_s"] = len(op_w) / (t1 - t0)
        status_w = [x for x in op_w if x[3] == "builddispatches" and x[4] == "status"]
        out["status_per_dispatch_min"] = len(status_w) / args.running / ((t1 - t0) / 60)
        kinds: dict[str, int] = {}
        for x in op_w:
            key = f"{x[2]} {x[3]}{'/' + x[4] if x[4] else ''}"
            kinds[key] = kinds.get(key, 0) + 1
        out["write_kinds"] = {k: v / (t1 - t0) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    # The throttle: status writes per dispatch while its agent streams (pod ADDED + 5 s -> agent ended).
    by_name: dict[str, list[float]] = {}
    for x in writes:
        if x[1] == "operator" and x[3] == "builddispatches" and x[4] == "status":
            by_name.setdefault(x[5], []).append(x[0])
    rates = []
    for pod, ends in (stats.get("ended") or {}).items():
        start, end = w.pod_added.get(pod, float("inf")) + 5.0, ends.get("agent", 0.0) - 1.0
        if end - start >= 10.0:
            n = sum(start <= t <= end for t in by_name.get(pod.removesuffix("-1"), []))
            rates.append(n / ((end - start) / 60))
    out["status_per_min_running"] = statistics.median(rates) if rates else float("nan")
    # Staleness: each record's time until the watch shows it (or a newer one) in status.
    lat: list[float] = []
    lat_launch: list[float] = []  # records logged while the first wave was still being launched
    lat_steady: list[float] = []  # records logged in the steady window
    unseen = 0
    emitted = stats.get("emitted") or {}
    for pod, times in emitted.items():
        seen = w.steps.get(pod.removesuffix("-1"), [])
        j = 0
        for i, t_emit in enumerate(times, start=1):
            while j < len(seen) and seen[j][1] < i:
                j += 1
            if j < len(seen):
                lat.append(max(seen[j][0] - t_emit, 0.0))
                if t_emit < t0:
                    lat_launch.append(lat[-1])
                elif t_emit <= t1:
                    lat_steady.append(lat[-1])
            else:
                unseen += 1
    out["stale_p50"], out["stale_p95"], out["stale_max"] = pct(lat, 50), pct(lat, 95), max(lat, default=float("nan"))
    out["records"], out["unseen"] = len(lat) + unseen, unseen
    out["stale_steady_p50"], out["stale_steady_p95"] = pct(lat_steady, 50), pct(lat_steady, 95)
    # The same staleness split at the operator's status write (its own trace: when the write carrying
    # record i returned): the operator's part, then the API's watch delivery to the bench.
    carried: dict[str, list[tuple[float, int]]] = {}
    for x in stats.get("trace") or []:
        if x[1] == "status" and len(x) > 4 and x[4] is not None:
            carried.setdefault(x[2], []).append((x[0], int(x[4])))
    op_part: list[float] = []
    delivery: list[float] = []
    for pod, times in emitted.items():
        name = pod.removesuffix("-1")
        done, seen = carried.get(name, []), w.steps.get(name, [])
        for i, t_emit in enumerate(times, start=1):
            t_write = next((t for t, steps in done if steps >= i), None)
            t_seen = next((t for t, steps in seen if steps >= i), None)
            if t_write is not None and t_emit <= t1:
                op_part.append(max(t_write - t_emit, 0.0))
                if t_seen is not None:
                    delivery.append(max(t_seen - t_write, 0.0))
    out["stale_op_p50"], out["stale_op_p95"] = pct(op_part, 50), pct(op_part, 95)
    out["delivery_p50"], out["delivery_p95"] = pct(delivery, 50), pct(delivery, 95)
    out["stale_launch_p95"] = pct(lat_launch, 95)
    # Hand-over: the k-th reporter termination frees the slot the k-th queued pod takes (FIFO).
    ended = sorted(e["reporter"] for e in (stats.get("ended") or {}).values() if "reporter" in e)
    later = added[args.running:]
    hand = [a - e for e, a in zip(ended, later, strict=False) if a != float("inf")]
    out["handover_p50"], out["handover_p95"] = pct(hand, 50), pct(hand, 95)
    out["handovers"] = len(hand)
    out["all_pods_s"] = added[-1] - t_created if added[-1] != float("inf") else float("nan")
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--running", type=int, default=50, help="engine maxRunning: dispatches running at once")
    ap.add_argument("--queued", type=int, default=None, help="more dispatches, queued (default running/2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-seconds", default="30:60", help="each pod's run time, uniform LOW:HIGH")
    ap.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress records")
    ap.add_argument("--clients", type=int, default=16, help="bench client connections creating dispatches")
    ap.add_argument("--timeout", type=float, default=None, help="bound on one run (s)")
    ap.add_argument("--pool-size", type=int, default=0,
                    help="experiment: the operator's API connection pool (its adapter's default is 32)")
    ap.add_argument("--status-interval", type=float, default=2.0,
                    help="the operator's Settings.status_patch_interval (progress throttle), s")
    ap.add_argument("--dump", default="", help="write each run's raw observations to DUMP.<run>.json")
    args = ap.parse_args()
    cancel_on_sigterm()
    os.environ["BENCH_STATUS_INTERVAL"] = str(args.status_interval)  # read by the operator process
    if args.queued is None:
        args.queued = args.running // 2
    high = float(args.run_seconds.split(":")[1])
    if args.timeout is None:
        args.timeout = 2 * high + 90
    if args.pool_size:
        print(f"EXPERIMENT: the operator's adapter connection pool set to {args.pool_size} (default 32)")
    print(f"operator at scale: {args.running} running (maxRunning) + {args.queued} queued, pods "
          f"{args.run_seconds} s, a progress record every ~{args.progress_interval:g} s, progress throttle "
          f"{args.status_interval:g} s; {args.repeats} repeats; "
          f"{host_load()}", flush=True)
    runs = []
    for i in range(args.repeats):
        res = await one_run(args, seed=i + 1)
        runs.append(res)
        print(f"  run {i + 1}: " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items() if k != "write_kinds"),
            flush=True)
        print("    operator writes/s by kind: " + ", ".join(
            f"{k} {v:.2f}" for k, v in (res.get("write_kinds") or {}).items()), flush=True)
    rows = [
        ("operator CPU, % of one core (steady window)", "op_cpu_pct", "{:.1f}"),
        ("cluster process CPU, % (emulator + kubelet)", "cluster_cpu_pct", "{:.1f}"),
        ("bench process CPU, % (watches, model service)", "bench_cpu_pct", "{:.1f}"),
        ("operator RSS, MB (max)", "rss_mb", "{:.0f}"),
        ("operator threads (max, /proc)", "threads", "{:.0f}"),
        ("  of which log-following threads (max)", "log_threads", "{:.0f}"),
        ("operator asyncio tasks (max)", "tasks", "{:.0f}"),
        ("  of which log-following tasks (max)", "follow_tasks", "{:.0f}"),
        ("operator TCP connections to the API (max)", "connections", "{:.0f}"),
        ("  bounded pools: connections in use (max)", "pool_busy_max", "{:.0f}"),
        ("  requests waiting for a pooled connection (max)", "pool_waiters_max", "{:.0f}"),
        ("operator loop lateness p95, s (1 s probe)", "loop_lag_p95", "{:.3f}"),
        ("operator loop lateness max, s", "loop_lag_max", "{:.3f}"),
        ("status patch round trip, mean in the window, ms", "patch_ms_mean", "{:.0f}"),
        ("  max over the run, ms", "patch_ms_max", "{:.0f}"),
        ("cluster process loop lateness p95, s (steady)", "cluster_lag_p95", "{:.3f}"),
        ("  max, s", "cluster_lag_max", "{:.3f}"),
        ("API writes/s by the operator (steady)", "writes_per_s", "{:.1f}"),
        ("status writes per running dispatch per minute", "status_per_dispatch_min", "{:.1f}"),
        ("  same, per dispatch while its agent streams (median)", "status_per_min_running", "{:.1f}"),
        ("progress staleness p50, s", "stale_p50", "{:.2f}"),
        ("progress staleness p95, s", "stale_p95", "{:.2f}"),
        ("progress staleness max, s", "stale_max", "{:.2f}"),
        ("  p50, records logged in the steady window, s", "stale_steady_p50", "{:.2f}"),
        ("  p95, records logged in the steady window, s", "stale_steady_p95", "{:.2f}"),
        ("  p95, records logged while the first wave launched, s", "stale_launch_p95", "{:.2f}"),
        ("  at the operator's write (record -> its status write) p50, s", "stale_op_p50", "{:.2f}"),
        ("  at the operator's write p95, s", "stale_op_p95", "{:.2f}"),
        ("  watch delivery (status write -> bench's watch) p50, s", "delivery_p50", "{:.2f}"),
        ("  watch delivery p95, s", "delivery_p95", "{:.2f}"),
        ("records never shown / records", "unseen", "{:.0f}"),
        ("slot hand-over p50, s (reporter ended -> next pod)", "handover_p50", "{:.2f}"),
        ("slot hand-over p95, s", "handover_p95", "{:.2f}"),
        ("steady window, s", "window_s", "{:.0f}"),
    ]
    print(f"figures, min/median/max over {len(runs)} runs ({args.running} running, {host_load()}):")
    for label, key, fmt in rows:
        extra = f" / {spread([r['records'] for r in runs], '{:.0f}')}" if key == "unseen" else ""
        print(f"  {label:52s} {spread([r.get(key, float('nan')) for r in runs], fmt)}{extra}")
    print(f"  dispatches finished: {[r['finished'] for r in runs]} of {args.running + args.queued}, "
          f"succeeded {[r['succeeded'] for r in runs]}; hand-overs measured {[r['handovers'] for r in runs]}")
    print(f"  progress throttle: Settings.status_patch_interval = {args.status_interval:g} s -> at most "
          f"{60 / args.status_interval:.0f} progress writes per dispatch per minute; records every "
          f"~{args.progress_interval:g} s -> "
          f"{60 / args.progress_interval:.0f} per minute")


if __name__ == "__main__":
    asyncio.run(main())
