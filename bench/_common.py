"""Shared by bench/operator_scale.py and bench/burst.py: the cluster process (``bench/_cluster.py``),
the operator process (real kopf with the project's handlers), /proc readings, figures with spread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The operator's source: the checkout's, or a frozen copy while others edit the tree
# (BENCH_OPERATOR_SRC=/path/holding/buildstudio): the bench, the cluster and the operator all use it.
OPERATOR_SRC = os.environ.get("BENCH_OPERATOR_SRC") or str(REPO / "operator")
sys.path.insert(0, OPERATOR_SRC)

from tests.kube.client import kubeconfig_text  # noqa: E402

from buildstudio.core.settings import SandboxDefaults  # noqa: E402

MODEL = "qwen3-coder"
BD_PATH = "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/default/builddispatches"

# Every bench operator's Settings: the defaults (``buildstudio operator``), except egress: there is no
# DNS here, so the dispatches' remote is allowed by an admin CIDR instead of resolved (without it every
# launch is refused: no pods); and the progress throttle, $BENCH_STATUS_INTERVAL (default 2 s).
SETTINGS = """Settings(egress=EgressSettings(allow_cidrs=("0.0.0.0/0",)),
                    status_patch_interval=float(os.environ.get("BENCH_STATUS_INTERVAL", "2.0")))"""

# Prepended to every process a bench starts with python -c: it gets SIGTERM when the bench dies,
# even by SIGKILL (the bench's finally blocks and signal handlers cover the rest).
PARENT_GUARD = """
import ctypes as _ct, os as _os, signal as _sig
if _os.environ.get("BENCH_PARENT_PID"):
    _ct.CDLL(None, use_errno=True).prctl(1, int(_sig.SIGTERM))  # PR_SET_PDEATHSIG
    if _os.getppid() != int(_os.environ["BENCH_PARENT_PID"]):
        _os._exit(1)  # the bench died before the guard was set
"""

# The operator as `buildstudio operator` runs it, with SETTINGS. A startup handler samples, once a
# second, into $BENCH_PROBE_OUT: threads and asyncio tasks, the loop's lateness, the connection pools
# (in use, waiting) and the status patches' round trips. $BENCH_TRACE_OUT: when queued daemons look at
# the board and each status write. $BENCH_PROFILE_OUT: a cProfile of the whole run.
OPERATOR = PARENT_GUARD + """
import asyncio, json, logging, os, threading, time, weakref, aiohttp, kopf
from buildstudio.handlers import build_registry, tune_gc
from buildstudio.core.settings import EgressSettings, Settings
logging.basicConfig(level=logging.WARNING)
_connectors = weakref.WeakSet()
_init = aiohttp.BaseConnector.__init__
def _noted(self, *a, **kw):
    _init(self, *a, **kw)
    _connectors.add(self)
aiohttp.BaseConnector.__init__ = _noted
import buildstudio.adapters.kube as _kube
_patch_seconds = []  # the adapter's merge patches (status writes) since the last sample: round trip
_merge_patch = _kube.Kube.merge_patch
async def _timed_patch(self, *a, **kw):
    t = time.monotonic()
    try:
        return await _merge_patch(self, *a, **kw)
    finally:
        _patch_seconds.append(time.monotonic() - t)
_kube.Kube.merge_patch = _timed_patch
registry = build_registry(""" + SETTINGS + """, namespace="default", seed=False)

@kopf.on.startup(registry=registry, id="bench-probe")
async def bench_probe(**_):
    out = os.environ.get("BENCH_PROBE_OUT")
    if not out:
        return
    async def sample():
        with open(out, "a") as f:
            woke = time.monotonic()
            while True:
                lag = time.monotonic() - woke  # the loop's lateness waking this 1 s sleep
                tasks = asyncio.all_tasks()
                threads = threading.enumerate()
                pools = [(c._limit, len(c._acquired), sum(len(w) for w in c._waiters.values()))
                         for c in list(_connectors) if not c.closed]
                f.write(json.dumps({
                    "t": time.time(), "tasks": len(tasks),
                    "follow_tasks": sum(t.get_name().startswith("follow ") for t in tasks),
                    "threads": len(threads),
                    "log_threads": sum(t.name.startswith("log-") for t in threads),
                    "pools": pools, "lag": lag,
                    "patches": [len(_patch_seconds), sum(_patch_seconds), max(_patch_seconds, default=0.0)],
                }) + "\\n")
                f.flush()
                _patch_seconds.clear()
                woke = time.monotonic() + 1.0  # when it should wake
                await asyncio.sleep(1.0)
    asyncio.get_running_loop().create_task(sample(), name="bench-probe")

if os.environ.get("BENCH_TRACE_OUT"):  # when queued daemons look at the board, and what it says
    import buildstudio.handlers.dispatch as _d
    _trace = open(os.environ["BENCH_TRACE_OUT"], "a", buffering=1)
    _queue_step = _d.DispatchDriver.queue_step
    def _traced_step(self, d, *a, **kw):
        step = _queue_step(self, d, *a, **kw)
        _trace.write(json.dumps([time.time(), "slot", d.name, step.status.get("phase")]) + "\\n")
        return step
    _d.DispatchDriver.queue_step = _traced_step
    _write_status = _d.DispatchDriver.write_status
    async def _traced_write(self, d, step):
        await _write_status(self, d, step)
        _trace.write(json.dumps([time.time(), "status", d.name, self.status.get("phase"),
                                 (self.status.get("progress") or {}).get("steps")]) + "\\n")
    import buildstudio.handlers.context as _c
    _c_forget = _c.QueueBoard.forget
    def _traced_forget(self, key):
        _trace.write(json.dumps([time.time(), "forget", key[1], key in self.overlay]) + "\\n")
        return _c_forget(self, key)
    _c.QueueBoard.forget = _traced_forget
    _d.DispatchDriver.write_status = _traced_write

