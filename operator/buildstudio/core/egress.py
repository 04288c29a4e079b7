"""The egress NetworkPolicy of a sandbox pod: named destinations only (pure).

A sandbox may reach DNS, exactly its model service and its git remote, nothing else:

- git: the remote's own addresses (resolved by the shell, passed in as data) or, when the admin
  set one, the git allow-list (CIDRs and namespaces); only on the URL's port, which must be one of
  the admin's git ports. An unresolvable remote is a refusal, never an open rule.
- model: an IP literal → that address on the URL's port; a cluster service name → its namespace
  (and the pods the admin named for it) on one port; an outside host name → its resolved
  addresses on the URL's port; loopback → no rule.
- link-local (cloud metadata), the node network and the API server are cut out of every ipBlock,
  whatever a URL or the allow-list says. An ipBlock's ``except`` must lie strictly inside its
  ``cidr`` (the API server rejects it otherwise), so a forbidden range that contains the whole
  block drops the block instead, with a reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from buildstudio.core import names
from buildstudio.core.settings import EgressSettings, ModelPeer, SandboxDefaults

Manifest = dict[str, Any]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services and link-local neighbours: never reachable from a sandbox.
LINK_LOCAL: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::/64")
DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


class OwnerRef(Protocol):
    """What the policy needs of its owner (``manifests.Owner``)."""

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str | None: ...

    def reference(self) -> dict[str, Any]: ...


class Refused(ValueError):
    """The destinations cannot be named safely; the message names the field and why."""


@dataclass(frozen=True)
class Endpoint:
    host: str  # lower case, no brackets, no trailing dot
    port: int

    @property
    def address(self) -> Address | None:
        return _address(self.host)


@dataclass(frozen=True)
class Plan:
    """The model and git rules (DNS is always added), what was left out and why, or a refusal."""

    rules: tuple[Manifest, ...] = ()
    dropped: tuple[str, ...] = ()
    refusal: str | None = None


# ---------------------------------------------------------------- parsing


def _address(host: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # no IPv6 zone
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # the packets are IPv4: judge (and allow) the IPv4 address
    return ip


def _host(raw: str) -> str:
    return raw.strip("[]").rstrip(".").lower()


def git_remote(repo_url: str) -> Endpoint | None:
    """The git remote's host and port; None for a local source (a path or ``file://``).

    Raises ``Refused`` for a URL whose host or port cannot be read."""
    if not repo_url or repo_url.startswith("file://") or repo_url.startswith("/"):
        return None
    if "://" not in repo_url:
        # scp-like ``[user@]host:path`` (git's rule: a ':' before any '/'); always ssh, port 22
        colon, slash = repo_url.find(":"), repo_url.find("/")
        if colon < 0 or (0 <= slash < colon and "[" not in repo_url[:slash]):
            return None  # a local path
        user, at, rest = repo_url.partition("@")
        rest = rest if at and ":" not in user and "/" not in user else repo_url
        host = rest[1 : rest.find("]")] if rest.startswith("[") and "]" in rest else rest.split(":", 1)[0]
        if not host:
            raise Refused(f"spec.repo.url: no host in {repo_url!r}")
        return Endpoint(_host(host), 22)
    parts = urlsplit(repo_url)
    try:
        port = parts.port
    except ValueError as exc:
        raise Refused(f"spec.repo.url: {exc}") from None
    host = _host(parts.hostname or "")
    if not host:
        raise Refused(f"spec.repo.url: no host in {repo_url!r}")
    if port is None and parts.scheme not in DEFAULT_PORTS:
        raise Refused(f"spec.repo.url: no git port is known for the scheme {parts.scheme!r}")
    return Endpoint(host, port or DEFAULT_PORTS[parts.scheme])


def model_endpoint(base_url: str) -> Endpoint | None:
    """The model service's host and port; None without a URL. Raises ``Refused`` when unreadable."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError as exc:
        raise Refused(f"model service URL {base_url}: {exc}") from None
    host = _host(parts.hostname or "")
    if not host:
        raise Refused(f"model service URL {base_url!r} has no host")
    return Endpoint(host, port or (443 if parts.scheme == "https" else 80))


