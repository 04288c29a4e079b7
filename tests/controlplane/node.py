"""The kubelet fixture as a node of the real control plane.

A real apiserver does not run pods and does not keep their logs: it binds nothing itself (no scheduler
here), and it answers `pods/<name>/log` by asking the kubelet API of the pod's node over HTTPS, at the
Node's address and `status.daemonEndpoints.kubeletEndpoint.Port`
(`https://<address>:<port>/containerLogs/<namespace>/<pod>/<container>?follow=&tailLines=&previous=`),
passing the kubelet's answer through (a 400 with the kubelet's text becomes the apiserver's BadRequest
with that message). Without `--kubelet-certificate-authority` the apiserver does not verify the kubelet's
certificate, so a self-signed one on loopback is enough. So: a Node object with `127.0.0.1` and the port of
a small HTTPS server (`KubeletApi`) that serves the `Kubelet`'s container logs; the `Kubelet` binds pods
through `pods/binding` and writes `pods/status` (tests/kube/kubelet.py).
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from tests.kube.client import ApiError, Kube
from tests.kube.kubelet import Kubelet

from .controlplane import ControlPlane, free_port


def admin_kube(cp: ControlPlane, *, timeout: float = 10.0) -> Kube:
    """A `tests.kube.client.Kube` on the real apiserver, as the admin (system:masters)."""
    options: dict[str, Any] = {"headers": {"Authorization": f"Bearer {cp.admin_token}"},
                               "verify": ssl.create_default_context(cafile=str(cp.ca))}
    http = httpx.AsyncClient(base_url=cp.server, timeout=httpx.Timeout(timeout), **options)
    return Kube(None, cp.server, cp.kubeconfig, http, http_options=options)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=kubelet",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


class KubeletApi:
    """`/containerLogs/` of the kubelet API on 127.0.0.1, over HTTPS with a self-signed certificate."""

    def __init__(self, kubelet: Kubelet, directory: Path) -> None:
        self.kubelet = kubelet
        self.directory = directory
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        cert, key = _self_signed(self.directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        info, params = request.match_info, request.query
        try:
            log = self.kubelet.container_log(info["namespace"], info["pod"], info["container"],
                                             previous=params.get("previous") == "true")
        except LookupError as e:  # the kubelet's 400, which the apiserver passes on
            return web.Response(status=400, text=str(e))
        start = max(0, len(log.lines) - int(params["tailLines"])) if params.get("tailLines") else 0
        if params.get("follow") != "true":
            return web.Response(text="".join(line + "\n" for line in log.lines[start:]))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        transport = request.transport

        def alive() -> bool:
            return transport is not None and not transport.is_closing()

        with contextlib.suppress(ConnectionError):
            async for chunk in log.follow(start, alive):
                if chunk:
                    await response.write(chunk)
        return response


async def register_node(kube: Kube, name: str, port: int) -> None:
    """The Node the apiserver proxies log requests to (Ready, no taints); replaced if left over."""
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            # InternalIP only: the apiserver prefers a Hostname address, which would need DNS.
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "the kubelet fixture is posting ready status"}]}}
    with contextlib.suppress(ApiError):
        await kube.request("DELETE", f"/api/v1/nodes/{name}")
    await kube.request("POST", "/api/v1/nodes", body=node)
