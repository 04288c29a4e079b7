"""Reconcile benchmark: apply → pod-created latency, and operator RSS with a deep queue.

    .venv/bin/python bench/reconcile.py [--dispatches 200] [--rounds 3] [--queued 1000]

1. ``ours``: the Build Studio operator (a separate process, as deployed) against the kmock-based
   emulator of ``tests/kube`` (request log trimmed), a scripted model service for the preflight,
   200 BuildDispatches created in a burst; latency = pod ADDED on a watch minus the dispatch's POST.
2. ``bare``: a bare kopf operator whose ``on.create`` handler creates the same pod manifest.
3. RSS: the operator with ``maxRunning: 1`` and 1000 dispatches, once 999 are ``Queued``.

Series: one at a time (next POST as soon as the previous pod shows), 50 ms apart (the previous
dispatch's follow-up writes have settled), and a burst (all N POSTs at once over 16 connections).
The burst's ours/bare ratio is NOT a floor comparison: the bare operator makes 2 writes per dispatch
and ours about three times as many, and the emulator shares this process; the honest burst (emulator
in its own process, a floor making the operator's own writes, CPU per process) is bench/burst.py.
Per series it also prints the CPU per dispatch (operator, with its garbage collector's share and
longest collection; emulator + bench client) and the breakdown: when each API call of a dispatch
reached the emulator, median ms after its POST (``RecordingEmulator``). Then the paired series:
both operators up at once, each with its own emulator, dispatches alternating between them 50 ms
apart, so that the host's drift (the rounds run minutes apart) hits both sides alike.
Both operators run with kopf's default batching/watching settings and the same trimmed emulator;
the bare one has no finalizer, status, indexes or daemons, so it does 2 writes per dispatch.

Prints figures only (goals: ours/bare p50 ≤ 1.3x, RSS ≤ 250 MB); asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kmock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the checkout's (or BENCH_OPERATOR_SRC's) buildstudio on sys.path
    OPERATOR_SRC,
    PARENT_GUARD,
    SETTINGS,
    cancel_on_sigterm,
    child_env,
    cpu_seconds,
    dispatch,
    engine,
    pct,
    present_status,
    rss_mb,
    stop_process,
)
from tests.kube.client import kubeconfig_text
from tests.kube.emulator import Emulator, register_buildstudio

from buildstudio.commands.scripted_server import ScriptedServer

# As `buildstudio operator` runs it, with the benches' SETTINGS (egress by an admin CIDR: no DNS here).
OURS = """
import logging, os, kopf
from buildstudio.handlers import build_registry, tune_gc
from buildstudio.core.settings import EgressSettings, Settings
logging.basicConfig(level=logging.WARNING)
registry = build_registry(""" + SETTINGS + """, namespace="default", seed=False)
tune_gc()  # as `buildstudio operator` (run_operator) does
kopf.run(registry=registry, standalone=True, clusterwide=True)
"""

# Prepended to both operators: their collector's work, as (monotonic start, seconds) per collection,
# written at exit to $BENCH_GC_OUT (CLOCK_MONOTONIC is system-wide, so the bench can slice it by series).
COLLECTOR = """
import atexit, gc, json, os, time
_gc_log, _gc_t0 = [], [0.0]
def _gc_note(phase, info):
    if phase == "start":
        _gc_t0[0] = time.monotonic()
    else:
        _gc_log.append((_gc_t0[0], time.monotonic() - _gc_t0[0], info["generation"]))
gc.callbacks.append(_gc_note)
if os.environ.get("BENCH_GC_OUT"):
    atexit.register(lambda: open(os.environ["BENCH_GC_OUT"], "w").write(json.dumps(_gc_log)))
"""

BARE = """
import logging, kopf
from buildstudio.core import manifests as mf
from buildstudio.core.settings import SandboxDefaults
from buildstudio.adapters.kube import Kube
logging.basicConfig(level=logging.WARNING)
registry = kopf.OperatorRegistry()
state = {}

@kopf.on.login(registry=registry)
def login(**kw):
    return kopf.login_with_kubeconfig(**kw)

@kopf.on.startup(registry=registry)
def startup(**_):
    state["kube"] = Kube.from_config()

