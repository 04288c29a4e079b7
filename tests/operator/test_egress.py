"""Issue #14, finding 3 ("Egress is open"): the sandbox's NetworkPolicy names its destinations.

Rendered policies for a table of repo and model URLs allow exactly what is expected: no rule
without ``to``, never link-local, the node network or the API server; a destination that cannot
be named safely refuses the dispatch before any child object exists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildstudio.adapters.netresolve import resolve
from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.core import egress as eg
from buildstudio.core import machine as m
from buildstudio.core import manifests as mf
from buildstudio.core.gate import GateDecision
from buildstudio.core.refusal import EGRESS_REFUSED, admin_refusal
from buildstudio.core.settings import EgressSettings, ModelPeer, SandboxDefaults, Settings, from_env
from buildstudio.handlers import build_registry
from tests.kube.client import BUILDDISPATCHES, CONFIGMAPS, NETWORKPOLICIES, PODS
from tests.operator.conftest import FAST, Cluster

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
OWNER = mf.Owner(name="fix-1", uid="0b0e5a4c-1111-4222-8333-444455556666", namespace="dev")
D = SandboxDefaults()
API_SERVER = "10.96.0.1/32"
NODES = "10.0.0.0/16"
ADMIN = EgressSettings(node_cidrs=(NODES,), api_server_cidrs=(API_SERVER,))
MODEL_SVC = "http://ollama.models.svc:11434/v1"
OLLAMA = ModelPeer(namespace="models", service="ollama", pod_labels={"app": "ollama"}, port=11434)
GITHUB = "https://github.com/o/r.git"
PUBLIC = "140.82.121.4"
T0 = datetime(2026, 11, 25, 10, tzinfo=UTC)


def nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


def forbidden(egress: EgressSettings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return nets(*eg.LINK_LOCAL, *egress.node_cidrs, *egress.api_server_cidrs)


def blocks(policy: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                yield peer["ipBlock"]


def assert_named(policy: dict[str, Any], egress: EgressSettings) -> None:
    """What every rendered policy must satisfy, whatever the URLs."""
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in policy["spec"]
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), f"a rule without destinations opens its ports to everything: {rule}"
        assert rule.get("ports"), f"a rule without ports opens every port: {rule}"
    for block in blocks(policy):
        cidr = ipaddress.ip_network(block["cidr"])
        excepts = nets(*block.get("except", []))
        for ex in excepts:  # the API server rejects an except outside (or equal to) its cidr
            assert ex.version == cidr.version and ex.subnet_of(cidr) and ex != cidr, block  # type: ignore[arg-type]
        for bad in forbidden(egress):
            if bad.version != cidr.version or not cidr.overlaps(bad):  # type: ignore[arg-type]
                continue
            # Nested CIDRs: the block may only contain the forbidden range, and then excepts it.
            assert not cidr.subnet_of(bad), f"{cidr} lies inside the forbidden {bad}"  # type: ignore[arg-type]
            assert any(bad.subnet_of(ex) for ex in excepts), f"{cidr} reaches the forbidden {bad}"  # type: ignore[arg-type]


def policy(
    repo: str,
    model: str = MODEL_SVC,
    egress: EgressSettings = ADMIN,
    *,
    git: Sequence[str] = (),
    models: Sequence[str] = (),
) -> dict[str, Any]:
    pol = eg.egress_policy(OWNER, model, repo, D, egress, git_addresses=git, model_addresses=models)
    assert_named(pol, egress)
    return pol


def rules(pol: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pol["spec"]["egress"][1:])  # after DNS


def refusal(repo: str, model: str = MODEL_SVC, egress: EgressSettings = ADMIN, **kw: Any) -> str:
    why = eg.egress_refusal(repo, model, egress, **kw)
    assert why is not None, f"{repo} / {model} was not refused"
    with pytest.raises(eg.Refused):
        eg.egress_policy(OWNER, model, repo, D, egress, **kw)
    return why


def tcp(port: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port}]


def block(cidr: str, *excepts: str) -> dict[str, Any]:
    inner: dict[str, Any] = {"cidr": cidr}
    if excepts:
        inner["except"] = list(excepts)
    return {"ipBlock": inner}


# ---------------------------------------------------------------- the git remote


def test_metadata_address_is_refused_on_any_port() -> None:
    assert "port 80 is not an allowed git port (443, 22" in refusal("http://169.254.169.254/x.git")
    assert "spec.repo.url" in refusal("http://169.254.169.254/x.git")
    with_80 = replace(ADMIN, git_ports=(443, 80))
    why = refusal("http://169.254.169.254/x.git", egress=with_80)
    assert "spec.repo.url" in why and "169.254.0.0/16" in why
    # An allow-list does not make it reachable either.
    assert "169.254.0.0/16" in refusal(
        "https://169.254.169.254/x.git", egress=replace(ADMIN, allow_cidrs=("0.0.0.0/0",))
    )


def test_kubelet_port_is_refused_not_opened() -> None:
    why = refusal("https://10.0.0.1:10250/x")
    assert why.startswith("spec.repo.url: https://10.0.0.1:10250/x: port 10250 is not an allowed git port")


def test_outside_host_gets_exactly_its_address_on_443() -> None:
    pol = policy(GITHUB, git=[PUBLIC])
    assert rules(pol)[-1] == {"to": [block(f"{PUBLIC}/32")], "ports": tcp(443)}


@pytest.mark.parametrize(
    ("addresses", "dropped"),
    [
        (["169.254.169.254"], "169.254.0.0/16"),
        (["10.0.3.4"], NODES),
        (["10.96.0.1"], API_SERVER),
        (["fd00:ec2::254"], "fd00:ec2::/64"),
        (["::ffff:169.254.169.254"], "169.254.0.0/16"),
        (["0.0.0.0"], "not a unicast address"),
    ],
)
def test_outside_host_resolving_into_forbidden_ranges_is_refused(addresses: list[str], dropped: str) -> None:
    why = refusal("https://evil.example/x.git", git_addresses=addresses)
    assert why.startswith("spec.repo.url: https://evil.example/x.git: every address of evil.example is excluded")
    assert dropped in why


def test_forbidden_addresses_are_dropped_the_others_kept() -> None:
    plan = eg.plan_egress("https://mixed.example/r.git", "", ADMIN, git_addresses=["10.0.3.4", PUBLIC, "2001:db8::7"])
    assert plan.refusal is None and any(NODES in d for d in plan.dropped)
    assert plan.rules == ({"to": [block(f"{PUBLIC}/32"), block("2001:db8::7/128")], "ports": tcp(443)},)


def test_unresolvable_remote_without_allow_list_is_refused() -> None:
    why = refusal("https://nowhere.invalid/r.git", git_addresses=[])
    assert why == (
        "spec.repo.url: https://nowhere.invalid/r.git: host nowhere.invalid did not resolve, "
        "and the admin set no git allow-list"
    )


def test_ipv6_literal() -> None:
    pol = policy("https://[2001:db8::5]/r.git")
    assert rules(pol)[-1] == {"to": [block("2001:db8::5/128")], "ports": tcp(443)}
    assert "fe80::/10" in refusal("https://[fe80::1]/r.git")


def test_scp_like_remote_is_ssh_on_22() -> None:
    assert eg.git_remote("git@github.com:o/r.git") == eg.Endpoint("github.com", 22)
    assert eg.git_remote("git@[2001:db8::9]:o/r.git") == eg.Endpoint("2001:db8::9", 22)
    assert eg.git_remote("./some/dir") is None and eg.git_remote("file:///src/r") is None
    pol = policy("git@github.com:o/r.git", git=[PUBLIC])
    assert rules(pol)[-1] == {"to": [block(f"{PUBLIC}/32")], "ports": tcp(22)}


def test_custom_port_only_when_the_admin_allows_it() -> None:
    assert "port 2222 is not an allowed git port" in refusal("ssh://git@git.example:2222/r", git_addresses=[PUBLIC])
    assert "port 9418" in refusal("git://git.example/r", git_addresses=[PUBLIC])
    pol = policy("ssh://git@git.example:2222/r", egress=replace(ADMIN, git_ports=(2222,)), git=[PUBLIC])
    assert rules(pol)[-1]["ports"] == tcp(2222)


def test_allow_list_cidrs_always_except_link_local_nodes_and_api_server() -> None:
    admin = replace(ADMIN, allow_cidrs=("0.0.0.0/0", "::/0"), allow_namespaces=("git",))
    assert eg.lookups(GITHUB, "", admin) == (None, None)  # the allow-list needs no lookup
    pol = policy(GITHUB, "", admin)
    assert rules(pol) == [
        {
            "to": [
                block("0.0.0.0/0", NODES, API_SERVER, "169.254.0.0/16"),
                block("::/0", "fd00:ec2::/64", "fe80::/10"),
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "git"}}},
            ],
            "ports": tcp(443),
        }
    ]
    # An allow-list entry inside a forbidden range is dropped; nothing left is a refusal.
    only_nodes = replace(ADMIN, allow_cidrs=("10.0.5.0/24",))
    assert "allow-list leaves nothing" in refusal(GITHUB, "", only_nodes)
    # A literal remote outside the allow-list would never connect: refused up front.
    assert "outside the admin's git allow-list" in refusal(
        "https://203.0.113.9/r.git", "", replace(ADMIN, allow_cidrs=("198.51.100.0/24",))
    )


def test_in_cluster_git_service_needs_the_namespace_allow_list() -> None:
    url = "https://gitea.git.svc.cluster.local/o/r.git"
    assert "egress.allowNamespaces" in refusal(url, "")
    pol = policy(url, "", replace(ADMIN, allow_namespaces=("git",)))
    assert rules(pol) == [
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "git"}}}], "ports": tcp(443)}
    ]


def test_text_phases_and_local_sources_have_no_git_rule() -> None:
    pol = policy("", MODEL_SVC)
    assert len(rules(pol)) == 1 and rules(pol)[0]["ports"] == tcp(11434)
    assert len(rules(policy("file:///src/r", MODEL_SVC))) == 1


# ---------------------------------------------------------------- the model service


def test_in_cluster_model_service_is_its_pods_on_their_port() -> None:
    admin = replace(ADMIN, model_peers=(OLLAMA,))
    pol = policy(GITHUB, MODEL_SVC, admin, git=[PUBLIC])
    assert rules(pol)[0] == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}},
                "podSelector": {"matchLabels": {"app": "ollama"}},
            }
        ],
        "ports": tcp(11434),
    }
    # The pods' own port wins over the Service's (the policy sees traffic after the DNAT).
    behind = replace(ADMIN, model_peers=(replace(OLLAMA, port=8000),))
    assert rules(policy("", "http://ollama.models:80/v1", behind))[0]["ports"] == tcp(8000)


@pytest.mark.parametrize(
    "url",
    [
        "http://x.kube-system.svc:8080/v1",
        "http://x.kube-system:8080/v1",
        "http://x.kube-system.svc.cluster.local:8080/v1",
    ],
)
def test_kube_system_model_url_is_never_a_whole_namespace_on_every_port(url: str) -> None:
    (rule,) = rules(policy("", url))
    assert rule == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
        "ports": tcp(8080),
    }


def test_model_ip_literal_and_loopback() -> None:
    assert rules(policy("", "http://10.1.0.7:8000/v1")) == [{"to": [block("10.1.0.7/32")], "ports": tcp(8000)}]
    assert rules(policy("", "http://127.0.0.1:12434/engines/v1")) == []
    assert rules(policy("", "http://localhost:11434/v1")) == []
    assert "169.254.0.0/16" in refusal("", "http://169.254.169.254/v1")


def test_outside_model_host_is_its_addresses_on_the_url_port() -> None:
    assert eg.lookups("", "https://llm.example.com/v1", ADMIN) == (None, eg.Endpoint("llm.example.com", 443))
    pol = policy("", "https://llm.example.com/v1", models=["203.0.113.20", "203.0.113.21"])
    assert rules(pol) == [{"to": [block("203.0.113.20/32"), block("203.0.113.21/32")], "ports": tcp(443)}]
    assert "did not resolve" in refusal("", "https://llm.example.com/v1", model_addresses=[])


@pytest.mark.parametrize(
    ("engine", "host"), [("claude", "api.anthropic.com"), ("codex", "api.openai.com"), ("grok", "api.x.ai")]
)
def test_a_cloud_engine_s_egress_is_its_vendor_host_on_443(engine: str, host: str) -> None:
    """The vendor API is the cloud engine's model destination: looked up at launch, named alone."""
    from buildstudio.api.engine import BuildEngineSpec
    from buildstudio.core.sandbox_request import model_upstream

    raw = {"engine": engine, "endpoint": "cloud", "version": "1", "command": [engine],
           "credential": {"secretRef": {"name": "k", "key": "api-key"}, "env": "X"}}  # fmt: skip
    upstream = model_upstream(BuildEngineSpec.model_validate(raw))
    assert eg.lookups(GITHUB, upstream, ADMIN) == (eg.Endpoint("github.com", 443), eg.Endpoint(host, 443))
    pol = policy(GITHUB, upstream, git=[PUBLIC], models=["203.0.113.30"])
    assert rules(pol)[0] == {"to": [block("203.0.113.30/32")], "ports": tcp(443)}
    assert f"host {host} did not resolve" in refusal("", upstream, model_addresses=[])


