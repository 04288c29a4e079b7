#!/usr/bin/env bash
# End to end on a real cluster with kind (needs Docker, kind; kubectl and helm come from `make setup`).
# `make e2e` skips it where Docker is absent (these machines); it was written from kind's and containerd's
# sources, checked with `bash -n` and shellcheck, and has not run here.
#
# 1. The images `make images` built (OCI archives in .tools/images/, built first if absent) are loaded into
#    a throw-away kind cluster with `kind load image-archive`. kind streams the archive into
#    `ctr -n k8s.io images import --all-platforms --digests` on each node, which reads OCI archives too and
#    names the image from the `org.opencontainers.image.ref.name` annotation when it is a full reference
#    (hack/build-images.sh writes ghcr.io/dpf-dev/buildstudio-*:VERSION, the chart's defaults). The script
#    checks the name on every node with crictl; if a node lacks it, the archive is converted to a
#    docker-archive (skopeo, else buildah) and loaded again.
# 2. In-cluster helpers, both from the sandbox image (python + git, no registry): the scripted model server
#    replaying examples/replays/add-subtract.json, and a git server (dumb HTTP, `python -m http.server`)
#    serving the quick start's sample repository.
# 3. The CRDs and the chart, installed with those image references, then one build dispatch in a namespace
#    with Pod Security `restricted`: sandbox pod (clone, relay, real opencode, reporter), the model service
#    through its NetworkPolicy, the result read by the operator; Succeeded with the replay's diff.
# Env: CLUSTER (default buildstudio-e2e), KEEP=1 keeps the cluster, E2E_TIMEOUT (s, the dispatch; 600),
# BUILDSTUDIO_IMAGE_OUT (the archives' directory), SCRIPTED_SERVER_MODULE, SAMPLE_REPO_MODULE.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="$root/.tools/bin:$PATH"  # kubectl and helm of `make setup`

CLUSTER=${CLUSTER:-buildstudio-e2e}
KEEP=${KEEP:-0}
E2E_TIMEOUT=${E2E_TIMEOUT:-600}
images=${BUILDSTUDIO_IMAGE_OUT:-$root/.tools/images}
py=$root/.venv/bin/python
# Where the project keeps these today; the sandbox image carries the same package.
SCRIPTED_SERVER_MODULE=${SCRIPTED_SERVER_MODULE:-buildstudio.commands.scripted_server}
SAMPLE_REPO_MODULE=${SAMPLE_REPO_MODULE:-buildstudio.commands.local}
REPLAY=examples/replays/add-subtract.json
NS=build-studio WORK=e2e MODELS=models GIT=git

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'e2e: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do command -v "$tool" >/dev/null || die "needs $tool on PATH"; done
docker info >/dev/null 2>&1 || die "needs a running Docker engine"
[ -x "$py" ] || die "needs the project's venv (make setup)"

# --- the archives and the references inside them ------------------------------------------------------------------
operator_archive=$images/buildstudio-operator.oci.tar
sandbox_archive=$images/buildstudio-sandbox.oci.tar
if [ ! -f "$operator_archive" ] || [ ! -f "$sandbox_archive" ]; then
  log "no OCI archives in $images: make images"
  bash hack/build-images.sh