@kopf.on.cleanup(registry=registry)
async def cleanup(**_):
    await state["kube"].aclose()

@kopf.on.create("buildstudio.dpf.dev", "v1alpha1", "builddispatches", registry=registry)
async def create(name, namespace, uid, spec, **_):
    owner = mf.Owner(name=name, uid=uid, namespace=namespace)
    req = mf.SandboxRequest(owner=owner, attempt=1, engine=mf.EngineRuntime(name="opencode"),
                            repo_url=spec["repo"]["url"], model_base_url="http://127.0.0.1:1/v1")
    await state["kube"].create(mf.sandbox_pod(req, SandboxDefaults()))

kopf.run(registry=registry, standalone=True, clusterwide=True)
"""


CHILD_SUFFIX = re.compile(r"-(\d+|config|egress|patch)$")


class RecordingEmulator(Emulator):
    """The emulator, timing each request per dispatch: the breakdown of where the time goes."""

    calls: dict[str, list[tuple[float, str]]]

    async def _handle(self, request: kmock.Request) -> Any:
        start = time.perf_counter()
        try:
            return await super()._handle(request)
        finally:
            self._note(request, start)

    def _note(self, request: kmock.Request, start: float) -> None:
        if not hasattr(self, "calls"):
            self.calls = {}
        res = request.resource
        plural = res.plural if res is not None else None
        if plural not in ("builddispatches", "pods", "configmaps", "networkpolicies", "events"):
            return
        if request.action in (kmock.action.WATCH, kmock.action.LIST):
            return
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        body = request.data if isinstance(request.data, dict) else {}
        if plural == "events":
            owner = str((body.get("involvedObject") or {}).get("name") or "")
            what = f"POST event {body.get('reason', '')}"
        elif plural == "builddispatches":
            owner = str(request.name or (body.get("metadata") or {}).get("name") or "")
            if request.name is None:
                what = "POST builddispatch (client)"
            elif request.subresource == "status":
                what = f"{method} builddispatch/status"
            else:
                keys = ",".join(sorted(body)) if method == "PATCH" else ""
                what = f"{method} builddispatch {keys}".rstrip()
        else:
            name = str(request.name or (body.get("metadata") or {}).get("name") or "")
            owner = CHILD_SUFFIX.sub("", name)
            what = f"{method} {plural[:-1]}"
        if owner:
            self.calls.setdefault(owner, []).append((start, what))


def breakdown(
    calls: dict[str, list[tuple[float, str]]], posted: dict[str, float], pods_seen: dict[str, float]
) -> list[str]:
    """Median start of each call per dispatch, in ms after its POST, in call order."""
    offsets: dict[str, list[float]] = {}
    order: dict[str, list[float]] = {}
    for name, t0 in posted.items():
        seen: dict[str, int] = {}
        for t, what in sorted(calls.get(name, [])):
            if what == "POST builddispatch (client)":
                continue
            seen[what] = seen.get(what, 0) + 1
            key = what if seen[what] == 1 else f"{what} #{seen[what]}"
            offsets.setdefault(key, []).append((t - t0) * 1000)
        if f"{name}-1" in pods_seen:
            offsets.setdefault("pod ADDED seen on the bench's watch", []).append((pods_seen[f"{name}-1"] - t0) * 1000)
    for key, vals in offsets.items():
        order[key] = [statistics.median(vals)]
    lines = []
    for key in sorted(offsets, key=lambda k: order[k][0]):
        vals = offsets[key]
        lines.append(
            f"    {statistics.median(vals):8.1f} ms  (p95 {pct([v / 1000 for v in vals], 95) * 1000:8.1f})  "
            f"{key}  [{len(vals)}/{len(posted)}]"
        )
    return lines


class Bench:
    def __init__(self, http: httpx.AsyncClient, kubeconfig: Path) -> None:
        self.http = http
        self.kubeconfig = kubeconfig
        self.pods_seen: dict[str, float] = {}
        self.posted: dict[str, dict[str, float]] = {"sequential": {}, "settled": {}, "latencies": {}, "paired": {}}
        # The operator's stderr (warnings and errors only), for when a figure looks wrong.
        self.log = (Path(tempfile.gettempdir()) / "buildstudio-bench-operator.log").open("ab")

    async def start_operator(self, code: str, gc_out: Path) -> asyncio.subprocess.Process:
        env = dict(child_env(), KUBECONFIG=str(self.kubeconfig), PYTHONPATH=OPERATOR_SRC)
        env["BENCH_GC_OUT"] = str(gc_out)
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PARENT_GUARD + COLLECTOR + code,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )

    async def watch_pods(self) -> None:
        params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "600"}
        async with self.http.stream("GET", "/api/v1/pods", params=params, timeout=httpx.Timeout(5, read=700)) as r:
            async for line in r.aiter_lines():
                if line.strip():
                    ev = json.loads(line)
                    if ev.get("type") == "ADDED":
                        self.pods_seen.setdefault(ev["object"]["metadata"]["name"], time.perf_counter())

    async def one_by_one(self, n: int, prefix: str, bound: float, *, series: str, settle: float = 0.0) -> list[float]:
        """Each dispatch after the previous one's pod (plus ``settle`` seconds): no queue of new
        dispatches. Without ``settle``, the previous dispatch's follow-up writes (kopf's annotation
        and finalizer patches, the event, the daemon's first status) still overlap the next one."""
        out: list[float] = []
        for i in range(n):
            name = f"{prefix}-{i}"
            r = await self.http.post(
                "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches", json=dispatch(name)
            )
            r.raise_for_status()
            posted = time.perf_counter()
            self.posted[series][name] = posted
            deadline = posted + bound
            while f"{name}-1" not in self.pods_seen and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            if f"{name}-1" not in self.pods_seen:
                print(f"no pod for {name} within {bound}s: stopping this series", file=sys.stderr)
                break
            out.append(self.pods_seen[f"{name}-1"] - posted)
            if settle:
                await asyncio.sleep(settle)
        return sorted(out)

    async def burst(self, n: int, prefix: str, bound: float, clients: int = 16) -> list[float]:
        """All N POSTs at once over ``clients`` connections (it used to post one after another,
        awaiting each: a stream at the client's pace, not a burst). Latency per dispatch is from
        its own POST's answer to its pod ADDED."""
        posted: dict[str, float] = {}
        sem = asyncio.Semaphore(clients)

        async def post(name: str) -> None:
            async with sem:
                r = await self.http.post(
                    "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches", json=dispatch(name)
                )
            r.raise_for_status()
            posted[name] = time.perf_counter()
            self.posted["latencies"][name] = posted[name]

        await asyncio.gather(*(post(f"{prefix}-{i}") for i in range(n)))
        deadline = time.perf_counter() + bound
        while time.perf_counter() < deadline:
            if all(f"{name}-1" in self.pods_seen for name in posted):
                break
            await asyncio.sleep(0.05)
        return sorted(self.pods_seen[f"{name}-1"] - t for name, t in posted.items() if f"{name}-1" in self.pods_seen)


