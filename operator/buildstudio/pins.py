"""Versions that matter, pinned in one place.

`.ci/run`, the Dockerfiles (through build args), the engine registry and the contract
guard test all read these; bump them together and re-measure the opencode contract.
"""

from __future__ import annotations

OPENCODE_VERSION = "1.18.33"
OPENCODE_NPM_PACKAGE = f"opencode-ai@{OPENCODE_VERSION}"
# "baseline" avoids AVX2. The original platform pinned the musl variant for Alpine, but
# opencode-linux-x64-baseline-musl@1.18.33 is not on the npm registry (the last musl build
# published is 1.18.32), so the sandbox image is Debian-based and uses the glibc build.
OPENCODE_LINUX_BUILD = "linux-x64-baseline"
OPENCODE_LINUX_TARBALL_SHA256 = "76f56feba203ed24ff855129de316959847b7af0a7095011d2d5145f6988c940"
KOPF_VERSION = "1.45.2"
KUBERNETES_CLIENT_VERSION = "36.1.0"  # kubernetes-asyncio
# The real control plane of tests/controlplane/, built from the Go module proxy by hack/build-control-plane.sh.
KUBE_CONTROL_PLANE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
# The cloud-engine CLIs (docs/engines/<engine>.md measured these exact versions; re-measure on a bump).
# hack/install-engines.sh, Dockerfile.sandbox's ARGs (through hack/build-images.sh), the registry rows in
# engines/build-engines.yaml and the adapters in buildstudio/engines/ all follow these
# (tests/engines/test_pins.py).
CLAUDE_CODE_VERSION = "2.1.332"
CLAUDE_CODE_NPM_PACKAGE = f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"
CODEX_VERSION = "0.171.0"
CODEX_NPM_PACKAGE = f"@openai/codex@{CODEX_VERSION}"
GROK_CLI_VERSION = "0.0.34"  # npm package version; the binary prints GROK_CLI_BINARY_VERSION
GROK_CLI_BINARY_VERSION = "1.0.1"
GROK_CLI_NPM_PACKAGE = f"@vibe-kit/grok-cli@{GROK_CLI_VERSION}"
