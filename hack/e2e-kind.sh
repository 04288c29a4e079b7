#!/usr/bin/env bash
# End to end on a real cluster with kind (needs Docker + kind + kubectl + helm).
# Builds both images, loads them into a throw-away kind cluster, installs the CRDs and the chart,
# runs the scripted/replay model server in-cluster as the "local model service", applies a plan-phase
# BuildDispatch (sandbox pod, runner, model service, result channel, status), waits for Succeeded and
# checks the answer. `make e2e` skips it where Docker is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-buildstudio-e2e}
TAG=${TAG:-e2e}
NS=build-studio
KEEP=${KEEP:-0}

cleanup() { [ "$KEEP" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

docker build -f Dockerfile.operator -t buildstudio/operator:$TAG .
docker build -f Dockerfile.sandbox -t buildstudio/sandbox:$TAG .
kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" buildstudio/operator:$TAG buildstudio/sandbox:$TAG
# kind nodes have no GPU: label one so the default GPU-node affinity can be satisfied.
kubectl label node "$CLUSTER-control-plane" nvidia.com/gpu.present=true --overwrite

kubectl apply --server-side -f crds/
kubectl create namespace models --dry-run=client -o yaml | kubectl apply -f -
kubectl -n models create configmap replay --from-file=replay.json=examples/replays/plan.json \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n models apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: model, labels: {app: model}}
spec:
  containers:
    - name: model
      image: buildstudio/sandbox:$TAG
      command: [python, -m, buildstudio.scripted_server, --script, /replay/replay.json, --no-aux,
                --host, 0.0.0.0, --port, "8000"]
      ports: [{containerPort: 8000}]
      volumeMounts: [{name: replay, mountPath: /replay}]
  volumes: [{name: replay, configMap: {name: replay}}]
---
apiVersion: v1
kind: Service
metadata: {name: model}
spec: {selector: {app: model}, ports: [{port: 8000, targetPort: 8000}]}
YAML
kubectl -n models wait pod/model --for=condition=Ready --timeout=120s

helm upgrade --install build-studio charts/build-studio -n $NS --create-namespace \
  --set image.repository=buildstudio/operator --set image.tag=$TAG \
  --set sandbox.image.repository=buildstudio/sandbox --set sandbox.image.tag=$TAG \
  --set modelService.baseURL=http://model.models.svc.cluster.local:8000/v1 --wait --timeout 180s

kubectl create namespace e2e --dry-run=client -o yaml | kubectl apply -f -
kubectl -n e2e apply -f - <<'YAML'
apiVersion: buildstudio.dpf.dev/v1alpha1
kind: BuildDispatch
metadata: {name: e2e}
spec:
  phase: plan
  prompt: Plan how to add subtraction, multiplication and division to the calculator, with tests.
  model: qwen3-coder
YAML
kubectl -n e2e wait bd/e2e --for=condition=Succeeded --timeout=600s
kubectl -n e2e get bd e2e -o wide
test "$(kubectl -n e2e get bd e2e -o jsonpath='{.status.reason}')" = Completed
kubectl -n e2e get bd e2e -o jsonpath='{.status.finalText}' | grep -q 'ZeroDivisionError'
echo "e2e passed"
