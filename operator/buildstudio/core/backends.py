"""Backend knowledge as pure functions over response JSON: identification, id matching, context.

Facts (routes, field names, which number is allocated vs trained) are from
docs/model-endpoints.md §1-2; each function names the route whose body it reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from buildstudio.core.observation import Backend, ContextReport, ContextSource

# /v1/models `owned_by` → backend (vLLM/SGLang ModelCard defaults, llama-server, DMR, Ollama's
# namespace for library models, llama-cpp-python's literal "me").
_OWNED_BY = {
    "vllm": Backend.VLLM,
    "sglang": Backend.SGLANG,
    "llamacpp": Backend.LLAMACPP,
    "docker": Backend.DMR,
    "library": Backend.OLLAMA,
    "me": Backend.LLAMACPP_PYTHON,
}
_ROOT_BANNERS = {
    "ollama is running": Backend.OLLAMA,
    "docker model runner is running": Backend.DMR,
}
DMR_LLAMACPP_DEFAULT_CONTEXT = 4096  # docs.docker.com configuration; no --ctx-size passed otherwise


@dataclass(frozen=True)
class Match:
    present: bool
    matched_id: str | None = None
    rule: str = ""


def root_url(base_url: str) -> str:
    """Server root from the OpenAI base: drop `/v1`, then DMR's `/engines` or `/engines/<backend>`."""
    parts = urlsplit(base_url.rstrip("/"))
    path = re.sub(r"/v1$", "", parts.path)
    path = re.sub(r"/engines(/[^/]+)?$", "", path)
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")