tune_gc()
if os.environ.get("BENCH_PROFILE_OUT"):  # cProfile of the whole operator, dumped once kopf has stopped
    import cProfile
    cProfile.run("kopf.run(registry=registry, standalone=True, clusterwide=True)", os.environ["BENCH_PROFILE_OUT"])
else:
    kopf.run(registry=registry, standalone=True, clusterwide=True)
"""


def with_pool_size(size: int) -> str:
    """The operator code, its adapter's connection pool set to ``size`` (an experiment of the bench:
    ``load_api_client``'s ``pool_size``, 32 by default, is shared by log follows and object calls)."""
    patch = f"""
import buildstudio.adapters.kube as _kube
_load = _kube.load_api_client
async def _sized(*a, **kw):
    kw["pool_size"] = {size}
    return await _load(*a, **kw)
_kube.load_api_client = _sized
"""
    return patch + OPERATOR


def engine(base_url: str, max_running: int) -> dict[str, Any]:
    return {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildEngine",
        "metadata": {"name": "opencode"},
        "spec": {
            "engine": "opencode",
            "endpoint": "local",
            "capabilities": ["localModels"],
            "version": "1.18.33",
            "command": ["opencode", "run"],
            "versionCommand": ["opencode", "--version"],
            "modelService": {"baseURL": base_url},
            "models": [{"id": MODEL, "tier": "strong", "supportsToolUse": True, "contextOverride": 65536}],
            "concurrency": {"maxRunning": max_running, "maxRunningPerModel": max_running},
        },
    }


def present_status() -> dict[str, Any]:
    """As the presence probe would leave it, so no probe pod runs."""
    return {
        "present": True,
        "version": "1.18.33",
        "presence": {
            "method": "probe-pod",
            "checkedAt": "2026-01-01T00:00:00Z",
            "message": "preset by the benchmark",
            "image": SandboxDefaults().image,
            "observedGeneration": 1,
        },
    }


def dispatch(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildDispatch",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"prompt": "add a test", "repo": {"url": "https://example.com/r.git"}, "model": MODEL},
    }


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


def connections_to(pid: int, port: int) -> int:
    """The process's established TCP connections to a loopback port (its sockets in /proc/net/tcp*)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                    count += 1
    return count


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def host_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} cores"


# ---------------------------------------------------------------- figures


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """min / median / max over the repeats."""
    vals = [v for v in values if v == v]
    if not vals:
        return "n/a"
    return "/".join(fmt.format(v) for v in (min(vals), statistics.median(vals), max(vals)))


# ---------------------------------------------------------------- processes


@dataclass
class ClusterProc:
    proc: asyncio.subprocess.Process
    url: str
    stats_path: Path
    stats: dict[str, Any] | None = None


@contextlib.asynccontextmanager
async def cluster(tmp: Path, *extra: str) -> AsyncIterator[ClusterProc]:
    stats = tmp / "cluster-stats.json"
    log = (tmp / "cluster.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bench" / "_cluster.py"), "--stats", str(stats), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True, env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line.startswith(b"URL "):
            raise RuntimeError(f"cluster did not start: {line!r}; see {tmp / 'cluster.log'}")
        cp = ClusterProc(proc, line.decode().split()[1], stats)
        yield cp
    finally:
        await stop_process(proc, signal.SIGTERM, 40)
        log.close()
    if stats.exists():
        cp.stats = json.loads(stats.read_text())


@dataclass
class OperatorProc:
    proc: asyncio.subprocess.Process
    probe_path: Path

    def probes(self) -> list[dict[str, Any]]:
        if not self.probe_path.exists():
            return []
        return [json.loads(line) for line in self.probe_path.read_text().splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def operator(tmp: Path, url: str, code: str = OPERATOR) -> AsyncIterator[OperatorProc]:
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(url))
    probe = tmp / "operator-probe.jsonl"
    env = dict(child_env(), KUBECONFIG=str(kubeconfig), PYTHONPATH=OPERATOR_SRC, BENCH_PROBE_OUT=str(probe))
    log = (Path(tempfile.gettempdir()) / "buildstudio-bench-operator.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
        start_new_session=True,
    )
    try:
        yield OperatorProc(proc, probe)
    finally:
        await stop_process(proc, signal.SIGTERM, 15)
        log.close()


def child_env() -> dict[str, str]:
    """The environment of a process the bench starts: with ``PARENT_GUARD`` it ends with the bench."""
    return dict(os.environ, BENCH_PARENT_PID=str(os.getpid()))


def cancel_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner) or SIGHUP cancels the bench's main task, so that its context
    managers still stop the processes it started (they run in their own sessions, so no signal reaches
    them); SIGINT does so already (``asyncio.run``)."""
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)


async def stop_process(proc: asyncio.subprocess.Process, sig: int, grace: float) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 5)


async def setup_engine(http: httpx.AsyncClient, model_url: str, max_running: int) -> None:
    r = await http.post("/apis/buildstudio.dpf.dev/v1alpha1/buildengines", json=engine(model_url, max_running))
    r.raise_for_status()
    r = await http.patch("/apis/buildstudio.dpf.dev/v1alpha1/buildengines/opencode/status",
                         json={"status": present_status()},
                         headers={"Content-Type": "application/merge-patch+json"})
    r.raise_for_status()
