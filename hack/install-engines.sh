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
# Pins: operator/buildstudio/pins.py (CLAUDE_CODE_VERSION, CODEX_VERSION, GROK_CLI_VERSION), read here; the
# registry rows, Dockerfile.sandbox's ARGs and the adapters follow the same constants (tests/engines/test_pins.py).
#   claude  @anthropic-ai/claude-code  newest on the registry when measured (docs/engines/claude.md)
#   codex   @openai/codex              newest when measured (docs/engines/codex.md)
#   grok    @vibe-kit/grok-cli         the only version published; its binary prints GROK_CLI_BINARY_VERSION
set -euo pipefail
cd "$(dirname "$0")/.."

pin() { sed -n "s/^$1 = \"\([^\"]*\)\".*/\1/p" operator/buildstudio/pins.py; }
CLAUDE_VERSION=$(pin CLAUDE_CODE_VERSION)
CODEX_VERSION=$(pin CODEX_VERSION)
GROK_VERSION=$(pin GROK_CLI_VERSION)
[ -n "$CLAUDE_VERSION" ] && [ -n "$CODEX_VERSION" ] && [ -n "$GROK_VERSION" ] || { echo "cannot read the pins from operator/buildstudio/pins.py" >&2; exit 1; }

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
