"""The Kubernetes adapter over HTTPS, as on a real cluster: the API server's CA, a bearer token
(in-cluster style), and a kubeconfig with a client certificate. A loopback aiohttp server with a
self-signed certificate plays the API server; the emulator tests only cover plain HTTP."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from kubernetes import client as k8s_client

from buildstudio.kube import Kube, KubeError, load_api_client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _cert(tmp: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, crt = tmp / f"{name}.key", tmp / f"{name}.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={cn}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return crt, key


@pytest_asyncio.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    server_crt, server_key = _cert(tmp_path, "server", "127.0.0.1")
    client_crt, client_key = _cert(tmp_path, "client", "operator")
    seen: list[dict[str, str]] = []

    async def get_pod(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append({"auth": request.headers.get("Authorization", ""), "client_cert": str(bool(peer))})
        if request.match_info["name"] == "missing":
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response({"kind": "Pod", "metadata": {"name": request.match_info["name"]}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", get_pod)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_crt, server_key)
    ctx.load_verify_locations(client_crt)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield {
            "url": f"https://127.0.0.1:{port}",
            "ca": server_crt,
            "cert": client_crt,
            "key": client_key,
            "seen": seen,
            "tmp": tmp_path,
        }
    finally:
        await runner.cleanup()


async def test_bearer_token_and_ca_as_in_cluster(apiserver: dict[str, Any]) -> None:
    conf = k8s_client.Configuration()
    conf.host = apiserver["url"]
    conf.ssl_ca_cert = str(apiserver["ca"])
    conf.api_key = {"authorization": "sa-token"}
    conf.api_key_prefix = {"authorization": "Bearer"}
    kube = Kube(k8s_client.ApiClient(conf))
    try:
        pod = await kube.get("Pod", "sandbox-1", "dev")
        assert pod == {"kind": "Pod", "metadata": {"name": "sandbox-1"}}
        assert await kube.get("Pod", "missing", "dev") is None
        assert apiserver["seen"][0]["auth"] == "Bearer sa-token"
    finally:
        await kube.aclose()


async def test_kubeconfig_with_client_certificate(apiserver: dict[str, Any]) -> None:
    kubeconfig = apiserver["tmp"] / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "k",
                        "cluster": {"server": apiserver["url"], "certificate-authority": str(apiserver["ca"])},
                    }
                ],
                "users": [
                    {
                        "name": "u",
                        "user": {"client-certificate": str(apiserver["cert"]), "client-key": str(apiserver["key"])},
                    }
                ],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    kube = Kube(load_api_client(str(kubeconfig)))
    try:
        assert (await kube.get("Pod", "p", "dev"))["metadata"]["name"] == "p"  # type: ignore[index]
        assert apiserver["seen"][-1] == {"auth": "", "client_cert": "True"}
    finally:
        await kube.aclose()


async def test_untrusted_server_certificate_is_refused(apiserver: dict[str, Any]) -> None:
    conf = k8s_client.Configuration()
    conf.host = apiserver["url"]  # no CA: the self-signed server must not be trusted
    kube = Kube(k8s_client.ApiClient(conf))
    try:
        with pytest.raises((ssl.SSLError, OSError, KubeError)):
            await kube.get("Pod", "p", "dev")
        assert apiserver["seen"] == []
    finally:
        await kube.aclose()
