"""A cloud engine dispatched on the cluster (issue #21): ``engine: claude`` with its credential Secret
runs claude in the sandbox pod — runner.json names the engine and the vendor's API, the relay
container alone holds the key, and the egress policy names the vendor host (resolved at launch).
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from buildstudio.commands.scripted_server import ScriptedServer
from buildstudio.core.manifests import WORKSPACE
from buildstudio.engines.replay import translate_script
from buildstudio.handlers import launch as launch_handler
from tests.engines.harness import engine_binary
from tests.engines.scenarios import make_server
from tests.kube.client import BUILDENGINES, CONFIGMAPS, NETWORKPOLICIES, PODS, SECRETS, Kube, wait_for
from tests.kube.kubelet import Kubelet, PodScript
from tests.kube.plugin import KopfOperatorFactory
from tests.operator.conftest import FAST, dispatch_object, new_operator
from tests.operator.gitserver import served_repo, settings_for

VENDOR_ADDRESS = "203.0.113.30"  # what "api.anthropic.com" resolves to here (TEST-NET-3)
KEY = f"sk-ant-SECRET-{secrets.token_hex(8)}"  # fresh per run: only ever in the Secret
CLAUDE: dict[str, Any] = {
    "apiVersion": "buildstudio.dpf.dev/v1alpha1",
    "kind": "BuildEngine",
    "metadata": {"name": "claude"},
    "spec": {
        "engine": "claude",
        "endpoint": "cloud",
        "capabilities": ["apiToolCalls", "fileEdits", "shell"],
        "version": "2.1.332",
        "command": ["claude", "-p"],
        "credential": {"secretRef": {"name": "buildstudio-claude", "key": "api-key"}, "env": "ANTHROPIC_API_KEY"},
        "models": [{"id": "claude-sonnet-4-5", "tier": "strong", "supportsToolUse": True}],
    },
}


async def _resolve(host: str, port: int, timeout: float) -> list[str]:  # noqa: ASYNC109
    return [VENDOR_ADDRESS] if (host, port) == ("api.anthropic.com", 443) else []


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


async def test_a_claude_dispatch_runs_claude_behind_the_relay_with_the_vendor_key(
    k8s: Kube, kubelet: Kubelet, kopf_operator: KopfOperatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch_handler, "resolve", _resolve)  # no DNS in the tests: the vendor's address
    secret = {"api-key": base64.b64encode(KEY.encode()).decode()}
    await k8s.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "buildstudio-claude"},
                               "data": secret})  # fmt: skip
    await k8s.create(BUILDENGINES, CLAUDE)
    kubelet.script("cl", PodScript.hang())
    operator = await new_operator(kopf_operator, FAST)

    async def present() -> bool:
        obj = await k8s.find(BUILDENGINES, "claude")
        return bool(((obj or {}).get("status") or {}).get("present"))

    await wait_for(present, 20, interval=0.1, message="claude present once its Secret exists")
    await k8s.create(
        "buildstudio.dpf.dev/v1alpha1/builddispatches",
        dispatch_object("cl", engine="claude", model="claude-sonnet-4-5"),
    )
    pod = await wait_for(lambda: k8s.find(PODS, "cl-1"), 30, interval=0.1, message="the sandbox pod")
    cm = await wait_for(lambda: k8s.find(CONFIGMAPS, "cl-config"), 30, interval=0.1, message="runner.json")
    policy = await wait_for(lambda: k8s.find(NETWORKPOLICIES, "cl-egress"), 30, interval=0.1, message="egress")

    runner = json.loads(cm["data"]["runner.json"])
    assert (runner["engine"], runner["model"]) == ("claude", "claude-sonnet-4-5")
    assert runner["baseUrl"] == "https://api.anthropic.com/v1"
    assert KEY not in json.dumps(cm) and "apiKeyEnv" not in runner

    cs = _containers(pod)
    relay, agent = cs["relay"]["command"], cs["agent"]
    assert relay[relay.index("--upstream") + 1] == "https://api.anthropic.com/v1"
    assert relay[relay.index("--engine") + 1] == "claude" and "--api-key-file" in relay
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model-credential"]["secret"]["secretName"] == "buildstudio-claude"
    holders = sorted(n for n, c in cs.items() if any(m["name"] == "model-credential" for m in c["volumeMounts"]))
    assert holders == ["relay"]  # the agent (and clone, reporter) never mount the vendor key
    assert all("valueFrom" not in e for c in cs.values() for e in c.get("env", []))
    assert KEY not in json.dumps(pod) and "--api-key-file" not in agent["command"]

    # Egress: DNS, then exactly the vendor's address on 443 (plus the git rule of FAST's allow-list).
    model_rule = policy["spec"]["egress"][1]
    assert model_rule == {"to": [{"ipBlock": {"cidr": f"{VENDOR_ADDRESS}/32"}}], "ports": [{"protocol": "TCP",
                                                                                              "port": 443}]}
    await operator.stop()


# ------------------------------------------------------------------ the real CLI in the emulated pod

WRITE_SUB = "printf 'def sub(a, b):\\n    return a - b\\n' > sub.py"
# A shell command: it runs in the workspace whatever its path in the emulated pod (the kubelet maps
# /workspace to a directory of its own, which the script cannot know in advance).
NEUTRAL = [
    {"text": "Writing sub.py.", "tool": "bash", "args": {"command": WRITE_SUB}},
    {"text": "Added sub()."},
]
MODELS = {"claude": "claude-sonnet-4-5", "codex": "gpt-5.5", "grok": "grok-code-fast-1"}
HEADER = {"claude": "x-api-key", "codex": "authorization", "grok": "authorization"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["claude", "codex", "grok"])
async def test_the_real_cli_runs_in_the_pod_with_the_key_in_the_relay_only(
    k8s: Kube, kubelet: Kubelet, kopf_operator: KopfOperatorFactory, tmp_path: Path, kind: str
) -> None:
    """The whole sandbox pod for real (clone, relay, agent, reporter), the engine's pinned CLI as the
    agent. The vendor is a scripted server in the vendor's API given as the engine's modelService (a
    proxy: no DNS here), so the preflight lists its model; the key reaches it from the Secret through
    the relay, in the vendor's header."""
    binary = engine_binary(kind)
    if binary is None:
        pytest.skip(f"{kind} CLI not installed (hack/install-engines.sh {kind})")
    name = f"buildstudio-{kind}"
    vendor = make_server(kind, translate_script(kind, NEUTRAL, WORKSPACE))
    vendor.models = (MODELS[kind],)  # the preflight's GET /v1/models
    if isinstance(vendor, ScriptedServer):
        vendor.model = MODELS[kind]
    await vendor.start()
    base = vendor.base_url if isinstance(vendor, ScriptedServer) else f"{vendor.origin}/v1"
    try:
        async with served_repo(tmp_path, {"calc.py": "def add(a, b):\n    return a + b\n"}) as url:
            settings = settings_for(url, credential_secrets=frozenset({name}))  # + plain http allowed (loopback)
            data = {"api-key": base64.b64encode(KEY.encode()).decode()}
            await k8s.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data})
            engine = json.loads(json.dumps(CLAUDE))
            engine["metadata"]["name"] = kind
            engine["spec"].update(
                engine=kind,
                credential={"secretRef": {"name": name, "key": "api-key"}, "env": "X_API_KEY"},
                modelService={"baseURL": base},
                models=[{"id": MODELS[kind], "tier": "strong", "supportsToolUse": True, "contextOverride": 131072}],
            )
            await k8s.create(BUILDENGINES, engine)
            kubelet.script("real", PodScript.run(env={f"{kind.upper()}_BIN": str(binary)}))
            operator = await new_operator(kopf_operator, settings)

            async def present() -> bool:
                obj = await k8s.find(BUILDENGINES, kind)
                return bool(((obj or {}).get("status") or {}).get("present"))

            await wait_for(present, 20, interval=0.1, message=f"{kind} present once its Secret exists")
            await k8s.create(
                "buildstudio.dpf.dev/v1alpha1/builddispatches",
                dispatch_object("real", engine=kind, model=MODELS[kind], repo={"url": url, "ref": "main"}),
            )

            async def done() -> dict[str, Any] | None:
                obj = await k8s.find("buildstudio.dpf.dev/v1alpha1/builddispatches", "real")
                st = dict((obj or {}).get("status") or {})
                return st if st.get("phase") in ("Succeeded", "Failed") else None

            st = await wait_for(done, 120, interval=0.2, message="the dispatch finished")
            await operator.stop()
    finally:
        await vendor.stop()
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[:4000]
    assert "+def sub(a, b):" in st["diff"] and st["diffStat"]["files"] == 1
    assert st["summary"]["toolCalls"] == 1 and st["finalText"] == "Added sub()."
    posts = [r for r in vendor.requests if r["method"] == "POST"]
    assert posts and all(
        {k.lower(): v for k, v in r["headers"].items()}.get(HEADER[kind], "").endswith(KEY) for r in posts
    )
    assert KEY not in json.dumps(st)
