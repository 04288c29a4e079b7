"""The kubelet fixture: one emulated node that schedules every pod it sees through the emulator.

Per pod, a `PodScript` decides what happens: run the containers' commands as local processes
(volumes materialised in directories, mount paths mapped, env resolved, each container's output
its own log), or a canned outcome (logs + exit code, OOMKilled, Evicted, Unschedulable,
ImagePullBackOff), per pod or per container. Init containers run in order, each to completion;
native sidecars (`restartPolicy: Always`) start in their place and are ended after the main
containers; the main containers start together. When the test process is root (and asked to),
each container runs as its own uid/gid with the pod's fsGroup, in a mount namespace that shows
only its own volumes. Deleting a pod terminates it like a kubelet: SIGTERM to the process group,
the grace period, SIGKILL, then the final DELETE with grace 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import httpx
import kmock
from kmock._internal.rendering import Response  # not re-exported by kmock 0.8

from tests.kube import pods
from tests.kube.client import CONFIGMAPS, PODS, SECRETS, ApiError, Kube, resource_path
from tests.kube.objects import now_rfc3339

Body = dict[str, Any]
Mode = Literal["run", "canned", "unschedulable", "image-pull-backoff", "evicted"]
CONTAINER_MODES = ("run", "canned", "image-pull-backoff")  # what a per-container script may be


@dataclasses.dataclass(frozen=True)
class PodScript:
    """What the emulated node does with a pod. Build one with the classmethods.

    The script's own outcome is the main container's (`spec.containers[0]`); `containers` gives
    other containers their own (`{"agent": PodScript.oom_killed()}`). Without an entry, a
    container runs its command when the pod's mode is `run`, else completes at once (exit 0, no
    output; a sidecar keeps running until the kubelet ends it)."""

    mode: Mode = "run"
    logs: tuple[str, ...] = ()
    exit_code: int = 0
    reason: str | None = None  # the container's terminated reason; default Completed/Error
    running_for: float | None = 0.0  # canned: seconds Running before exiting; None: until deleted
    line_interval: float = 0.0  # canned: seconds between log lines
    message: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # run: extra env for every process
    command: tuple[str, ...] | None = None  # run: replaces the main container's `command` (args kept)
    containers: Mapping[str, PodScript] = dataclasses.field(default_factory=dict)  # per-container outcomes

    def __post_init__(self) -> None:
        for name, script in self.containers.items():
            if script.mode not in CONTAINER_MODES or script.containers:
                raise ValueError(f"container {name!r}: a per-container script is run, canned or "
                                 f"image_pull_backoff without its own `containers`, not {script.mode!r}")

    @classmethod
    def run(cls, *, env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
            containers: Mapping[str, PodScript] | None = None) -> PodScript:
        return cls(mode="run", env=dict(env or {}), command=tuple(command) if command is not None else None,
                   containers=dict(containers or {}))

    @classmethod
    def canned(cls, logs: Sequence[str] = (), exit_code: int = 0, *, running_for: float | None = 0.0,
               line_interval: float = 0.0, reason: str | None = None, message: str | None = None,
               container: str | None = None, containers: Mapping[str, PodScript] | None = None) -> PodScript:
        """Canned logs and exit; `container=NAME` plays it in that container (the others complete)."""
        script = cls(mode="canned", logs=tuple(logs), exit_code=exit_code, running_for=running_for,
                     line_interval=line_interval, reason=reason, message=message)
        return cls._placed(script, container, containers)

    @classmethod
    def hang(cls, logs: Sequence[str] = (), *, container: str | None = None) -> PodScript:
        """Running until deleted."""
        return cls.canned(logs, running_for=None, container=container)

    @classmethod
    def oom_killed(cls, logs: Sequence[str] = (), *, running_for: float = 0.0,
                   container: str | None = None) -> PodScript:
        return cls.canned(logs, 137, running_for=running_for, reason="OOMKilled", container=container)

    @classmethod
    def evicted(cls, message: str = "The node was low on resource: memory.", *,
                running_for: float = 0.0) -> PodScript:
        return cls(mode="evicted", message=message, running_for=running_for)

    @classmethod
    def unschedulable(cls, message: str = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. "
                      "preemption: 0/1 nodes are available.") -> PodScript:
        return cls(mode="unschedulable", message=message)

    @classmethod
    def image_pull_backoff(cls, message: str = 'Back-off pulling image: not found', *,
                           container: str | None = None) -> PodScript:
        """The first container to start (or `container`) never gets its image: the pod waits."""
        return cls._placed(cls(mode="image-pull-backoff", message=message), container, None)

    @classmethod
    def _placed(cls, script: PodScript, container: str | None,
                containers: Mapping[str, PodScript] | None) -> PodScript:
        if container is not None:
            script = cls(mode="canned", containers={container: script})
        return dataclasses.replace(script, containers={**script.containers, **(containers or {})})

    def with_container(self, name: str, script: PodScript) -> PodScript:
        """This script with container `name` playing `script` (e.g. `PodScript.run().with_container(
        "agent", PodScript.oom_killed())`)."""
        return dataclasses.replace(self, containers={**self.containers, name: script})

    def plan(self, pod: Mapping[str, Any]) -> dict[str, PodScript]:
        """Each container's own script (mode run, canned or image-pull-backoff), by name."""
        kinds = pods.container_kinds(pod)
        has_init = any(kind != "main" for kind, _ in kinds)
        first_main = pods.main_containers(pod)[0].get("name", "main")
        first = kinds[0][1].get("name", "main")
        plans: dict[str, PodScript] = {}
        for kind, spec in kinds:
            name = spec.get("name", "main")
            override = self.containers.get(name)
            if override is not None:
                plans[name] = dataclasses.replace(override, env={**self.env, **override.env})
            elif self.mode == "run":
                plans[name] = PodScript(env=self.env, command=self.command if name == first_main else None)
            elif self.mode == "image-pull-backoff" and (name == first or (kind == "main" and not has_init)):
                plans[name] = PodScript(mode="image-pull-backoff", message=self.message)
            elif name == first_main and self.mode in ("canned", "evicted"):
                evicted = self.mode == "evicted"
                plans[name] = PodScript(mode="canned", logs=self.logs, exit_code=137 if evicted else self.exit_code,
                                        reason=self.reason, running_for=self.running_for,
                                        line_interval=self.line_interval, message=self.message)
            else:
                plans[name] = PodScript.hang() if kind == "sidecar" else PodScript.canned()
        return plans