@dataclass
class Env:
    """One operator with its own emulator, ready for dispatches."""

    bench: Bench
    http: httpx.AsyncClient
    proc: asyncio.subprocess.Process
    emulator: RecordingEmulator
    gc_log: list[tuple[float, float, int]] = field(default_factory=list)  # read when the operator exits

    def collections(self, since: float, until: float) -> tuple[float, float]:
        """The operator's collector time between two ``time.monotonic()`` readings: (total, longest)."""
        spans = [seconds for start, seconds, _gen in self.gc_log if since <= start < until]
        return sum(spans), max(spans, default=0.0)


@contextlib.asynccontextmanager
async def environment(code: str, *, ours: bool, max_running: int, model_url: str) -> AsyncIterator[Env]:
    """An emulator (with the engine, for ours), a pod watch and the operator, started."""
    async with (
        RecordingEmulator(trim_requests=100) as emulator,
        kmock.Server(emulator, host="127.0.0.1") as server,
    ):
        register_buildstudio(emulator)
        url = str(server.url).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="bs-bench-reconcile-") as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(kubeconfig_text(url))
            gc_out = Path(tmp) / "gc.json"
            async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10.0)) as http:
                if ours:
                    await http.post(
                        "/apis/buildstudio.dpf.dev/v1alpha1/buildengines", json=engine(model_url, max_running)
                    )
                    await http.patch(
                        "/apis/buildstudio.dpf.dev/v1alpha1/buildengines/opencode/status",
                        json={"status": present_status()},
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                bench = Bench(http, kubeconfig)
                watcher = asyncio.create_task(bench.watch_pods())
                proc = await bench.start_operator(code, gc_out)
                env = Env(bench, http, proc, emulator)
                try:
                    await asyncio.sleep(3.0)  # start-up (imports, login, initial listings)
                    yield env
                finally:
                    await stop_process(proc, signal.SIGTERM, 15)
                    if gc_out.exists():
                        env.gc_log = [tuple(row) for row in json.loads(gc_out.read_text())]
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher


async def run_phase(code: str, n: int, *, ours: bool, max_running: int, rss_wait: bool = False) -> dict[str, Any]:
    async with (
        ScriptedServer([{"text": "x"}]) as model,
        environment(code, ours=ours, max_running=max_running, model_url=model.base_url) as env,
    ):
        bench, http, proc = env.bench, env.http, env.proc
        if rss_wait:
            for i in range(n):
                r = await http.post(
                    "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches", json=dispatch(f"q-{i}")
                )
                r.raise_for_status()
            t0 = time.perf_counter()
            queued = 0
            while time.perf_counter() - t0 < 600:
                r = await http.get("/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches")
                items = r.json()["items"]
                queued = sum((i.get("status") or {}).get("phase") == "Queued" for i in items)
                if queued >= n - max_running:
                    break
                await asyncio.sleep(1.0)
            return {"queued": queued, "seconds": time.perf_counter() - t0, "rss_mb": rss_mb(proc.pid)}
        marks = [(time.monotonic(), cpu_seconds(proc.pid), time.process_time())]
        seq = await bench.one_by_one(n, "s", bound=10, series="sequential")
        marks.append((time.monotonic(), cpu_seconds(proc.pid), time.process_time()))
        settled = await bench.one_by_one(n, "q", bound=10, series="settled", settle=0.05)
        marks.append((time.monotonic(), cpu_seconds(proc.pid), time.process_time()))
        lat = await bench.burst(n, "d", bound=300)
        await asyncio.sleep(2.0)  # the burst's follow-up writes, for the CPU figures
        marks.append((time.monotonic(), cpu_seconds(proc.pid), time.process_time()))
        rss = rss_mb(proc.pid)
        calls = getattr(env.emulator, "calls", {})
    keys = ("sequential", "settled", "latencies")
    return {
        "latencies": lat,
        "sequential": seq,
        "settled": settled,
        # per series: (operator CPU, emulator + bench CPU, operator's collector total, longest collection)
        "cpu": {
            key: (b[1] - a[1], b[2] - a[2], *env.collections(a[0], b[0]))
            for key, a, b in zip(keys, marks[:-1], marks[1:], strict=True)
        },
        "rss_mb": rss,
        "breakdown": {key: breakdown(calls, posted, bench.pods_seen) for key, posted in bench.posted.items()},
    }


async def paired(n: int, settle: float = 0.05) -> tuple[list[float], list[float]]:
    """Both operators up at once, each with its own emulator; dispatches alternate between them,
    each after the previous one's pod plus ``settle`` seconds. Load drifting on a shared machine
    then hits both sides alike (the rounds above run minutes apart)."""
    async with (
        ScriptedServer([{"text": "x"}]) as model,
        environment(BARE, ours=False, max_running=n, model_url=model.base_url) as bare,
        environment(OURS, ours=True, max_running=1000, model_url=model.base_url) as ours,
    ):
        out: tuple[list[float], list[float]] = ([], [])
        for i in range(n):
            order = ((0, bare), (1, ours)) if i % 2 == 0 else ((1, ours), (0, bare))
            for side, env in order:
                got = await env.bench.one_by_one(1, f"p{i}", bound=10, series="paired", settle=settle)
                out[side].extend(got)
        return sorted(out[0]), sorted(out[1])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dispatches", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="bare/ours pairs, alternating which goes first")
    ap.add_argument("--queued", type=int, default=1000)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-paired", action="store_true")
    args = ap.parse_args()
    cancel_on_sigterm()  # the operators run in their own sessions: the finally blocks stop them
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for i in range(args.rounds):
        # Alternate the order: on a shared machine, load drifts between the two phases of a round.
        if i % 2 == 0:
            bare = await run_phase(BARE, args.dispatches, ours=False, max_running=args.dispatches)
            ours = await run_phase(OURS, args.dispatches, ours=True, max_running=1000)  # the schema's maximum
        else:
            ours = await run_phase(OURS, args.dispatches, ours=True, max_running=1000)
            bare = await run_phase(BARE, args.dispatches, ours=False, max_running=args.dispatches)
        rounds.append((bare, ours))
    modes = (("one at a time", "sequential"), ("50 ms apart", "settled"), ("burst", "latencies"))
    n = args.dispatches
    print(f"apply→pod-created for {n} dispatches per series, {args.rounds} rounds (median of the rounds' figures)")
    for mode, key in modes:
        figures: dict[str, dict[str, float]] = {}
        for label, side in (("bare kopf handler", 0), ("buildstudio operator", 1)):
            per_round = [(pct(r[side][key], 50), pct(r[side][key], 95)) for r in rounds]
            p50 = statistics.median(v[0] for v in per_round)
            p95 = statistics.median(v[1] for v in per_round)
            figures[label] = {"p50": p50, "p95": p95}
            shown = ", ".join(f"{a * 1000:.1f}/{b * 1000:.1f}" for a, b in per_round)
            pods = min(len(r[side][key]) for r in rounds)
            print(
                f"{mode:13s} {label:22s} pods ≥{pods}/{n}  p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"
                f"  (rounds p50/p95 ms: {shown})"
            )
        bare_f, ours_f = figures["bare kopf handler"], figures["buildstudio operator"]
        print(
            f"{mode:13s} ratio ours/bare: p50 {ours_f['p50'] / bare_f['p50']:.2f}x  "
            f"p95 {ours_f['p95'] / bare_f['p95']:.2f}x  "
            + ("(not a floor: bare makes 2 writes a dispatch; see bench/burst.py)" if key == "latencies"
               else "(goal ≤ 1.3x)")
        )
    bare, ours = rounds[-1]
    print("Last round, in detail:")
    for mode, key in modes:
        for label, res in (("bare kopf handler", bare), ("buildstudio operator", ours)):
            op_cpu, bench_cpu, gc_total, gc_longest = res["cpu"][key]
            print(
                f"  {mode}, {label}: CPU per dispatch: operator {op_cpu / n * 1000:.1f} ms "
                f"(of which its garbage collector {gc_total / n * 1000:.2f} ms; longest collection "
                f"{gc_longest * 1000:.0f} ms), emulator + bench client {bench_cpu / n * 1000:.1f} ms"
            )
            print(f"  {mode}, {label}: API calls per dispatch (median start after its POST)")
            print("\n".join(res["breakdown"][key]))
    print(f"RSS after the runs: bare {bare['rss_mb']:.0f} MB, buildstudio {ours['rss_mb']:.0f} MB")
    if not args.skip_paired:
        bare_lat, ours_lat = await paired(n)
        print(f"paired: both operators up at once, {n} dispatches each, alternating, 50 ms apart")
        for label, lat in (("bare kopf handler", bare_lat), ("buildstudio operator", ours_lat)):
            print(f"paired        {label:22s} pods {len(lat)}/{n}  p50 {pct(lat, 50) * 1000:7.1f} ms  "
                  f"p95 {pct(lat, 95) * 1000:7.1f} ms")
        print(
            f"paired        ratio ours/bare: p50 {pct(ours_lat, 50) / pct(bare_lat, 50):.2f}x  "
            f"p95 {pct(ours_lat, 95) / pct(bare_lat, 95):.2f}x  (goal ≤ 1.3x)"
        )
    if not args.skip_rss:
        res = await run_phase(OURS, args.queued, ours=True, max_running=1, rss_wait=True)
        print(
            f"operator RSS with {args.queued} dispatches ({res['queued']} Queued after {res['seconds']:.0f} s): "
            f"{res['rss_mb']:.0f} MB (goal ≤ 250 MB)"
        )


if __name__ == "__main__":
    asyncio.run(main())
