"""Preflight figures on loopback. Run: .venv/bin/python bench/preflight.py

Prints: requests reaching the server for 100 simultaneous dispatches on one endpoint (goal 1),
p50/p95 of a warm verdict (cache hit + decide) and of a cold probe, and the time to an
`EndpointUnreachable` verdict (min/median/max) for each way an endpoint can hang: a refused port,
a black-holed SYN, an accept that never answers (plain and TLS), headers then a stalled body, a
body that drips, a name that does not resolve. Figures only; nothing here asserts timings.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from aiohttp import web

from buildstudio.adapters.modelservice.cache import PreflightCache
from buildstudio.adapters.modelservice.probe import new_client, probe
from buildstudio.core.observation import ProbeTarget
from buildstudio.core.preflight import decide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared hang servers live in tests/

from tests.preflight.hangs import HANG_CASES, hung_endpoint

MODEL = "qwen3-coder"
LISTING = {
    "object": "list",
    "data": [{"id": MODEL, "object": "model", "owned_by": "vllm", "root": "Qwen/Qwen3-Coder", "max_model_len": 131072}],
}


async def start_server(delay: float, hits: Counter[str]) -> tuple[web.AppRunner, str]:
    """A vLLM-shaped listing that takes `delay` seconds, like a busy real server."""

    async def models(request: web.Request) -> web.Response:
        hits[request.path] += 1
        await asyncio.sleep(delay)
        return web.json_response(LISTING)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(samples: list[float]) -> str:
    return f"p50 {pct(samples, 0.5) * 1000:.3f} ms, p95 {pct(samples, 0.95) * 1000:.3f} ms (n={len(samples)})"


async def coalescing(client: httpx.AsyncClient) -> None:
    for delay in (0.0, 0.05):
        hits: Counter[str] = Counter()
        runner, base = await start_server(delay, hits)
        try:
            cache = PreflightCache(client=client)
            started = time.monotonic()
            verdicts = [
                decide(o) for o in await asyncio.gather(*(cache.get(ProbeTarget(base), MODEL) for _ in range(100)))
            ]
            elapsed = time.monotonic() - started
            ok = sum(v.admit for v in verdicts)
            print(
                f"goal 1: 100 simultaneous dispatches, listing delay {delay * 1000:.0f} ms -> "
                f"{hits['/v1/models']} request(s) at the server, {cache.probes_started} probe(s), "
                f"{ok}/100 admitted, all answered in {elapsed * 1000:.1f} ms"
            )
            hits.clear()
            started = time.monotonic()
            await asyncio.gather(*(probe(ProbeTarget(base), MODEL, client=client) for _ in range(100)))
            uncached_ms = (time.monotonic() - started) * 1000
            print(f"        without the cache: {hits['/v1/models']} requests, {uncached_ms:.1f} ms")
        finally:
            await runner.cleanup()


async def latencies(client: httpx.AsyncClient) -> None:
    hits: Counter[str] = Counter()
    runner, base = await start_server(0.0, hits)
    try:
        target = ProbeTarget(base)
        cache = PreflightCache(client=client, ttl=3600)
        await cache.get(target, MODEL)
        warm: list[float] = []
        for _ in range(2000):
            started = time.perf_counter()
            decide(await cache.get(target, MODEL))
            warm.append(time.perf_counter() - started)
        print(f"warm verdict (cache hit + decide): {fmt_ms(warm)}")
        cold: list[float] = []
        for _ in range(200):
            started = time.perf_counter()
            decide(await probe(target, MODEL, client=client))
            cold.append(time.perf_counter() - started)
        print(f"cold verdict (probe over loopback + decide, shared client): {fmt_ms(cold)}")
    finally:
        await runner.cleanup()


def spread(samples: list[float]) -> str:
    return (
        f"min {min(samples):.3f} s, median {statistics.median(samples):.3f} s, max {max(samples):.3f} s "
        f"(n={len(samples)})"
    )


async def hangs(repeats: int) -> None:
    """Time to a verdict for every way an endpoint can hang, with the default bounds."""
    target = ProbeTarget("x")
    print(
        f"hung endpoints: time to verdict (connect {target.connect_timeout} s, read {target.read_timeout} s, "
        f"whole probe {target.total_timeout} s; goal <= 2.5 s; was 5.2 s for accept-silent)"
    )
    for case in HANG_CASES:
        took: list[float] = []
        for _ in range(repeats):
            async with hung_endpoint(case) as url:
                started = time.perf_counter()
                obs = await probe(ProbeTarget(url), MODEL)
                took.append(time.perf_counter() - started)
        verdict = decide(obs)
        met = "met" if max(took) <= 2.5 else "MISSED"
        print(f"  {case:<19} {spread(took)} -> {verdict.reason} ({obs.failure}) goal {met}")


async def main() -> None:
    print(f"host load (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    async with new_client() as client:
        await coalescing(client)
        await latencies(client)
    await hangs(int(os.environ.get("PREFLIGHT_BENCH_REPEATS", "5")))


if __name__ == "__main__":
    asyncio.run(main())
