"""A real burst: N dispatches created at once; time until every pod exists, operator vs a floor doing the same writes.

    nice .venv/bin/python bench/burst.py [--dispatches 200] [--repeats 3] [--clients 16] [--precreated]

The API emulator (``tests/kube``) runs in its own process (``bench/_cluster.py``), the operator in
another (real kopf, the project's handlers, default Settings but an egress CIDR: no DNS here,
engine maxRunning 1000 so that every dispatch gets its pod), this bench in a third. The N POSTs go
out together: ``asyncio.gather`` over a pool of ``--clients`` connections. Measured from the first
POST: when the bench's pod watch has seen every pod ADDED (and pods/s), and when its dispatch
watch has seen every dispatch with a status; CPU seconds of each process over the burst.

The floor: the same emulator process, no operator; for every dispatch, as soon as its POST returns,
this bench replays the very writes the operator made for one dispatch in the operator run (recorded
by the emulator: the finalizer/annotation patches, the status patches, the pod, its ConfigMap and
NetworkPolicy, the events), with the names and uid substituted, in the operator's order, over its own
pool of ``--clients`` connections. So the floor is what the API server must do for those writes
with a perfectly quick, idle-free client: no reads, watches or kopf. Goal (#18): operator time to
the last pod ≤ 2x the floor's.

``--precreated`` adds a run where the N dispatches exist before the operator starts: time from
the operator's start (process spawn) to the last pod.
Each figure: min/median/max over the repeats (rounds alternate which side runs first). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BD_PATH,
    MODEL,
    cancel_on_sigterm,
    cluster,
    cpu_seconds,
    dispatch,
    host_load,
    operator,
    pct,
    setup_engine,
    spread,
)

from buildstudio.commands.scripted_server import ScriptedServer

RECORD = "burst-0000"  # names are zero-padded: substituting one never hits a prefix of another


class Seen:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.pods: dict[str, float] = {}
        self.status: dict[str, float] = {}

    async def _watch(self, path: str, on: Any) -> None:
        params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "900"}
        while True:
            with contextlib.suppress(httpx.HTTPError):
                async with self.http.stream("GET", path, params=params, timeout=httpx.Timeout(5, read=960)) as r:
                    async for line in r.aiter_lines():
                        if line.strip():
                            on(json.loads(line), time.perf_counter())
            await asyncio.sleep(0.2)

    def _pod(self, ev: dict[str, Any], now: float) -> None:
        if ev.get("type") == "ADDED":
            self.pods.setdefault(ev["object"]["metadata"]["name"], now)

    def _bd(self, ev: dict[str, Any], now: float) -> None:
        obj = ev.get("object") or {}
        if obj.get("status"):
            self.status.setdefault(obj["metadata"]["name"], now)

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._watch("/api/v1/pods", self._pod)),
                asyncio.create_task(self._watch(BD_PATH, self._bd))]


async def create_all(http: httpx.AsyncClient, names: list[str], clients: int,
                     then: Any = None) -> dict[str, str]:
    """POST every dispatch at once over ``clients`` connections; uids by name."""
    sem = asyncio.Semaphore(clients)
    uids: dict[str, str] = {}

    async def one(name: str) -> None:
        async with sem:
            r = await http.post(BD_PATH, json=dispatch(name))
            r.raise_for_status()
            uids[name] = r.json()["metadata"]["uid"]
        if then is not None:
            await then(name, uids[name])

    await asyncio.gather(*(one(n) for n in names))
    return uids


async def wait_all(seen: Seen, names: list[str], bound: float) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if all(f"{n}-1" in seen.pods for n in names) and all(n in seen.status for n in names):
            return True
        await asyncio.sleep(0.05)
    return False


def figures(seen: Seen, names: list[str], t0: float) -> dict[str, float]:
    pods = [seen.pods[f"{n}-1"] - t0 for n in names if f"{n}-1" in seen.pods]
    status = [seen.status[n] - t0 for n in names if n in seen.status]
    last_pod = max(pods) if len(pods) == len(names) else float("nan")
    return {
        "last_pod": last_pod,
        "pods_per_s": len(names) / last_pod if last_pod == last_pod else float("nan"),
        "pod_p50": pct(pods, 50),
        "last_status": max(status) if len(status) == len(names) else float("nan"),
        "pods": len(pods),
    }


async def operator_run(args: argparse.Namespace, names: list[str], *, precreated: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bs-bench-burst-") as tmpdir:
        tmp = Path(tmpdir)
        async with (
            ScriptedServer([{"text": "x"}], model=MODEL) as model,
            cluster(tmp, "--record-name", RECORD) as cl,
        ):
            limits = httpx.Limits(max_connections=args.clients + 4)
            async with httpx.AsyncClient(base_url=cl.url, timeout=httpx.Timeout(30.0), limits=limits) as http:
                await setup_engine(http, model.base_url, 1000)
                seen = Seen(http)
                tasks = seen.start()
                uids: dict[str, str] = {}
                try:
                    if precreated:
                        uids = await create_all(http, names, args.clients)
                        await asyncio.sleep(1.0)
                    c0, b0 = cpu_seconds(cl.proc.pid), time.process_time()
                    t_spawn = time.perf_counter()
                    async with operator(tmp, cl.url) as op:
                        if not precreated:
                            await asyncio.sleep(4.0)  # imports, login, the initial listings
                            c0, b0, o0 = cpu_seconds(cl.proc.pid), time.process_time(), cpu_seconds(op.proc.pid)
                            t0 = time.perf_counter()
                            uids = await create_all(http, names, args.clients)
                        else:
                            t0, o0 = t_spawn, 0.0
                        done = await wait_all(seen, names, args.timeout)
                        t_end = time.perf_counter()
                        cpu = {"operator": cpu_seconds(op.proc.pid) - o0, "emulator": cpu_seconds(cl.proc.pid) - c0,
                               "bench": time.process_time() - b0}
                        await asyncio.sleep(2.0)  # the follow-up writes land before the emulator's stats end
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        stats = cl.stats or {}
    writes = [w for w in stats.get("writes", []) if w[1] == "operator"]
    out = figures(seen, names, t0) | {"cpu": cpu, "done": done, "wall": t_end - t0}
    out["writes_per_dispatch"] = len(writes) / len(names)
    out["recorded"] = stats.get("recorded", [])
    out["record_uid"] = uids.get(RECORD, "")
    return out


def replay_plan(recorded: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The recorded writes, made replayable: no resourceVersion preconditions, events by generateName."""
    plan = []
    for req in recorded:
        body = req["body"]
        ctype = req["content_type"] or "application/json"
        if isinstance(body, list):  # a JSON patch: drop its `test` preconditions
            body = [op for op in body if op.get("op") != "test"]
        elif isinstance(body, dict):
            meta = body.get("metadata")
            if isinstance(meta, dict):
                meta.pop("resourceVersion", None)
                if "/events" in req["path"] and req["method"] == "POST":
                    meta.pop("name", None)
                    meta["generateName"] = f"{RECORD}-"
        plan.append({"method": req["method"], "path": req["path"], "query": req["query"], "ctype": ctype,
                     "text": json.dumps(body)})
    return [dict(p, uid=uid) for p in plan]


