"""Pytest fixtures of the operator-integration layer: `k8s`, `kopf_operator`, `kubelet`.

Load with `pytest_plugins = ["tests.kube.plugin"]` in tests/conftest.py. See tests/kube/README.md.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import AsyncIterator, Collection

import httpx
import kmock
import kopf
import pytest
import pytest_asyncio

from tests.kube.client import Kube, kubeconfig_text
from tests.kube.emulator import Emulator, register_buildstudio
from tests.kube.kopf_runner import KopfOperator, KopfOperatorFactory, SettingsHook
from tests.kube.kubectl import MISSING_REASON, Kubectl, find_binary
from tests.kube.kubelet import Kubelet


@pytest_asyncio.fixture
async def k8s(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kube]:
    """The emulator on a random loopback port with the Build Studio resources registered.

    Also writes a kubeconfig for it and points KUBECONFIG at it for the test's duration.
    """
    async with Emulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        register_buildstudio(emulator)
        url = str(server.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(url))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10.0)) as http:
            yield Kube(emulator, url, kubeconfig, http)


@pytest_asyncio.fixture
async def kopf_operator(k8s: Kube) -> AsyncIterator[KopfOperatorFactory]:
    """A factory: `op = await kopf_operator(registry)` starts kopf in a thread against `k8s`.

    Arguments: `registry` (a registry; or a module name to import, whose decorators fill kopf's
    global registry; default: kopf's global registry), `settings_hook(settings)`,
    `namespaces` (default: cluster-wide), `memo`, `start` (default True). Every operator
    started through it is stopped at teardown, and a failure of its thread fails the test.
    """
    started: list[KopfOperator] = []

    async def factory(registry: kopf.OperatorRegistry | str | None = None, *,
                      settings_hook: SettingsHook | None = None, namespaces: Collection[str] = (),
                      memo: object | None = None, start: bool = True) -> KopfOperator:
        if isinstance(registry, str):
            importlib.import_module(registry)
            registry = None
        operator = KopfOperator(k8s.url, registry=registry or kopf.get_default_registry(),
                                settings_hook=settings_hook, namespaces=namespaces, memo=memo)
        started.append(operator)
        if start:
            await operator.start()
        return operator

    yield factory
    errors: list[BaseException] = []
    for operator in started:
        try:
            await operator.stop()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest_asyncio.fixture
async def kubelet(k8s: Kube, tmp_path: pathlib.Path) -> AsyncIterator[Kubelet]:
    """Plays the node: schedules pods, runs or fakes their containers, serves their logs. As root,
    each container runs as its own uid (`kubelet.separate_uids`, `.separate_uids_reason`)."""
    node = Kubelet(k8s, workdir=tmp_path / "kubelet", separate_uids=None)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
def kubectl(k8s: Kube) -> Kubectl:
    """The real kubectl bound to the emulator's kubeconfig; skips the test when it is absent."""
    binary = find_binary("kubectl")
    if binary is None:
        pytest.skip(MISSING_REASON)
    return Kubectl(binary, k8s.kubeconfig)


__all__ = ["KopfOperatorFactory", "k8s", "kopf_operator", "kubectl", "kubelet"]
