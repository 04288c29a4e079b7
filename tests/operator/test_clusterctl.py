"""`buildstudio submit|watch|diff|cancel` against the operator on the emulator, as a user runs them."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from buildstudio.commands.cluster import dispatch_manifest, progress_line, summary_line
from tests.kube.client import BUILDDISPATCHES
from tests.kube.kubelet import PodScript
from tests.operator.conftest import MODEL, Cluster
from tests.operator.test_operator_flow import canned_run


async def cli(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, KUBECONFIG=str(cluster.k8s.kubeconfig))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "buildstudio.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_manifest_and_lines() -> None:
    ns = argparse.Namespace(
        prompt="do it",
        phase="build",
        repo="https://g/r.git",
        ref="dev",
        model=MODEL,
        engine=None,
        ttl=60,
        namespace="team",
        name=None,
    )
    m = dispatch_manifest(ns)
    assert m["metadata"] == {"namespace": "team", "generateName": "bd-"}
    assert m["spec"] == {
        "prompt": "do it",
        "phase": "build",
        "repo": {"url": "https://g/r.git", "ref": "dev"},
        "model": MODEL,
        "ttlSecondsAfterFinished": 60,
    }
    line = progress_line(
        {
            "phase": "Running",
            "progress": {"stage": "running", "steps": 3, "toolCalls": 2, "tokens": 900, "lastTool": "edit a.py"},
        }
    )
    assert line == "[Running] running · steps 3 · tool calls 2 · tokens 900 · last: edit a.py"
    assert progress_line({"phase": "Queued", "queuePosition": 2}) == "[Queued] queue position 2"
    assert summary_line({"phase": "Succeeded", "reason": "Completed", "diffSummary": "+1/-0", "message": "ok"}) == (
        "Succeeded: Completed +1/-0 — ok"
    )


async def test_submit_watch_diff(cluster: Cluster) -> None:
    cluster.kubelet.script("cli-1", PodScript.canned(canned_run(), line_interval=0.05))
    code, out, err = await cli(
        cluster,
        "submit",
        "add hello",
        "--repo",
        "https://example.com/r.git",
        "--model",
        MODEL,
        "--name",
        "cli-1",
        "--watch",
        "--timeout",
        "40",
    )
    assert code == 0, err
    assert "builddispatch.buildstudio.dpf.dev/cli-1 created" in out
    assert "Succeeded: Completed +1/-0" in out
    code, out, err = await cli(cluster, "diff", "cli-1", "--full")
    assert code == 0, err
    assert out == "+print('hello')\n"


async def test_cancel(cluster: Cluster) -> None:
    cluster.kubelet.script("cli-2", PodScript.hang())
    await cluster.dispatch("cli-2")
    await cluster.wait_phase("cli-2", "Running")
    code, out, err = await cli(cluster, "cancel", "cli-2")
    assert code == 0, err
    obj = await cluster.k8s.get(BUILDDISPATCHES, "cli-2")
    assert obj["spec"]["cancel"] is True
    code, out, _ = await cli(cluster, "watch", "cli-2", "--timeout", "30")
    assert code == 1 and "Cancelled" in out