def test_egress_policy_golden() -> None:
    admin = replace(ADMIN, model_peers=(OLLAMA,))
    pol = policy(GITHUB, MODEL_SVC, admin, git=[PUBLIC])
    text = yaml.safe_dump(pol, sort_keys=False)
    path = GOLDEN / "egress-networkpolicy.yaml"
    if os.environ.get("BUILDSTUDIO_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), "egress-networkpolicy.yaml differs from the golden file"
    dns = pol["spec"]["egress"][0]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert pol["spec"]["podSelector"]["matchLabels"]["buildstudio.dpf.dev/dispatch"] == "fix-1"
    assert mf.egress_policy is eg.egress_policy  # still importable where it used to live


# ---------------------------------------------------------------- settings, resolution, admission


def test_chart_egress_block_reaches_settings() -> None:
    env = {
        "BUILDSTUDIO_EGRESS": '{"gitPorts": [443], "allowCIDRs": ["192.0.2.7"], "nodeCIDRs": ["10.0.0.0/16"],'
        ' "apiServerCIDRs": ["172.18.0.2"], "modelServices": [{"namespace": "models", "service": "ollama",'
        ' "podSelector": {"app": "ollama"}, "port": 11434}], "resolveTimeoutSeconds": 2}',
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    }
    e = from_env(env).egress
    assert e.git_ports == (443,) and e.allow_cidrs == ("192.0.2.7/32",) and e.node_cidrs == ("10.0.0.0/16",)
    assert e.api_server_cidrs == ("172.18.0.2/32", "10.96.0.1/32")  # the admin's, then the operator's own
    assert e.model_peers == (OLLAMA,) and e.resolve_timeout_seconds == 2.0
    assert from_env({}).egress == EgressSettings()
    with pytest.raises(ValueError, match="nodeCIDRs"):
        from_env({"BUILDSTUDIO_EGRESS": '{"nodeCIDRs": ["10.0.0.0/33"]}'})


async def test_resolve_is_bounded_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(await resolve("localhost", 443, 5.0)) & {"127.0.0.1", "::1"}
    assert await resolve("nowhere.invalid", 443, 5.0) == []
    loop = asyncio.get_running_loop()

    async def slow(*_: Any, **__: Any) -> list[Any]:
        await asyncio.sleep(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 443))]

    monkeypatch.setattr(loop, "getaddrinfo", slow)
    started = loop.time()
    assert await resolve("slow.example", 443, 0.2) == []
    assert loop.time() - started < 2.0


