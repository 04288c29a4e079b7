#!/usr/bin/env bash
# `make images`: build Dockerfile.sandbox and Dockerfile.operator for real, with buildah and no Docker
# engine or container registry, then export both as OCI archives.
#
# The Dockerfiles are built unchanged except for their base-image build args: the bases are made here
# from Debian's packages (debootstrap minbase + apt), because no registry serves python:* or node:*.
#   localhost/buildstudio-base-python:KEY  Debian bookworm's python3 (3.11) + venv + `python`
#   localhost/buildstudio-base-node:KEY    Debian bookworm's nodejs + npm (the opencode fetch stage only)
# Both carry the machine's CA bundle (PIP_CERT / NODE_EXTRA_CA_CERTS): on these machines the
# registries' TLS chain ends at a CA only that bundle holds. That stays in the local bases; the shipped
# Dockerfiles are built as a user would build them.
#
# Cache: the debootstrapped rootfs and both bases (as OCI archives) live under
# $BUILDSTUDIO_IMAGE_CACHE (default ~/.cache/buildstudio/images/<key>/), KEY = sha256 of their inputs
# (suite, package lists, the base Containerfiles, the CA bundle). Each project image is also tagged
# ctx-KEY, KEY = sha256 of its Dockerfile, build args and build context: an unchanged rebuild is a re-tag.
# (Not buildah's --layers: with vfs every cached step is a full copy of the rootfs, which doubled the time.)
# Output: $BUILDSTUDIO_IMAGE_OUT (default .tools/images/): buildstudio-{sandbox,operator}.oci.tar, named
# ghcr.io/dpf-dev/buildstudio-{sandbox,operator}:VERSION like the chart's defaults, and images.json.
# BUILDSTUDIO_FULL_IMAGE=1 (`make images-full`) also builds buildstudio-sandbox-full: Dockerfile.sandbox with
# ENGINES="opencode claude codex grok", the image for cloud-engine dispatches (docs/engines/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${BUILDSTUDIO_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/buildstudio/images}
out=${BUILDSTUDIO_IMAGE_OUT:-$root/.tools/images}
ca=${BUILDSTUDIO_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
suite=bookworm
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
registry=ghcr.io/dpf-dev
# vfs: no overlay mounts needed; chroot: no runtime (crun cannot set rlimits here); never: no registry.
buildah=(buildah --storage-driver vfs)
bud=(bud --isolation chroot --pull=never --network host)

log() { printf '== %s\n' "$*" >&2; }
now() { date +%s; }

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "needs buildah and debootstrap (apt-get install buildah debootstrap)" >&2; exit 1; }
  log "installing buildah and debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi
[ -r "$ca" ] || { echo "no CA bundle at $ca (set BUILDSTUDIO_CA_BUNDLE)" >&2; exit 1; }

have_image() { "${buildah[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# --- the base images, cached by their inputs ------------------------------------------------------------------
base_containerfile() {  # $1 = python|node
  printf 'FROM scratch\nADD rootfs.tar /\nCOPY ca-bundle.crt /usr/local/share/buildstudio/ca-bundle.crt\n'
  printf 'ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive\n'
  case $1 in
    python)
      printf 'ENV PIP_CERT=/usr/local/share/buildstudio/ca-bundle.crt\n'
      printf 'RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 && rm -rf /var/lib/apt/lists/*\n'
      printf 'CMD ["python"]\n' ;;
    node)
      printf 'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/buildstudio/ca-bundle.crt\n'
      printf 'RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*\n'
      printf 'CMD ["node"]\n' ;;
  esac
}

key=$( { echo "suite=$suite variant=minbase format=1"; base_containerfile python; base_containerfile node; sha256sum <"$ca"; } \
  | sha256sum | cut -c1-16)
dir=$cache/$key
py_base=localhost/buildstudio-base-python:$key
node_base=localhost/buildstudio-base-node:$key
mkdir -p "$dir"

if have_image "$py_base" && have_image "$node_base"; then
  log "base images $key: in buildah's store"
else
  for kind in python node; do
    name=localhost/buildstudio-base-$kind:$key
    have_image "$name" && continue
    if [ -f "$dir/base-$kind.oci.tar" ]; then
      log "base $kind: from the cache ($dir)"
      "${buildah[@]}" tag "$("${buildah[@]}" pull --quiet "oci-archive:$dir/base-$kind.oci.tar")" "$name"
      continue
    fi
    if [ ! -f "$dir/rootfs.tar" ]; then
      t=$(now); log "debootstrap --variant=minbase $suite (cold: 25-75 s)"
      tmp=$(mktemp -d "$dir/rootfs.XXXXXX")
      debootstrap --variant=minbase "$suite" "$tmp/fs" >"$dir/debootstrap.log" 2>&1 \
        || { tail -n 20 "$dir/debootstrap.log" >&2; rm -rf "$tmp"; exit 1; }
      rm -rf "$tmp/fs/var/cache/apt/archives/"*.deb "$tmp/fs/var/lib/apt/lists/"*
      tar --numeric-owner -C "$tmp/fs" -cf "$tmp/rootfs.tar" .
      mv "$tmp/rootfs.tar" "$dir/rootfs.tar"
      rm -rf "$tmp"
      log "rootfs: $(( $(now) - t )) s"
    fi
    t=$(now)
    ctx=$(mktemp -d "$dir/ctx.XXXXXX")
    ln "$dir/rootfs.tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$dir/rootfs.tar" "$ctx/rootfs.tar"
    cp "$ca" "$ctx/ca-bundle.crt"
    base_containerfile "$kind" >"$ctx/Containerfile"
    "${buildah[@]}" "${bud[@]}" --quiet -f "$ctx/Containerfile" -t "$name" "$ctx" >/dev/null
    "${buildah[@]}" push --quiet "$name" "oci-archive:$dir/base-$kind.oci.tar:$name"
    rm -rf "$ctx"
    log "base $kind: $(( $(now) - t )) s"
  done
