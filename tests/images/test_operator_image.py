"""The built operator image (Dockerfile.operator): it imports, its CLI runs, and it serves /healthz and
/metrics against the Kubernetes emulator on loopback, as uid 65532 on a read-only root with a /tmp."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from buildstudio import pins
from tests.images.conftest import Image
from tests.kube.client import Kube

pytestmark = pytest.mark.images


def _tmp(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o1777)
    return path


def test_cli_runs_and_the_operator_stack_imports(operator_image: Image, tmp_path: Path) -> None:
    proc = operator_image.run(["buildstudio", "operator", "--help"], mounts=[("rw", _tmp(tmp_path / "tmp"), "/tmp")])
    assert proc.returncode == 0, proc.stderr
    assert "--liveness" in proc.stdout
    # The installed distributions, not a module attribute (kopf has no __version__): the pins, one source.
    probe = (
        "import json, importlib.metadata as md, kopf, kubernetes_asyncio, orjson, buildstudio.handlers; "
        "print(json.dumps([md.version('kopf'), md.version('kubernetes-asyncio')]))"
    )
    proc = operator_image.run(["python", "-c", probe], mounts=[("rw", tmp_path / "tmp", "/tmp")])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [pins.KOPF_VERSION, pins.KUBERNETES_CLIENT_VERSION]


def test_labels_agree_with_the_pins(operator_image: Image) -> None:
    labels = operator_image.labels()
    assert labels["org.opencontainers.image.title"] == "buildstudio-operator"
    assert f"kopf {pins.KOPF_VERSION}" in labels["org.opencontainers.image.description"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_operator_serves_healthz_and_metrics_against_the_emulator(
    operator_image: Image, k8s: Kube, tmp_path: Path
) -> None:
    kube_dir = tmp_path / "kube"
    kube_dir.mkdir()
    (kube_dir / "config").write_text(k8s.kubeconfig.read_text(encoding="utf-8"), encoding="utf-8")
    for p in (kube_dir, kube_dir / "config"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    health, metrics = _free_port(), _free_port()
    argv = operator_image.argv(
        ["buildstudio", "operator", f"--liveness=http://127.0.0.1:{health}/healthz", "--standalone"],
        mounts=[("ro", kube_dir, "/etc/kube"), ("rw", _tmp(tmp_path / "tmp"), "/tmp")],
        env={"KUBECONFIG": "/etc/kube/config", "BUILDSTUDIO_METRICS_PORT": str(metrics)},
        cwd="/tmp",
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "RO_ROOT": "1"}
    )
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
            answer: httpx.Response | None = None
            for _ in range(120):  # bounded: 60 s for kopf to start inside the image
                if proc.returncode is not None:
                    break
                with contextlib.suppress(httpx.TransportError):
                    answer = await http.get(f"http://127.0.0.1:{health}/healthz")
                    if answer.status_code == 200:
                        break
                await asyncio.sleep(0.5)
            assert answer is not None and answer.status_code == 200, await _output(proc)
            scraped = await http.get(f"http://127.0.0.1:{metrics}/metrics")
            assert scraped.status_code == 200
            assert "# TYPE" in scraped.text
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _output(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.terminate()
    assert proc.stdout is not None
    out = await asyncio.wait_for(proc.stdout.read(), timeout=20)
    return out.decode(errors="replace")[-3000:]
