"""`BuildEngine`: a registered coding-agent engine (cluster-scoped registry row)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from buildstudio.api.common import (
    NAME_PATTERN,
    ApiModel,
    Condition,
    ObjectMeta,
    SecretKeyRef,
    cel,
    conditions_field,
)

Endpoint = Literal["local", "cloud"]
Backend = Literal["auto", "dmr", "ollama", "vllm", "sglang", "llamacpp", "lmstudio", "openai"]
Capability = Literal["localModels", "apiToolCalls", "textToolCalls", "fileEdits", "shell"]
Tier = Literal["strong", "fast"]
RecipeType = Literal["prestaged-binary", "curl", "npm"]
PresenceMethod = Literal["probe-pod", "credential-secret", "none"]
ToolCallRepair = Literal["auto", "on", "off"]

LOCAL_MODELS: Capability = "localModels"


class Recipe(ApiModel):
    """How the engine binary is provisioned into the sandbox image."""

    type: RecipeType = Field(
        description="Recipe kind: prestaged-binary (copy from a path baked into the image), "
        "curl (download a pinned release archive and verify its checksum) or npm (install package@version)."
    )
    path: str | None = Field(
        None, description="prestaged-binary: absolute path of the pre-staged binary in the image.",
        max_length=4096,
    )
    target: str | None = Field(
        None, description="Absolute path the binary is installed or linked to, e.g. /usr/local/bin/opencode.",
        max_length=4096,
    )
    url: str | None = Field(
        None, description="curl: URL of the pinned release archive.", max_length=4096,
        pattern=r"^https://",
    )
    sha256: str | None = Field(
        None, description="curl: hex SHA-256 of the archive; the recipe fails on mismatch.",
        pattern=r"^[a-f0-9]{64}$",
    )
    package: str | None = Field(
        None, description="npm: package@version, pinned (no ranges).", max_length=214,
        pattern=r"^(@[a-z0-9-~][a-z0-9-._~]*/)?[a-z0-9-~][a-z0-9-._~]*@[0-9][0-9A-Za-z.+-]*$",
    )


RECIPE_RULES = [
    cel("self.type != 'prestaged-binary' || has(self.path)", "a prestaged-binary recipe needs path"),
    cel("self.type != 'curl' || (has(self.url) && has(self.sha256))", "a curl recipe needs url and sha256"),
    cel("self.type != 'npm' || has(self.package)", "an npm recipe needs package (name@version)"),
]


class Credential(ApiModel):
    """The vendor credential a cloud engine needs; only that engine's pods see it."""

    secret_ref: SecretKeyRef = Field(
        description="Secret holding the API key or OAuth token, in the dispatch's namespace. "
        "Its value is never copied into status, events or logs."
    )
    env: str = Field(
        description="Environment variable the engine reads the credential from, e.g. ANTHROPIC_API_KEY.",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        max_length=128,
    )


class ModelService(ApiModel):
    """The OpenAI-compatible model service a local engine drives."""

    base_url: str = Field(
        alias="baseURL",
        description="OpenAI base URL of the service, ending in /v1 (DMR: /engines/v1), "
        "e.g. http://ollama.models.svc:11434/v1.",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        max_length=2048,
    )
    backend: Backend = Field(
        "auto", description="Backend hint for the preflight: auto, dmr, ollama, vllm, sglang, llamacpp, "
        "lmstudio or openai. auto identifies it from the service's answers."
    )
    api_key_secret: SecretKeyRef | None = Field(
        None,
        description="Optional Secret with an API key for the service, sent as a bearer token: the operator "
        "reads it from its own namespace for its probes; a sandbox pod gets the Secret of that name in its "
        "dispatch's namespace (by reference).",
    )


class ModelEntry(ApiModel):
    """One model the engine serves."""

    id: str = Field(description="Model id as the service lists it, e.g. qwen3-coder.", min_length=1,
                    max_length=256)
    tier: Tier = Field("fast", description="Quality tier: strong (used for ideate/plan text generation) or fast.")
    supports_tool_use: bool = Field(
        False, description="Whether the model reliably does API-level tool calling. "
        "False is fine with an engine that has the localModels capability."
    )
    context_override: int | None = Field(
        None, description="Context window to assume when the service cannot report the allocated one.",
        ge=1024, le=10_000_000,
    )


class Concurrency(ApiModel):
    """Limits on sandboxes running at once."""

    max_running: int = Field(4, description="Dispatches of this engine running at once.", ge=1, le=1000)
    max_running_per_model: int = Field(
        2, description="Dispatches per model running at once (they share the model server's GPU).",
        ge=1, le=1000,
    )