def test_admission_refuses_what_needs_no_lookup() -> None:
    spec = BuildDispatchSpec.model_validate({"prompt": "p", "repo": {"url": "https://10.0.0.1:10250/x"}})
    d = m.Dispatch(name="d", namespace="dev", uid="u", generation=1, created=T0, spec=spec)
    gate = GateDecision(admit=True, reason="Admitted", message="ok", engine="opencode", model="q")
    got = admin_refusal(d, gate, [], Settings())
    assert got is not None and got[0] == EGRESS_REFUSED and "spec.repo.url" in got[1] and "10250" in got[1]
    step = m.enter(d, gate, None, T0, Settings(), refusal=got)
    assert step.status["phase"] == "Failed" and not any(isinstance(a, m.Launch) for a in step.actions)
    assert {e.reason for e in step.emitted()} == {EGRESS_REFUSED}
    # A text phase clones nothing: its repo URL opens nothing and refuses nothing.
    plan = replace(d, spec=spec.model_copy(update={"phase": "plan"}))
    assert admin_refusal(plan, gate, [], Settings()) is None


def test_a_cloud_key_is_refused_over_plain_http_to_a_model_service() -> None:
    """A cloud engine with a modelService (a proxy): its relay sends the vendor key there."""
    from buildstudio.api.engine import BuildEngineSpec
    from buildstudio.core.gate import EngineState

    raw = {"engine": "claude", "endpoint": "cloud", "version": "1", "command": ["claude"],
           "credential": {"secretRef": {"name": "k", "key": "api-key"}, "env": "ANTHROPIC_API_KEY"}}  # fmt: skip
    spec = BuildDispatchSpec.model_validate({"prompt": "p", "repo": {"url": GITHUB}})
    d = m.Dispatch(name="d", namespace="dev", uid="u", generation=1, created=T0, spec=spec)
    gate = GateDecision(admit=True, reason="Admitted", message="ok", engine="claude", model="c")

    def refused(service: dict[str, Any] | None, settings: Settings | None = None) -> tuple[str, str] | None:
        engine = EngineState("claude", BuildEngineSpec.model_validate({**raw, "modelService": service}), True)
        return admin_refusal(d, gate, [engine], settings or Settings())

    got = refused({"baseURL": "http://proxy.models:8080/v1"})
    assert got is not None and got[0] == "PlaintextCredential" and "proxy.models" in got[1]
    assert refused({"baseURL": "https://proxy.models/v1"}) is None
    assert refused(None) is None  # the vendor's own API is https
    lax = replace(Settings(), sandbox=replace(Settings().sandbox, allow_plaintext_credentials=True))
    assert refused({"baseURL": "http://proxy.models:8080/v1"}, lax) is None