def _cluster_service(host: str, cluster_domain: str, *, short_names: bool) -> tuple[str, str] | None:
    """``(service, namespace)`` of ``svc.ns.svc[.<cluster domain>]`` (and ``svc.ns`` with
    ``short_names``: a model URL's habit, never taken for a git host like ``github.com``)."""
    labels = host.split(".")
    suffix = f"svc.{cluster_domain}".split(".")
    if len(labels) >= 3 and labels[2] == "svc" and labels[3:] in ([], suffix[1:]):
        return labels[0], labels[1]
    if short_names and len(labels) == 2:
        return labels[0], labels[1]
    return None


def _is_loopback(host: str) -> bool:
    ip = _address(host)
    return (ip is not None and ip.is_loopback) or host == "localhost" or host.endswith(".localhost")


def lookups(repo_url: str, model_base_url: str, egress: EgressSettings) -> tuple[Endpoint | None, Endpoint | None]:
    """The names the shell must resolve before the policy can be built: ``(git, model)``, each
    None when its rule needs no lookup (no remote, an IP literal, a cluster service, loopback,
    the admin's allow-list, or a URL refused anyway)."""
    git: Endpoint | None = None
    model: Endpoint | None = None
    try:
        remote = git_remote(repo_url)
    except Refused:
        remote = None
    if (
        remote is not None
        and remote.address is None
        and not (egress.allow_cidrs or egress.allow_namespaces)
        and remote.port in egress.git_ports
        and not _is_loopback(remote.host)
        and _cluster_service(remote.host, egress.cluster_domain, short_names=False) is None
    ):
        git = remote
    try:
        service = model_endpoint(model_base_url)
    except Refused:
        service = None
    if (
        service is not None
        and service.address is None
        and not _is_loopback(service.host)
        and _cluster_service(service.host, egress.cluster_domain, short_names=True) is None
    ):
        model = service
    return git, model


# ---------------------------------------------------------------- ipBlocks


def forbidden_networks(egress: EgressSettings) -> list[Network]:
    """Link-local, the node network and the API server: excepted from every ipBlock."""
    nets = {ipaddress.ip_network(c, strict=False) for c in (*LINK_LOCAL, *egress.node_cidrs, *egress.api_server_cidrs)}
    # One range inside another adds nothing (an API server address inside the node network).
    outer = [n for n in nets if not any(o != n and o.version == n.version and n.subnet_of(o) for o in nets)]  # type: ignore[arg-type]
    return sorted(outer, key=lambda n: (n.version, n.network_address, n.prefixlen))


def _block(net: Network, forbidden: Sequence[Network]) -> tuple[Manifest | None, str]:
    """``net`` as an ipBlock with the forbidden ranges inside it excepted; ``(None, why)`` when
    a forbidden range covers it whole."""
    excepts: list[str] = []
    for bad in forbidden:
        if bad.version != net.version:
            continue
        if net.subnet_of(bad):  # type: ignore[arg-type]  # same version, checked above
            return None, f"{net} lies in the excepted range {bad}"
        if bad.subnet_of(net):  # type: ignore[arg-type]
            excepts.append(str(bad))
    block: Manifest = {"cidr": str(net)}
    if excepts:
        block["except"] = excepts
    return {"ipBlock": block}, ""


def _host_blocks(
    addresses: Iterable[str], forbidden: Sequence[Network], dropped: list[str], what: str
) -> list[Manifest]:
    peers: list[Manifest] = []
    seen: set[Network] = set()
    for raw in addresses:
        ip = _address(raw)
        if ip is None:
            dropped.append(f"{what}: {raw!r} is not an IP address")
            continue
        net = ipaddress.ip_network(ip)
        if net in seen:
            continue
        seen.add(net)
        if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved or ip in _THIS_NETWORK:
            dropped.append(f"{what}: {ip} is not a unicast address a sandbox may reach")
            continue
        peer, why = _block(net, forbidden)
        if peer is None:
            dropped.append(f"{what}: {why}")
        else:
            peers.append(peer)
    return sorted(peers, key=lambda p: (":" in p["ipBlock"]["cidr"], p["ipBlock"]["cidr"]))


