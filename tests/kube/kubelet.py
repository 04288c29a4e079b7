"""The kubelet fixture: one emulated node that schedules every pod it sees through the emulator.

Per pod, a `PodScript` decides what happens: run the main container's command as a local
process (volumes materialised in temp dirs, mount paths mapped, env resolved, output as the
pod log), or a canned outcome (logs + exit code, OOMKilled, Evicted, Unschedulable,
ImagePullBackOff). Deleting a pod terminates it like a kubelet: SIGTERM to the process
group, the grace period, SIGKILL, then the final DELETE with grace 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

import httpx
import kmock
from kmock._internal.rendering import Response  # not re-exported by kmock 0.8

from tests.kube import pods
from tests.kube.client import CONFIGMAPS, PODS, SECRETS, ApiError, Kube
from tests.kube.objects import now_rfc3339

Body = dict[str, Any]
Mode = Literal["run", "canned", "unschedulable", "image-pull-backoff", "evicted"]


@dataclasses.dataclass(frozen=True)
class PodScript:
    """What the emulated node does with a pod. Build one with the classmethods."""

    mode: Mode = "run"
    logs: tuple[str, ...] = ()
    exit_code: int = 0
    reason: str | None = None  # the container's terminated reason; default Completed/Error
    running_for: float | None = 0.0  # canned: seconds Running before exiting; None: until deleted
    line_interval: float = 0.0  # canned: seconds between log lines
    message: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # run: extra env for the process
    command: tuple[str, ...] | None = None  # run: replaces the container's `command` (args kept)

    @classmethod
    def run(cls, *, env: Mapping[str, str] | None = None, command: Sequence[str] | None = None) -> PodScript:
        return cls(mode="run", env=dict(env or {}), command=tuple(command) if command is not None else None)

    @classmethod
    def canned(cls, logs: Sequence[str] = (), exit_code: int = 0, *, running_for: float | None = 0.0,
               line_interval: float = 0.0, reason: str | None = None, message: str | None = None) -> PodScript:
        return cls(mode="canned", logs=tuple(logs), exit_code=exit_code, running_for=running_for,
                   line_interval=line_interval, reason=reason, message=message)

    @classmethod
    def hang(cls, logs: Sequence[str] = ()) -> PodScript:
        """Running until deleted."""
        return cls.canned(logs, running_for=None)

    @classmethod
    def oom_killed(cls, logs: Sequence[str] = (), *, running_for: float = 0.0) -> PodScript:
        return cls.canned(logs, 137, running_for=running_for, reason="OOMKilled")

    @classmethod
    def evicted(cls, message: str = "The node was low on resource: memory.", *,
                running_for: float = 0.0) -> PodScript:
        return cls(mode="evicted", message=message, running_for=running_for)

    @classmethod
    def unschedulable(cls, message: str = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. "
                      "preemption: 0/1 nodes are available.") -> PodScript:
        return cls(mode="unschedulable", message=message)

    @classmethod
    def image_pull_backoff(cls, message: str = 'Back-off pulling image: not found') -> PodScript:
        return cls(mode="image-pull-backoff", message=message)


PodMatcher = str | Callable[[Mapping[str, Any]], bool]


class PodLog:
    """A pod's log lines; followers are woken on every new line and at the end."""

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
                continue
            if self.done or not alive():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll)


@dataclasses.dataclass
class _PodRun:
    namespace: str
    name: str
    uid: str
    pod: Body
    script: PodScript
    log: PodLog
    terminating: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    gone: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    grace: float = 30.0
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    directory: pathlib.Path | None = None
    argv: list[str] = dataclasses.field(default_factory=list)
    started: bool = False  # the container has started: there is a log to serve