async def floor_run(args: argparse.Namespace, names: list[str], plan: list[dict[str, Any]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bs-bench-floor-") as tmpdir:
        tmp = Path(tmpdir)
        async with cluster(tmp) as cl:
            limits = httpx.Limits(max_connections=args.clients + 4)
            # The floor's writer: aiohttp, as the operator's own client, with as many connections as the bench.
            async with (
                httpx.AsyncClient(base_url=cl.url, timeout=httpx.Timeout(30.0), limits=limits) as http,
                aiohttp.ClientSession(cl.url, connector=aiohttp.TCPConnector(limit=args.clients),
                                      timeout=aiohttp.ClientTimeout(total=30)) as writer,
            ):
                await setup_engine(http, "http://127.0.0.1:1/v1", 1000)
                seen = Seen(http)
                tasks = seen.start()
                errors: list[int] = []

                async def writes(name: str, uid: str) -> None:
                    for p in plan:
                        text = p["text"].replace(RECORD, name).replace(p["uid"], uid) if p["uid"] else p["text"]
                        async with writer.request(p["method"], p["path"].replace(RECORD, name), params=p["query"],
                                                  data=text.encode(), headers={"Content-Type": p["ctype"]}) as r:
                            await r.read()
                            if r.status >= 300:
                                errors.append(r.status)

                try:
                    await asyncio.sleep(1.0)
                    c0, b0 = cpu_seconds(cl.proc.pid), time.process_time()
                    t0 = time.perf_counter()
                    await create_all(http, names, args.clients, then=writes)
                    done = await wait_all(seen, names, args.timeout)
                    t_end = time.perf_counter()
                    cpu = {"operator": 0.0, "emulator": cpu_seconds(cl.proc.pid) - c0,
                           "bench": time.process_time() - b0}
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        stats = cl.stats or {}
    out = figures(seen, names, t0) | {"cpu": cpu, "done": done, "wall": t_end - t0}
    floor_writes = [w for w in stats.get("writes", []) if w[3] != "buildengines"]
    out["writes_per_dispatch"] = len(floor_writes) / len(names) - 1  # less the bench's own POST
    out["errors"] = len(errors)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dispatches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16, help="connections the bench (and the floor's writer) use")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on one burst (s)")
    ap.add_argument("--precreated", action="store_true", help="also: dispatches created while the operator is down")
    args = ap.parse_args()
    cancel_on_sigterm()
    names = [f"burst-{i:04d}" for i in range(args.dispatches)]
    print(f"burst of {args.dispatches} dispatches over {args.clients} connections, {args.repeats} repeats; "
          f"{host_load()}", flush=True)
    ours: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    pre: list[dict[str, Any]] = []
    plan: list[dict[str, Any]] = []
    for i in range(args.repeats):
        # The floor needs a recording first; afterwards the order alternates (load drifts on a shared host).
        if i == 0 or i % 2 == 1:
            ours.append(await operator_run(args, names))
            plan = plan or replay_plan(ours[-1]["recorded"], ours[-1]["record_uid"])
            floors.append(await floor_run(args, names, plan))
        else:
            floors.append(await floor_run(args, names, plan))
            ours.append(await operator_run(args, names))
        for label, r in (("operator", ours[-1]), ("floor", floors[-1])):
            print(f"  round {i + 1} {label:8s}: pods {r['pods']}/{args.dispatches}, last pod {r['last_pod']:.2f} s, "
                  f"last first-status {r['last_status']:.2f} s, writes/dispatch {r['writes_per_dispatch']:.1f}, CPU s "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items())
                  + (f", floor write errors {r['errors']}" if "errors" in r else ""), flush=True)
        if args.precreated:
            pre.append(await operator_run(args, names, precreated=True))
            print(f"  round {i + 1} precreated: last pod {pre[-1]['last_pod']:.2f} s after the operator's spawn",
                  flush=True)
    kinds: dict[str, int] = {}
    for req in plan:
        key = f"{req['method']} {req['path'].split('/')[-1] if RECORD not in req['path'].split('/')[-1] else ''}"
        kinds[key] = kinds.get(key, 0) + 1
    print(f"the operator's writes for one dispatch, replayed by the floor ({len(plan)}): "
          + "; ".join(f"{r['method']} {r['path'].replace('/apis/buildstudio.dpf.dev/v1alpha1', '')}" for r in plan))
    print(f"figures, min/median/max over {args.repeats} repeats ({host_load()}):")
    rows = [("time to the last pod, s", "last_pod", "{:.2f}"), ("pods per second", "pods_per_s", "{:.1f}"),
            ("pod ADDED p50 after the first POST, s", "pod_p50", "{:.2f}"),
            ("time to every dispatch's first status, s", "last_status", "{:.2f}"),
            ("API writes per dispatch", "writes_per_dispatch", "{:.1f}")]
    for label, key, fmt in rows:
        print(f"  {label:42s} operator {spread([r[key] for r in ours], fmt):>18s}   floor "
              f"{spread([r[key] for r in floors], fmt):>18s}")
    ratios = [o["last_pod"] / f["last_pod"] for o, f in zip(ours, floors, strict=True)]
    print(f"  {'ratio time to last pod, operator/floor':42s} {spread(ratios, '{:.2f}')} (per round; goal <= 2x)")
    for who in ("operator", "emulator", "bench"):
        print(f"  CPU s during the burst, {who:9s}: operator run {spread([r['cpu'][who] for r in ours], '{:.1f}')}"
              f"   floor run {spread([r['cpu'][who] for r in floors], '{:.1f}')}")
    if pre:
        print(f"  precreated, operator spawn -> last pod, s: {spread([r['last_pod'] for r in pre])}  "
              f"(first status {spread([r['last_status'] for r in pre])})")


if __name__ == "__main__":
    asyncio.run(main())
