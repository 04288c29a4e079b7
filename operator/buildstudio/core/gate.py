"""The capability gate and engine auto-detection (pure).

The rule of the original platform: a local model is admitted only when an engine that
drives local models through its own tool loop (capability `localModels`: opencode) is
present — that is what makes a model whose API `supportsToolUse` is false still build.
A cloud engine is admitted only when its credential Secret is referenced (and, for
`present`, exists).

A cloud engine's CLI (claude, codex, grok) registered as a *local* engine (``endpoint: local``,
a ``modelService``) runs on that service under the same rule: without `localModels` it has no
tool loop of its own for a model without API tool use, so it is admitted when the model is
declared with ``supportsToolUse: true``, or — grok only, which speaks chat completions — with the
relay's tool-call repair; otherwise refused (docs/engines/README.md). An engine whose kind the
runner cannot start is refused (`EngineUnsupported`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from buildstudio.api.dispatch import SOURCE_PHASES, TEXT_PHASES, BuildDispatchSpec
from buildstudio.api.engine import LOCAL_MODELS, BuildEngineSpec, ModelEntry
from buildstudio.engines.adapters import ENGINES, adapter_for


@dataclass(frozen=True)
class EngineState:
    """What the gate needs to know of one BuildEngine."""

    name: str
    spec: BuildEngineSpec
    present: bool

    @property
    def local(self) -> bool:
        return self.spec.endpoint == "local"

    def model(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.spec.models if m.id == model_id), None)

    def strongest(self) -> ModelEntry | None:
        ranked = sorted(self.spec.models, key=lambda m: 0 if m.tier == "strong" else 1)
        return ranked[0] if ranked else None


@dataclass(frozen=True)
class GateDecision:
    admit: bool
    reason: str  # stable CamelCase: the `Admitted` condition's reason
    message: str  # one line, for humans
    engine: str | None = None
    model: str | None = None
    local: bool = False
    text_only: bool = False  # ideate/plan: text generation, no sandbox
    tool_call_repair: bool = False


def _refuse(reason: str, message: str) -> GateDecision:
    return GateDecision(False, reason, message)


def _rank(e: EngineState) -> tuple[int, int, int, str]:
    # Present first, local before cloud, registry defaults first, then by name: deterministic.
    return (0 if e.present else 1, 0 if e.local else 1, 0 if e.spec.bake_in_default else 1, e.name)


def detect_engine(engines: Sequence[EngineState], model: str | None) -> EngineState | None:
    """Auto-detection: the engine that serves the model, preferring present local ones.

    A model that no engine lists is taken to be served by the local model service (the
    preflight then checks that the service really lists it).
    """
    if model is None:
        candidates = [e for e in engines if e.local and e.strongest() is not None]
    else:
        candidates = [e for e in engines if e.model(model) is not None] or [e for e in engines if e.local]
    return min(candidates, key=_rank, default=None)


def wants_repair(engine: EngineState, model: str) -> bool:
    mode = engine.spec.tool_call_repair
    if mode != "auto":
        return mode == "on"
    entry = engine.model(model)
    return entry is None or not entry.supports_tool_use


def decide(
    engines: Sequence[EngineState],
    spec: BuildDispatchSpec,
    *,
    source_succeeded: bool | None = None,
) -> GateDecision:
    """Admit or refuse one dispatch, naming the engine and model it runs on."""
    if spec.engine:
        engine = next((e for e in engines if e.name == spec.engine), None)
        if engine is None:
            known = ", ".join(sorted(e.name for e in engines)) or "none"
            return _refuse("EngineNotFound", f"no BuildEngine named {spec.engine!r} (known: {known})")
    else:
        engine = detect_engine(engines, spec.model)
        if engine is None:
            return _refuse("NoEngineForModel",
                           f"no BuildEngine serves model {spec.model!r} and no local engine is registered")

    strongest = engine.strongest()
    model = spec.model or (strongest.id if strongest else None)
    if model is None:
        return replace(_refuse("NoModel", f"spec.model is unset and engine {engine.name} lists no models"),
                       engine=engine.name)
    base = GateDecision(False, "", "", engine=engine.name, model=model, local=engine.local)

    def refuse(reason: str, message: str) -> GateDecision:
        return replace(base, reason=reason, message=message)

    def admit(message: str, *, text_only: bool = False, repair: bool = False) -> GateDecision:
        return replace(base, admit=True, reason="Admitted", message=message, text_only=text_only,
                       tool_call_repair=repair)

    if spec.phase in SOURCE_PHASES and source_succeeded is not True:
        src = spec.source.dispatch if spec.source else "?"
        state = "not found" if source_succeeded is None else "has not succeeded"
        return refuse("SourceNotReady", f"{spec.phase} needs a succeeded source dispatch; {src} {state}")
    if spec.phase == "ship" and spec.approval is None:
        return refuse("ApprovalRequired", "ship never applies a diff without spec.approval")

    if spec.phase == "ship":
        # Ship is a governed gate (a review of this exact diff + a human approval), decided by
        # phases.ship against the source's stored patch: no model, no sandbox.
        return admit("ship: governed gate over the source's reviewed, approved diff", text_only=True)
    if spec.phase in TEXT_PHASES or spec.phase == "review":
        # Ideate/plan/review are plain text generation on the local model service: no tool loop needed.
        if not engine.local or engine.spec.model_service is None:
            return refuse("NoLocalModelService",
                          f"{spec.phase} generates text with a local model; engine {engine.name} has no model service")
        return admit(f"{spec.phase}: text generation with {model} on {engine.name}'s model service", text_only=True)

    if engine.spec.engine not in ENGINES:
        return refuse("EngineUnsupported", f"engine {engine.name} is of kind {engine.spec.engine!r}, which the "
                      f"sandbox runner cannot start (known: {', '.join(ENGINES)})")
    if engine.local:
        if LOCAL_MODELS not in engine.spec.capabilities:
            entry = engine.model(model)
            tool_use = "unknown" if entry is None else str(entry.supports_tool_use).lower()
            cli = adapter_for(engine.spec.engine)
            if cli is not None and not engine.present:
                return refuse("EngineNotPresent", f"engine {engine.name} ({cli.name}) is not present")
            if cli is not None and entry is not None and entry.supports_tool_use:
                return admit(f"{cli.name} on the local model service with {model} (API tool calls)")
            if cli is not None and cli.wire_api == "chat":
                return admit(f"{cli.name} on the local model service with {model} through the tool-call "
                             f"repair relay (supportsToolUse: {tool_use})", repair=True)
            return refuse("LocalModelsUnsupported",
                          f"engine {engine.name} lacks the localModels capability; local model {model} "
                          f"(supportsToolUse: {tool_use}) needs an engine that drives its own tool loop"
                          + (f" ({cli.name} speaks the {cli.wire_api} API, which the relay does not repair)"
                             if cli is not None else ""))
        if not engine.present:
            return refuse("EngineNotPresent",
                          f"local model {model} needs engine {engine.name} (localModels), which is not present")
        repair = wants_repair(engine, model)
        return admit(f"{engine.name} drives local model {model}" + (" with tool-call repair" if repair else ""),
                     repair=repair)

    if engine.spec.credential is None:
        return refuse("CredentialMissing", f"cloud engine {engine.name} references no credential Secret")
    if not engine.present:
        return refuse("EngineNotPresent", f"cloud engine {engine.name}: credential Secret "
                      f"{engine.spec.credential.secret_ref.name} not found")
    return admit(f"cloud engine {engine.name} with model {model}")
