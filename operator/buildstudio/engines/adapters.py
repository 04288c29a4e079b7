"""The adapter of each cloud engine by name (opencode keeps its own path: ``opencode_config`` and
``opencode_stream``)."""

from __future__ import annotations

from buildstudio.engines.base import EngineAdapter
from buildstudio.engines.claude import ClaudeAdapter
from buildstudio.engines.codex import CodexAdapter
from buildstudio.engines.grok import GrokAdapter

OPENCODE = "opencode"
ADAPTERS: dict[str, type[ClaudeAdapter] | type[CodexAdapter] | type[GrokAdapter]] = {
    "claude": ClaudeAdapter,
    "codex": CodexAdapter,
    "grok": GrokAdapter,
}
ENGINES = (OPENCODE, *ADAPTERS)


def adapter_for(engine: str) -> EngineAdapter | None:
    """The adapter of ``engine``; None for opencode (and for a name nobody knows: callers refuse it)."""
    cls = ADAPTERS.get(engine)
    return cls() if cls is not None else None
