"""`Kube`: what a test body uses to talk to the emulator over HTTP, plus `wait_for`."""

from __future__ import annotations

import asyncio
import inspect
import json
import pathlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

import httpx

from tests.kube.emulator import Emulator

T = TypeVar("T")
Body = dict[str, Any]

# Resource paths as `group/version/plural` (core: `v1/plural`), the form every helper takes.
BUILDDISPATCHES = "buildstudio.dpf.dev/v1alpha1/builddispatches"
BUILDENGINES = "buildstudio.dpf.dev/v1alpha1/buildengines"
PODS = "v1/pods"
CONFIGMAPS = "v1/configmaps"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NETWORKPOLICIES = "networking.k8s.io/v1/networkpolicies"

_CLUSTER_SCOPED = {BUILDENGINES, "v1/namespaces", "apiextensions.k8s.io/v1/customresourcedefinitions"}
_PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def resource_path(resource: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """`v1/pods`, `ns`, `p`, `log` → `/api/v1/namespaces/ns/pods/p/log`."""
    *group_version, plural = resource.split("/")
    prefix = "/api/" + group_version[0] if len(group_version) == 1 else "/apis/" + "/".join(group_version)
    parts = [prefix]
    if namespace is not None and resource not in _CLUSTER_SCOPED:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


def kubeconfig_text(url: str) -> str:
    """A kubeconfig for the emulator: plain http on loopback, an empty user."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                       "namespace": "default"}}],
    }, indent=2)


class Kube:
    """HTTP helpers over the emulator for test bodies. Methods raise ApiError on non-2xx."""

    def __init__(self, emulator: Emulator | None, url: str, kubeconfig: pathlib.Path,
                 http: httpx.AsyncClient, *, http_options: Mapping[str, Any] | None = None) -> None:
        self.emulator = emulator  # None: a real apiserver (tests/controlplane)
        self.url = url
        self.kubeconfig = kubeconfig
        self.http = http
        # What another client of the same server needs (`headers`, `verify`): the kubelet's watch.
        self.http_options = dict(http_options or {})

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None, content_type: str = "application/json") -> Any:
        content = None if body is None else json.dumps(body).encode()
        response = await self.http.request(method, path, content=content, params=params,
                                           headers={"Content-Type": content_type})
        data: Any = response.json() if response.headers.get("content-type", "").startswith(
            "application/json") and response.content else response.text
        if response.status_code >= 300:
            raise ApiError(response.status_code, data)
        return data

    async def create(self, resource: str, body: Mapping[str, Any], namespace: str = "default") -> Body:
        ns = (body.get("metadata") or {}).get("namespace") or namespace
        result: Body = await self.request("POST", resource_path(resource, ns), body=body)
        return result

    async def get(self, resource: str, name: str, namespace: str = "default") -> Body:
        result: Body = await self.request("GET", resource_path(resource, namespace, name))
        return result

    async def find(self, resource: str, name: str, namespace: str = "default") -> Body | None:
        """Like get(), but None for 404."""
        try:
            return await self.get(resource, name, namespace)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, resource: str, namespace: str | None = None, *, labels: str | None = None,
                   fields: str | None = None) -> list[Body]:
        params = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        result = await self.request("GET", resource_path(resource, namespace), params=params)
        items: list[Body] = result["items"]
        return items

    async def patch(self, resource: str, name: str, patch: Any, namespace: str = "default", *,
                    subresource: str | None = None, patch_type: str = "merge") -> Body:
        """`patch_type`: merge | json | strategic. `subresource="status"` patches only the status."""
        result: Body = await self.request("PATCH", resource_path(resource, namespace, name, subresource),
                                          body=patch, content_type=_PATCH_TYPES[patch_type])
        return result

    async def delete(self, resource: str, name: str, namespace: str = "default", *,
                     grace_seconds: int | None = None) -> Body:
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        result: Body = await self.request("DELETE", resource_path(resource, namespace, name), body=body)
        return result

    async def logs(self, pod: str, namespace: str = "default", *, tail_lines: int | None = None) -> str:
        params = {"tailLines": str(tail_lines)} if tail_lines is not None else None
        response = await self.http.get(resource_path(PODS, namespace, pod, "log"), params=params)
        if response.status_code >= 300:
            raise ApiError(response.status_code, response.text)
        return response.text


@overload
async def wait_for(predicate: Callable[[], Awaitable[T | None]], timeout: float = ..., *,  # noqa: ASYNC109
                   interval: float = ..., message: str = ...) -> T: ...
@overload
async def wait_for(predicate: Callable[[], T | None], timeout: float = ..., *,  # noqa: ASYNC109
                   interval: float = ..., message: str = ...) -> T: ...


# A polling helper: its bound is its meaning, so `timeout` is a parameter (ASYNC109).
async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, *,  # noqa: ASYNC109
                   interval: float = 0.05, message: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until it returns a truthy value; return that value.

    Raises AssertionError after `timeout` seconds, naming `message` and the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")
        await asyncio.sleep(interval)