def test_a_launch_refused_takes_its_attempt_back() -> None:
    spec = BuildDispatchSpec.model_validate({"prompt": "p", "repo": {"url": GITHUB}})
    d = m.Dispatch(name="d", namespace="dev", uid="u", generation=1, created=T0, spec=spec)
    gate = GateDecision(admit=True, reason="Admitted", message="ok", engine="opencode", model="q")
    queued = m.enter(d, gate, None, T0, Settings())
    launch = m.queued(replace(d, status=queued.status), m.Slot(admit=True), T0, Settings())
    assert any(isinstance(a, m.Launch) for a in launch.actions)
    why = "spec.repo.url: https://github.com/o/r.git: host github.com did not resolve"
    step = m.refused_at_launch(replace(d, status=launch.status), EGRESS_REFUSED, why, T0, Settings())
    conds = {x["type"]: x for x in step.status["conditions"]}
    assert conds["Succeeded"]["status"] == "False" and conds["Succeeded"]["reason"] == EGRESS_REFUSED
    assert conds["Admitted"]["status"] == "False" and "Running" not in conds and "podName" not in step.status
    assert step.status["message"] == why and [e.reason for e in step.emitted()] == [EGRESS_REFUSED]


# ---------------------------------------------------------------- in the operator (emulator)


