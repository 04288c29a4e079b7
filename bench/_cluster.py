"""The benches' cluster, in its own process: the API emulator (``tests/kube``), optionally the kubelet
fixture playing every sandbox pod with a scripted, paced run, and a record of the writes it served.

    python bench/_cluster.py --stats OUT.json [--kubelet --run-seconds 15:30 --progress-interval 2]
        [--record-name bd-0000]

Prints ``URL <url>`` on stdout once it serves; on SIGTERM (or SIGINT) it stops the kubelet, writes
``OUT.json`` and exits. Running apart from the bench and the operator, its CPU is its own
(``/proc/<pid>/stat``): what an apiserver (here: the emulator + the node) costs, separable from the
operator's.

What the stats hold:
- ``writes``: every non-GET request as ``[wall time, client, method, plural, subresource, name]``;
  ``client`` is ``operator`` (any client but httpx: kopf's and the adapter's aiohttp sessions) or
  ``other`` (the kubelet's and the bench's httpx clients).
- ``emitted``: per pod, the wall time of each progress record the agent container logged
  (record ``i`` carries ``steps = i``).
- ``ended``: per pod, when its agent finished and when its reporter terminated (wall time).
- ``lateness``: every 0.2 s, how late the process's loop woke (``[wall time, seconds]``): when the
  emulator is the one falling behind, not the operator.
- ``recorded``: the ordered writes (method, path, content type, body) the operator made for the
  dispatch ``--record-name`` and its children: what the floor of ``bench/burst.py`` replays.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, os.environ.get("BENCH_OPERATOR_SRC") or str(REPO / "operator"))

from tests.kube.client import Kube, kubeconfig_text  # noqa: E402
from tests.kube.emulator import Emulator, register_buildstudio  # noqa: E402
from tests.kube.kubelet import Kubelet, PodScript, _Container, _PodRun, _wait_event  # noqa: E402

from buildstudio.protocol import records  # noqa: E402
from buildstudio.protocol.records import EventRecord, Outcome, Patch, ProgressRecord, ResultRecord  # noqa: E402

CHILD_SUFFIXES = ("-config", "-egress", "-patch")


def result_line(diff: str = "+print('hello')\n") -> str:
    raw = diff.encode()
    patch = Patch(data=base64.b64encode(gzip.compress(raw)).decode(), bytes=len(raw),
                  sha256=hashlib.sha256(raw).hexdigest())
    return records.dump(ResultRecord(outcome=Outcome.COMPLETED, message="done", phase="build",
                                     diff=diff, diff_bytes=len(raw), patch=patch))


class CountingEmulator(Emulator):
    """The emulator, noting each write it serves (and, for one dispatch, the whole request)."""

    writes: list[list[Any]]
    recorded: list[dict[str, Any]]
    record_name: str = ""

    async def _handle(self, request: kmock.Request) -> Any:
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        if method != "GET":
            self._note(request, method)
        return await super()._handle(request)

    def _note(self, request: kmock.Request, method: str) -> None:
        if not hasattr(self, "writes"):
            self.writes, self.recorded = [], []
        agent = str(request.headers.get("User-Agent", ""))
        client = "other" if "httpx" in agent else "operator"
        res = request.resource
        plural = res.plural if res is not None else ""
        body = request.data if isinstance(request.data, (dict, list)) else None
        name = request.name or (body.get("metadata") or {}).get("name") if isinstance(body, dict) else request.name
        self.writes.append([time.time(), client, method, plural, request.subresource or "", str(name or "")])
        if client == "operator" and self.record_name and plural in (
            "builddispatches", "pods", "configmaps", "networkpolicies", "events"
        ):
            owner = str(name or "")
            if plural == "events" and isinstance(body, dict):
                owner = str((body.get("involvedObject") or {}).get("name") or "")
            for suffix in ("-1", *CHILD_SUFFIXES):
                owner = owner.removesuffix(suffix)
            if owner == self.record_name:
                self.recorded.append({
                    "method": method, "path": request.url.path, "query": dict(request.params),
                    "content_type": str(request.headers.get("Content-Type", "")), "body": body,
                })


class PacedKubelet(Kubelet):
    """Every sandbox pod's agent logs progress records at a steady pace (with jitter) for a
    random run time, then the reporter logs one result; the other containers complete at once."""

    def __init__(self, *args: Any, run_seconds: tuple[float, float], interval: float, events_every: int,
                 seed: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.run_seconds = run_seconds
        self.interval = interval
        self.events_every = events_every
        self.rng = random.Random(seed)
        self.emitted: dict[str, list[float]] = {}
        self.ended: dict[str, dict[str, float]] = {}
        self._pod_of: dict[int, str] = {}
        self.default = PodScript.canned([])

    async def _run_container(self, run: _PodRun, c: _Container, stop: asyncio.Event) -> int | None:
        self._pod_of[id(c)] = run.name
        return await super()._run_container(run, c, stop)

    async def _play_canned(self, c: _Container, stop: asyncio.Event) -> int:
        pod = self._pod_of.get(id(c), "")
        if c.name == "agent":
            times = self.emitted.setdefault(pod, [])
            deadline = time.monotonic() + self.rng.uniform(*self.run_seconds)
            i = 0
            while time.monotonic() < deadline:
                i += 1
                c.log.append(records.dump(ProgressRecord(
                    stage="running", steps=i, tool_calls=i // 2, tokens=180 * i, elapsed_seconds=i * self.interval,
                    last_tool=f"edit src/module_{i % 7}.py", message=f"step {i}")))
                times.append(time.time())
                if self.events_every and i % self.events_every == 0:
                    c.log.append(records.dump(EventRecord(type="tool", message=f"edit src/module_{i % 7}.py",
                                                          ts=time.time())))
                pause = self.interval * self.rng.uniform(0.7, 1.3)
                if await _wait_event(stop, pause):
                    return 143
            self.ended.setdefault(pod, {})["agent"] = time.time()
            return 0
        if c.name == "reporter":
            c.log.append(result_line())
            self.ended.setdefault(pod, {})["reporter"] = time.time()
            return 0
        return await super()._play_canned(c, stop)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stats", required=True)
    ap.add_argument("--kubelet", action="store_true")
    ap.add_argument("--run-seconds", default="15:30")
    ap.add_argument("--progress-interval", type=float, default=2.0)
    ap.add_argument("--events-every", type=int, default=3)
    ap.add_argument("--record-name", default="")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emulator = CountingEmulator(trim_requests=100)
    emulator.record_name = args.record_name
    emulator.writes, emulator.recorded = [], []
    kubelet: PacedKubelet | None = None
    async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        register_buildstudio(emulator)
        url = str(server.url).rstrip("/")
        import httpx

        with tempfile.TemporaryDirectory(prefix="bs-bench-cluster-") as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(kubeconfig_text(url))
            async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10.0),
                                         limits=httpx.Limits(max_connections=200)) as http:
                if args.kubelet:
                    low, high = (float(x) for x in args.run_seconds.split(":"))
                    kubelet = PacedKubelet(Kube(emulator, url, kubeconfig, http), workdir=Path(tmp) / "kubelet",
                                           run_seconds=(low, high), interval=args.progress_interval,
                                           events_every=args.events_every, seed=args.seed, grace_cap=2.0)
                    await kubelet.start()
                print(f"URL {url}", flush=True)
                lateness: list[list[float]] = []  # [wall time, s late] of a 0.2 s sleep: the loop's backlog

                async def probe_loop() -> None:
                    while True:
                        due = time.monotonic() + 0.2
                        await asyncio.sleep(0.2)
                        lateness.append([time.time(), time.monotonic() - due])

                prober = asyncio.create_task(probe_loop())
                try:
                    await stop.wait()
                finally:
                    prober.cancel()
                    if kubelet is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(kubelet.stop(), 20)
    out = {
        "writes": emulator.writes,
        "recorded": emulator.recorded,
        "emitted": kubelet.emitted if kubelet else {},
        "ended": kubelet.ended if kubelet else {},
        "lateness": lateness,
        "pid": os.getpid(),
    }
    Path(args.stats).write_text(json.dumps(out))  # noqa: ASYNC240  (at exit, nothing else runs)


def end_with_the_bench() -> None:
    """SIGTERM when the bench that started this process dies, even by SIGKILL (``_common.PARENT_GUARD``)."""
    parent = os.environ.get("BENCH_PARENT_PID")
    if parent and sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != int(parent):
            sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 1:  # `make bench` runs every bench/*.py: this one is a helper, not a bench
        print("bench/_cluster.py: the benches' cluster process (started by operator_scale.py and burst.py)")
        sys.exit(0)
    end_with_the_bench()
    asyncio.run(main())
