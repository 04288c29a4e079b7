"""Session fixture: a real etcd + kube-apiserver + kube-controller-manager (see README.md here)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildstudio import pins

from .controlplane import KUBECTL, REPO_ROOT, ControlPlane, crd_names, missing

_STARTED: list[ControlPlane] = []


def _unavailable(reason: str) -> None:
    """Skip with a one-line reason on a developer's machine; under CI the build must have happened."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    absent = missing()
    if absent:
        _unavailable(f"control plane {pins.KUBE_CONTROL_PLANE_VERSION}/etcd {pins.ETCD_VERSION} not built "
                     f"(run `make controlplane`; missing {absent[0]})")
    if not KUBECTL.is_file():
        _unavailable(f"no kubectl at {KUBECTL} (run `make setup`)")
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    _STARTED.append(cp)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> subprocess.CompletedProcess[str]:
    """crds/ applied server-side and Established."""
    applied = control_plane.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "crd", *crd_names(), "--timeout=60s")
    return applied


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """The admin (system:masters) kubeconfig of the running control plane."""
    return control_plane.kubeconfig


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for cp in _STARTED:
        if cp.timings:
            ready = ", ".join(f"{k} {v:.1f} s" for k, v in cp.timings.items())
            terminalreporter.write_line(f"control plane {pins.KUBE_CONTROL_PLANE_VERSION} (etcd {pins.ETCD_VERSION})"
                                        f" ready: {ready}")