async def _no_children(cluster: Cluster, name: str) -> None:
    assert await cluster.k8s.find(PODS, f"{name}-1") is None
    assert await cluster.k8s.find(CONFIGMAPS, f"{name}-config") is None
    assert await cluster.k8s.find(NETWORKPOLICIES, f"{name}-egress") is None


async def test_operator_refuses_a_kubelet_port_before_any_child_exists(cluster: Cluster) -> None:
    await cluster.dispatch("kubelet", repo={"url": "https://10.0.0.1:10250/x"})
    st = await cluster.wait_phase("kubelet", "Failed", "Succeeded", timeout=20)
    done = next(x for x in st["conditions"] if x["type"] == "Succeeded")
    assert done["reason"] == EGRESS_REFUSED and "spec.repo.url" in done["message"], st
    await _no_children(cluster, "kubelet")


async def test_operator_refuses_an_unresolvable_remote_at_launch(cluster: Cluster) -> None:
    await cluster.operator.stop()
    strict = replace(FAST, egress=EgressSettings(resolve_timeout_seconds=3.0))  # no allow-list: resolve
    operator = await cluster.start_operator(build_registry(strict, namespace="default", seed=False))
    await cluster.dispatch("nowhere", repo={"url": "https://nowhere.invalid/r.git"})
    st = await cluster.wait_phase("nowhere", "Failed", "Succeeded", timeout=20)
    done = next(x for x in st["conditions"] if x["type"] == "Succeeded")
    assert done["reason"] == EGRESS_REFUSED, st
    assert done["message"].startswith("spec.repo.url: https://nowhere.invalid/r.git: host nowhere.invalid")
    await _no_children(cluster, "nowhere")
    await operator.stop()


async def test_operator_policy_has_no_open_rule(cluster: Cluster) -> None:
    await cluster.dispatch("named")
    pol = None
    for _ in range(200):
        pol = await cluster.k8s.find(NETWORKPOLICIES, "named-egress")
        if pol is not None:
            break
        await asyncio.sleep(0.1)
    assert pol is not None
    assert_named(pol, FAST.egress)
    git = pol["spec"]["egress"][-1]
    assert git == {"to": [block("0.0.0.0/0", "169.254.0.0/16")], "ports": tcp(443)}
    await cluster.k8s.patch(BUILDDISPATCHES, "named", {"spec": {"cancel": True}}, "default")
