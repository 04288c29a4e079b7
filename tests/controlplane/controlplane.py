"""Start a real control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

The binaries come from hack/build-control-plane.sh (`make controlplane`), cached outside the checkout by the
versions pinned in buildstudio.pins. Everything runs on 127.0.0.1 on free ports, with its data, keys and logs in
one directory; `stop()` ends exactly the processes started here (each leads its own process group).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from buildstudio import pins

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = REPO_ROOT / ".tools" / "bin" / "kubectl"


def cache_root() -> Path:
    """Same rule as hack/build-control-plane.sh."""
    explicit = os.environ.get("BUILDSTUDIO_CONTROLPLANE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "buildstudio" / "controlplane"


def binaries() -> dict[str, Path]:
    root = cache_root()
    kube = root / f"kube-{pins.KUBE_CONTROL_PLANE_VERSION}"
    return {
        "etcd": root / f"etcd-{pins.ETCD_VERSION}" / "etcd",
        "kube-apiserver": kube / "kube-apiserver",
        "kube-controller-manager": kube / "kube-controller-manager",
    }


def missing() -> list[Path]:
    return [p for p in binaries().values() if not os.access(p, os.X_OK)]


def crd_names() -> list[str]:
    """The names of the CRDs in crds/."""
    import yaml

    return [d["metadata"]["name"] for path in sorted((REPO_ROOT / "crds").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A CA, the apiserver's serving certificate signed by it, and the service-account signing key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=buildstudio-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)
    (d / "apiserver.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "2", "-extfile", "apiserver.ext", cwd=d)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "controlplane",
        "clusters": [{"name": "controlplane", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "controlplane", "context": {"cluster": "controlplane", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    path.chmod(0o600)
    return path


# Every request of a workload ServiceAccount (the operator's, the tests' own), with its user and response
# code: how a test proves the operator met no 403, or exactly which one. The controllers' accounts
# (kube-system) and the admin are not logged.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
              {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
              {"level": "None"}],
}


@dataclasses.dataclass
class ControlPlane:
    workdir: Path
    kubeconfig: Path = dataclasses.field(init=False)
    server: str = ""
    admin_token: str = ""
    ca: Path = dataclasses.field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    # ---- starting
    def start(self, ready_timeout: float = 120.0) -> None:
        bins = binaries()
        pki = self.workdir / "pki"
        t0 = time.monotonic()
        make_pki(pki)
        self.ca = pki / "ca.crt"
        self.timings["pki"] = time.monotonic() - t0

        etcd_port, peer_port, api_port, kcm_port = free_port(), free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        t0 = time.monotonic()
        self._spawn("etcd", [
            str(bins["etcd"]), "--name=controlplane", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=controlplane={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait("etcd", lambda: self._http_ok(f"{etcd_url}/health", None), 60)
        self.timings["etcd"] = time.monotonic() - t0

        self.admin_token = os.urandom(16).hex()
        kcm_token = os.urandom(16).hex()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n'
                          f"{kcm_token},system:kube-controller-manager,kcm-uid\n")
        tokens.chmod(0o600)
        self.server = f"https://127.0.0.1:{api_port}"
        audit_policy = self.workdir / "audit-policy.json"
        audit_policy.write_text(json.dumps(AUDIT_POLICY))
        t0 = time.monotonic()
        self._spawn("kube-apiserver", [
            str(bins["kube-apiserver"]), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC", "--anonymous-auth=true",  # /readyz etc. stay public, as in a cluster
            "--enable-admission-plugins=NodeRestriction,PodSecurity", "--allow-privileged=true",
            "--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local", "--profiling=false", "--v=1",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}",
        ])
        self._wait("kube-apiserver", lambda: self._http_ok(f"{self.server}/readyz", self.admin_token), ready_timeout)
        self.timings["kube-apiserver"] = time.monotonic() - t0
        self.kubeconfig = write_kubeconfig(self.workdir / "admin.kubeconfig", self.server, self.ca, "admin",
                                           self.admin_token)

        kcm_kubeconfig = write_kubeconfig(self.workdir / "kcm.kubeconfig", self.server, self.ca,
                                          "system:kube-controller-manager", kcm_token)
        t0 = time.monotonic()
        self._spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]), f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}", f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", "--leader-elect=false",
            "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,"
            "serviceaccount-token-controller,root-ca-certificate-publisher-controller",
            "--use-service-account-credentials=true",  # each controller as its own ServiceAccount, as kubeadm runs it
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--v=1",
        ])
        # Ready when the serviceaccount controller has made `default` in `default` (pods need it to be admitted).
        self._wait("kube-controller-manager",
                   lambda: self._http_ok(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default",
                                         self.admin_token), ready_timeout)
        self.timings["kube-controller-manager"] = time.monotonic() - t0

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True, cwd=self.workdir)
        log.close()

    def _http_ok(self, url: str, token: str | None) -> bool:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        context = ssl.create_default_context(cafile=str(self.ca)) if url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait(self, name: str, ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.25)
        raise TimeoutError(f"{name} not ready within {timeout:.0f} s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ---- stopping
    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM then SIGKILL to the process group of each process started here, newest first."""
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
            del self.processes[name]

    # ---- using
    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def audit_events(self, user: str) -> list[dict[str, Any]]:
        """The audit events (stage ResponseComplete) of `user`, oldest first."""
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip())
        return [e for e in events if e.get("stage") == "ResponseComplete" and e["user"]["username"] == user]

    def env(self) -> dict[str, str]:
        """The environment for kubectl (or any client reading KUBECONFIG) against this control plane."""
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig), KUBECACHEDIR=str(self.workdir / "kubecache"))

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(KUBECTL), *args], input=stdin, text=True, capture_output=True, env=self.env(),
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result
