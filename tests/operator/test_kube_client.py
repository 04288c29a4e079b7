"""The Kubernetes adapter's streams, timeouts and refusals, against a loopback aiohttp server that
answers as the API server would (the emulator tests cover the happy paths end to end)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from buildstudio.adapters.kube import Kube, KubeError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'pods is forbidden: User "system:serviceaccount:bs:op" cannot create resource "pods" in API group "" '
    'in the namespace "dev"',
    "reason": "Forbidden",
    "code": 403,
}


class Server:
    def __init__(self) -> None:
        self.app = web.Application()
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def route(self, method: str, path: str, handler: Handler) -> None:
        async def recorded(request: web.Request) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else None
            self.seen.append((request.method, request.path, dict(request.query), body))
            return await handler(request)

        self.app.router.add_route(method, path, recorded)

    async def start(self) -> Kube:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return Kube(k8s_client.ApiClient(k8s_client.Configuration(host=self.url)), timeout=1.0, forbidden_events=True)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    yield srv
    if srv.runner is not None:
        await srv.runner.cleanup()


def _json(obj: Any, status: int = 200) -> Handler:
    async def answer(_: web.Request) -> web.StreamResponse:
        return web.json_response(obj, status=status)

    return answer


async def test_a_403_on_our_write_is_logged_and_posted_as_an_event_on_the_owner(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("POST", "/api/v1/namespaces/dev/pods", _json(FORBIDDEN, 403))
    server.route("POST", "/api/v1/namespaces/dev/events", _json({"kind": "Event"}, 201))
    kube = await server.start()
    owner = {"apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildDispatch", "name": "d1", "uid": "u1",
             "controller": True}  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d1-1", "namespace": "dev",
                                                           "ownerReferences": [owner]}}  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="buildstudio.adapters.kube"):
            for _ in range(2):  # the second refusal within the minute is not reported again
                with pytest.raises(KubeError) as refused:
                    await kube.create(pod)
                # What callers (and kopf's retry message) see is unchanged: status, reason, the raw body.
                assert (refused.value.status, refused.value.reason) == (403, "Forbidden")
                assert str(refused.value).startswith('403 Forbidden: {"kind": "Status"')
    finally:
        await kube.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused to create pods in namespace dev" in warnings[0], warnings
    assert 'cannot create resource "pods"' in warnings[0] and "RBAC" in warnings[0]
    events = [body for method, path, _, body in server.seen if path.endswith("/events")]
    assert len(events) == 1, events
    event = events[0]
    assert (event["type"], event["reason"]) == ("Warning", "Forbidden")
    assert event["involvedObject"] == {"apiVersion": owner["apiVersion"], "kind": "BuildDispatch", "name": "d1",
                                       "uid": "u1", "namespace": "dev"}  # fmt: skip
    assert event["metadata"] == {"generateName": "d1.", "namespace": "dev"}
    assert 'cannot create resource "pods"' in event["message"]


async def test_a_403_on_a_read_is_raised_quietly(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.route("GET", "/api/v1/namespaces/dev/secrets/s", _json(FORBIDDEN, 403))
    kube = await server.start()
    try:
        with pytest.raises(KubeError) as refused:
            await kube.get("Secret", "s", "dev")
    finally:
        await kube.aclose()
    assert refused.value.status == 403
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [path for _, path, _, _ in server.seen] == ["/api/v1/namespaces/dev/secrets/s"]


async def test_status_codes_callers_branch_on(server: Server) -> None:
    server.route("GET", "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/dev/builddispatches/gone", _json({}, 404))
    server.route("POST", "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/dev/builddispatches",
                 _json({"kind": "Status", "code": 409}, 409))  # fmt: skip
    server.route("GET", "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/dev/builddispatches/d1",
                 _json({"kind": "BuildDispatch", "metadata": {"name": "d1"}}))  # fmt: skip
    server.route("PATCH", "/apis/buildstudio.dpf.dev/v1alpha1/buildengines/e/status",
                 _json({"kind": "Status", "code": 422}, 422))  # fmt: skip
    server.route("DELETE", "/api/v1/namespaces/dev/pods/p", _json({}, 404))
    kube = await server.start()
    try:
        assert await kube.get("BuildDispatch", "gone", "dev") is None
        existing, created = await kube.create({"kind": "BuildDispatch", "metadata": {"name": "d1", "namespace": "dev"}})
        assert (existing["metadata"]["name"], created) == ("d1", False)
        with pytest.raises(KubeError) as invalid:
            await kube.merge_patch("BuildEngine", "e", None, {"present": True}, status=True)
        assert invalid.value.status == 422
        assert await kube.delete("Pod", "p", "dev", grace_seconds=0) is False
    finally:
        await kube.aclose()
    patch = next(s for s in server.seen if s[0] == "PATCH")
    assert patch[3] == {"status": {"present": True}}
    delete = next(s for s in server.seen if s[0] == "DELETE")
    assert delete[3] == {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                         "gracePeriodSeconds": 0}  # fmt: skip


async def test_a_merge_patch_is_sent_as_one(server: Server) -> None:
    content_types: list[str] = []

    async def patched(request: web.Request) -> web.StreamResponse:
        content_types.append(request.headers["Content-Type"])
        return web.json_response({"kind": "Pod"})

    server.route("PATCH", "/api/v1/namespaces/dev/pods/p", patched)
    server.route("PATCH", "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/dev/builddispatches/d/status", patched)
    kube = await server.start()
    try:
        await kube.merge_patch("Pod", "p", "dev", {"metadata": {"labels": {"a": "b"}}})
        await kube.merge_patch("BuildDispatch", "d", "dev", {"phase": "Running"}, status=True)
    finally:
        await kube.aclose()
    assert content_types == ["application/merge-patch+json"] * 2


async def test_watch_reads_bounded_lines_and_410_is_a_kube_error(server: Server) -> None:
    path = "/apis/buildstudio.dpf.dev/v1alpha1/namespaces/dev/builddispatches"

    async def watch(request: web.Request) -> web.StreamResponse:
        if request.query.get("resourceVersion") == "old":
            return web.json_response({"kind": "Status", "code": 410, "reason": "Expired"}, status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        obj = {"metadata": {"name": "d1"}, "status": {"phase": "Running"}}
        await resp.write(json.dumps({"type": "MODIFIED", "object": obj}).encode()[:20])  # a line in two chunks
        await resp.write(json.dumps({"type": "MODIFIED", "object": obj}).encode()[20:] + b"\n")
        await resp.write(b'{"type": "MODIFIED", "object": {"pad": "' + b"x" * 5000 + b'"}}\n')  # over the cap
        await resp.write(json.dumps({"type": "DELETED", "object": obj}).encode() + b"\n")
        return resp

    server.route("GET", path, watch)
    kube = await server.start()
    try:
        events = [e async for e in kube.watch("BuildDispatch", "dev", field_selector="metadata.name=d1",
                                              resource_version="7", timeout_seconds=5, max_line=1024)]  # fmt: skip
        with pytest.raises(KubeError) as gone:
            async for _ in kube.watch("BuildDispatch", "dev", resource_version="old"):
                pass
    finally:
        await kube.aclose()
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert gone.value.status == 410
    query = server.seen[0][2]
    assert query == {"watch": "true", "timeoutSeconds": "5", "allowWatchBookmarks": "false",
                     "fieldSelector": "metadata.name=d1", "resourceVersion": "7"}  # fmt: skip


def _threads() -> set[str]:
    """Threads but the loop's default executor (aiohttp resolves host names there)."""
    return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}


