"""A kmock Kubernetes emulator that behaves enough like an apiserver for kopf and kubectl.

kmock 0.8 stores objects as plain dicts; this subclass adds what kopf and kubectl rely on
(see the shared testing notes): uid/resourceVersion/creationTimestamp/generation, a global
resourceVersion, 409/422 answers, watches that resume from a resourceVersion out of a bounded
event history (410 Gone once it is exceeded) and end after `timeoutSeconds`, typed LIST
responses, label/field selectors, correct discovery, JSON watch framing, the status
subresource, finalizers, graceful pod deletion, and (optionally) ownerReference GC.

All mutations run synchronously between awaits, so the event loop makes them atomic.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import pathlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs
import kmock
import yaml
from kmock._internal.rendering import ReactionMismatchError, Response  # not re-exported by kmock 0.8

from tests.kube import objects, patching, selectors, tables

Body = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]

CR_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"]}
_POD = kmock.resource("", "v1", "pods")
_SECRET = kmock.resource("", "v1", "secrets")


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or None)


def _not_found(resource: kmock.resource, name: str | None) -> kmock.KubernetesError:
    qualified = f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)
    return _error(404, "NotFound", f'{qualified} "{name}" not found', name=name, kind=resource.plural)


@attrs.define(eq=False)  # hashed by identity: kept in a set
class _Watcher:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    matches: selectors.Predicate
    queue: asyncio.Queue[Body] = attrs.field(factory=asyncio.Queue)

    def accepts(self, resource: kmock.resource, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (
            resource == self.resource
            and (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            and self.matches(obj)
        )


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """The emulator. Knobs: `event_history` (watch events kept for resumption), `gc_owned`
    (delete dependents whose owners are all gone), `graceful_pod_deletion` (a bound, running
    pod gets a deletionTimestamp and waits for the kubelet), `trim_requests` (keep only the
    last N requests in kmock's log: bounds the cost of kmock's matching once a test adds
    reactions, but breaks assertions on older requests)."""

    event_history: int = 10_000
    gc_owned: bool = True
    graceful_pod_deletion: bool = True
    trim_requests: int | None = None
    watch_max_seconds: float = 1800.0
    watch_poll_seconds: float = 0.5  # how often an idle watch checks that its client is still there

    _rv: int = attrs.field(default=1, init=False)
    _history: collections.deque[tuple[int, kmock.resource, Body]] = attrs.field(
        factory=collections.deque, init=False
    )
    _history_floor: int = attrs.field(default=0, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _gone_once: set[kmock.resource] = attrs.field(factory=set, init=False)
    gone_served: int = attrs.field(default=0, init=False)  # how many watches were answered 410
    # Serves GET pods/<name>/log (the kubelet fixture sets it); None: 404 as for an unknown subresource.
    pod_logs: Callable[[kmock.Request], Awaitable[Any]] | None = attrs.field(default=None, init=False)
    _builtin_payloads: frozenset[int] = attrs.field(factory=frozenset, init=False)
    # additionalPrinterColumns per resource (see register_crd): `kubectl get` receives Tables.
    printer_columns: dict[kmock.resource, list[Body]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback["get /openapi/v3"] << self._serve_openapi_index
        self.fallback["get", re.compile(r"/openapi/v3/apis?/.+")] << self._serve_openapi_group_version
        self._builtin_payloads = frozenset(id(p) for p in self._payloads)

    # --- request dispatch ---------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        # Skip KubernetesEmulator._handle: its eager mutation is what this class replaces.
        if self.trim_requests is not None and len(self._requests) > 2 * self.trim_requests:
            del self._requests[: -self.trim_requests]
        # The test's own reactions first, with kmock's matching (it scans the whole request log per
        # reaction, so it is used only for them). Then the emulator, with a fresh Response per
        # request: kmock's shared reaction Response would keep one answer's status and headers.
        custom = [p for p in self._payloads if id(p) not in self._builtin_payloads]
        if custom:
            response = await self._react(request, custom)
            if response is not None:
                return response
        handler = self._direct_route(request)
        if handler is not None:
            return await Response(payload=handler)(request)
        return await kmock.RawHandler._handle(self, request)  # discovery and other non-object paths

    async def _react(self, request: kmock.Request, payloads: list[Any]) -> Any:
        """kmock's own dispatch (RawHandler._handle) restricted to `payloads`; None if none answers."""
        priorities = [tuple(-p for p in payload.priorities) for payload in payloads]
        width = max((len(p) for p in priorities), default=0)
        order = sorted(range(len(payloads)), key=lambda i: priorities[i] + (0,) * (width - len(priorities[i])))
        for payload in (payloads[i] for i in order):
            if request in payload._source and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except ReactionMismatchError:  # a depleted stream or a mere observer
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        return None

    def _direct_route(self, request: kmock.Request) -> Callable[[kmock.Request], Awaitable[Any]] | None:
        if request.resource is None or request.resource.plural is None:
            return None  # discovery and other paths: rare, served by kmock's matching
        if request.method == kmock.method.PUT and request.name is not None:
            return self._serve_replace
        routes: dict[kmock.action | None, Callable[[kmock.Request], Awaitable[Any]]] = {
            kmock.action.LIST: self._serve_list, kmock.action.WATCH: self._serve_watch,
            kmock.action.FETCH: self._serve_fetch, kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_update, kmock.action.DELETE: self._serve_delete,
        }
        return routes.get(request.action)

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion (as an int)."""
        return self._rv

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource not in self._resources or resource.plural is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return self._resources[resource]

    def _key(self, request: kmock.Request, info: kmock.ResourceInfo, name: str | None = None) -> Key:
        assert request.resource is not None
        namespace = request.namespace if info.namespaced else None
        return (request.resource, namespace, name or request.name or "")

    def stored(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Body | None:
        """The stored object (a deep copy), or None. Direct access for test assertions."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        found = self._current((res, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def stored_all(self, resource: str | kmock.resource, namespace: str | None = None) -> list[Body]:
        """Live objects of a resource (deep copies), oldest first."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        return [copy.deepcopy(o) for o in self._select(res, namespace, None, lambda _: True)]

    def _current(self, key: Key) -> Body | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _select(
        self, resource: kmock.resource, namespace: str | None, name: str | None, matches: selectors.Predicate
    ) -> list[Body]:
        found = [
            obj.raw
            for (res, ns, nm), obj in self._objects.items()
            if res == resource and not obj.deleted
            and (namespace is None or ns == namespace) and (name is None or nm == name)
            and matches(obj.raw)
        ]
        return sorted(found, key=lambda o: int(o["metadata"].get("resourceVersion", 0)))

    def _store(self, key: Key, body: Body) -> None:
        if key in self._objects:
            history = self._objects[key].history
            history.append(body)
            if len(history) > 32:  # bounded: each version is a full copy
                del history[:-16]
        else:
            self._objects[key] = body

    def _publish(self, resource: kmock.resource, event_type: str, obj: Body) -> None:
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        rv = int(obj["metadata"]["resourceVersion"])
        self._history.append((rv, resource, event))
        while len(self._history) > self.event_history:
            self._history_floor = self._history.popleft()[0]
        for watcher in list(self._watchers):
            if watcher.accepts(resource, obj):
                watcher.queue.put_nowait(event)

    # --- discovery ----------------------------------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> Any:
        assert request.resource is not None
        group, version = request.resource.group, request.resource.version
        entries: list[Body] = []
        for res in sorted((kmock.resource(r) for r in self._resources), key=lambda r: str(r.plural)):
            if res.group != group or res.version != version or res.plural is None:
                continue
            info = self._resources[res]
            kind = info.kind or res.plural.capitalize()
            entries.append({
                "name": res.plural, "singularName": info.singular or res.plural.rstrip("s"),
                "namespaced": bool(info.namespaced), "kind": kind, "verbs": sorted(info.verbs or CR_VERBS),
                "shortNames": sorted(info.shortnames), "categories": sorted(info.categories),
            })
            entries.extend(
                {"name": f"{res.plural}/{sub}", "singularName": "", "namespaced": bool(info.namespaced),
                 "kind": kind, "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])}
                for sub in sorted(info.subresources)
            )
        if not entries and group != "":
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": version if group == "" else f"{group}/{version}", "resources": entries}

    # kubectl validates by default: it checks in OpenAPI v3 that PATCH of the kind accepts
    # `fieldValidation` (then it leaves validation to the server, which here validates nothing).
    def _group_versions(self) -> dict[str, list[kmock.resource]]:
        found: dict[str, list[kmock.resource]] = {}
        for res in (kmock.resource(r) for r in self._resources):
            path = f"api/{res.version}" if res.group == "" else f"apis/{res.group}/{res.version}"
            found.setdefault(path, []).append(res)
        return found

    async def _serve_openapi_index(self, request: kmock.Request) -> Any:
        return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash=emulated"}
                          for path in self._group_versions()}}

    async def _serve_openapi_group_version(self, request: kmock.Request) -> Any:
        path = request.url.path.removeprefix("/openapi/v3/")
        resources = self._group_versions().get(path)
        if resources is None:
            raise _error(404, "NotFound", f"no OpenAPI document for {path}")
        paths: Body = {}
        for res in resources:
            info = self._resources[res]
            gvk = {"group": res.group, "version": res.version, "kind": info.kind or str(res.plural).capitalize()}
            patch = {"x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}},
                     "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]}
            scope = "namespaces/{namespace}/" if info.namespaced else ""
            paths[f"/{path}/{scope}{res.plural}/{{name}}"] = {"patch": patch}
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes emulator", "version": "v1.33.0"},
                "paths": paths, "components": {"schemas": {}}}

    # --- reads --------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        info = self._info(request.resource)
        assert request.resource is not None
        if request.resource == _POD and request.subresource == "log" and self.pod_logs is not None:
            return await self.pod_logs(request)
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"subresource {request.subresource!r} is not served here")
        found = self._current(self._key(request, info))
        if found is None:
            raise _not_found(request.resource, request.name)
        if request.subresource is None and self._table_columns(request) is not None:
            return self._table(request, [found])
        return found

    async def _serve_list(self, request: kmock.Request) -> Any:
        info = self._info(request.resource)
        assert request.resource is not None
        params = request.params
        matches = selectors.object_selector(params.get("labelSelector"), params.get("fieldSelector"))
        items = self._select(request.resource, request.namespace, None, matches)
        if self._table_columns(request) is not None:
            return self._table(request, items)
        kind = info.kind or str(request.resource.plural).capitalize()
        group, version = request.resource.group, request.resource.version
        return {"apiVersion": f"{group}/{version}" if group else str(version), "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    # kmock declares an async generator here; returning a Response adds the content type.
    def _table_columns(self, request: kmock.Request) -> list[Body] | None:
        if request.resource not in self.printer_columns or not tables.wants_table(request.headers.get("Accept")):
            return None
        return self.printer_columns[request.resource]

    def _table(self, request: kmock.Request, objs: list[Body]) -> Body:
        columns = self._table_columns(request) or []
        return tables.table(objs, columns, str(self._rv), datetime.datetime.now(tz=datetime.UTC))

    async def _serve_watch(self, request: kmock.Request) -> Any:  # type: ignore[override]
        self._info(request.resource)
        # client-go decodes a watch stream only when it is labelled as JSON.
        return Response(headers={"Content-Type": "application/json"}, payload=self._watch(request))

    def _table_event(self, request: kmock.Request, event: Body) -> Body:
        return {"type": event["type"], "object": self._table(request, [event["object"]])}

    def fail_next_watch_with_gone(self, resource: str | kmock.resource) -> None:
        """Make the next WATCH of this resource answer a single ERROR 410 (Expired) and end."""
        self._gone_once.add(kmock.resource(resource) if isinstance(resource, str) else resource)

    async def _watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now, even if nothing happens for a while
        assert request.resource is not None
        resource, params = request.resource, request.params
        loop = asyncio.get_running_loop()
        timeout = min(float(params.get("timeoutSeconds") or self.watch_max_seconds), self.watch_max_seconds)
        deadline = loop.time() + timeout
        watcher = _Watcher(
            resource=resource, namespace=request.namespace,
            name=request.name or _name_from_fields(params.get("fieldSelector")),
            matches=selectors.object_selector(params.get("labelSelector"), params.get("fieldSelector")),
        )
        since = params.get("resourceVersion") or "0"
        if resource in self._gone_once or (since != "0" and not _is_rv_after(since, self._history_floor)):
            self._gone_once.discard(resource)
            self.gone_served += 1
            yield _gone_event(since)
            return
        # Replay and subscribe with no await in between: no event can fall into the gap.
        if since == "0":
            replay = [{"type": "ADDED", "object": copy.deepcopy(o)}
                      for o in self._select(resource, watcher.namespace, watcher.name, watcher.matches)]
        else:
            replay = [ev for rv, res, ev in self._history
                      if rv > int(since) and watcher.accepts(res, ev["object"])]
        self._watchers.add(watcher)
        as_table = self._table_columns(request) is not None
        try:
            for event in replay:
                yield self._table_event(request, event) if as_table else event
            while (remaining := deadline - loop.time()) > 0:
                try:
                    wait = min(remaining, self.watch_poll_seconds)
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    raw = request._raw_request
                    if raw is not None and (raw.transport is None or raw.transport.is_closing()):
                        return  # the client went away; aiohttp would only notice on the next write
                    continue
                yield self._table_event(request, event) if as_table else event
        finally:
            self._watchers.discard(watcher)

    # --- writes -------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> Any:
        info = self._info(request.resource)
        assert request.resource is not None
        if request.subresource or request.name:
            raise _error(405, "MethodNotAllowed", "POST is served only on collections")
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body must be a JSON object")
        meta = body.get("metadata") or {}
        name = meta.get("name") or (meta["generateName"] + _suffix() if meta.get("generateName") else None)
        if not name:
            raise _error(422, "Invalid", "metadata.name or metadata.generateName is required")
        namespace = (request.namespace or meta.get("namespace") or "default") if info.namespaced else None
        key: Key = (request.resource, namespace, name)
        if self._current(key) is not None:
            raise _error(409, "AlreadyExists", f'{request.resource.plural} "{name}" already exists',
                         name=name, kind=request.resource.plural)
        group, version = request.resource.group, request.resource.version
        obj = objects.stamp_created(
            body, api_version=f"{group}/{version}" if group else str(version),
            kind=info.kind or str(request.resource.plural).capitalize(), namespace=namespace, name=name,
            uid=str(uuid.uuid4()), resource_version=self._next_rv(), timestamp=objects.now_rfc3339(),
            drop_status="status" in info.subresources,
        )
        if request.resource == _POD:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if request.resource == _SECRET:
            obj = objects.fold_string_data(obj)
        self._store(key, obj)
        self._publish(request.resource, "ADDED", obj)
        return Response(status=201, payload=obj)

    async def _serve_update(self, request: kmock.Request) -> Any:
        resource, info, key, current = self._target(request)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = _json_body(request)
        try:
            if content_type == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise patching.PatchError("a JSON patch must be a list of operations")
                candidate = patching.json_patch(current, patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                candidate = patching.merge_patch(current, patch)  # strategic merge: lists replaced
            else:
                raise _error(415, "UnsupportedMediaType", f"patch type {content_type!r} is not supported")
        except patching.PatchError as e:
            raise _error(422, "Invalid", str(e)) from e
        return self._commit_update(resource, info, key, current, candidate, request.subresource)

    async def _serve_replace(self, request: kmock.Request) -> Any:
        if request.resource is None or request.name is None:
            raise kmock.KubernetesEndpointNotFoundError()
        resource, info, key, current = self._target(request)
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body must be a JSON object")
        return self._commit_update(resource, info, key, current, body, request.subresource)

    def _target(self, request: kmock.Request) -> tuple[kmock.resource, kmock.ResourceInfo, Key, Body]:
        info = self._info(request.resource)
        assert request.resource is not None
        sub = request.subresource
        if sub is not None and (sub != "status" or "status" not in info.subresources):
            raise _error(404, "NotFound", f"subresource {request.subresource!r} is not served here")
        key = self._key(request, info)
        current = self._current(key)
        if current is None:
            raise _not_found(request.resource, request.name)
        return request.resource, info, key, current

    def _commit_update(
        self, resource: kmock.resource, info: kmock.ResourceInfo, key: Key, current: Body, candidate: Any,
        subresource: str | None,
    ) -> Body:
        if not isinstance(candidate, dict):
            raise _error(422, "Invalid", "the patched object is not a JSON object")
        wanted_rv = (candidate.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != current["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified; please apply your changes to the "
                         "latest version and try again", name=key[2], kind=resource.plural)
        if resource == _SECRET:
            candidate = objects.fold_string_data(candidate)
        settled = objects.settle_update(current, candidate, subresource=subresource,
                                        has_status_subresource="status" in info.subresources)
        if settled == current:
            return current  # a no-op write: no new resourceVersion, no event (as the apiserver)
        updated = objects.with_resource_version(settled, self._next_rv())
        meta = updated["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(resource, key, updated)
            return updated
        self._store(key, updated)
        self._publish(resource, "MODIFIED", updated)
        return updated

    async def _serve_delete(self, request: kmock.Request) -> Any:
        resource, _, key, current = self._target(request)
        if request.subresource is not None:
            raise _error(405, "MethodNotAllowed", "DELETE is not served on subresources")
        options = _json_body(request)
        options = options if isinstance(options, dict) else {}
        pre = options.get("preconditions") or {}
        meta = current["metadata"]
        if (pre.get("uid") and pre["uid"] != meta["uid"]) or (
            pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]
        ):
            raise _error(409, "Conflict", "precondition failed", name=key[2], kind=resource.plural)
        grace = options.get("gracePeriodSeconds", request.params.get("gracePeriodSeconds"))
        return self._delete(resource, key, current, None if grace is None else int(grace))

    def _delete(self, resource: kmock.resource, key: Key, current: Body, grace: int | None) -> Body:
        meta = current["metadata"]
        spec, status = current.get("spec") or {}, current.get("status") or {}
        if grace is None:
            grace = int(spec.get("terminationGracePeriodSeconds", 30)) if resource == _POD else 0
        # A pod bound to a node and still running waits for its kubelet, which confirms with grace 0.
        wait_for_kubelet = bool(
            resource == _POD and self.graceful_pod_deletion and spec.get("nodeName") and grace > 0
            and status.get("phase") not in ("Succeeded", "Failed")
        )
        if meta.get("deletionTimestamp"):
            if meta.get("finalizers") or wait_for_kubelet:
                return current  # already terminating
        elif meta.get("finalizers") or wait_for_kubelet:
            delay = datetime.timedelta(seconds=grace if wait_for_kubelet else 0)
            marked = copy.deepcopy(current)
            when = datetime.datetime.now(tz=datetime.UTC) + delay
            marked["metadata"].update(
                deletionTimestamp=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                deletionGracePeriodSeconds=grace if wait_for_kubelet else 0,
            )
            marked = objects.with_resource_version(marked, self._next_rv())
            self._store(key, marked)
            self._publish(resource, "MODIFIED", marked)
            return marked
        final = objects.with_resource_version(current, self._next_rv())
        self._remove(resource, key, final)
        return final

    def _remove(self, resource: kmock.resource, key: Key, final: Body) -> None:
        self._store(key, final)
        self._objects[key].delete()
        self._publish(resource, "DELETED", final)
        if self.gc_owned:
            self._collect_dependents(str(final["metadata"].get("uid", "")))

    def _collect_dependents(self, gone_uid: str) -> None:
        """Background-propagation GC: delete objects whose owners are all gone (pods gracefully)."""
        live = {(o.raw.get("metadata") or {}).get("uid") for o in self._objects.values() if not o.deleted}
        for key, obj in list(self._objects.items()):
            if obj.deleted:
                continue
            owners = objects.owner_uids(obj.raw)
            if gone_uid in owners and not owners & live and not obj.raw["metadata"].get("deletionTimestamp"):
                self._delete(key[0], key, obj.raw, None)


def _json_body(request: kmock.Request) -> Any:
    if not request.body:
        return None
    try:
        return json.loads(request.body)
    except ValueError as e:
        raise _error(400, "BadRequest", f"the body is not JSON: {e}") from e


def _suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's generateName alphabet
    return "".join(secrets.choice(alphabet) for _ in range(5))


def _is_rv_after(since: str, floor: int) -> bool:
    try:
        return int(since) >= floor
    except ValueError:
        return False


def _gone_event(since: str) -> Body:
    return {"type": "ERROR", "object": {
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "Expired",
        "code": 410, "message": f"too old resource version: {since}",
    }}


def _name_from_fields(field_selector: str | None) -> str | None:
    for requirement in (field_selector or "").split(","):
        path, _, value = requirement.partition("=")
        if path.strip() == "metadata.name" and not value.startswith("="):
            return value.strip() or None
    return None


def register_crd(emulator: Emulator, crd: Mapping[str, Any]) -> list[kmock.resource]:
    """Serve a CustomResourceDefinition's resources as a real apiserver does once it is applied:
    names, scope, short names, categories, the status subresource and the printer columns."""
    spec, names = crd["spec"], crd["spec"]["names"]
    registered: list[kmock.resource] = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        res = kmock.resource(spec["group"], version["name"], names["plural"])
        emulator.resources[res] = kmock.ResourceInfo(
            kind=names["kind"], singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced", shortnames=names.get("shortNames") or [],
            categories=names.get("categories") or [], verbs=CR_VERBS,
            subresources={"status"} if "status" in (version.get("subresources") or {}) else set())
        emulator.printer_columns[res] = list(version.get("additionalPrinterColumns") or [])
        registered.append(res)
    return registered


REPO_CRDS = pathlib.Path(__file__).resolve().parents[2] / "crds"


def register_buildstudio(emulator: Emulator, crds: pathlib.Path | None = REPO_CRDS) -> None:
    """Register the resources the operator and its tests use (before the operator starts).

    The Build Studio kinds are then re-registered from the repository's CRD manifests when
    they exist (`crds=None` skips that), so discovery and `kubectl get` columns follow the CRDs.
    """
    res = emulator.resources
    ResourceInfo = kmock.ResourceInfo
    res["buildstudio.dpf.dev/v1alpha1/builddispatches"] = ResourceInfo(
        kind="BuildDispatch", singular="builddispatch", namespaced=True, shortnames={"bd"},
        categories={"buildstudio"}, verbs=CR_VERBS, subresources={"status"})
    res["buildstudio.dpf.dev/v1alpha1/buildengines"] = ResourceInfo(
        kind="BuildEngine", singular="buildengine", namespaced=False, shortnames={"be"},
        categories={"buildstudio"}, verbs=CR_VERBS, subresources={"status"})
    builtins: list[tuple[str, str, str, bool, set[str], set[str]]] = [
        ("v1/pods", "Pod", "pod", True, {"po"}, {"log", "status"}),
        ("v1/configmaps", "ConfigMap", "configmap", True, {"cm"}, set()),
        ("v1/secrets", "Secret", "secret", True, set(), set()),
        ("v1/events", "Event", "event", True, {"ev"}, set()),
        ("v1/namespaces", "Namespace", "namespace", False, {"ns"}, {"status"}),
        ("events.k8s.io/v1/events", "Event", "event", True, {"ev"}, set()),
        ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", "networkpolicy", True, {"netpol"}, set()),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition",
         "customresourcedefinition", False, {"crd", "crds"}, {"status"}),
        ("coordination.k8s.io/v1/leases", "Lease", "lease", True, set(), set()),
    ]
    for path, kind, singular, namespaced, shortnames, subresources in builtins:
        res[path] = ResourceInfo(kind=kind, singular=singular, namespaced=namespaced, shortnames=shortnames,
                                 verbs=CR_VERBS, subresources=subresources)
    # `kubectl get all` lists what is in the `all` category.
    res["v1/pods"].categories.add("all")
    if crds is not None and crds.is_dir():
        for manifest in sorted(crds.glob("*.yaml")):
            for doc in yaml.safe_load_all(manifest.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    register_crd(emulator, doc)
