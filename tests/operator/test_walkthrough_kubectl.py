"""The README's cluster walkthrough, typed with the real kubectl against the emulator."""

from __future__ import annotations

import yaml

from tests.kube.kubectl import Kubectl
from tests.kube.kubelet import PodScript
from tests.operator.conftest import MODEL, Cluster
from tests.operator.test_operator_flow import canned_run

DISPATCH_YAML = f"""\
apiVersion: buildstudio.dpf.dev/v1alpha1
kind: BuildDispatch
metadata:
  name: hello
  namespace: default
spec:
  prompt: Add a hello.py that prints hello
  repo:
    url: https://github.com/example/demo.git
  model: {MODEL}
"""


async def test_apply_wait_get_logs(cluster: Cluster, kubectl: Kubectl) -> None:
    cluster.kubelet.script("hello", PodScript.canned(canned_run(), line_interval=0.05))
    applied = await kubectl("apply", "--validate=false", "-f", "-", stdin=DISPATCH_YAML)
    assert "builddispatch.buildstudio.dpf.dev/hello created" in applied.stdout
    await kubectl("wait", "--for=condition=Succeeded", "bd/hello", "--timeout=60s", timeout=70)
    listed = await kubectl("get", "bd")
    assert listed.stdout.split()[:6] == ["NAME", "PHASE", "REASON", "ENGINE", "MODEL", "AGE"]
    assert listed.stdout.splitlines()[1].split()[:5] == ["hello", "Succeeded", "Completed", "opencode", "qwen3-coder"]
    wide = await kubectl("get", "bd", "-o", "wide")
    assert wide.stdout.split()[6:10] == ["DIFF", "QUEUE", "POD", "SUCCEEDED"]
    assert "+1/-0" in wide.stdout and "hello-1" in wide.stdout
    print(wide.stdout)
    logs = await kubectl("logs", "hello-1")
    assert '"kind":"result"' in logs.stdout
    obj = yaml.safe_load((await kubectl("get", "bd", "hello", "-o", "yaml")).stdout)
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["diffSummary"] == "+1/-0"
    everything = await kubectl("get", "buildstudio")
    assert "hello" in everything.stdout