class BuildEngineSpec(ApiModel):
    """A coding-agent engine Build Studio can dispatch to."""

    engine: str = Field(description="Engine name: opencode, claude, codex, grok, …", min_length=1,
                        max_length=63, pattern=r"^[a-z][a-z0-9-]*$")
    display_name: str = Field("", description="Human-readable name.", max_length=128)
    endpoint: Endpoint = Field(
        description="Where inference runs: local (an OpenAI-compatible service of this install, "
        "no credential) or cloud (a vendor API that needs a credential)."
    )
    capabilities: list[Capability] = Field(
        default_factory=list,
        description="What the engine can do. localModels: drives a model through its own tool loop, so a "
        "local model whose API supportsToolUse is false still builds.",
        max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    version: str = Field(description="Pinned engine version, e.g. 1.18.33.", min_length=1, max_length=64)
    build: str = Field("", description="Platform build of the binary, e.g. linux-x64-baseline-musl.",
                       max_length=64)
    command: list[str] = Field(
        description="Headless command template; {model}, {prompt} and {workspace} are filled in by the runner, "
        "each as one argv element (never through a shell).",
        min_length=1, max_length=64,
    )
    version_command: list[str] = Field(
        default_factory=list, description="Command that prints the engine's version (the presence probe).",
        max_length=8,
    )
    recipes: list[Recipe] = Field(
        default_factory=list, description="Provisioning recipes, tried in order.", max_length=8,
    )
    bake_in_default: bool = Field(
        False, description="Baked into the sandbox image and seeded by the operator at start-up."
    )
    image: str = Field("", description="Sandbox image that carries the engine (empty: the operator's default).",
                       max_length=512)
    credential: Credential | None = Field(None, description="Vendor credential (cloud engines).")
    model_service: ModelService | None = Field(None, description="Model service (local engines).")
    models: list[ModelEntry] = Field(
        default_factory=list, description="Models this engine serves.", max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    context_floor: int = Field(
        65536, description="Advisory context floor in tokens: below it a dispatch runs with a warning.",
        ge=1024, le=10_000_000,
    )
    hard_minimum_context: int = Field(
        16384, description="Below this context a dispatch is refused (opencode's first request is ~10k tokens).",
        ge=1024, le=10_000_000,
    )
    tool_call_repair: ToolCallRepair = Field(
        "auto", description="Run the tool-call repair relay between the engine and the model service: "
        "auto (for models whose supportsToolUse is false), on, or off."
    )
    concurrency: Concurrency = Field(default_factory=Concurrency, description="Concurrency limits.")


ENGINE_RULES = [
    cel("self.endpoint != 'cloud' || has(self.credential)", "a cloud engine needs credential.secretRef",
        field_path=".credential"),
    cel("self.endpoint != 'local' || has(self.modelService)", "a local engine needs modelService",
        field_path=".modelService"),
    cel("self.hardMinimumContext <= self.contextFloor", "hardMinimumContext must not exceed contextFloor",
        field_path=".hardMinimumContext"),
    cel("self.models.all(m, self.models.exists_one(n, n.id == m.id))", "model ids must be unique",
        field_path=".models"),
]


class Presence(ApiModel):
    """How `present` was established."""

    method: PresenceMethod = Field(description="probe-pod (version command run in the engine image), "
                                   "credential-secret (the Secret exists) or none.")
    checked_at: str | None = Field(None, description="When presence was last established (RFC 3339).",
                                   json_schema_extra={"format": "date-time"})
    message: str = Field("", description="Outcome of the last check, single line.", max_length=1024)
    image: str = Field("", description="Image the probe ran in.", max_length=512)
    observed_generation: int | None = Field(None, description="Spec generation the check was made for.", ge=0)


class ModelServiceStatus(ApiModel):
    """The last observation of a local engine's model service (bounded)."""

    reachable: bool = Field(False, description="The service answered GET /models.")
    backend: str = Field("", description="Backend identified by the preflight.", max_length=32)
    models: list[str] = Field(default_factory=list, description="Model ids listed (first 32).", max_length=32)
    context: int | None = Field(None, description="Allocated context window of the first model, tokens.")
    context_source: str = Field("", description="Where the context number came from.", max_length=128)
    reason: str = Field("", description="Verdict reason of the last probe.", max_length=64)
    message: str = Field("", description="Verdict message of the last probe.", max_length=1024)
    latency_ms: int | None = Field(None, description="Latency of the last probe in ms.")
    observed_at: str | None = Field(None, description="When it was observed (RFC 3339).",
                                    json_schema_extra={"format": "date-time"})


class BuildEngineStatus(ApiModel):
    """Observed state of the engine, written by the operator."""

    observed_generation: int | None = Field(None, description="metadata.generation last acted on.", ge=0)
    present: bool = Field(False, description="The engine is usable: its binary answered in the sandbox image "
                          "(local) or its credential Secret exists (cloud). The capability gate reads this.")
    presence: Presence | None = Field(None, description="How and when present was established.")
    version: str = Field("", description="Engine version observed by the presence probe.", max_length=128)
    model_service: ModelServiceStatus | None = Field(None, description="Model service observation (local engines).")
    conditions: list[Condition] = conditions_field(
        "Present and ModelServiceReady conditions, in metav1.Condition form."
    )


class BuildEngine(ApiModel):
    """A registered coding-agent engine; the capability gate checks its `status.present`."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["buildstudio.dpf.dev/v1alpha1"] = "buildstudio.dpf.dev/v1alpha1"
    kind: Literal["BuildEngine"] = "BuildEngine"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: BuildEngineSpec
    status: BuildEngineStatus = Field(default_factory=BuildEngineStatus)


__all__ = [
    "ENGINE_RULES",
    "LOCAL_MODELS",
    "NAME_PATTERN",
    "RECIPE_RULES",
    "BuildEngine",
    "BuildEngineSpec",
    "BuildEngineStatus",
    "Concurrency",
    "Credential",
    "ModelEntry",
    "ModelService",
    "ModelServiceStatus",
    "Presence",
    "Recipe",
]