fi

# --- the project's images -----------------------------------------------------------------------------------------
mkdir -p "$out"
summary=()
context_key() {  # $1 = image, $2 = its Dockerfile, then build args: what the image is a function of
  local what=$1 file=$2; shift 2
  { printf '%s\n' "$what" "$@"; cat "$file" .dockerignore pyproject.toml README.md
    find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z \
      | xargs -0 sha256sum; } | sha256sum | cut -c1-16
}

build() {  # $1 = sandbox|sandbox-full|operator, $2 = its Dockerfile, then build args
  local what=$1 file=$2; shift 2
  local name=localhost/buildstudio-$what:$version ckey t secs=0 cached=built
  ckey=$(context_key "$what" "$file" "$@")
  t=$(now)
  if have_image "localhost/buildstudio-$what:ctx-$ckey"; then
    cached=cached
    "${buildah[@]}" tag "localhost/buildstudio-$what:ctx-$ckey" "$name"
  else
    log "$what: buildah bud -f $file (log: $out/$what.build.log)"
    "${buildah[@]}" "${bud[@]}" "$@" -f "$file" -t "$name" -t "localhost/buildstudio-$what:ctx-$ckey" . \
      >"$out/$what.build.log" 2>&1 \
      || { tail -n 40 "$out/$what.build.log" >&2; echo "build of $file ($what) failed (log: $out/$what.build.log)" >&2; exit 1; }
    secs=$(( $(now) - t ))
    # Drop the builds of earlier contexts (each a full copy under vfs) and their intermediate images.
    "${buildah[@]}" images --noheading --format '{{.Name}}:{{.Tag}}' \
      | grep "^localhost/buildstudio-$what:ctx-" | grep -v ":ctx-$ckey\$" | xargs -r "${buildah[@]}" rmi >/dev/null 2>&1 || true
  fi
  local archive=$out/buildstudio-$what.oci.tar
  if [ "$cached" = built ] || [ ! -f "$archive" ] || [ "$(cat "$archive.key" 2>/dev/null)" != "$ckey" ]; then
    rm -f "$archive" "$archive.key"
    "${buildah[@]}" push --quiet "$name" "oci-archive:$archive:$registry/buildstudio-$what:$version"
    echo "$ckey" >"$archive.key"
  fi
  local size mb id
  size=$("${buildah[@]}" images --noheading --format '{{.Size}}' "$name" | awk 'NR == 1')  # awk reads to the end: head would SIGPIPE buildah under pipefail
  mb=$(( $(stat -c %s "$archive") / 1000000 ))
  id=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$name")
  summary+=("$(printf '%-12s %-42s %8s unpacked %5s MB archive  %s in %d s' "$what" "$name" "$size" "$mb" "$cached" "$(( $(now) - t ))")")
  printf '{"name": "%s", "image": "%s", "id": "%s", "archive": "%s", "contextKey": "%s", "size": "%s", "archiveMB": %s, "buildSeconds": %d}' \
    "$what" "$name" "$id" "$archive" "$ckey" "$size" "$mb" "$secs" >"$out/$what.json"
}

total=$(now)
# The cloud engines baked into the sandbox image: BUILDSTUDIO_ENGINES (default "opencode", the lean image);
# the full image (BUILDSTUDIO_FULL_IMAGE=1) carries all four. Their versions from operator/buildstudio/pins.py.
pin() { sed -n "s/^$1 = \"\([^\"]*\)\".*/\1/p" operator/buildstudio/pins.py; }
all_engines="opencode claude codex grok"
pins_args=(--build-arg "CLAUDE_CODE_VERSION=$(pin CLAUDE_CODE_VERSION)" --build-arg "CODEX_VERSION=$(pin CODEX_VERSION)"
  --build-arg "GROK_CLI_VERSION=$(pin GROK_CLI_VERSION)" --build-arg "GROK_CLI_BINARY_VERSION=$(pin GROK_CLI_BINARY_VERSION)")
sandbox_bases=(--build-arg "NODE_IMAGE=$node_base" --build-arg "RUNTIME_IMAGE=$py_base")
built=(sandbox operator)
build sandbox Dockerfile.sandbox "${sandbox_bases[@]}" --build-arg "ENGINES=${BUILDSTUDIO_ENGINES:-opencode}" "${pins_args[@]}"
build operator Dockerfile.operator --build-arg "PYTHON_IMAGE=$py_base"
case ${BUILDSTUDIO_FULL_IMAGE:-0} in
  1|true|yes)
    build sandbox-full Dockerfile.sandbox "${sandbox_bases[@]}" --build-arg "ENGINES=$all_engines" "${pins_args[@]}"
    built+=(sandbox-full) ;;
esac
{ printf '{"bases": "%s", "images": [' "$key"; sep=""
  for what in "${built[@]}"; do printf '%s' "$sep"; cat "$out/$what.json"; sep=", "; done; printf ']}\n'; } >"$out/images.json"
for what in "${built[@]}"; do rm -f "$out/$what.json"; done
printf '%s\n' "${summary[@]}"
echo "OCI archives in $out (bases cached in $dir); project images in $(( $(now) - total )) s"
