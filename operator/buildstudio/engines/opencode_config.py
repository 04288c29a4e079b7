"""opencode's configuration and environment for one run (pure; see opencode-contract §3, §8, §9).

The config names one custom provider, ``local``, reached through the bundled
``@ai-sdk/openai-compatible`` package, with the model's measured context written in
(opencode learns nothing from the server). ``permission: allow`` so a TTY-less run never
waits for approval. The environment makes the run air-gapped and ignores the repo's own
opencode config (the repo is untrusted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROVIDER_ID = "local"
PROVIDER_NPM = "@ai-sdk/openai-compatible"
# Defaults are 300 s each and a hung attempt is retried 6 times (≈ 30 min): bound them.
DEFAULT_HEADER_TIMEOUT_MS = 120_000
DEFAULT_CHUNK_TIMEOUT_MS = 120_000
# Nothing listens on the discard port of loopback: opencode's background plugin install fails fast.
UNREACHABLE_NPM_REGISTRY = "http://127.0.0.1:9/"

SANDBOX_FLAGS = {
    "OPENCODE_DISABLE_AUTOCOMPACT": "1",  # the compaction/overflow loop (§7)
    "OPENCODE_DISABLE_MODELS_FETCH": "1",  # models.dev catalogue (§8)
    "OPENCODE_DISABLE_PROJECT_CONFIG": "1",  # <repo>/opencode.json is merged otherwise (§3)
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
}


def model_ref(model: str) -> str:
    """The ``-m`` argument of ``opencode run``."""
    return f"{PROVIDER_ID}/{model}"


def build_config(
    *,
    base_url: str,
    model: str,
    context: int,
    output: int,
    api_key_env: str | None = None,
    header_timeout_ms: int = DEFAULT_HEADER_TIMEOUT_MS,
    chunk_timeout_ms: int = DEFAULT_CHUNK_TIMEOUT_MS,
) -> dict[str, Any]:
    """The opencode.json for one model on an OpenAI-compatible service.

    ``api_key_env`` names an environment variable holding the key; opencode substitutes
    ``{env:NAME}`` itself, so the key never lands in the file.
    """
    if context <= 0 or output <= 0:
        raise ValueError("context and output limits must be positive")
    if output >= context:
        raise ValueError(f"output limit {output} must be below the context {context}")
    options: dict[str, Any] = {
        "baseURL": base_url.rstrip("/"),
        "headerTimeout": header_timeout_ms,
        "chunkTimeout": chunk_timeout_ms,
    }
    if api_key_env:
        options["apiKey"] = "{env:" + api_key_env + "}"
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER_ID: {
                "npm": PROVIDER_NPM,
                "name": "Local",
                "options": options,
                "models": {
                    model: {
                        "name": model,
                        "tool_call": True,
                        "limit": {"context": context, "output": output},
                    }
                },
            }
        },
        "permission": "allow",
        "autoupdate": False,
        "share": "disabled",
    }


def xdg_dirs(home: Path) -> dict[str, Path]:
    return {
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_CACHE_HOME": home / ".cache",
    }


def sandbox_env(home: Path) -> dict[str, str]:
    """The variables a run sets (merged over a minimal base environment by the caller)."""
    env = {"HOME": str(home), **{k: str(v) for k, v in xdg_dirs(home).items()}}
    env.update(SANDBOX_FLAGS)
    env["npm_config_registry"] = UNREACHABLE_NPM_REGISTRY
    return env


def config_path(home: Path) -> Path:
    """Where opencode reads its global config: ``$XDG_CONFIG_HOME/opencode/opencode.json``."""
    return xdg_dirs(home)["XDG_CONFIG_HOME"] / "opencode" / "opencode.json"


def write_config(home: Path, config: dict[str, Any]) -> Path:
    """Create the per-run HOME/XDG directories and write the config (the IO edge of this module)."""
    for d in xdg_dirs(home).values():
        d.mkdir(parents=True, exist_ok=True)
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
