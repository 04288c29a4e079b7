"""Cluster commands with kubectl habits (issue #19): the kubeconfig context's namespace by default,
`-n`, `--context`; `diff` prints the whole patch; `logs` prints the sandbox's records; against
the operator on the emulator, through the real console entry."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from buildstudio.commands.cluster import context_namespace, record_line
from buildstudio.protocol.records import EventRecord, Outcome, ProgressRecord, ResultRecord
from tests.kube.client import BUILDDISPATCHES
from tests.kube.kubelet import PodScript
from tests.operator.conftest import MODEL, Cluster
from tests.operator.test_operator_flow import canned_run


def two_contexts(cluster: Cluster, path: Path) -> Path:
    """Contexts `team` (namespace team, the current one) and `dev` (namespace default)."""
    base = json.loads(cluster.k8s.kubeconfig.read_text())
    ctx = base["contexts"][0]["context"]
    base["contexts"] = [
        {"name": "team", "context": {**ctx, "namespace": "team"}},
        {"name": "dev", "context": {**ctx, "namespace": "default"}},
    ]
    base["current-context"] = "team"
    path.write_text(json.dumps(base))
    return path


async def cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "buildstudio.cli", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_context_namespace() -> None:
    cfg = {"current-context": "a", "contexts": [{"name": "a", "context": {"namespace": "team"}},
                                                 {"name": "b", "context": {}}]}  # fmt: skip
    assert context_namespace(cfg, None) == "team"
    assert context_namespace(cfg, "b") is None
    assert context_namespace(cfg, "missing") is None


def test_record_line() -> None:
    assert record_line(ProgressRecord(stage="running", steps=2, tool_calls=1, tokens=9)).startswith("[running]")
    assert record_line(EventRecord(type="tool", message="write a.py")) == "  tool     write a.py"
    assert record_line(ResultRecord(outcome=Outcome.COMPLETED, message="ok")) == "result: Completed: ok"


async def test_namespace_and_context_like_kubectl(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = str(two_contexts(cluster, tmp_path / "kubeconfig"))
    common = ["--kubeconfig", kubeconfig]
    # No -n: the current context's namespace (team), not `default`.
    code, out, err = await cli("submit", "p", "--repo", "https://example.com/r.git", "--model", MODEL,
                               "--name", "ctx-1", *common)  # fmt: skip
    assert code == 0, err
    assert "created in namespace team" in out
    assert (await cluster.k8s.get(BUILDDISPATCHES, "ctx-1", namespace="team"))["metadata"]["name"] == "ctx-1"
    # --context dev: its namespace (default); the operator runs it there.
    cluster.kubelet.script("ctx-2", PodScript.canned(canned_run("+print('hello')\n+print('two')\n")))
    code, out, err = await cli("submit", "p", "--repo", "https://example.com/r.git", "--model", MODEL,
                               "--name", "ctx-2", "-w", "--timeout", "40", "--context", "dev", *common)  # fmt: skip
    assert code == 0, err
    assert "created in namespace default" in out and "Succeeded: Completed" in out
    # diff prints the whole patch by default (no --full), from -n as from --context.
    for where in (["-n", "default"], ["--context", "dev"]):
        code, out, err = await cli("diff", "ctx-2", *where, *common)
        assert code == 0, err
        assert out == "+print('hello')\n+print('two')\n"
    # Not found in the context's namespace: one line saying where it looked, exit 2.
    code, out, err = await cli("diff", "ctx-2", *common)
    assert code == 2 and err.strip() == (
        "buildstudio: BuildDispatch team/ctx-2: not found; list them with `kubectl get bd -n team`, "
        "or pass -n/--context"
    )
    # logs: the sandbox's records, one line each; -f follows them to the end.
    for follow in ([], ["-f"]):
        code, out, err = await cli("logs", "ctx-2", "--context", "dev", *follow, *common)
        assert code == 0, err
        assert "  tool     write hello.py" in out and "result: Completed" in out