PodMatcher = str | Callable[[Mapping[str, Any]], bool]


class PodLog:
    """A container's log lines; followers are woken on every new line and at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done = False
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def append(self, line: str) -> None:
        self.lines.append(line)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    async def follow(self, start: int, alive: Callable[[], bool], poll: float = 0.5) -> AsyncIterator[bytes]:
        """Lines from index `start` as they come; ends with the log or when `alive()` turns false."""
        yield b""  # send the headers now
        index = start
        while True:
            changed = self._changed
            if index < len(self.lines):
                chunk, index = self.lines[index:], len(self.lines)
                yield "".join(line + "\n" for line in chunk).encode()
            if self.done or not alive():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll)


@dataclasses.dataclass
class _Container:
    name: str
    kind: pods.Kind
    spec: Body
    plan: PodScript
    state: Body
    log: PodLog = dataclasses.field(default_factory=PodLog)
    previous_log: PodLog | None = None
    ready: bool = False
    started: bool = False  # an instance has started: there is a log to serve
    restart_count: int = 0
    last_state: Body = dataclasses.field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    argv: list[str] = dataclasses.field(default_factory=list)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # a sidecar: end it
    running: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # a sidecar: it has started
    grace: float = 30.0  # a sidecar's grace period when the kubelet ends it
    task: asyncio.Task[None] | None = None


@dataclasses.dataclass
class _PodRun:
    namespace: str
    name: str
    uid: str
    pod: Body
    script: PodScript
    containers: dict[str, _Container] = dataclasses.field(default_factory=dict)  # start order
    terminating: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    gone: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    grace: float = 30.0
    terminating_at: float | None = None
    task: asyncio.Task[None] | None = None
    directory: pathlib.Path | None = None
    volume_dirs: dict[str, str] = dataclasses.field(default_factory=dict)
    configmaps: dict[str, Body] = dataclasses.field(default_factory=dict)
    secrets: dict[str, Body] = dataclasses.field(default_factory=dict)
    start_time: str = ""
    evicted: bool = False
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def container(self, name: str | None) -> _Container | None:
        if name is None:
            name = pods.default_log_container(self.pod) or pods.main_container(self.pod).get("name", "main")
        return self.containers.get(name)


@dataclasses.dataclass(frozen=True)
class _Support:
    """What running containers as their own uids needs here; `reason` says why it cannot."""

    tools: Mapping[str, str]
    exposures: tuple[tuple[str, tuple[str, ...]], ...]
    reason: str | None


_TOOLS = ("unshare", "sh", "mount", "umount", "mkdir", "setpriv")
_PROBE_UID = 65532
_support_cache: _Support | None = None


async def _uid_support() -> _Support:
    """Probe once per process: root, the tools, and the interpreter runnable as another uid."""
    global _support_cache
    if _support_cache is not None:
        return _support_cache
    if os.geteuid() != 0:
        _support_cache = _Support({}, (), "not root: every container runs as the test's own user")
        return _support_cache
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin:/usr/bin:/sbin:/bin"])
    tools = {tool: shutil.which(tool, path=path) or "" for tool in _TOOLS}
    missing = [tool for tool, found in tools.items() if not found]
    if missing:
        _support_cache = _Support({}, (), f"{', '.join(missing)} not installed: containers run as root")
        return _support_cache
    exposures = _interpreter_exposures()
    stage = tempfile.mkdtemp(prefix="bs-kubelet-probe-")
    try:
        iso = pods.Isolation(uid=_PROBE_UID, gid=_PROBE_UID, groups=(_PROBE_UID,), volumes_root=stage, stage=stage,
                             binds=(), exposures=exposures, cwd="/")
        argv = pods.isolation_argv(iso, [sys.executable, "-c", "import os; print(os.getuid())"], tools)
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            out, err = b"", b"timed out"
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    reason = None
    if proc.returncode != 0 or out.strip() != str(_PROBE_UID).encode():
        reason = f"cannot run {sys.executable} as uid {_PROBE_UID} in a mount namespace: {err.decode()[-300:]}"
    _support_cache = _Support(tools, exposures, reason)
    return _support_cache


def _interpreter_exposures() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The interpreter may sit below a directory other uids cannot enter (pyenv under /root, 0700):
    each container's mount namespace shows just that part of it, read-only."""
    hidden: dict[str, set[str]] = {}
    for needed in (sys.executable, sys.base_prefix, sys.prefix):
        found = pods.untraversable(pathlib.Path(needed).resolve())
        if found is not None:
            hidden.setdefault(str(found[0]), set()).add(str(found[1]))
    return tuple((h, tuple(sorted(children))) for h, children in sorted(hidden.items()))