def _namespace(ns: str) -> Manifest:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: ns}}}


def _rule(peers: list[Manifest], port: int) -> Manifest:
    return {"to": peers, "ports": [{"protocol": "TCP", "port": port}]}


# ---------------------------------------------------------------- rules


def _git_rule(
    repo_url: str, egress: EgressSettings, addresses: Sequence[str] | None, forbidden: Sequence[Network]
) -> tuple[Manifest | None, list[str]]:
    dropped: list[str] = []
    remote = git_remote(repo_url)
    if remote is None:
        return None, dropped
    where = f"spec.repo.url: {repo_url}"
    if remote.port not in egress.git_ports:
        allowed = ", ".join(str(p) for p in egress.git_ports) or "none"
        raise Refused(f"{where}: port {remote.port} is not an allowed git port ({allowed}: egress.gitPorts)")
    literal = remote.address
    listed = literal is not None and any(literal in ipaddress.ip_network(c, strict=False) for c in egress.allow_cidrs)
    if _is_loopback(remote.host) and not listed:  # the pod's own loopback, unless the admin says so (tests)
        raise Refused(f"{where}: a loopback host is not a git remote a sandbox may reach")
    literal_peers = _host_blocks([str(literal)], forbidden, dropped, where) if literal is not None else []
    if literal is not None and not literal_peers and not (listed and literal.is_loopback):
        raise Refused("; ".join(dropped))
    if egress.allow_cidrs or egress.allow_namespaces:
        # The admin's allow-list is where git may go; the remote's own addresses are not added.
        peers: list[Manifest] = []
        for cidr in egress.allow_cidrs:
            peer, why = _block(ipaddress.ip_network(cidr, strict=False), forbidden)
            if peer is None:
                dropped.append(f"egress.allowCIDRs: {why}")
            else:
                peers.append(peer)
        peers += [_namespace(ns) for ns in egress.allow_namespaces]
        if literal is not None and not egress.allow_namespaces:
            inside = any(literal in ipaddress.ip_network(c, strict=False) for c in egress.allow_cidrs)
            if not inside:
                raise Refused(f"{where}: {literal} is outside the admin's git allow-list (egress.allowCIDRs)")
        if not peers:
            raise Refused(f"{where}: the admin's git allow-list leaves nothing to reach ({'; '.join(dropped)})")
        return _rule(peers, remote.port), dropped
    if literal is not None:
        return _rule(literal_peers, remote.port), dropped
    service = _cluster_service(remote.host, egress.cluster_domain, short_names=False)
    if service is not None:
        raise Refused(
            f"{where}: an in-cluster git service ({service[0]} in namespace {service[1]}) is reachable only "
            "through the admin's allow-list (egress.allowNamespaces)"
        )
    if addresses is None:
        return None, dropped  # not resolved yet: the static checks above are all there is to say
    if not addresses:
        raise Refused(f"{where}: host {remote.host} did not resolve, and the admin set no git allow-list")
    peers = _host_blocks(addresses, forbidden, dropped, where)
    if not peers:
        raise Refused(f"{where}: every address of {remote.host} is excluded ({'; '.join(dropped)})")
    return _rule(peers, remote.port), dropped


def _model_peer(service: str, namespace: str, peers: Sequence[ModelPeer]) -> ModelPeer | None:
    matching = [p for p in peers if p.namespace == namespace and p.service in ("", service)]
    return next((p for p in matching if p.service == service), matching[0] if matching else None)


