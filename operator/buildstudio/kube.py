"""The Kubernetes adapter: raw-dict REST calls, configured by the ``kubernetes`` 37 client.

Why this shape: the ``kubernetes`` client handles kubeconfig, in-cluster auth and TLS; its
typed models are skipped (plain dicts), which keeps objects exactly as the API sent them and
avoids client-side validation of manifests. Object calls (get, list, create, patch, delete)
go through an ``aiohttp`` session on the caller's event loop, with the client's host, TLS
files and (refreshed) bearer token: measured in ``bench/reconcile.py``, a thread-pool hop
per call through the sync client cost ~5 ms per call one at a time and over a second per
dispatch in a burst of 200 (16 threads contending for the GIL). The rarer calls (log reads,
metadata-only probes) keep the sync client in this adapter's own thread pool; pod logs are
followed by a dedicated daemon thread per stream, handed to the loop line by line. Every
call carries an explicit timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import threading
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from buildstudio.lines import OVERLONG_MARKER, LineSplitter
from buildstudio.pins import API_GROUP, API_VERSION
from buildstudio.records import MAX_LINE_BYTES

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
# Only metadata comes back: a Secret's value is never read into this process.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class KubeError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"{status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body


@dataclass(frozen=True)
class Kind:
    prefix: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        out = self.prefix
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.plural} are namespaced: a namespace is required")
            out += f"/namespaces/{urllib.parse.quote(namespace)}"
        out += f"/{self.plural}"
        if name:
            out += f"/{urllib.parse.quote(name)}"
        if sub:
            out += f"/{sub}"
        return out


CRD_PREFIX = f"/apis/{API_GROUP}/{API_VERSION}"
KINDS: dict[str, Kind] = {
    "Pod": Kind("/api/v1", "pods"),
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "Secret": Kind("/api/v1", "secrets"),
    "Event": Kind("/api/v1", "events"),
    "NetworkPolicy": Kind("/apis/networking.k8s.io/v1", "networkpolicies"),
    "BuildDispatch": Kind(CRD_PREFIX, "builddispatches"),
    "BuildEngine": Kind(CRD_PREFIX, "buildengines", namespaced=False),
}


def load_api_client(kubeconfig: str | None = None, *, pool_size: int = 32) -> k8s_client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (``KUBECONFIG``/default)."""
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig is not None:
            raise k8s_config.ConfigException("explicit kubeconfig")
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        # Read KUBECONFIG now: the client's default is frozen when it is imported.
        path = kubeconfig or os.environ.get("KUBECONFIG") or None
        k8s_config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool_size
    return k8s_client.ApiClient(configuration)