class Kubelet:
    """The emulated node. `script(match, PodScript…)` before the pod is created; `default` otherwise.

    `separate_uids`: True runs each container as its securityContext's uid (root needed: an error
    otherwise), None does so when it can (`separate_uids_reason` says why not), False never."""

    node_name = "emulated-node"

    def __init__(self, kube: Kube, *, workdir: pathlib.Path, grace_cap: float | None = None,
                 watch_seconds: int = 30, mount_wait: float = 5.0, separate_uids: bool | None = False,
                 restart_backoff: float = 1.0, namespaces: Collection[str] | None = None) -> None:
        self.kube = kube
        # Only these namespaces' pods (a real control plane is shared by other tests); None: every pod.
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        # A real kubelet retries a volume whose ConfigMap/Secret is not there yet (the pod stays
        # ContainerCreating); this one retries for ``mount_wait`` seconds, then reports the error.
        self.mount_wait = mount_wait
        self.workdir = workdir
        self.grace_cap = grace_cap  # cap on termination grace periods, to keep tests quick
        self.watch_seconds = watch_seconds  # server-side timeout of each pod watch
        self.restart_backoff = restart_backoff  # first delay before a sidecar is restarted (doubles)
        self.default = PodScript.run()
        self.separate_uids = False  # decided in start()
        self.separate_uids_reason = "off: Kubelet(separate_uids=False)"
        self.hostdir = workdir / "host"  # readable by every container's uid: fake binaries, file:// remotes
        self._want_uids = separate_uids
        self._support: _Support | None = None
        self._volumes_root = workdir
        self._own_root = False
        self._scripts: list[tuple[PodMatcher, PodScript]] = []
        self._runs: dict[str, _PodRun] = {}  # by pod uid
        self._latest: dict[tuple[str, str], _PodRun] = {}  # by (namespace, name): the newest incarnation
        self._watch_task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    # --- the test-facing interface ---------------------------------------------------

    def script(self, match: PodMatcher, script: PodScript) -> None:
        """Use `script` for pods whose name is `match` (or starts with `match` + '-'), or for
        which `match(pod)` is true. Later registrations win."""
        self._scripts.insert(0, (match, script))

    def log(self, name: str, namespace: str = "default", container: str | None = None) -> PodLog | None:
        """A container's current log (default: the pod's only main container, else the first)."""
        run = self._latest.get((namespace, name))
        found = run.container(container) if run is not None else None
        return found.log if found is not None else None

    def process_argv(self, name: str, namespace: str = "default", container: str | None = None) -> list[str] | None:
        """The local argv a `run` container was started with (after path mapping), for assertions."""
        run = self._latest.get((namespace, name))
        found = run.container(container) if run is not None else None
        return found.argv if found is not None else None

    def _script_for(self, pod: Mapping[str, Any]) -> PodScript:
        name = pod["metadata"]["name"]
        for match, script in self._scripts:
            if (isinstance(match, str) and (name == match or name.startswith(match + "-"))) or (
                callable(match) and match(pod)
            ):
                return script
        return self.default

    # --- lifecycle of the fixture ----------------------------------------------------

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._want_uids is not False:
            self._support = await _uid_support()
            if self._support.reason is not None and self._want_uids:
                raise RuntimeError(f"separate uids asked for: {self._support.reason}")
            self.separate_uids = self._support.reason is None
            self.separate_uids_reason = self._support.reason or "on"
        if self.separate_uids:
            # pytest's tmp dirs are 0700 root: the volumes live where every uid can reach them.
            self._volumes_root = pathlib.Path(tempfile.mkdtemp(prefix="bs-kubelet-"))
            self._volumes_root.chmod(0o711)
            self._own_root = True
            self.hostdir = self._volumes_root / "host"
        self.hostdir.mkdir(parents=True, exist_ok=True)
        self.hostdir.chmod(0o755)
        self._http = httpx.AsyncClient(base_url=self.kube.url, timeout=httpx.Timeout(10.0), **self.kube.http_options)
        # Not a kmock reaction (`emulator["get", resource("v1/pods"), subresource("log")] << ...` works
        # too): any reaction makes kmock's per-request matching O(requests served). A real apiserver
        # asks the node's kubelet API instead (`container_log`, served by tests/controlplane/node.py).
        if self.kube.emulator is not None:
            self.kube.emulator.pod_logs = self._serve_log
        self._watch_task = asyncio.create_task(self._watch_pods(), name="kubelet-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        for run in list(self._runs.values()):
            for c in run.containers.values():
                if c.process is not None and c.process.returncode is None:
                    _signal_group(c.process, signal.SIGKILL)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(c.process.wait(), 5)
            tasks = [t for t in (run.task, *(c.task for c in run.containers.values())) if t is not None]
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5)
            for c in run.containers.values():
                c.log.close()
        if self.kube.emulator is not None:
            self.kube.emulator.pod_logs = None
        if self._http is not None:
            await self._http.aclose()
        if self._own_root:
            await asyncio.to_thread(shutil.rmtree, self._volumes_root, True)

    # --- watching pods ---------------------------------------------------------------

    async def _watch_pods(self) -> None:
        """LIST, then WATCH from the list's resourceVersion; start over with a LIST after a 410."""
        assert self._http is not None
        since: str | None = None
        while True:  # ends when the fixture cancels it
            try:
                if since is None:
                    since = await self._relist()
                params = {"watch": "true", "resourceVersion": since, "timeoutSeconds": str(self.watch_seconds)}
                async with self._http.stream("GET", "/api/v1/pods", params=params,
                                             timeout=httpx.Timeout(5.0, read=self.watch_seconds + 15.0)) as response:
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            since = None  # 410 Gone (or worse): re-list
                            break
                        since = event["object"]["metadata"]["resourceVersion"]
                        self._on_event(event["type"], event["object"])
            except httpx.HTTPError:
                await asyncio.sleep(0.1)

    async def _relist(self) -> str:
        assert self._http is not None
        response = await self._http.get("/api/v1/pods")
        response.raise_for_status()
        listing = response.json()
        present = {pod["metadata"]["uid"] for pod in listing["items"]}
        for uid, run in self._runs.items():
            if uid not in present and not run.gone.is_set():  # deleted while we were not watching
                run.gone.set()
                self._terminate(run)
        for pod in listing["items"]:
            self._on_event("ADDED", pod)
        return str(listing["metadata"]["resourceVersion"])

    def _terminate(self, run: _PodRun) -> None:
        if not run.terminating.is_set():
            run.terminating_at = asyncio.get_running_loop().time()
            run.terminating.set()

    def _on_event(self, kind: str, pod: Body) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        run = self._runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.gone.set()
                self._terminate(run)
            return
        if spec.get("nodeName") not in (None, self.node_name):
            return  # another node's pod
        if self.namespaces is not None and meta.get("namespace", "default") not in self.namespaces:
            return
        if run is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            run = _PodRun(namespace=meta.get("namespace", "default"), name=meta["name"], uid=uid, pod=pod,
                          script=self._script_for(pod))
            self._runs[uid] = run
            self._latest[(run.namespace, run.name)] = run
            run.task = asyncio.create_task(self._lifecycle(run), name=f"kubelet-pod-{run.name}")
        run.pod = pod
        if meta.get("deletionTimestamp") and not run.terminating.is_set():
            run.grace = self._capped(float(meta.get("deletionGracePeriodSeconds",
                                                    spec.get("terminationGracePeriodSeconds", 30))))
            self._terminate(run)

    def _capped(self, grace: float) -> float:
        return min(grace, self.grace_cap) if self.grace_cap is not None else grace

    # --- one pod ---------------------------------------------------------------------

    async def _patch_status(self, run: _PodRun, status: Body) -> None:
        with contextlib.suppress(ApiError):  # the pod may be gone already
            await self.kube.patch(PODS, run.name, {"status": status}, run.namespace, subresource="status")

    async def _publish(self, run: _PodRun) -> None:
        """Patch the pod's status from its containers' states; serialised, so the last write is the newest."""
        async with run.lock:
            def status(c: _Container) -> Body:
                return pods.container_status(run.pod, c.spec, c.state, ready=c.ready, started="running" in c.state,
                                             restart_count=c.restart_count, last_state=c.last_state)
            init = [(c.kind, status(c)) for c in run.containers.values() if c.kind != "main"]
            main = [status(c) for c in run.containers.values() if c.kind == "main"]
            phase = pods.pod_phase(init, main, evicted=run.evicted)
            reason, message = ("Evicted", run.script.message) if run.evicted else (None, None)
            await self._patch_status(run, pods.pod_status(now_rfc3339(), run.start_time, init, main, phase=phase,
                                                          reason=reason, message=message))

    async def _bind(self, run: _PodRun) -> None:
        if self.kube.emulator is not None:  # the emulator has no pods/binding
            await self.kube.patch(PODS, run.name, {"spec": {"nodeName": self.node_name}}, run.namespace)
            return
        # A real apiserver: spec.nodeName is immutable; a scheduler binds through the subresource.
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": run.name, "uid": run.uid},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        await self.kube.request("POST", resource_path(PODS, run.namespace, run.name, "binding"), body=binding)

    async def _lifecycle(self, run: _PodRun) -> None:
        try:
            await self._drive(run)
        finally:
            for c in run.containers.values():
                c.log.close()

    async def _drive(self, run: _PodRun) -> None:
        script = run.script
        if script.mode == "unschedulable":
            await self._patch_status(run, pods.status_unschedulable(now_rfc3339(), script.message or ""))
            await run.terminating.wait()  # an unbound pod is deleted at once by the apiserver
            return
        with contextlib.suppress(ApiError):  # the binding (a pod deleted meanwhile is not bound)
            await self._bind(run)
        run.start_time = now_rfc3339()
        plans = script.plan(run.pod)
        kinds = pods.container_kinds(run.pod)
        first_wait = "PodInitializing" if any(kind != "main" for kind, _ in kinds) else "ContainerCreating"
        for kind, spec in kinds:
            name = spec.get("name", "main")
            run.containers[name] = _Container(name=name, kind=kind, spec=spec, plan=plans[name],
                                              state=pods.waiting(first_wait))
        await self._publish(run)
        if any(c.plan.mode == "run" for c in run.containers.values()):
            try:
                await self._prepare_pod(run)
            except pods.ContainerConfigError as e:
                for c in run.containers.values():
                    c.state = pods.waiting("CreateContainerConfigError", str(e))
                await self._publish(run)
                await run.terminating.wait()
                await self._confirm_deletion(run)
                return
        await self._run_containers(run)
        await self._publish(run)
        if run.terminating.is_set():
            await self._confirm_deletion(run)

    async def _run_containers(self, run: _PodRun) -> None:
        """Init containers in order (sidecars started in their place), then the main ones together;
        sidecars are ended last, in reverse order, once no main or init container runs."""
        sidecars: list[_Container] = []
        initialized = True
        for c in run.containers.values():
            if c.kind == "main":
                continue
            if run.terminating.is_set():
                initialized = False
                break
            if c.kind == "sidecar":
                c.task = asyncio.create_task(self._supervise_sidecar(run, c), name=f"kubelet-{run.name}-{c.name}")
                sidecars.append(c)
                await _first_of(c.running, run.terminating, c.task)  # no probes: started is enough
                continue
            exit_code = await self._run_container(run, c, run.terminating)
            if exit_code != 0:  # failed (restartPolicy Never), or never started before the deletion
                initialized = False
                break
        if initialized and not run.terminating.is_set():
            mains = [c for c in run.containers.values() if c.kind == "main"]
            await asyncio.gather(*(self._run_container(run, c, run.terminating) for c in mains))
        for c in reversed(sidecars):
            c.grace = self._remaining_grace(run)
            c.stop.set()
            if c.task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(c.task), c.grace + 15)

    def _remaining_grace(self, run: _PodRun) -> float:
        if run.terminating_at is None:  # the pod completed: its own grace period
            return self._capped(float((run.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)))
        spent = asyncio.get_running_loop().time() - run.terminating_at
        return max(run.grace - spent, min(2.0, run.grace))  # the kubelet's minimum grace per container

    async def _supervise_sidecar(self, run: _PodRun, c: _Container) -> None:
        """A native sidecar runs until told to stop; when it exits on its own, it is restarted."""
        backoff = self.restart_backoff
        while True:
            if await self._run_container(run, c, c.stop) is None or c.stop.is_set():
                return
            previous_last = c.last_state
            c.last_state, c.ready = c.state, False
            c.state = pods.waiting("CrashLoopBackOff",
                                   f"back-off {backoff:g}s restarting failed container={c.name} pod={run.name}")
            await self._publish(run)
            if await _wait_event(c.stop, backoff):  # ended while backing off: it stays terminated
                c.state, c.last_state = c.last_state, previous_last
                return
            c.restart_count += 1
            backoff = min(backoff * 2, 10 * self.restart_backoff)

    async def _run_container(self, run: _PodRun, c: _Container, stop: asyncio.Event) -> int | None:
        """One instance of a container, start to end, its states published; the exit code, or None
        when it never started (bad config, no image) and `stop` came."""
        plan = c.plan
        if plan.mode == "image-pull-backoff":
            c.state = pods.waiting("ErrImagePull", plan.message)
            await self._publish(run)
            await _wait_event(stop, 0.05)
            c.state = pods.waiting("ImagePullBackOff", plan.message)
            await self._publish(run)
            await stop.wait()
            return None
        log = PodLog()
        if plan.mode == "run":
            try:
                await self._start_process(run, c)
            except pods.ContainerConfigError as e:
                c.state = pods.waiting("CreateContainerConfigError", str(e))
                await self._publish(run)
                await stop.wait()
                return None
        if c.started:
            c.previous_log = c.log
        c.log, c.started = log, True
        started_at = now_rfc3339()
        c.state, c.ready = pods.running(started_at), c.kind != "init"
        await self._publish(run)
        c.running.set()
        reason, message = None, None
        if plan.mode == "run":
            exit_code = await self._wait_process(run, c, stop)
        else:
            exit_code = await self._play_canned(c, stop)
            reason, message = plan.reason, plan.message
            if stop.is_set():
                exit_code, reason = 143, "Error"
            elif c.kind == "main" and run.script.mode == "evicted":
                run.evicted = True  # in the same status write as the container's end, as a kubelet does
        c.state = pods.terminated(exit_code, started_at, now_rfc3339(), reason, message)
        c.ready = c.kind == "init" and exit_code == 0
        log.close()
        await self._publish(run)
        return exit_code

    async def _play_canned(self, c: _Container, stop: asyncio.Event) -> int:
        plan = c.plan
        for line in plan.logs:
            c.log.append(line)
            if plan.line_interval and await _wait_event(stop, plan.line_interval):
                return 143
        if plan.running_for is None:
            await stop.wait()
        elif plan.running_for > 0:
            await _wait_event(stop, plan.running_for)
        return plan.exit_code

    async def _confirm_deletion(self, run: _PodRun) -> None:
        if run.gone.is_set():
            return
        with contextlib.suppress(ApiError):
            await self.kube.delete(PODS, run.name, run.namespace, grace_seconds=0)

    async def _fetch_all(self, resource: str, names: set[str], namespace: str) -> dict[str, Body]:
        found: dict[str, Body] = {}
        for name in names:
            obj = await self.kube.find(resource, name, namespace)
            if obj is not None:
                found[name] = obj
        return found

    async def _prepare_pod(self, run: _PodRun) -> None:
        """Fetch what the volumes and env need (waiting `mount_wait` for late ones), materialise volumes."""
        pod, ns = run.pod, run.namespace
        cm_names, secret_names = pods.referenced_objects(pod)
        deadline = asyncio.get_running_loop().time() + self.mount_wait
        while True:
            run.configmaps = await self._fetch_all(CONFIGMAPS, cm_names, ns)
            run.secrets = await self._fetch_all(SECRETS, secret_names, ns)
            complete = len(run.configmaps) == len(cm_names) and len(run.secrets) == len(secret_names)
            if complete or asyncio.get_running_loop().time() >= deadline or run.terminating.is_set():
                break
            await asyncio.sleep(0.05)
        run.directory = self._volumes_root / f"{ns}_{run.name}_{run.uid[:8]}"
        run.volume_dirs = await asyncio.to_thread(_prepare_volumes, run.directory, pod, run.configmaps, run.secrets,
                                                  owned=self.separate_uids)

    async def _start_process(self, run: _PodRun, c: _Container) -> None:
        assert run.directory is not None
        identity = pods.run_as(run.pod, c.spec)
        isolate = self.separate_uids and identity.uid is not None
        try:
            prepared = await asyncio.to_thread(_prepare_container, run.directory, run.pod, c.spec, run.volume_dirs,
                                               run.configmaps, run.secrets, c.plan,
                                               identity if self.separate_uids else None)
        except OSError as e:  # a subPath or private directory that cannot be made
            raise pods.ContainerConfigError(f"cannot prepare the container: {e}") from e
        c.argv = prepared.argv
        argv, cwd = prepared.argv, prepared.cwd
        if isolate:
            assert self._support is not None and identity.uid is not None and identity.gid is not None
            iso = pods.Isolation(uid=identity.uid, gid=identity.gid, groups=identity.groups,
                                 volumes_root=str(run.directory / "volumes"), stage=str(run.directory / ".stage"),
                                 binds=prepared.binds, exposures=self._support.exposures, cwd=prepared.cwd)
            argv, cwd = pods.isolation_argv(iso, prepared.argv, self._support.tools), str(run.directory)
        try:
            c.process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=prepared.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                limit=16 * 1024 * 1024,
            )
        except OSError as e:
            raise pods.ContainerConfigError(f"cannot start {argv[0]!r}: {e}") from e

    async def _pump(self, stream: asyncio.StreamReader | None, c: _Container) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            c.log.append(line.decode(errors="replace").rstrip("\n"))

    async def _wait_process(self, run: _PodRun, c: _Container, stop: asyncio.Event) -> int:
        process = c.process
        assert process is not None
        pumps = asyncio.gather(self._pump(process.stdout, c), self._pump(process.stderr, c))
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            _signal_group(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), c.grace if c.kind == "sidecar" else run.grace)
            except TimeoutError:
                _signal_group(process, signal.SIGKILL)
                await asyncio.wait_for(exited, 10)
        stopping.cancel()
        # A container's processes end with it: what its command left running goes too.
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pumps, 5)  # the pipes close when the group is gone
        assert process.returncode is not None
        return pods.returncode_to_exit_code(process.returncode)

    # --- pod logs --------------------------------------------------------------------

    async def _serve_log(self, request: kmock.Request) -> Any:
        namespace, name = request.namespace or "default", request.name or ""
        pod = self.kube.emulator.stored(PODS, namespace, name)
        if pod is None:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'pods "{name}" not found')
        params = request.params

        def bad(message: str) -> kmock.KubernetesError:
            return kmock.KubernetesError(status=400, reason="BadRequest", message=message)

        wanted = params.get("container") or pods.default_log_container(pod)
        if wanted is None:
            mains = [c.get("name", "main") for c in pods.main_containers(pod)]
            inits = [c.get("name", "") for c in pods.init_containers(pod)]
            raise bad(f"a container name must be specified for pod {name}, choose one of: [{' '.join(mains)}]"
                      + (f" or one of the init containers: [{' '.join(inits)}]" if inits else ""))
        if wanted not in {c.get("name", "main") for _, c in pods.container_kinds(pod)}:
            raise bad(f"container {wanted} is not valid for pod {name}")
        try:
            log = _container_log(self._runs.get(pod["metadata"]["uid"]), name, wanted, params.get("previous") == "true")
        except LookupError as e:
            raise bad(str(e)) from None
        start = 0
        if params.get("tailLines"):
            start = max(0, len(log.lines) - int(params["tailLines"]))
        if params.get("follow") == "true":
            raw = request._raw_request

            def alive() -> bool:
                return raw is None or (raw.transport is not None and not raw.transport.is_closing())

            return Response(headers={"Content-Type": "text/plain"}, payload=log.follow(start, alive))
        body = "".join(line + "\n" for line in log.lines[start:]).encode()
        return Response(headers={"Content-Type": "text/plain"}, payload=body)


    def container_log(self, namespace: str, name: str, container: str, *, previous: bool = False) -> PodLog:
        """What the kubelet API's `/containerLogs/<namespace>/<pod>/<container>` serves (the apiserver has
        checked the pod and the container's name); LookupError with the kubelet's message otherwise."""
        return _container_log(self._latest.get((namespace, name)), name, container, previous)


