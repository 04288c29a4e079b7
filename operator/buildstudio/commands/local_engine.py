"""A cloud engine's CLI in ``buildstudio run --local --engine claude|codex|grok``.

Where its model calls go, by the flags:
- ``--model-server replay:FILE``: the scripted server speaks the engine's API (Anthropic Messages
  for claude, Responses for codex, chat completions for grok) and replays the file's neutral tool
  calls in the engine's own tools (``engines.replay``); no key;
- ``--base-url URL``: a model service (e.g. a local one serving the engine's API), behind the same
  preflight and capability gate as opencode (``core.gate``: a cloud CLI on the local service); no key
  is sent there;
- neither: the vendor's API (the adapter's ``vendor_base_url``) with the key from the environment
  variable the registry names (``spec.credential.env``, e.g. ``ANTHROPIC_API_KEY``). The key goes
  only to the credential relay in this process (``local_sandbox``), never into the engine's
  environment, argv or files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from buildstudio.api.engine import BuildEngineSpec
from buildstudio.commands.errors import CliError
from buildstudio.commands.scripted_server import Replay, ScriptedServer
from buildstudio.engines.adapters import adapter_for
from buildstudio.engines.base import EngineAdapter
from buildstudio.engines.replay import translate_script


@dataclass(frozen=True)
class CloudCli:
    """A registry engine whose kind is a cloud CLI, and that CLI's adapter."""

    name: str  # BuildEngine name
    spec: BuildEngineSpec
    adapter: EngineAdapter

    @property
    def kind(self) -> str:
        return self.adapter.name

    @property
    def default_model(self) -> str | None:
        """The registry's strong model of the engine (codex picks its tools by the model id)."""
        ranked = sorted(self.spec.models, key=lambda m: 0 if m.tier == "strong" else 1)
        return ranked[0].id if ranked else None

    @property
    def key_env(self) -> str:
        return self.spec.credential.env if self.spec.credential is not None else ""


def cloud_cli(engine: str | None) -> CloudCli | None:
    """The registry row ``engine`` when its kind is claude, codex or grok; else None (opencode, unset)."""
    if not engine:
        return None
    from buildstudio.adapters import registry

    row = next((e for e in registry.load() if e.name == engine), None)
    adapter = adapter_for(row.spec.engine) if row is not None else None
    return CloudCli(row.name, row.spec, adapter) if row is not None and adapter is not None else None


def engines_for_gate(
    rows: list[tuple[str, BuildEngineSpec]],
    *,
    opencode_present: bool,
    present: Mapping[str, bool],
    local_service: tuple[str, str] | None = None,
) -> list[tuple[str, BuildEngineSpec, bool]]:
    """The registry as this machine has it (pure): local engines present when opencode was found,
    a cloud CLI when ``present`` says so; ``local_service`` = (engine, base URL): that cloud CLI
    runs on that model service, so the gate judges it as a local engine there."""
    out = []
    for name, spec in rows:
        if adapter_for(spec.engine) is None:
            out.append((name, spec, spec.endpoint == "local" and opencode_present))
            continue
        if local_service is not None and local_service[0] == name:
            raw = {**spec.to_api(), "endpoint": "local", "modelService": {"baseURL": local_service[1]}}
            raw["credential"] = None
            spec = BuildEngineSpec.model_validate(raw)
        out.append((name, spec, bool(present.get(name))))
    return out


def vendor_key(cli: CloudCli, environ: Mapping[str, str]) -> str:
    """The vendor key from the environment variable the registry names; a one-line error without it."""
    key = environ.get(cli.key_env, "").strip() if cli.key_env else ""
    if not key:
        raise CliError(
            f"engine {cli.name}",
            f"its vendor API ({cli.adapter.vendor_base_url}) needs a key in ${cli.key_env or '?'}, which is not set",
            f"export {cli.key_env or 'the key'}=…, or run it on --model-server replay:FILE or --base-url URL",
        )
    return key


class ReplayServer:
    """The replay server of a build with ``kind``'s CLI: its API, its tools (set per workspace)."""

    def __init__(self, kind: str, replay: Replay) -> None:
        from buildstudio.commands.scripted_anthropic import AnthropicServer
        from buildstudio.commands.scripted_responses import ResponsesServer

        self.kind = kind
        self.replay = replay
        self.server: Any
        if kind == "claude":
            self.server = AnthropicServer(replay.script)
        elif kind == "codex":
            self.server = ResponsesServer(replay.script)
        else:
            self.server = ScriptedServer(replay.script, model=replay.model)

    @property
    def base_url(self) -> str:
        if isinstance(self.server, ScriptedServer):
            return self.server.base_url
        return f"{self.server.origin}/v1"

    def set_workspace(self, workspace: str) -> None:
        """The replay in the CLI's own tools (claude's need absolute paths: the workspace's)."""
        self.server.script = translate_script(self.kind, self.replay.script, workspace)

    async def start(self) -> ReplayServer:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()


ScriptFor = Callable[[str], None]
