"""Emulator cost per request as objects and requests accumulate (prints figures, asserts nothing).

The emulator routes requests directly (flat cost). A kmock reaction added by a test is tried
first with kmock's matching, which re-filters the whole request log for it on every request;
`trim_requests` keeps that bounded.
Run: .venv/bin/python -m bench.emulator [--objects 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import kmock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kube.client import BUILDDISPATCHES, resource_path
from tests.kube.emulator import Emulator, register_buildstudio


async def measure(trim: int | None, reaction: bool,
                  checkpoints: list[int]) -> list[tuple[int, float, float, float]]:
    """(objects, status PATCH p50 ms, GET p50 ms, LIST p50 ms) at each checkpoint."""
    rows: list[tuple[int, float, float, float]] = []
    async with Emulator(trim_requests=trim) as emulator, kmock.Server(emulator) as server:
        register_buildstudio(emulator)
        if reaction:
            emulator["get /healthz"] << b"ok"
        base = str(server.url).rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30.0)) as http:
            created = 0
            for target in checkpoints:
                while created < target:
                    body = {"metadata": {"name": f"d{created}"}, "spec": {"prompt": "x"}}
                    await http.post(resource_path(BUILDDISPATCHES, "default"), json=body)
                    created += 1

                async def timed(method: str, path: str, **kw: object) -> float:
                    started = time.perf_counter()
                    response = await http.request(method, path, **kw)  # type: ignore[arg-type]
                    response.raise_for_status()
                    return (time.perf_counter() - started) * 1000

                status_path = resource_path(BUILDDISPATCHES, "default", "d0", "status")
                patches = [await timed("PATCH", status_path, json={"status": {"n": i}},
                                       headers={"Content-Type": "application/merge-patch+json"})
                           for i in range(30)]
                gets = [await timed("GET", resource_path(BUILDDISPATCHES, "default", "d0")) for _ in range(30)]
                lists = [await timed("GET", resource_path(BUILDDISPATCHES, "default")) for _ in range(5)]
                rows.append((target, statistics.median(patches), statistics.median(gets), statistics.median(lists)))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=600)
    args = parser.parse_args()
    checkpoints = sorted({50, args.objects // 3, args.objects})
    print("reaction  objects  trim   status-PATCH p50 ms   GET p50 ms   LIST p50 ms")
    slow = [c for c in checkpoints if c <= 200]  # the unbounded case gets slow fast
    for reaction, trim, points in ((False, None, checkpoints), (True, None, slow), (True, 50, checkpoints)):
        for objects, patch, get, listing in await measure(trim, reaction, points):
            print(f"{'yes' if reaction else 'no':>8}  {objects:7d}  {trim or '-':>4}   "
                  f"{patch:19.2f}   {get:10.2f}   {listing:11.2f}")


if __name__ == "__main__":
    asyncio.run(main())