def _container_log(run: _PodRun | None, pod: str, wanted: str, previous: bool) -> PodLog:
    c = run.containers.get(wanted) if run is not None else None
    if c is None or not c.started:
        reason = (c.state.get("waiting") or {}).get("reason", "ContainerCreating") if c else "ContainerCreating"
        reason = _WAITING_TEXT.get(reason, reason)
        raise LookupError(f'container "{wanted}" in pod "{pod}" is waiting to start: {reason}')
    if previous:
        if c.previous_log is None:
            raise LookupError(f'previous terminated container "{wanted}" in pod "{pod}" not found')
        return c.previous_log
    return c.log


# The kubelet's words for the common waiting reasons in a log request's error.
_WAITING_TEXT = {"ErrImagePull": "image can't be pulled", "ImagePullBackOff": "trying and failing to pull image"}


# --- materialising a pod (in a thread: file system work) ------------------------------------


def _own(path: pathlib.Path, uid: int, gid: int | None, mode: int) -> None:
    os.chown(path, uid, gid if gid is not None else 0, follow_symlinks=False)
    path.chmod(mode)  # after chown, which clears setgid bits


def _prepare_volumes(directory: pathlib.Path, pod: Body, configmaps: Mapping[str, Body],
                     secrets: Mapping[str, Body], *, owned: bool) -> dict[str, str]:
    """Materialise the pod's volumes under `directory/volumes`; {name: local dir}.

    `owned` (separate uids): the pod's directory is searchable by all, `volumes/` by root only
    (each container's namespace binds back what it mounts), and volume entries get the kubelet's
    modes with fsGroup ownership."""
    fs_group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    volumes = directory / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    if owned:
        directory.chmod(0o711)
        volumes.chmod(0o700)
        (directory / ".stage").mkdir(mode=0o700, exist_ok=True)
    volume_dirs: dict[str, str] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        local = volumes / volume["name"]
        local.mkdir(parents=True, exist_ok=True)
        files = pods.volume_files(volume, configmaps, secrets)
        if files is None and owned:  # emptyDir and the like
            _own(local, 0, fs_group, pods.fs_group_mode(pods.EMPTY_DIR_MODE, fs_group, directory=True, read_only=False))
        modes = pods.volume_file_modes(volume, list(files or {}))
        for relpath, content in (files or {}).items():
            target = local / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            if owned:
                _own(target, 0, fs_group, pods.fs_group_mode(modes[relpath], fs_group, directory=False, read_only=True))
        if files is not None and owned:
            for sub in sorted(p for p in local.rglob("*") if p.is_dir()):
                _own(sub, 0, fs_group, pods.fs_group_mode(pods.PROJECTED_DIR_MODE, fs_group, directory=True,
                                                          read_only=True))
            _own(local, 0, fs_group, pods.fs_group_mode(pods.PROJECTED_DIR_MODE, fs_group, directory=True,
                                                        read_only=True))
        volume_dirs[volume["name"]] = str(local)
    return volume_dirs


