"""The chart on the real control plane: its RBAC and ServiceAccounts applied as rendered, a TokenRequest
token of the operator's ServiceAccount, and the real operator (kopf in a thread) authenticated with it."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import kopf
import yaml

from .controlplane import REPO_ROOT, ControlPlane, write_kubeconfig

HELM = REPO_ROOT / ".tools" / "bin" / "helm"
CHART = REPO_ROOT / "charts" / "build-studio"
RELEASE = "bs"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def render(namespace: str, *values: str, api_versions: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`helm template` of the chart (release `bs` in `namespace`), `--set` each of `values`; `api_versions`
    tells helm what the cluster serves (`helm install` asks the cluster itself)."""
    argv = [str(HELM), "template", RELEASE, str(CHART), "--namespace", namespace]
    for value in values:
        argv += ["--set", value]
    for api in api_versions:
        argv += ["--api-versions", api]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of_kinds(docs: Iterable[dict[str, Any]], kinds: Iterable[str]) -> list[dict[str, Any]]:
    wanted = set(kinds)
    return [d for d in docs if d["kind"] in wanted]


def apply(cp: ControlPlane, docs: list[dict[str, Any]]) -> str:
    listing = {"apiVersion": "v1", "kind": "List", "items": docs}
    return cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(listing)).stdout


def service_account_kubeconfig(cp: ControlPlane, namespace: str, account: str, path: Path) -> tuple[Path, str]:
    """A TokenRequest token of `namespace/account` (`kubectl create token`) in a kubeconfig of its own."""
    token = cp.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    return write_kubeconfig(path, cp.server, cp.ca, f"system:serviceaccount:{namespace}:{account}", token), token


class LogTap(logging.Handler):
    """Every log record of the operator's thread (kopf's and ours), formatted, for assertions."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName == "controlplane-operator":
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class OperatorThread:
    """The real operator (`buildstudio.handlers.build_registry`) in kopf, in its own thread and loop,
    logged in with the given server, CA and token only (no kubeconfig of the test process)."""

    def __init__(self, registry: kopf.OperatorRegistry, settings: kopf.OperatorSettings, *, server: str,
                 ca: Path, token: str) -> None:
        self.registry, self.settings = registry, settings
        self.error: BaseException | None = None
        self.tap = LogTap()
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._main, name="controlplane-operator", daemon=True)

        @kopf.on.login(registry=registry, id="controlplane-token")
        def _login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, ca_path=str(ca), token=token, scheme="Bearer",
                                       default_namespace="default", priority=1000)

    def _main(self) -> None:
        try:
            asyncio.run(kopf.operator(registry=self.registry, settings=self.settings, standalone=True,
                                      clusterwide=True, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as e:  # reported by stop()
            self.error = e

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (a bounded wait)
        logging.getLogger().addHandler(self.tap)
        self._thread.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._ready.is_set():
            if not self._thread.is_alive():
                raise RuntimeError(f"the operator exited during start-up: {self.error!r}") from self.error
            if loop.time() > deadline:
                raise TimeoutError(f"the operator was not ready within {timeout}s")
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 (a bounded wait)
        self._stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while self._thread.is_alive():
                if loop.time() > deadline:
                    raise TimeoutError(f"the operator thread did not stop within {timeout}s")
                await asyncio.sleep(0.05)
        finally:
            logging.getLogger().removeHandler(self.tap)
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise RuntimeError(f"the operator failed: {self.error!r}") from self.error