def base_url_problem(base_url: str) -> str | None:
    """Why `base_url` cannot be probed, or None. Checked before any request (pure)."""
    try:
        parts = urlsplit(base_url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as exc:
        return f"invalid base URL {base_url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"base URL {base_url!r} must start with http:// or https://"
    if not parts.hostname:
        return f"base URL {base_url!r} has no host"
    if port == 0:
        return f"base URL {base_url!r} has port 0"
    return None


def listing_cards(body: Any) -> list[dict[str, Any]] | None:
    """`data[]` of an OpenAI `GET /models` body; None when the body does not have that shape."""
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if not isinstance(data, list):
        return None
    return [card for card in data if isinstance(card, dict) and isinstance(card.get("id"), str)]


def identify_from_cards(cards: list[dict[str, Any]]) -> tuple[Backend | None, str]:
    for card in cards:
        owner = card.get("owned_by")
        if isinstance(owner, str) and owner.lower() in _OWNED_BY:
            return _OWNED_BY[owner.lower()], f"/v1/models owned_by={owner}"
    return None, ""


def identify_from_root_text(text: str) -> tuple[Backend | None, str]:
    """`GET /` banner: Ollama and standalone DMR say who they are."""
    lowered = text.strip().lower()
    for banner, backend in _ROOT_BANNERS.items():
        if lowered.startswith(banner):
            return backend, f"GET / says {text.strip()[:40]!r}"
    return None, ""


def is_lmstudio_native(body: Any) -> bool:
    """LM Studio ≥ 0.4 `GET /api/v1/models`: `{"models": [{key, max_context_length, ...}]}`."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return False
    return any(isinstance(m, dict) and "key" in m and "max_context_length" in m for m in body["models"])


def normalise_id(backend: Backend | None, name: str) -> str:
    """The id the server itself would resolve `name` to."""
    name = name.strip()
    if backend is Backend.DMR:
        # Daemon-side normalizeModelName: bare names live in the `ai/` namespace, default tag latest.
        name = name.lower()
        if "/" not in name:
            name = f"ai/{name}"
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    if backend is Backend.OLLAMA:
        name = name.lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    if backend is Backend.LMSTUDIO:
        return name.lower()
    # vLLM/SGLang served names, llama-server aliases and generic servers match exactly.
    return name


def match_model(backend: Backend | None, requested: str, ids: list[str]) -> Match:
    wanted = normalise_id(backend, requested)
    for model_id in ids:
        if model_id == requested:
            return Match(True, model_id, "exact")
    for model_id in ids:
        if normalise_id(backend, model_id) == wanted:
            return Match(True, model_id, f"normalised to {wanted}")
    if backend is Backend.LLAMACPP and len(ids) == 1:
        # llama-server in single-model mode answers under any model name.
        return Match(True, ids[0], "llama-server single-model mode accepts any name")
    return Match(False, None, f"no listed id matches {wanted}")


def positive_int(value: Any) -> int | None:
    """An int > 0 from JSON that may carry it as a number or a numeric string (DMR's gguf map)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number > 0 else None
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def find_card(cards: list[dict[str, Any]], model_id: str) -> dict[str, Any] | None:
    return next((card for card in cards if card.get("id") == model_id), None)


def context_from_card(backend: Backend | None, card: dict[str, Any]) -> ContextReport:
    """What the `/v1/models` entry alone says about context."""
    if backend in (Backend.VLLM, Backend.SGLANG):
        vllm = backend is Backend.VLLM
        source = ContextSource.VLLM_MAX_MODEL_LEN if vllm else ContextSource.SGLANG_MAX_MODEL_LEN
        allocated = positive_int(card.get("max_model_len"))
        return ContextReport(allocated=allocated, allocatedSource=source if allocated else None)
    if backend is Backend.LLAMACPP:
        meta = as_dict(card.get("meta"))  # null while the model loads
        allocated = positive_int(meta.get("n_ctx"))
        trained = positive_int(meta.get("n_ctx_train"))
        return ContextReport(
            allocated=allocated,
            allocatedSource=ContextSource.LLAMACPP_META if allocated else None,
            trained=trained,
            trainedSource=ContextSource.LLAMACPP_TRAINED if trained else None,
        )
    if backend is Backend.DMR:
        dmr = as_dict(card.get("dmr"))
        packaged = positive_int(dmr.get("context_window"))
        return ContextReport(
            allocated=packaged,
            allocatedSource=ContextSource.DMR_PACKAGED if packaged else None,
            assumedDefault=DMR_LLAMACPP_DEFAULT_CONTEXT,
        )
    return ContextReport()


def llamacpp_props_context(body: Any) -> int | None:
    """llama-server `GET /props` → `default_generation_settings.n_ctx` (per slot: what a request gets)."""
    if not isinstance(body, dict):
        return None
    settings = body.get("default_generation_settings")
    if isinstance(settings, dict) and positive_int(settings.get("n_ctx")):
        return positive_int(settings.get("n_ctx"))
    return positive_int(body.get("n_ctx"))


def ollama_ps_context(body: Any, model_id: str) -> int | None:
    """Ollama `GET /api/ps` → `models[].context_length` of the loaded model (absent when not loaded)."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None
    wanted = normalise_id(Backend.OLLAMA, model_id)
    for entry in body["models"]:
        if not isinstance(entry, dict):
            continue
        names = {normalise_id(Backend.OLLAMA, str(entry.get(k, ""))) for k in ("name", "model")}
        if wanted in names:
            return positive_int(entry.get("context_length"))
    return None


_NUM_CTX_LINE = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


def ollama_show_context(body: Any) -> tuple[int | None, int | None]:
    """Ollama `POST /api/show` → (Modelfile `num_ctx`, trained `<arch>.context_length`)."""
    if not isinstance(body, dict):
        return None, None
    modelfile = None
    parameters = body.get("parameters")
    if isinstance(parameters, str) and (found := _NUM_CTX_LINE.search(parameters)):
        modelfile = positive_int(found.group(1))
    trained = None
    info = body.get("model_info")
    if isinstance(info, dict):
        arch = info.get("general.architecture")
        if isinstance(arch, str):
            trained = positive_int(info.get(f"{arch}.context_length"))
    details = body.get("details")
    if trained is None and isinstance(details, dict):
        trained = positive_int(details.get("context_length"))  # v0.30.0+
    return modelfile, trained


def dmr_configure_context(body: Any, model_id: str) -> int | None:
    """DMR `GET /engines/_configure?model=…` → `[{Model, Config: {"context-size": N}}]` (runtime config)."""
    if not isinstance(body, list):
        return None
    wanted = normalise_id(Backend.DMR, model_id)
    for entry in body:
        if not isinstance(entry, dict):
            continue
        model = entry.get("Model")
        # `Model` is the first tag, like the /v1/models id; newer DMR already filters by ?model=.
        if isinstance(model, str) and model and normalise_id(Backend.DMR, model) != wanted:
            continue
        config = entry.get("Config")
        if isinstance(config, dict) and (size := positive_int(config.get("context-size"))):
            return size
    return None


def dmr_native_context(body: Any) -> tuple[int | None, int | None]:
    """DMR `GET /models/{ref}` → (packaged `config.context_size`, trained gguf `<arch>.context_length`)."""
    if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
        return None, None
    config = body["config"]
    packaged = positive_int(config.get("context_size"))
    trained = None
    gguf = config.get("gguf")
    if isinstance(gguf, dict):
        arch = gguf.get("general.architecture")
        if isinstance(arch, str):
            trained = positive_int(gguf.get(f"{arch}.context_length"))
        if trained is None:
            trained = next((positive_int(v) for k, v in gguf.items() if k.endswith(".context_length")), None)
    return packaged, trained


def lmstudio_context(body: Any, model_id: str) -> tuple[int | None, int | None]:
    """LM Studio `GET /api/v1/models` → (loaded instance `config.context_length`, `max_context_length`)."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None, None
    wanted = normalise_id(Backend.LMSTUDIO, model_id)
    for entry in body["models"]:
        if not isinstance(entry, dict) or normalise_id(Backend.LMSTUDIO, str(entry.get("key", ""))) != wanted:
            continue
        loaded = None
        instances = entry.get("loaded_instances")
        if isinstance(instances, list):
            for instance in instances:
                config = instance.get("config") if isinstance(instance, dict) else None
                if isinstance(config, dict) and (loaded := positive_int(config.get("context_length"))):
                    break
        return loaded, positive_int(entry.get("max_context_length"))
    return None, None
