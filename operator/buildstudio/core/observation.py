"""What a preflight probe saw at a model endpoint: plain, bounded, JSON-ready data.

The operator stores an `Observation` in a BuildEngine's status, so every list and string here is
capped (see the `MAX_*` constants) whatever the endpoint returned.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

MAX_MODELS = 32  # ids kept in the observation (all listed ids are still matched against)
MAX_ID_CHARS = 200
MAX_DETAIL_CHARS = 300
MAX_NOTES = 8


class Backend(enum.StrEnum):
    """Model-server kinds the preflight knows. `AUTO` is only a hint, never an identification."""

    AUTO = "auto"
    DMR = "dmr"
    OLLAMA = "ollama"
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"  # llama.cpp llama-server
    LLAMACPP_PYTHON = "llamacpp-python"  # python -m llama_cpp.server
    LMSTUDIO = "lmstudio"
    OPENAI = "openai"  # any other OpenAI-compatible server: nothing backend-specific to ask


class FailureKind(enum.StrEnum):
    """Why the model listing could not be used. The first five mean "unreachable"."""

    REFUSED = "refused"
    DNS = "dns"
    TIMEOUT = "timeout"
    TLS = "tls"
    CONNECT = "connect"  # another connect-phase OSError (unreachable network, reset, ...)
    HTTP_STATUS = "httpStatus"
    BAD_BODY = "badBody"  # not JSON, or JSON without the OpenAI list shape
    TOO_LARGE = "tooLarge"  # body exceeded max_body_bytes; reading stopped there
    PROTOCOL = "protocol"  # connection dropped mid-response, malformed HTTP
    INVALID_URL = "invalidUrl"


UNREACHABLE_KINDS = frozenset(
    {FailureKind.REFUSED, FailureKind.DNS, FailureKind.TIMEOUT, FailureKind.TLS, FailureKind.CONNECT}
)
# The server did answer, just not usefully: `Observation.reachable` is true for these only.
ANSWERED_KINDS = frozenset({FailureKind.HTTP_STATUS, FailureKind.BAD_BODY, FailureKind.TOO_LARGE, FailureKind.PROTOCOL})


class ContextSource(enum.StrEnum):
    """Where a context number came from; the `*_TRAINED` ones are only the model's maximum."""

    VLLM_MAX_MODEL_LEN = "vllm:/v1/models max_model_len"
    SGLANG_MAX_MODEL_LEN = "sglang:/v1/models max_model_len"
    LLAMACPP_PROPS = "llamacpp:/props default_generation_settings.n_ctx"
    LLAMACPP_META = "llamacpp:/v1/models meta.n_ctx"
    LLAMACPP_TRAINED = "llamacpp:/v1/models meta.n_ctx_train"
    OLLAMA_PS = "ollama:/api/ps context_length"
    OLLAMA_MODELFILE = "ollama:/api/show parameters num_ctx"
    OLLAMA_TRAINED = "ollama:/api/show model_info context_length"
    DMR_CONFIGURE = "dmr:/engines/_configure context-size"
    DMR_PACKAGED = "dmr:/engines/v1/models dmr.context_window"
    DMR_PACKAGED_NATIVE = "dmr:/models config.context_size"
    DMR_TRAINED = "dmr:/models config.gguf context_length"
    LMSTUDIO_LOADED = "lmstudio:/api/v1/models loaded_instances.config.context_length"
    LMSTUDIO_TRAINED = "lmstudio:/api/v1/models max_context_length"


class _Plain(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", use_enum_values=False)


class ContextReport(_Plain):
    """The two context numbers the preflight must not confuse, plus a documented default."""

    allocated: int | None = Field(None, description="Context the server allocated (the number that limits a request).")
    allocated_source: ContextSource | None = Field(None, alias="allocatedSource")
    trained: int | None = Field(None, description="The model's trained maximum; says nothing about the server.")
    trained_source: ContextSource | None = Field(None, alias="trainedSource")
    assumed_default: int | None = Field(
        None,
        alias="assumedDefault",
        description="Engine default used when nothing is configured (not observed; DMR llama.cpp: 4096).",
    )


class Observation(_Plain):
    """One probe of one endpoint for one model."""

    base_url: str = Field(alias="baseUrl")
    model: str
    backend_hint: Backend = Field(Backend.AUTO, alias="backendHint")
    reachable: bool
    failure: FailureKind | None = None
    http_status: int | None = Field(None, alias="httpStatus")
    detail: str = ""
    backend: Backend | None = None
    backend_evidence: str = Field("", alias="backendEvidence")
    models: list[str] = Field(default_factory=list)
    models_total: int = Field(0, alias="modelsTotal")
    model_present: bool | None = Field(None, alias="modelPresent")
    matched_id: str | None = Field(None, alias="matchedId")
    match_rule: str = Field("", alias="matchRule")
    context: ContextReport = Field(default_factory=ContextReport)
    latency_ms: int = Field(0, alias="latencyMs", description="Round trip of the model listing.")
    duration_ms: int = Field(0, alias="durationMs", description="Whole probe, all routes.")
    observed_at: datetime = Field(alias="observedAt")
    notes: list[str] = Field(default_factory=list, description="Auxiliary routes that failed (bounded).")

    def to_status(self) -> dict[str, object]:
        """camelCase JSON-ready dict, as stored in a status."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class ProbeTarget:
    """Where to probe. `base_url` is the OpenAI base opencode uses (`…/v1`; DMR `…/engines/v1`)."""

    base_url: str
    backend: Backend = Backend.AUTO
    api_key: str | None = field(default=None, repr=False)
    # Each phase has its own bound and the whole verdict one more: connect covers DNS, TCP and the
    # TLS handshake (httpcore runs all three under it); read bounds the wait for the response
    # headers and for each body read; total bounds the probe, every route included, so a
    # refused, black-holed, silent, stalled or unresolvable endpoint is judged within 2.5 s.
    connect_timeout: float = 1.0
    read_timeout: float = 2.0
    total_timeout: float = 2.5
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        # Specs arrive as YAML/JSON strings ("ollama"); an unknown name fails here, not mid-probe.
        object.__setattr__(self, "backend", Backend(self.backend))


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """One line, at most `limit` characters (status fields are read in `kubectl get -o yaml`)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