class Kubelet:
    """The emulated node. `script(match, PodScript…)` before the pod is created; `default` otherwise."""

    node_name = "emulated-node"

    def __init__(self, kube: Kube, *, workdir: pathlib.Path, grace_cap: float | None = None,
                 watch_seconds: int = 30, mount_wait: float = 5.0) -> None:
        self.kube = kube
        # A real kubelet retries a volume whose ConfigMap/Secret is not there yet (the pod stays
        # ContainerCreating); this one retries for ``mount_wait`` seconds, then reports the error.
        self.mount_wait = mount_wait
        self.workdir = workdir
        self.grace_cap = grace_cap  # cap on termination grace periods, to keep tests quick
        self.watch_seconds = watch_seconds  # server-side timeout of each pod watch
        self.default = PodScript.run()
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

    def log(self, name: str, namespace: str = "default") -> PodLog | None:
        run = self._latest.get((namespace, name))
        return run.log if run is not None else None

    def process_argv(self, name: str, namespace: str = "default") -> list[str] | None:
        """The local argv a `run` pod was started with (after path mapping), for assertions."""
        run = self._latest.get((namespace, name))
        return run.argv if run is not None else None

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
        self._http = httpx.AsyncClient(base_url=self.kube.url, timeout=httpx.Timeout(10.0))
        # Not a kmock reaction (`emulator["get", resource("v1/pods"), subresource("log")] << ...` works
        # too): any reaction makes kmock's per-request matching O(requests served).
        self.kube.emulator.pod_logs = self._serve_log
        self._watch_task = asyncio.create_task(self._watch_pods(), name="kubelet-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        for run in list(self._runs.values()):
            if run.process is not None and run.process.returncode is None:
                _signal_group(run.process, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.process.wait(), 5)
            if run.task is not None:
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(run.task, 5)
            run.log.close()
        self.kube.emulator.pod_logs = None
        if self._http is not None:
            await self._http.aclose()

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
                run.terminating.set()
        for pod in listing["items"]:
            self._on_event("ADDED", pod)
        return str(listing["metadata"]["resourceVersion"])

    def _on_event(self, kind: str, pod: Body) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        run = self._runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.gone.set()
                run.terminating.set()
            return
        if spec.get("nodeName") not in (None, self.node_name):
            return  # another node's pod
        if run is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            run = _PodRun(namespace=meta.get("namespace", "default"), name=meta["name"], uid=uid, pod=pod,
                          script=self._script_for(pod), log=PodLog())
            self._runs[uid] = run
            self._latest[(run.namespace, run.name)] = run
            run.task = asyncio.create_task(self._lifecycle(run), name=f"kubelet-pod-{run.name}")
        run.pod = pod
        if meta.get("deletionTimestamp") and not run.terminating.is_set():
            grace = float(meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30)))
            run.grace = min(grace, self.grace_cap) if self.grace_cap is not None else grace
            run.terminating.set()

    # --- one pod ---------------------------------------------------------------------

    async def _patch_status(self, run: _PodRun, status: Body) -> None:
        with contextlib.suppress(ApiError):  # the pod may be gone already
            await self.kube.patch(PODS, run.name, {"status": status}, run.namespace, subresource="status")

    async def _lifecycle(self, run: _PodRun) -> None:
        try:
            await self._drive(run)
        finally:
            run.log.close()  # the pod's directory stays: tmp_path goes with the test

    async def _drive(self, run: _PodRun) -> None:
        script = run.script
        if script.mode == "unschedulable":
            await self._patch_status(run, pods.status_unschedulable(now_rfc3339(), script.message or ""))
            await run.terminating.wait()  # an unbound pod is deleted at once by the apiserver
            return
        with contextlib.suppress(ApiError):  # the binding
            await self.kube.patch(PODS, run.name, {"spec": {"nodeName": self.node_name}}, run.namespace)
        await self._patch_status(run, pods.status_waiting(run.pod, now_rfc3339(), "ContainerCreating"))
        if script.mode == "image-pull-backoff":
            await self._patch_status(run, pods.status_waiting(run.pod, now_rfc3339(), "ErrImagePull", script.message))
            await asyncio.sleep(0.05)
            await self._patch_status(run, pods.status_waiting(run.pod, now_rfc3339(), "ImagePullBackOff",
                                                              script.message))
            await run.terminating.wait()
            await self._confirm_deletion(run)
            return
        if script.mode == "run":
            try:
                await self._start_process(run)
            except pods.ContainerConfigError as e:
                await self._patch_status(run, pods.status_waiting(run.pod, now_rfc3339(),
                                                                  "CreateContainerConfigError", str(e)))
                await run.terminating.wait()
                await self._confirm_deletion(run)
                return
        started_at = now_rfc3339()
        run.started = True
        await self._patch_status(run, pods.status_running(run.pod, now_rfc3339(), started_at))
        if script.mode == "run":
            exit_code = await self._wait_process(run)
            reason, message, pod_reason = None, None, None
        else:
            exit_code = await self._play_canned(run)
            reason, message = script.reason, script.message
            pod_reason = "Evicted" if script.mode == "evicted" else None
            if run.terminating.is_set():
                exit_code, reason, pod_reason = 143, "Error", None
        await self._patch_status(run, pods.status_terminated(run.pod, now_rfc3339(), started_at, exit_code,
                                                             reason, message, pod_reason))
        if run.terminating.is_set():
            await self._confirm_deletion(run)

    async def _play_canned(self, run: _PodRun) -> int:
        script = run.script
        for line in script.logs:
            run.log.append(line)
            if script.line_interval and await _wait_event(run.terminating, script.line_interval):
                return 143
        if script.running_for is None:
            await run.terminating.wait()
        elif script.running_for > 0:
            await _wait_event(run.terminating, script.running_for)
        return 137 if script.mode == "evicted" else script.exit_code

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

    async def _start_process(self, run: _PodRun) -> None:
        pod, ns = run.pod, run.namespace
        cm_names, secret_names = pods.referenced_objects(pod)
        deadline = asyncio.get_running_loop().time() + self.mount_wait
        while True:
            configmaps = await self._fetch_all(CONFIGMAPS, cm_names, ns)
            secrets = await self._fetch_all(SECRETS, secret_names, ns)
            complete = len(configmaps) == len(cm_names) and len(secrets) == len(secret_names)
            if complete or asyncio.get_running_loop().time() >= deadline or run.terminating.is_set():
                break
            await asyncio.sleep(0.05)
        run.directory = self.workdir / f"{ns}_{run.name}_{run.uid[:8]}"
        argv, cwd, env = await asyncio.to_thread(_prepare_sandbox, run.directory, pod, configmaps, secrets,
                                                 run.script)
        run.argv = argv
        try:
            run.process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=16 * 1024 * 1024,
            )
        except OSError as e:
            raise pods.ContainerConfigError(f"cannot start {argv[0]!r}: {e}") from e

    async def _pump(self, stream: asyncio.StreamReader | None, log: PodLog) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            log.append(line.decode(errors="replace").rstrip("\n"))

    async def _wait_process(self, run: _PodRun) -> int:
        process = run.process
        assert process is not None
        pumps = asyncio.gather(self._pump(process.stdout, run.log), self._pump(process.stderr, run.log))
        exited = asyncio.ensure_future(process.wait())
        terminating = asyncio.ensure_future(run.terminating.wait())
        await asyncio.wait({exited, terminating}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            _signal_group(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), run.grace)
            except TimeoutError:
                _signal_group(process, signal.SIGKILL)
                await asyncio.wait_for(exited, 10)
        terminating.cancel()
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
        run = self._runs.get(pod["metadata"]["uid"])
        if run is None or not run.started:
            container = pods.main_container(pod).get("name", "main")
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=(
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'))
        params = request.params
        start = 0
        if params.get("tailLines"):
            start = max(0, len(run.log.lines) - int(params["tailLines"]))
        if params.get("follow") == "true":
            raw = request._raw_request

            def alive() -> bool:
                return raw is None or (raw.transport is not None and not raw.transport.is_closing())

            return Response(headers={"Content-Type": "text/plain"}, payload=run.log.follow(start, alive))
        body = "".join(line + "\n" for line in run.log.lines[start:]).encode()
        return Response(headers={"Content-Type": "text/plain"}, payload=body)


def _prepare_sandbox(
    directory: pathlib.Path, pod: Body, configmaps: Mapping[str, Body], secrets: Mapping[str, Body],
    script: PodScript,
) -> tuple[list[str], str, dict[str, str]]:
    """Materialise the pod's volumes under `directory`; return the local argv, cwd and env."""
    container = pods.main_container(pod)
    volume_dirs: dict[str, str] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        local = directory / "volumes" / volume["name"]
        local.mkdir(parents=True, exist_ok=True)
        for relpath, content in (pods.volume_files(volume, configmaps, secrets) or {}).items():
            target = local / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        volume_dirs[volume["name"]] = str(local)
    mounts = pods.mount_points(container, volume_dirs)
    for _, local_path in mounts:
        if not pathlib.Path(local_path).exists():
            pathlib.Path(local_path).mkdir(parents=True)  # a subPath that names a new directory
    home = directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    working_dir = container.get("workingDir")
    cwd = pods.map_paths(working_dir, mounts) if working_dir else str(directory)
    if working_dir and cwd == working_dir:  # not under a mount: give it a private directory
        cwd = str(directory / "rootfs" / working_dir.lstrip("/"))
    pathlib.Path(cwd).mkdir(parents=True, exist_ok=True)
    env = {
        # The venv's interpreter first: `python` in a pod command means the test's Python.
        "PATH": str(pathlib.Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8"), "HOSTNAME": str(pod["metadata"]["name"]),
    }
    pod_env = pods.container_env(pod, container, configmaps, secrets)
    env.update({k: pods.map_paths(v, mounts) for k, v in pod_env.items()})
    env.update(script.env)
    argv = [pods.map_paths(a, mounts) for a in pods.container_argv(container, env, script.command)]
    return argv, cwd, env


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for the event; True if it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)

