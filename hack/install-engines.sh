#!/usr/bin/env bash
# Install the pinned cloud-engine CLIs (claude, codex, grok) into .tools/engines/ for the engine tests.
#
#   hack/install-engines.sh [claude|codex|grok ...]     (default: all three)
#
# Each engine gets its own npm prefix, .tools/engines/<engine>/, stamped with the package spec it holds
# (.installed); an engine whose stamp matches its pin is left alone, so re-running is cheap. Launchers
# land in .tools/engines/bin/. Only the npm registry is contacted (npm's own client and its config);
# claude's postinstall is allowed to run (it only links the platform binary, and works offline).
#
# Pins (one place until they move into buildstudio/pins.py; engines/build-engines.yaml must agree):
#   claude  @anthropic-ai/claude-code 2.1.332  newest on the registry (2026-11-24), measured in
#           docs/engines/claude.md; the registry's 2.1.331 is one day older and was not measured.
#   codex   @openai/codex 0.171.0             newest (2026-11-20); measured in docs/engines/codex.md.
#   grok    @vibe-kit/grok-cli 0.0.34          the only version published; its binary says 1.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_VERSION=2.1.332
CODEX_VERSION=0.171.0
GROK_VERSION=0.0.34

root=${BUILDSTUDIO_ENGINES_DIR:-$PWD/.tools/engines}
mkdir -p "$root/bin"

spec_of() {
  case $1 in
    claude) echo "@anthropic-ai/claude-code@$CLAUDE_VERSION" ;;
    codex) echo "@openai/codex@$CODEX_VERSION" ;;
    grok) echo "@vibe-kit/grok-cli@$GROK_VERSION" ;;
    *) echo "unknown engine: $1 (claude|codex|grok)" >&2; return 1 ;;
  esac
}

install_one() {
  local engine=$1 spec dir
  spec=$(spec_of "$engine")
  dir=$root/$engine
  if [ -x "$dir/node_modules/.bin/$engine" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$spec" ]; then
    echo "== $engine: $spec already installed"
  else
    echo "== $engine: installing $spec into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    # --no-save keeps no package.json around; --no-audit/--no-fund: no extra registry calls.
    (cd "$dir" && nice npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$dir" "$spec" >/dev/null)
    echo "$spec" >"$dir/.installed"
  fi
  ln -sfn "$dir/node_modules/.bin/$engine" "$root/bin/$engine"
  echo "   $engine --version: $("$root/bin/$engine" --version 2>&1 | head -n1)"
}

engines=("$@")
[ ${#engines[@]} -gt 0 ] || engines=(claude codex grok)
for e in "${engines[@]}"; do install_one "$e"; done