@dataclasses.dataclass(frozen=True)
class _Prepared:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    binds: tuple[tuple[str, bool], ...]  # paths below volumes/ this container mounts, read-only


def _prepare_container(
    directory: pathlib.Path, pod: Body, container: Body, volume_dirs: Mapping[str, str],
    configmaps: Mapping[str, Body], secrets: Mapping[str, Body], script: PodScript, identity: pods.RunAs | None,
) -> _Prepared:
    """One container's local argv, cwd, env and mounts; `identity` (separate uids) owns its private dirs."""
    name = container.get("name", "main")
    mounts = pods.mounts_of(container, volume_dirs)
    volumes = directory / "volumes"
    projected = {v["name"] for v in (pod.get("spec") or {}).get("volumes") or [] if "configMap" in v or "secret" in v}
    for _, local_path, _ in mounts:
        _make_subpath(pathlib.Path(local_path), volumes, owned=identity is not None)
    uid = identity.uid if identity is not None and identity.uid is not None else os.geteuid()
    gid = identity.gid if identity is not None and identity.gid is not None else os.getegid()
    own = directory / "containers" / name
    home = own / "home"
    home.mkdir(parents=True, exist_ok=True)
    if identity is not None:
        (directory / "containers").chmod(0o711)
        own.chmod(0o711)
        _own(home, uid, gid, 0o700)
    mapping = sorted(((path, local) for path, local, _ in mounts), key=lambda m: len(m[0]), reverse=True)
    working_dir = container.get("workingDir")
    cwd = pods.map_paths(working_dir, mapping) if working_dir else str(own)
    if working_dir and cwd == working_dir:  # not under a mount: give it a private directory
        cwd = str(own / "rootfs" / working_dir.lstrip("/"))
        pathlib.Path(cwd).mkdir(parents=True, exist_ok=True)
        if identity is not None:
            _own(pathlib.Path(cwd), uid, gid, 0o755)
    pathlib.Path(cwd).mkdir(parents=True, exist_ok=True)
    env = {
        # The venv's interpreter first: `python` in a pod command means the test's Python.
        "PATH": str(pathlib.Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8"), "HOSTNAME": str(pod["metadata"]["name"]),
    }
    pod_env = pods.container_env(pod, container, configmaps, secrets)
    env.update({k: pods.map_paths(v, mapping) for k, v in pod_env.items()})
    env.update(script.env)
    argv = [pods.map_paths(a, mapping) for a in pods.container_argv(container, env, script.command)]
    binds: list[tuple[str, bool]] = []
    for _, local_path, read_only in mounts:
        rel = os.path.relpath(local_path, volumes)
        # ConfigMap and Secret volumes are always read-only; a path mounted read-write once stays so.
        binds.append((rel, read_only or rel.split("/")[0] in projected))
    writable = {rel for rel, ro in binds if not ro}
    return _Prepared(argv, cwd, env, tuple((rel, ro and rel not in writable) for rel, ro in binds))


def _make_subpath(local: pathlib.Path, volumes: pathlib.Path, *, owned: bool) -> None:
    """Create a subPath that names a new directory, with its volume's owner and mode (as the kubelet)."""
    missing = [p for p in (local, *local.parents)
               if not p.exists() and p.is_relative_to(volumes) and len(p.relative_to(volumes).parts) > 1]
    local.mkdir(parents=True, exist_ok=True)
    if not owned or not missing:
        return
    info = (volumes / local.relative_to(volumes).parts[0]).stat()
    for path in missing:
        _own(path, info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for the event; True if it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _first_of(*events: asyncio.Event | asyncio.Task[None]) -> None:
    """Until one event is set or the task (left running) is done."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in events if isinstance(e, asyncio.Event)]
    tasks = [e for e in events if isinstance(e, asyncio.Task)]
    try:
        await asyncio.wait([*waits, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)

