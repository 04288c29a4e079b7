"""The Kubernetes adapter: plain-dict object calls, watches and pod logs over ``kubernetes_asyncio``.

One client for everything the operator and the CLI do beside kopf (kopf keeps its own): the
kubeconfig (contexts, exec plugins, client certificates, CAs) or the in-cluster service account
are loaded by ``kubernetes_asyncio.config``; each call goes through the client's typed API
(``CoreV1Api``, ``NetworkingV1Api``, ``CustomObjectsApi`` for our CRDs), chosen by a small table
of kinds, on the caller's event loop. Every call asks for the raw response
(``_preload_content=False``) and decodes the JSON itself: objects stay plain dicts exactly as
the API sent them, and no model classes are built.

Every call carries an explicit ``aiohttp.ClientTimeout``: a connect bound (``connect_timeout``)
and a read bound (``timeout``) with a total of both for object calls; a log follow or a watch
bounds the silence between chunks instead of the whole stream. Streams (``follow=True`` logs,
watches) are read on the loop, chunk by chunk, through the package's one ``LineSplitter`` with a
bounded line: no thread per pod. A stream holds its connection for as long as it lasts (one per
running sandbox), so streams have their own HTTP session, without a connection limit; object
calls share a bounded pool (``pool_size``) that streams can never exhaust.

A 403 on one of the operator's own writes is made visible once a minute per verb, kind and
namespace: a warning in the log and, when ``forbidden_events`` is on (the operator), a Warning
Event ``Forbidden`` on the object or its controlling owner. The ``KubeError`` is raised as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

from buildstudio.adapters.metrics import record_kube_error
from buildstudio.api.common import API_GROUP, API_VERSION
from buildstudio.protocol.lines import OVERLONG_MARKER, LineSplitter, aiter_lines
from buildstudio.protocol.records import MAX_LINE_BYTES

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
# Only metadata comes back: a Secret's value is never read into this process.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
CONNECT_TIMEOUT = 5.0
FORBIDDEN_REPORT_INTERVAL = 60.0
MAX_ERROR_BODY = 64 * 1024
WRITES = frozenset({"create", "patch", "delete"})


class KubeError(Exception):
    """A non-2xx answer of the API server: ``status`` (404, 409, 410, 422, 403 …), ``reason``
    (the HTTP reason phrase) and the response ``body`` (usually a ``Status`` object)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"{status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def message(self) -> str:
        """The ``Status`` object's message when the body is one, else the start of the body."""
        with contextlib.suppress(ValueError, AttributeError):
            parsed = json.loads(self.body)
            if isinstance(parsed, dict) and parsed.get("message"):
                return str(parsed["message"])
        return self.body[:300]


@dataclass(frozen=True)
class Kind:
    """How the typed client names a kind: ``api`` is ``core``, ``networking`` or ``custom``;
    ``name`` is the snake-case name in the method names (``config_map``), or the plural of a
    custom resource."""

    api: str
    name: str
    namespaced: bool = True
    group: str = ""
    version: str = ""
    plural: str = ""


KINDS: dict[str, Kind] = {
    "Pod": Kind("core", "pod", version="v1", plural="pods"),
    "ConfigMap": Kind("core", "config_map", version="v1", plural="configmaps"),
    "Secret": Kind("core", "secret", version="v1", plural="secrets"),
    "Event": Kind("core", "event", version="v1", plural="events"),
    "NetworkPolicy": Kind("networking", "network_policy", True, "networking.k8s.io", "v1", "networkpolicies"),
    "BuildDispatch": Kind("custom", "builddispatches", True, API_GROUP, API_VERSION, "builddispatches"),
    "BuildEngine": Kind("custom", "buildengines", False, API_GROUP, API_VERSION, "buildengines"),
    "BuildPipeline": Kind("custom", "buildpipelines", True, API_GROUP, API_VERSION, "buildpipelines"),
}


# ---------------------------------------------------------------------------- configuration