class Kube:
    """Async facade over the sync client. Objects in and out are plain dicts."""

    def __init__(self, api: k8s_client.ApiClient, *, timeout: float = 10.0, workers: int = 16) -> None:
        self.api = api
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._pool_size = int(getattr(api.configuration, "connection_pool_maxsize", 0) or 32)
        # One session per event loop (an aiohttp session is bound to the loop that made it).
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, *, timeout: float = 10.0) -> Kube:
        return cls(load_api_client(kubeconfig), timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()  # type: ignore[no-untyped-call]
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(RuntimeError):  # no running loop: the loop is gone with it
                if asyncio.get_running_loop() is self._session_loop:
                    task = asyncio.get_running_loop().create_task(session.close())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """``close()`` from a coroutine: the HTTP session is closed before this returns."""
        session, self._session = self._session, None
        self.close()
        if session is not None and not session.closed:
            await session.close()

    def _ssl(self) -> ssl.SSLContext | bool:
        conf = self.api.configuration
        if not str(conf.host).startswith("https"):
            return False
        if not conf.verify_ssl:
            return False
        ctx = ssl.create_default_context(cafile=conf.ssl_ca_cert or None)
        if conf.cert_file:
            ctx.load_cert_chain(conf.cert_file, conf.key_file or None)
        return ctx

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=self._ssl())
            self._session = aiohttp.ClientSession(
                base_url=None, connector=connector, json_serialize=json.dumps, trust_env=False
            )
            self._session_loop = loop
        return self._session

    # ------------------------------------------------------------ raw calls

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items()]
        _method, url, headers, payload, _post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=timeout or self.timeout
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Obj:
        """One JSON call on the event loop (no thread hop); non-2xx raises ``KubeError``."""
        conf = self.api.configuration
        headers = {"Content-Type": content_type, "Accept": JSON}
        # The client's auth: refreshes an expiring token (in-cluster, exec plugins) as it would.
        for auth in conf.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
        data = json.dumps(body).encode() if body is not None else None
        async with self._http().request(
            method,
            str(conf.host).rstrip("/") + path,
            params=params,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            text = await resp.text(errors="replace")
            if not 200 <= resp.status <= 299:
                raise KubeError(resp.status, str(resp.reason), text)
        parsed = json.loads(text) if text else {}
        return parsed if isinstance(parsed, dict) else {"items": parsed}

    # ------------------------------------------------------------ objects

    @staticmethod
    def path_of(obj: Mapping[str, Any], *, sub: str | None = None, with_name: bool = True) -> str:
        kind = KINDS[str(obj["kind"])]
        meta = obj.get("metadata") or {}
        return kind.path(meta.get("namespace"), meta.get("name") if with_name else None, sub)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self.call("GET", KINDS[kind].path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None) -> list[Obj]:
        query = {"labelSelector": label_selector} if label_selector else None
        found = await self.call("GET", KINDS[kind].path(namespace), query=query)
        return list(found.get("items") or [])

    async def create(self, obj: Mapping[str, Any]) -> tuple[Obj, bool]:
        """Create if absent: ``(object, True)``; when it exists (409), ``(existing, False)``."""
        try:
            return await self.call("POST", self.path_of(obj, with_name=False), body=dict(obj)), True
        except KubeError as exc:
            if exc.status != 409:
                raise
        meta = obj.get("metadata") or {}
        existing = await self.get(str(obj["kind"]), str(meta["name"]), meta.get("namespace"))
        if existing is None:  # deleted between the 409 and the read: let the caller retry
            raise KubeError(409, "Conflict", "object vanished after a conflict")
        return existing, False

    async def merge_patch(
        self, kind: str, name: str, namespace: str | None, patch: Mapping[str, Any], *, status: bool = False
    ) -> Obj:
        """JSON merge patch; ``status=True`` sends ``{"status": patch}`` to the status subresource."""
        path = KINDS[kind].path(namespace, name, "status" if status else None)
        body = {"status": dict(patch)} if status else dict(patch)
        return await self.call("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(
        self, kind: str, name: str, namespace: str | None = None, *, grace_seconds: int | None = None
    ) -> bool:
        """Delete; ``False`` when it was already gone. Children go in the background (GC)."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self.call("DELETE", KINDS[kind].path(namespace, name), body=body)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def secret_value(self, name: str, key: str, namespace: str) -> str | None:
        """One key of a Secret, decoded; None when the Secret or the key is absent. Used only
        for the model service's API key, which the operator's own probes must send."""
        obj = await self.get("Secret", name, namespace)
        if obj is None:
            return None
        raw = (obj.get("data") or {}).get(key)
        if raw is None:
            return None
        try:
            return base64.b64decode(raw).decode().strip()
        except (ValueError, UnicodeDecodeError):
            return None

    async def exists_metadata_only(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Existence without reading the object's content (Secrets: the value stays unread)."""
        path = KINDS[kind].path(namespace, name)

        def probe() -> bool:
            resp = self._send("GET", path, accept=METADATA_ONLY)
            resp.response.release_conn()  # the body is dropped unread
            if resp.status == 404:
                return False
            if 200 <= resp.status <= 299:
                return True
            raise KubeError(resp.status, str(resp.reason))

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, probe)

    # ------------------------------------------------------------ logs

    async def read_log(
        self, namespace: str, pod: str, *, limit_bytes: int = 4 * 1024 * 1024, container: str | None = None
    ) -> str:
        path = KINDS["Pod"].path(namespace, pod, "log")
        query: dict[str, Any] = {"limitBytes": limit_bytes}
        if container:
            query["container"] = container

        def read() -> str:
            resp = self._send("GET", path, query=query, accept="*/*")
            data = resp.read()
            text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
            if not 200 <= resp.status <= 299:
                raise KubeError(resp.status, str(resp.reason), text)
            return text

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, read)

    async def follow_log(
        self, namespace: str, pod: str, *, idle_timeout: float = 120.0, container: str | None = None
    ) -> AsyncIterator[str]:
        """The pod's log from its start, line by line, until the stream ends.

        A dedicated daemon thread reads the stream (a follow can last for the whole run);
        ``idle_timeout`` bounds the silence between chunks, after which this raises
        ``TimeoutError`` and the caller re-attaches.
        """
        path = KINDS["Pod"].path(namespace, pod, "log")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        resp_box: list[Any] = []

        def put(item: bytes | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                query: dict[str, Any] = {"follow": True}
                if container:
                    query["container"] = container
                resp = self._send("GET", path, query=query, accept="*/*", timeout=(self.timeout, idle_timeout))
                resp_box.append(resp)
                if not 200 <= resp.status <= 299:
                    body = resp.read()
                    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
                    put(KubeError(resp.status, str(resp.reason), text))
                    return
                # Each byte is scanned once and a line is capped: an over-long line reaches the
                # reader as one marker line (counted as malformed), never as unbounded memory.
                splitter = LineSplitter(MAX_LINE_BYTES, overlong_marker=OVERLONG_MARKER)
                for chunk in resp.response.stream(16384, decode_content=True):
                    for line in splitter.feed(chunk):
                        put(line)
                for line in splitter.close():
                    put(line)
                put(None)
            except BaseException as exc:  # handed to the loop: timeouts, resets, closed streams
                put(exc)

        thread = threading.Thread(target=pump, name=f"log-{namespace}-{pod}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if "Read timed out" in str(item) or isinstance(item, TimeoutError):
                        raise TimeoutError(f"no log output from {namespace}/{pod} for {idle_timeout}s") from item
                    raise item
                yield item.decode("utf-8", errors="replace")
        finally:
            if resp_box:
                # Unblocks the pump thread's read when the consumer stops early.
                await loop.run_in_executor(self._pool, _close_quietly, resp_box[0])


def _close_quietly(resp: Any) -> None:
    with contextlib.suppress(Exception):
        resp.response.shutdown()
    with contextlib.suppress(Exception):
        resp.response.close()
