#!/usr/bin/env bash
# Build the real control plane of tests/controlplane/ from the Go module proxy and cache it by version:
#   kube-apiserver + kube-controller-manager (k8s.io/kubernetes KUBE_CONTROL_PLANE_VERSION) and
#   etcd (go.etcd.io/etcd/server/v3 ETCD_VERSION), both pinned in operator/buildstudio/pins.py.
#
# k8s.io/kubernetes (and etcd's server module) replace their sibling modules with local paths, so
# `go install mod/cmd@v` does not work. For each, a wrapper module is generated outside the checkout:
# it requires the pinned module and pins every module that the pinned go.mod requires and replaces with a
# local path to its published version (read from that go.mod with `go mod edit -json`, never written by hand).
#
# Output: $CACHE/kube-<v>/{kube-apiserver,kube-controller-manager}, $CACHE/etcd-<v>/etcd, where
# CACHE=${BUILDSTUDIO_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildstudio/controlplane}.
# A second run finds them and exits at once. Env: GO (the go command), GO_PARALLEL (go build -p, default 2),
# NICE (default 19).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "build-control-plane: $*"; }
die() { echo "build-control-plane: $*" >&2; exit 2; }

pin() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" operator/buildstudio/pins.py; }
KUBE_VERSION=$(pin KUBE_CONTROL_PLANE_VERSION)
ETCD_VERSION=$(pin ETCD_VERSION)
[[ $KUBE_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "KUBE_CONTROL_PLANE_VERSION missing or not v1.X.Y in pins.py: '$KUBE_VERSION'"
KUBE_MINOR=${BASH_REMATCH[1]}
STAGING_VERSION="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"  # k8s.io/api etc. are tagged v0.X.Y for Kubernetes v1.X.Y
[[ $ETCD_VERSION =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "ETCD_VERSION missing or not v3.X.Y in pins.py: '$ETCD_VERSION'"

CACHE=${BUILDSTUDIO_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildstudio/controlplane}
KUBE_DIR=$CACHE/kube-$KUBE_VERSION
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION

have_all() { local d=$1; shift; for b in "$@"; do [[ -x $d/$b ]] || return 1; done; }
sizes() { local d=$1; shift; for b in "$@"; do printf '  %-26s %4d MiB  %s\n' "$b" $(( $(stat -c %s "$d/$b") / 1048576 )) "$d/$b"; done; }

if have_all "$KUBE_DIR" kube-apiserver kube-controller-manager && have_all "$ETCD_DIR" etcd; then
  say "cached: Kubernetes $KUBE_VERSION, etcd $ETCD_VERSION (nothing to build)"
  sizes "$KUBE_DIR" kube-apiserver kube-controller-manager; sizes "$ETCD_DIR" etcd
  exit 0
fi

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
[[ -x $GO ]] || die "no Go toolchain found (need go >= 1.26 on PATH or GO=/path/to/go): cannot build the control plane"
command -v python3 >/dev/null || die "python3 is needed to read go.mod files"
export GOFLAGS="${GOFLAGS:-} -p=${GO_PARALLEL:-2}" CGO_ENABLED=0
NICE=${NICE:-19}
TIME=(); [[ -x /usr/bin/time ]] && TIME=(/usr/bin/time -f "  peak RSS of one process: %M KiB, %e s wall")
say "$("$GO" version), GOFLAGS=$GOFLAGS, nice $NICE, cache $CACHE"

# wrapper DIR MODULE VERSION PIN_VERSION TOOL...: generate DIR/go.mod that requires MODULE@VERSION, pins each module
# that MODULE's go.mod replaces with a local path to PIN_VERSION, copies its go/godebug lines, lists TOOLs; then tidy.
wrapper() {
  local dir=$1 module=$2 version=$3 pin_version=$4; shift 4
  local gomod
  gomod=$("$GO" mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  rm -rf "$dir"; mkdir -p "$dir"
  local args
  args=$("$GO" mod edit -json "$gomod" | PIN="$pin_version" python3 -c '
import json, os, sys
m = json.load(sys.stdin)
out = ["-go=" + m["Go"]]
out += ["-godebug=" + d["Key"] + "=" + d["Value"] for d in m.get("GoDebug") or []]
required = {r["Path"] for r in m.get("Require") or []}
for r in m.get("Replace") or []:
    old, new = r["Old"]["Path"], r["New"]
    if new["Path"].startswith((".", "/")):  # a local path inside that repository: take the published module,
        if old in required:                 # unless it only guards against a dependency (etcd: FORBIDDEN_DEPENDENCY)
            out.append(f"-replace={old}={old}@{os.environ['"'"'PIN'"'"']}")
    else:                                   # a replace to another module: keep it as the pinned go.mod says
        src = old + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
        out.append(f"-replace={src}={new['"'"'Path'"'"']}@{new['"'"'Version'"'"']}")
print("\n".join(out))')
  (
    cd "$dir"
    "$GO" mod init "buildstudio.local/controlplane/$(basename "$dir")" 2>/dev/null
    mapfile -t edits <<<"$args"
    "$GO" mod edit "${edits[@]}" "-require=$module@$version" $(printf -- '-tool=%s ' "$@")
    say "$(basename "$dir"): $(grep -c '=>' go.mod) replace lines generated from $module@$version's go.mod"
    nice -n "$NICE" "$GO" mod tidy
  )
}

start=$SECONDS
if ! have_all "$KUBE_DIR" kube-apiserver kube-controller-manager; then
  src=$CACHE/src/kube-$KUBE_VERSION
  wrapper "$src" k8s.io/kubernetes "$KUBE_VERSION" "$STAGING_VERSION" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  build_date=$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(open(json.load(sys.stdin)["Info"]))["Time"])')
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$KUBE_MINOR"
    ldflags+=" -X $pkg.gitTreeState=archive -X $pkg.buildDate=$build_date"
  done
  tmp=$KUBE_DIR.partial; rm -rf "$tmp"; mkdir -p "$tmp"
  for cmd in kube-apiserver kube-controller-manager; do
    t=$SECONDS; say "building $cmd $KUBE_VERSION"
    (cd "$src" && "${TIME[@]}" nice -n "$NICE" "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd")
    say "$cmd built in $(( SECONDS - t )) s"
  done
  "$tmp/kube-apiserver" --version | grep -qx "Kubernetes $KUBE_VERSION" || die "kube-apiserver --version is not $KUBE_VERSION"
  rm -rf "$KUBE_DIR"; mv "$tmp" "$KUBE_DIR"
fi
if ! have_all "$ETCD_DIR" etcd; then
  src=$CACHE/src/etcd-$ETCD_VERSION
  wrapper "$src" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION" go.etcd.io/etcd/server/v3
  tmp=$ETCD_DIR.partial; rm -rf "$tmp"; mkdir -p "$tmp"
  t=$SECONDS; say "building etcd $ETCD_VERSION"
  (cd "$src" && "${TIME[@]}" nice -n "$NICE" "$GO" build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  say "etcd built in $(( SECONDS - t )) s"
  "$tmp/etcd" --version | grep -q "etcd Version: ${ETCD_VERSION#v}" || die "etcd --version is not $ETCD_VERSION"
  rm -rf "$ETCD_DIR"; mv "$tmp" "$ETCD_DIR"
fi
say "built Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION in $(( SECONDS - start )) s"
sizes "$KUBE_DIR" kube-apiserver kube-controller-manager; sizes "$ETCD_DIR" etcd