async def test_follow_log_raises_timeout_after_the_idle_bound_and_reads_on_the_loop(server: Server) -> None:
    release = asyncio.Event()

    async def log(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b'{"kind": "progress"}\npartial')
        await release.wait()  # silent from here
        return resp

    server.route("GET", "/api/v1/namespaces/dev/pods/p/log", log)
    kube = await server.start()
    got: list[str] = []
    before = _threads()
    try:
        with pytest.raises(TimeoutError, match=r"no log output from dev/p for 0\.3s"):
            async for line in kube.follow_log("dev", "p", container="agent", idle_timeout=0.3):
                got.append(line)
                assert _threads() <= before  # no thread per pod
    finally:
        release.set()
        await kube.aclose()
    assert got == ['{"kind": "progress"}']
    assert server.seen[0][2] == {"follow": "true", "container": "agent"}


async def test_an_object_call_is_bounded_by_the_read_timeout(server: Server) -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    server.route("GET", "/api/v1/namespaces/dev/pods/p", hang)
    kube = await server.start()  # timeout=1.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(TimeoutError):
            await kube.get("Pod", "p", "dev")
    finally:
        release.set()
        await kube.aclose()
    assert loop.time() - start < 3.0


async def test_aclose_closes_the_http_session(server: Server) -> None:
    server.route("GET", "/api/v1/namespaces/dev/pods/p", _json({"kind": "Pod"}))
    kube = await server.start()
    api = await kube.client()
    await kube.get("Pod", "p", "dev")
    await kube.aclose()
    assert api.rest_client.pool_manager.closed


async def test_from_config_loads_on_the_loop_of_its_first_call(server: Server, tmp_path: Any) -> None:
    """Made outside a loop (as a sync kopf startup handler does); nothing is loaded until used."""
    server.route("GET", "/api/v1/namespaces/dev/pods/p", _json({"kind": "Pod"}))
    await server.start()
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))  # fmt: skip
    kube = await asyncio.to_thread(Kube.from_config, str(kubeconfig))
    try:
        assert await kube.get("Pod", "p", "dev") == {"kind": "Pod"}
    finally:
        await kube.aclose()


async def test_streams_never_take_the_connections_object_calls_need(server: Server) -> None:
    """Each running sandbox holds a log follow open for its whole run: more follows than the object
    pool has connections must leave object calls (status patches) unaffected."""
    release, all_open = asyncio.Event(), asyncio.Event()
    opened: list[str] = []

    async def log(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"started\n")
        opened.append(request.match_info["name"])
        if len(opened) == 6:
            all_open.set()
        await release.wait()
        return resp

    server.route("GET", "/api/v1/namespaces/dev/pods/{name}/log", log)
    server.route("GET", "/api/v1/namespaces/dev/pods/p", _json({"kind": "Pod"}))
    await server.start()
    conf = k8s_client.Configuration(host=server.url)
    conf.connection_pool_maxsize = 2
    kube = Kube(k8s_client.ApiClient(conf), timeout=1.0)

    async def follow(pod: str) -> list[str]:
        return [line async for line in kube.follow_log("dev", pod, idle_timeout=30)]

    follows = [asyncio.create_task(follow(f"s{i}")) for i in range(6)]
    try:
        await asyncio.wait_for(all_open.wait(), 5)
        assert await asyncio.wait_for(kube.get("Pod", "p", "dev"), 3) == {"kind": "Pod"}
        release.set()
        assert [await f for f in follows] == [["started"]] * 6
    finally:
        release.set()
        for f in follows:
            f.cancel()
        await kube.aclose()