def _model_rule(
    base_url: str, egress: EgressSettings, addresses: Sequence[str] | None, forbidden: Sequence[Network]
) -> tuple[Manifest | None, list[str]]:
    dropped: list[str] = []
    endpoint = model_endpoint(base_url)
    if endpoint is None or _is_loopback(endpoint.host):
        return None, dropped  # loopback never leaves the pod's network namespace
    where = f"model service URL {base_url}"
    literal = endpoint.address
    if literal is not None:
        peers = _host_blocks([str(literal)], forbidden, dropped, where)
        if not peers:
            raise Refused("; ".join(dropped))
        return _rule(peers, endpoint.port), dropped
    service = _cluster_service(endpoint.host, egress.cluster_domain, short_names=True)
    if service is not None:
        name, namespace = service
        peer = _model_peer(name, namespace, egress.model_peers)
        selector = _namespace(namespace)
        port = endpoint.port
        if peer is not None:
            # The pods behind the Service, on their own port: NetworkPolicy sees the traffic
            # after the Service's DNAT, so the URL's (service) port may not be the pods'.
            if peer.pod_labels:
                selector["podSelector"] = {"matchLabels": dict(sorted(peer.pod_labels.items()))}
            port = peer.port or port
        return _rule([selector], port), dropped
    if addresses is None:
        return None, dropped
    if not addresses:
        raise Refused(f"{where}: host {endpoint.host} did not resolve")
    peers = _host_blocks(addresses, forbidden, dropped, where)
    if not peers:
        raise Refused(f"{where}: every address of {endpoint.host} is excluded ({'; '.join(dropped)})")
    return _rule(peers, endpoint.port), dropped


def plan_egress(
    repo_url: str,
    model_base_url: str,
    egress: EgressSettings,
    *,
    git_addresses: Sequence[str] | None = None,
    model_addresses: Sequence[str] | None = None,
) -> Plan:
    """The rules for one attempt. ``*_addresses``: the resolved names (see ``lookups``); None
    means "not resolved yet" and yields only the checks that need no lookup (admission)."""
    forbidden = forbidden_networks(egress)
    try:
        model, model_dropped = _model_rule(model_base_url, egress, model_addresses, forbidden)
        git, git_dropped = _git_rule(repo_url, egress, git_addresses, forbidden)
    except Refused as exc:
        return Plan(refusal=str(exc))
    rules = tuple(r for r in (model, git) if r is not None)
    return Plan(rules=rules, dropped=(*model_dropped, *git_dropped))


def egress_refusal(
    repo_url: str,
    model_base_url: str,
    egress: EgressSettings,
    *,
    git_addresses: Sequence[str] | None = None,
    model_addresses: Sequence[str] | None = None,
) -> str | None:
    """Why no safe policy can be built for these URLs (naming the field), or None."""
    plan = plan_egress(repo_url, model_base_url, egress, git_addresses=git_addresses, model_addresses=model_addresses)
    return plan.refusal


def dns_rule(defaults: SandboxDefaults) -> Manifest:
    return {
        "to": [
            {
                **_namespace(defaults.dns_namespace),
                "podSelector": {"matchLabels": dict(defaults.dns_pod_labels)},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def egress_policy(
    owner: OwnerRef,
    model_base_url: str,
    repo_url: str,
    defaults: SandboxDefaults,
    egress: EgressSettings | None = None,
    *,
    git_addresses: Sequence[str] = (),
    model_addresses: Sequence[str] = (),
) -> Manifest:
    """Egress of the attempt's pods: DNS, the model service, the git remote; nothing else.

    An empty ``*_addresses`` means the name did not resolve. Raises ``Refused`` when no safe
    rule exists (check ``egress_refusal`` first)."""
    plan = plan_egress(
        repo_url,
        model_base_url,
        egress or EgressSettings(),
        git_addresses=git_addresses,
        model_addresses=model_addresses,
    )
    if plan.refusal is not None:
        raise Refused(plan.refusal)
    labels = names.dispatch_labels(owner.name, "egress")
    meta: Manifest = {"name": names.egress_name(owner.name), "labels": labels, "ownerReferences": [owner.reference()]}
    if owner.namespace:
        meta["namespace"] = owner.namespace
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {
                "matchLabels": {
                    names.LABEL_DISPATCH: names.label_value(owner.name),
                    names.LABEL_COMPONENT: "sandbox",
                }
            },
            "policyTypes": ["Ingress", "Egress"],  # no ingress rules: nothing may connect in
            "egress": [dns_rule(defaults), *plan.rules],
        },
    }