fi
ref_of() {  # the archive's one image reference (index.json annotation)
  tar -xOf "$1" index.json | "$py" -c \
    'import json, sys; [m] = json.load(sys.stdin)["manifests"]; print(m["annotations"]["org.opencontainers.image.ref.name"])'
}
operator_ref=$(ref_of "$operator_archive")
sandbox_ref=$(ref_of "$sandbox_archive")
repo_of() { printf '%s' "${1%:*}"; }
tag_of() { printf '%s' "${1##*:}"; }
for ref in "$operator_ref" "$sandbox_ref"; do
  case ${ref##*/} in *:*) ;; *) die "archive reference $ref has no tag";; esac
done
log "images: $operator_ref, $sandbox_ref"

# --- the cluster --------------------------------------------------------------------------------------------------
created=0 up=0
finish() {
  local rc=$?
  if [ "$rc" != 0 ] && [ "$up" = 1 ]; then diagnose; fi
  if [ "$created" = 1 ] && [ "$KEEP" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  return "$rc"
}
trap finish EXIT
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "kind cluster $CLUSTER exists: reused (not deleted afterwards)"
else
  kind create cluster --name "$CLUSTER" --wait 180s
  created=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
up=1
# On failure (any non-zero exit once the cluster is up): what a reader needs to see why, before it goes.
diagnose() {
  set +e
  echo "---- e2e failed; cluster state" >&2
  kubectl get nodes,pods -A -o wide >&2
  kubectl -n "$WORK" get builddispatches -o yaml >&2
  kubectl get buildengines -o yaml >&2
  kubectl -n "$NS" logs deploy/build-studio --tail=200 >&2
  for pod in $(kubectl -n "$WORK" get pods -o name); do
    kubectl -n "$WORK" describe "$pod" >&2
    kubectl -n "$WORK" logs "$pod" --all-containers --prefix --tail=100 >&2
  done
  kubectl -n "$MODELS" logs pod/model --tail=50 >&2
  kubectl -n "$GIT" logs pod/git --tail=50 >&2
}

nodes=$(kind get nodes --name "$CLUSTER")
load() {  # $1 = archive, $2 = reference
  local archive=$1 ref=$2 node missing=0 tmp
  kind load image-archive --name "$CLUSTER" "$archive"
  for node in $nodes; do docker exec "$node" crictl inspecti "$ref" >/dev/null 2>&1 || missing=1; done
  [ "$missing" = 0 ] && return 0
  log "$ref not named on import of the OCI archive: loading a docker-archive instead"
  tmp=$(mktemp -d)
  if command -v skopeo >/dev/null; then
    skopeo copy --quiet "oci-archive:$archive" "docker-archive:$tmp/image.tar:$ref"
  elif command -v buildah >/dev/null; then
    local id
    id=$(buildah --storage-driver vfs pull --quiet "oci-archive:$archive")
    buildah --storage-driver vfs push --quiet "$id" "docker-archive:$tmp/image.tar:$ref"
  else
    rm -rf "$tmp"; die "needs skopeo or buildah to convert $archive to a docker-archive"
  fi
  kind load image-archive --name "$CLUSTER" "$tmp/image.tar"
  rm -rf "$tmp"
  for node in $nodes; do docker exec "$node" crictl inspecti "$ref" >/dev/null || die "$ref not on node $node"; done
}
load "$operator_archive" "$operator_ref"
load "$sandbox_archive" "$sandbox_ref"

# --- the model service and the git server (both from the sandbox image) ----------------------------------------
model=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"])' "$REPLAY")
prompt=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["replay"]["prompt"])' "$REPLAY")
sample=$(mktemp -d)
"$py" - "$sample" "$SAMPLE_REPO_MODULE" <<'PY'
import importlib, pathlib, sys
for name, text in importlib.import_module(sys.argv[2]).SAMPLE_REPO.items():
    (pathlib.Path(sys.argv[1]) / name).write_text(text, encoding="utf-8")
PY
for ns in "$MODELS" "$GIT" "$WORK"; do kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -; done
kubectl label namespace "$WORK" pod-security.kubernetes.io/enforce=restricted --overwrite
kubectl -n "$MODELS" create configmap replay --from-file=replay.json="$REPLAY" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$GIT" create configmap sample-repo --from-file="$sample" --dry-run=client -o yaml | kubectl apply -f -
rm -rf "$sample"

# Both run as the image's uid on a read-only root; imagePullPolicy Never: the loaded image or a clear error.
helper_spec='securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}'
container_sc='securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}'
kubectl -n "$MODELS" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: model, labels: {app: model}}
spec:
  $helper_spec
  containers:
    - name: model
      image: $sandbox_ref
      imagePullPolicy: Never
      command: [python, -m, $SCRIPTED_SERVER_MODULE, --script, /replay/replay.json, --model, "$model",
                --host, 0.0.0.0, --port, "8000"]
      ports: [{containerPort: 8000}]
      readinessProbe: {httpGet: {path: /v1/models, port: 8000}, periodSeconds: 2}
      $container_sc
      volumeMounts: [{name: replay, mountPath: /replay}, {name: tmp, mountPath: /tmp}]
  volumes: [{name: replay, configMap: {name: replay}}, {name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: model}
spec: {selector: {app: model}, ports: [{port: 8000, targetPort: 8000}]}
YAML
kubectl -n "$GIT" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: git, labels: {app: git}}
spec:
  $helper_spec
  containers:
    - name: git
      image: $sandbox_ref
      imagePullPolicy: Never
      # A bare repository served as plain files (git's dumb HTTP protocol): no git daemon needed.
      command: [bash, -euc]
      args:
        - |
          export HOME=/tmp/home
          git init -q -b main /tmp/work
          cp /sample/* /tmp/work/
          git -C /tmp/work add -A
          git -C /tmp/work -c user.name=e2e -c user.email=e2e@localhost commit -q -m "sample repository"
          mkdir -p /tmp/srv
          git clone -q --bare /tmp/work /tmp/srv/calc.git
          git -C /tmp/srv/calc.git update-server-info
          exec python -m http.server 8080 --bind 0.0.0.0 --directory /tmp/srv
      ports: [{containerPort: 8080}]
      readinessProbe: {httpGet: {path: /calc.git/info/refs, port: 8080}, periodSeconds: 2}
      $container_sc
      volumeMounts: [{name: sample, mountPath: /sample}, {name: tmp, mountPath: /tmp}]
  volumes: [{name: sample, configMap: {name: sample-repo}}, {name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: git}
spec: {selector: {app: git}, ports: [{port: 8080, targetPort: 8080}]}
YAML
kubectl -n "$MODELS" wait pod/model --for=condition=Ready --timeout=180s
kubectl -n "$GIT" wait pod/git --for=condition=Ready --timeout=180s

# --- the CRDs and the chart, with the loaded images -------------------------------------------------------------
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd/builddispatches.buildstudio.dpf.dev crd/buildengines.buildstudio.dpf.dev \
  --timeout=60s
# The git server is in-cluster on 8080: allow that port and that namespace for git traffic (egress.*).
helm upgrade --install build-studio charts/build-studio -n "$NS" --create-namespace \
  --set image.repository="$(repo_of "$operator_ref")" --set image.tag="$(tag_of "$operator_ref")" \
  --set sandbox.image.repository="$(repo_of "$sandbox_ref")" --set sandbox.image.tag="$(tag_of "$sandbox_ref")" \
  --set modelService.baseURL="http://model.$MODELS.svc.cluster.local:8000/v1" \
  --set "sandbox.serviceAccount.namespaces={$WORK}" \
  --set "egress.gitPorts={443,22,8080}" --set "egress.allowNamespaces={$GIT}" \
  --wait --timeout 300s
kubectl -n "$NS" rollout status deploy/build-studio --timeout=180s

# The seeded engine is probed in the sandbox image (opencode --version) before dispatches are admitted.
kubectl wait buildengine/opencode --for=create --timeout=120s
kubectl wait buildengine/opencode --for=jsonpath='{.status.present}'=true --timeout=300s

# --- one build dispatch --------------------------------------------------------------------------------------
"$py" - "$prompt" "$model" "$GIT" <<'PY' | kubectl -n "$WORK" apply -f -
import json, sys
prompt, model, git_ns = sys.argv[1:]
print(json.dumps({
    "apiVersion": "buildstudio.dpf.dev/v1alpha1", "kind": "BuildDispatch", "metadata": {"name": "e2e"},
    "spec": {"phase": "build", "prompt": prompt, "model": model,
             "repo": {"url": f"http://git.{git_ns}.svc.cluster.local:8080/calc.git", "ref": "main"},
             "timeouts": {"runSeconds": 600, "idleSeconds": 300}},
}))
PY
# Bounded; a Failed dispatch ends the wait at once (kubectl wait cannot wait for one of two values).
deadline=$(( $(date +%s) + E2E_TIMEOUT ))
while phase=$(kubectl -n "$WORK" get bd e2e -o jsonpath='{.status.phase}'); [ "$phase" != Succeeded ]; do
  [ "$phase" = Failed ] && die "dispatch e2e Failed: $(kubectl -n "$WORK" get bd e2e -o jsonpath='{.status.reason}: {.status.message}')"
  [ "$(date +%s)" -lt "$deadline" ] || die "dispatch e2e not finished within ${E2E_TIMEOUT}s (phase ${phase:-none})"
  sleep 5
done
kubectl -n "$WORK" get bd e2e -o wide
test "$(kubectl -n "$WORK" get bd e2e -o jsonpath='{.status.reason}')" = Completed
test "$(kubectl -n "$WORK" get bd e2e -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].status}')" = True
diff=$(kubectl -n "$WORK" get bd e2e -o jsonpath='{.status.diff}')
grep -q '^+def subtract(a, b):' <<<"$diff" || { echo "$diff" >&2; die "the diff lacks the replay's subtract()"; }
grep -q 'test_calc.py' <<<"$diff" || { echo "$diff" >&2; die "the diff lacks test_calc.py"; }
echo "e2e passed: $operator_ref + $sandbox_ref on kind ($CLUSTER)"