class PlainApiClient(k8s.ApiClient):
    """``ApiClient`` without two per-call costs of the stock one (measured: ``bench/README.md``).

    - Bodies here are JSON-ready dicts already (manifests, patches). The client deep-copies every
      body through ``sanitize_for_serialization`` to turn model objects into dicts; for plain JSON
      that copy is pure cost (the largest part of a create's CPU), so a dict goes out
      as it is. A value that is not JSON still fails loudly, in ``json.dumps``.
    - Its aiohttp session trusts the environment, which makes aiohttp look up ``~/.netrc`` in a
      worker thread before every request (a thread hop per call, though every call carries its
      own credentials). The kubeconfig's ``proxy-url`` is still honoured (it is passed per
      request); ``HTTPS_PROXY`` and netrc are not, as with the previous adapter.
    """

    def __init__(self, configuration: k8s.Configuration) -> None:
        super().__init__(configuration)
        self.rest_client.pool_manager._trust_env = False  # aiohttp has no public setter

    def sanitize_for_serialization(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            return obj
        return super().sanitize_for_serialization(obj)


def _in_cluster(conf: k8s.Configuration) -> bool:
    try:
        k8s_config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        return False
    return True


def _refresh_exec_token(loader: KubeConfigLoader, conf: k8s.Configuration) -> None:
    """Re-run an exec plugin whose token has expired, before the request that needs it (as the
    official synchronous client does); tokens without an expiry are kept."""
    lock = asyncio.Lock()

    async def hook(configuration: k8s.Configuration, *_: Any) -> None:
        if getattr(loader, "exec_plugin_expiry", None) is None or not hasattr(loader, "token"):
            return
        async with lock:
            await loader.load_from_exec_plugin()  # returns at once while the token is valid
            configuration.api_key["BearerToken"] = loader.token

    if "exec" in (loader._user or {}):
        conf.refresh_api_key_hook = hook


async def load_api_client(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    in_cluster: bool | None = None,
    pool_size: int = 32,
) -> k8s.ApiClient:
    """An API client on the running loop. ``in_cluster=None``: the service account when running in a
    pod and no kubeconfig was named, else the kubeconfig (``kubeconfig``, ``$KUBECONFIG``,
    ``~/.kube/config``); ``True``/``False`` force one of them."""
    conf = k8s.Configuration()
    use_cluster = in_cluster
    if use_cluster is None:
        use_cluster = kubeconfig is None and context is None and _in_cluster(conf)
    elif use_cluster:
        k8s_config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    if not use_cluster:
        loader = await k8s_config.load_kube_config(
            config_file=_kubeconfig_path(kubeconfig), context=context, client_configuration=conf, persist_config=False
        )
        _refresh_exec_token(loader, conf)
    conf.connection_pool_maxsize = pool_size
    return PlainApiClient(conf)


# A missing kubeconfig is reported once, by the caller's own error; the loader's warning repeats it.
logging.getLogger("kubernetes_asyncio.config.kube_config").setLevel(logging.ERROR)


def _kubeconfig_path(kubeconfig: str | None) -> str:
    # Read KUBECONFIG now: the client's default is frozen when it is imported.
    return kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def kubeconfig_contexts(kubeconfig: str | None = None) -> dict[str, Any]:
    """The kubeconfig's contexts and current context, shaped as in the file (for ``-n`` defaults)."""
    contexts, active = k8s_config.list_kube_config_contexts(_kubeconfig_path(kubeconfig))
    return {"current-context": (active or {}).get("name"), "contexts": contexts}


# ---------------------------------------------------------------------------- the client


class Kube:
    """Objects in and out are plain dicts. ``api`` is an ``ApiClient`` made on the loop that uses
    it, or None with a ``loader`` that makes one on first use (``from_config``)."""

    def __init__(
        self,
        api: k8s.ApiClient | None = None,
        *,
        timeout: float = 10.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        loader: Callable[[], Awaitable[k8s.ApiClient]] | None = None,
        forbidden_events: bool = False,
    ) -> None:
        if api is None and loader is None:
            raise ValueError("Kube needs an ApiClient or a loader")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.forbidden_events = forbidden_events
        self._api: k8s.ApiClient | None = None
        self._apis: dict[str, Any] = {}
        self._streams: k8s.ApiClient | None = None  # made on the first stream
        self._stream_apis: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._loader = loader
        self._loading: asyncio.Lock | None = None
        self._reported: dict[tuple[str, str, str], float] = {}
        if api is not None:
            self._bind(api)

    @classmethod
    def from_config(
        cls,
        kubeconfig: str | None = None,
        *,
        context: str | None = None,
        in_cluster: bool | None = None,
        timeout: float = 10.0,
        forbidden_events: bool = True,
    ) -> Kube:
        """Loaded on first use, on the loop of that use (the config loader and the HTTP session are async)."""
        return cls(
            timeout=timeout,
            loader=lambda: load_api_client(kubeconfig, context=context, in_cluster=in_cluster),
            forbidden_events=forbidden_events,
        )

    def _bind(self, api: k8s.ApiClient) -> None:
        self._api = api
        self._apis = {"core": k8s.CoreV1Api(api), "networking": k8s.NetworkingV1Api(api),
                      "custom": k8s.CustomObjectsApi(api)}  # fmt: skip

    async def client(self) -> k8s.ApiClient:
        if self._api is None:
            if self._loader is None:
                raise RuntimeError("the Kubernetes client is closed")
            self._loading = self._loading or asyncio.Lock()
            async with self._loading:
                if self._api is None:
                    self._bind(await self._loader())
        assert self._api is not None
        return self._api

    async def _stream_client(self) -> dict[str, Any]:
        """The typed APIs over the streams' own session (same configuration, no connection limit)."""
        api = await self.client()
        if self._streams is None:
            conf = copy.copy(api.configuration)  # shares the credentials and their refresh
            conf.connection_pool_maxsize = 0  # aiohttp: no limit
            self._streams = PlainApiClient(conf)
            self._stream_apis = {"core": k8s.CoreV1Api(self._streams), "custom": k8s.CustomObjectsApi(self._streams),
                                 "networking": k8s.NetworkingV1Api(self._streams)}  # fmt: skip
        return self._stream_apis

    async def aclose(self) -> None:
        """Close the HTTP sessions (their connections) before this returns."""
        clients = (self._api, self._streams)
        self._api, self._apis, self._streams, self._stream_apis = None, {}, None, {}
        for api in clients:
            if api is not None:
                await api.close()

    def close(self) -> None:
        """``aclose()`` from synchronous code on a running loop (scheduled); a no-op without one."""
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(self.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------ timeouts

    def _timeout(self, read: float | None = None, *, stream: bool = False) -> aiohttp.ClientTimeout:
        read = self.timeout if read is None else read
        total = None if stream else self.connect_timeout + read
        return aiohttp.ClientTimeout(
            total=total, connect=self.connect_timeout, sock_connect=self.connect_timeout, sock_read=read
        )

    # ------------------------------------------------------------ raw calls through the typed API

    @staticmethod
    def _op(
        apis: dict[str, Any], kind: Kind, verb: str, namespace: str | None, name: str | None, *, sub: str = ""
    ) -> Any:
        """The typed method and its positional arguments for ``verb`` (read/list/create/patch/delete)."""
        if kind.namespaced and not namespace and verb != "list":
            raise ValueError(f"{kind.plural} are namespaced: a namespace is required")
        api = apis[kind.api]
        tail = f"_{sub}" if sub else ""
        names = [name] if name else []
        if kind.api == "custom":
            custom_verb = "get" if verb == "read" else verb
            if kind.namespaced and namespace:
                method = f"{custom_verb}_namespaced_custom_object{tail}"
                args = [kind.group, kind.version, namespace, kind.plural, *names]
            else:
                method = f"{custom_verb}_cluster_custom_object{tail}"
                args = [kind.group, kind.version, kind.plural, *names]
        elif not kind.namespaced:
            method, args = f"{verb}_{kind.name}{tail}", names
        elif namespace:
            method, args = f"{verb}_namespaced_{kind.name}{tail}", [*names, namespace]
        else:  # list across namespaces
            method, args = f"list_{kind.name}_for_all_namespaces", []
        return getattr(api, method), args

    async def _request(
        self,
        verb: str,
        kind_name: str,
        namespace: str | None,
        name: str | None = None,
        *,
        sub: str = "",
        body: Any = None,
        bounds: aiohttp.ClientTimeout | None = None,
        stream: bool = False,
        **params: Any,
    ) -> aiohttp.ClientResponse:
        """The open response of one call (2xx); a non-2xx answer raises ``KubeError``."""
        if stream:
            apis = await self._stream_client()
        else:
            await self.client()
            apis = self._apis
        kind = KINDS[kind_name]
        method, args = self._op(apis, kind, verb, namespace, name, sub=sub)
        if body is not None and verb == "delete":
            params["body"] = body  # DeleteOptions: a keyword of the typed delete methods
        elif body is not None:
            args.append(body)
        # Booleans as the API server documents them (the client would send "True").
        params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        if verb == "patch":
            params["_content_type"] = MERGE_PATCH
        try:
            resp: aiohttp.ClientResponse = await method(
                *args, _preload_content=False, _request_timeout=bounds or self._timeout(), **params
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            record_kube_error(verb, kind.plural, "timeout" if isinstance(exc, TimeoutError) else "connection")
            raise
        if 200 <= resp.status <= 299:
            return resp
        record_kube_error(verb, kind.plural, resp.status)
        async with resp:
            text = (await resp.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
        error = KubeError(resp.status, str(resp.reason), text)
        if error.status == 403 and verb in WRITES:
            await self._forbidden(error, verb, kind, namespace, name, body)
        raise error

    async def _json(self, verb: str, kind: str, namespace: str | None, name: str | None = None, **kw: Any) -> Obj:
        resp = await self._request(verb, kind, namespace, name, **kw)
        async with resp:
            data = await resp.read()
        parsed = json.loads(data) if data else {}
        return parsed if isinstance(parsed, dict) else {"items": parsed}

    # ------------------------------------------------------------ objects

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self._json("read", kind, namespace, name)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None) -> list[Obj]:
        params = {"label_selector": label_selector} if label_selector else {}
        found = await self._json("list", kind, namespace, **params)
        return list(found.get("items") or [])

    async def create(self, obj: Mapping[str, Any]) -> tuple[Obj, bool]:
        """Create if absent: ``(object, True)``; when it exists (409), ``(existing, False)``.
        An object with only ``generateName`` is always new."""
        meta = obj.get("metadata") or {}
        kind = str(obj["kind"])
        try:
            return await self._json("create", kind, meta.get("namespace"), body=dict(obj)), True
        except KubeError as exc:
            if exc.status != 409 or not meta.get("name"):
                raise
        existing = await self.get(kind, str(meta["name"]), meta.get("namespace"))
        if existing is None:  # deleted between the 409 and the read: let the caller retry
            raise KubeError(409, "Conflict", "object vanished after a conflict")
        return existing, False

    async def merge_patch(
        self, kind: str, name: str, namespace: str | None, patch: Mapping[str, Any], *, status: bool = False
    ) -> Obj:
        """JSON merge patch; ``status=True`` sends ``{"status": patch}`` to the status subresource."""
        body = {"status": dict(patch)} if status else dict(patch)
        return await self._json("patch", kind, namespace, name, sub="status" if status else "", body=body)

    async def delete(
        self, kind: str, name: str, namespace: str | None = None, *, grace_seconds: int | None = None
    ) -> bool:
        """Delete; ``False`` when it was already gone. Children go in the background (GC)."""
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            await self._json("delete", kind, namespace, name, body=options)
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
        """Existence without reading the object's content (Secrets: the value stays unread).

        The typed methods fix the Accept header, so this one call goes through the client's
        generic ``call_api`` (same auth, TLS and timeouts) with the partial-metadata Accept."""
        api = await self.client()
        k = KINDS[kind]
        prefix = "/api/v1" if k.api == "core" else f"/apis/{k.group}/{k.version}"
        path = prefix + ("/namespaces/{namespace}" if k.namespaced else "") + f"/{k.plural}/{{name}}"
        if k.namespaced and not namespace:
            raise ValueError(f"{k.plural} are namespaced: a namespace is required")
        path_params = {"name": name, **({"namespace": namespace} if k.namespaced else {})}
        resp: aiohttp.ClientResponse = await api.call_api(
            path,
            "GET",
            path_params,
            [],
            {"Accept": METADATA_ONLY},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=self._timeout(),
        )
        async with resp:  # the body is dropped unread
            if resp.status == 404:
                return False
            if 200 <= resp.status <= 299:
                return True
            raise KubeError(resp.status, str(resp.reason))

    # ------------------------------------------------------------ streams

    async def watch(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        max_line: int = MAX_LINE_BYTES,
    ) -> AsyncIterator[Obj]:
        """The events (``{"type": …, "object": …}``) of one watch request, until the server ends it
        (after ``timeout_seconds``); a line over ``max_line`` is skipped. A too-old
        ``resource_version`` raises ``KubeError`` 410 (or comes as an ``ERROR`` event)."""
        params: dict[str, Any] = {"watch": True, "timeout_seconds": timeout_seconds, "allow_watch_bookmarks": False}
        for key, value in (("field_selector", field_selector), ("label_selector", label_selector),
                           ("resource_version", resource_version)):  # fmt: skip
            if value:
                params[key] = value
        # The server ends the request after timeout_seconds; the read bound is a margin over it.
        resp = await self._request(
            "list", kind, namespace, bounds=self._timeout(timeout_seconds + 30, stream=True), stream=True, **params
        )
        try:
            async for line in aiter_lines(resp.content.read, LineSplitter(max_line)):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
        finally:
            resp.close()

    async def read_log(
        self, namespace: str, pod: str, *, limit_bytes: int = 4 * 1024 * 1024, container: str | None = None
    ) -> str:
        params: dict[str, Any] = {"limit_bytes": limit_bytes}
        if container:
            params["container"] = container
        resp = await self._request("read", "Pod", namespace, pod, sub="log", **params)
        async with resp:
            data = await resp.read()
        return data.decode("utf-8", errors="replace")

    async def follow_log(
        self, namespace: str, pod: str, *, idle_timeout: float = 120.0, container: str | None = None
    ) -> AsyncIterator[str]:
        """The pod's log from its start, line by line, until the stream ends.

        Read on the loop as it arrives; ``idle_timeout`` bounds the silence between chunks, after
        which this raises ``TimeoutError`` and the caller re-attaches. Each byte is scanned once
        and a line is capped: an over-long line reaches the reader as one marker line (counted as
        malformed), never as unbounded memory."""
        params: dict[str, Any] = {"follow": True}
        if container:
            params["container"] = container
        bounds = self._timeout(idle_timeout, stream=True)
        try:
            resp = await self._request("read", "Pod", namespace, pod, sub="log", bounds=bounds, stream=True, **params)
        except TimeoutError as exc:  # headers come when the container starts writing
            raise TimeoutError(f"no log output from {namespace}/{pod} for {idle_timeout}s") from exc
        try:
            splitter = LineSplitter(MAX_LINE_BYTES, overlong_marker=OVERLONG_MARKER)
            try:
                async for line in aiter_lines(resp.content.read, splitter):
                    yield line.decode("utf-8", errors="replace")
            except TimeoutError as exc:
                raise TimeoutError(f"no log output from {namespace}/{pod} for {idle_timeout}s") from exc
        finally:
            resp.close()  # a follow stopped midway: the connection is dropped, not reused

    # ------------------------------------------------------------ a 403 on our own writes

    async def _forbidden(
        self, error: KubeError, verb: str, kind: Kind, namespace: str | None, name: str | None, body: Any
    ) -> None:
        """Log (and post as an Event) that the API server refused one of our writes, at most once
        per ``FORBIDDEN_REPORT_INTERVAL`` per verb, kind and namespace."""
        key = (verb, kind.plural, namespace or "")
        now = time.monotonic()
        if now - self._reported.get(key, -FORBIDDEN_REPORT_INTERVAL) < FORBIDDEN_REPORT_INTERVAL:
            return
        self._reported[key] = now
        where = f" in namespace {namespace}" if namespace else ""
        text = (
            f"the API server refused to {verb} {kind.plural}{where} (HTTP 403, {error.reason}): {error.message}."
            " The operator's ServiceAccount lacks this permission: check the chart's RBAC rules"
        )
        log.warning("%s", text)
        if not self.forbidden_events:
            return
        involved = _involved(verb, kind, namespace, name, body)
        if involved is None:
            return
        with contextlib.suppress(Exception):  # the Event is a courtesy: its own failure changes nothing
            await self._json("create", "Event", involved.get("namespace") or "default", body=_event(involved, text))


def _involved(verb: str, kind: Kind, namespace: str | None, name: str | None, body: Any) -> Obj | None:
    """The object an Event about a refused write is attached to: a created object's controlling
    owner (the dispatch of a sandbox pod) when there is one, else the object written."""
    api_version = f"{kind.group}/{kind.version}" if kind.group else kind.version
    kind_name = next((k for k, v in KINDS.items() if v == kind), "")
    if verb == "create" and isinstance(body, Mapping):
        meta = body.get("metadata") or {}
        owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, Mapping)]
        owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
        if owner is not None and owner.get("name"):
            owner_kind = KINDS.get(str(owner.get("kind")))
            return {"apiVersion": owner.get("apiVersion", ""), "kind": owner.get("kind", ""),
                    "name": owner["name"], "uid": owner.get("uid", ""),
                    "namespace": namespace if owner_kind is None or owner_kind.namespaced else ""}  # fmt: skip
        name = name or meta.get("name")
    if not name:
        return None
    return {"apiVersion": api_version, "kind": kind_name, "name": name, "namespace": namespace or ""}


def _event(involved: Obj, message: str) -> Obj:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": involved.get("namespace") or "default"},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": "Warning",
        "reason": "Forbidden",
        "message": message[:1024],
        "source": {"component": "buildstudio"},
        "reportingComponent": "buildstudio",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
