"""The Kubernetes adapter over HTTPS, as on a real cluster: the API server's CA, a bearer token
(in-cluster style), a kubeconfig with a client certificate, and one with an exec plugin. A loopback
aiohttp server with a self-signed certificate plays the API server; the emulator tests only cover
plain HTTP."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from buildstudio.adapters.kube import Kube, KubeError, load_api_client

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
    conf.api_key = {"BearerToken": "sa-token"}
    conf.api_key_prefix = {"BearerToken": "Bearer"}
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
    kube = Kube(await load_api_client(str(kubeconfig)))
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


def _exec_kubeconfig(apiserver: dict[str, Any], expiry: str | None) -> Path:
    """A kubeconfig whose user is an exec plugin printing token-1, token-2, … (one per run)."""
    tmp: Path = apiserver["tmp"]
    counter = tmp / "runs"
    plugin = tmp / "plugin.py"
    status = {"token": "token-{n}"} | ({"expirationTimestamp": expiry} if expiry else {})
    plugin.write_text(
        "import json, pathlib\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        f"status = {{k: v.format(n=n) for k, v in {status!r}.items()}}\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': status}))\n"
    )
    exec_user = {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable, "args": [str(plugin)],
                 "interactiveMode": "Never"}  # fmt: skip
    cluster = {"server": apiserver["url"], "certificate-authority": str(apiserver["ca"])}
    kubeconfig = tmp / "exec.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": cluster}],
                "users": [{"name": "u", "user": {"exec": exec_user}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    return kubeconfig


async def test_kubeconfig_with_an_exec_plugin_token(apiserver: dict[str, Any]) -> None:
    """Loaded on the first call (``from_config``); a token without an expiry is kept for every call."""
    kube = Kube.from_config(str(_exec_kubeconfig(apiserver, None)), in_cluster=False)
    try:
        for name in ("a", "b"):
            assert (await kube.get("Pod", name, "dev"))["metadata"]["name"] == name  # type: ignore[index]
    finally:
        await kube.aclose()
    assert [s["auth"] for s in apiserver["seen"]] == ["Bearer token-1", "Bearer token-1"]


async def test_an_expired_exec_token_is_renewed_before_the_request(apiserver: dict[str, Any]) -> None:
    """As the synchronous client did: the plugin runs again when its token has expired."""
    kube = Kube.from_config(str(_exec_kubeconfig(apiserver, "2000-01-01T00:00:00Z")), in_cluster=False)
    try:
        await kube.get("Pod", "a", "dev")
        await kube.get("Pod", "b", "dev")
    finally:
        await kube.aclose()
    # token-1 came with the loading; each request found it expired and ran the plugin again.
    assert [s["auth"] for s in apiserver["seen"]] == ["Bearer token-2", "Bearer token-3"]
