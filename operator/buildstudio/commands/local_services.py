"""The model service of ``buildstudio run --local``: the first local OpenAI-compatible service that
answers on its default port, or a recorded replay (``--model-server replay:FILE``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from buildstudio.commands.errors import CliError
from buildstudio.commands.scripted_server import Replay, load_replay

REPO_ROOT = Path(__file__).resolve().parents[3]
DETECT_TIMEOUT = httpx.Timeout(2.0, connect=0.5)


@dataclass(frozen=True)
class Candidate:
    name: str
    base_url: str
    how_to_start: str


# Default ports of the local OpenAI-compatible services (docs/model-endpoints.md).
LOCAL_SERVICES: tuple[Candidate, ...] = (
    Candidate(
        "Docker Model Runner",
        "http://127.0.0.1:12434/engines/v1",
        "docker desktop enable model-runner --tcp 12434 && docker model pull ai/qwen3-coder",
    ),
    Candidate(
        "Ollama",
        "http://127.0.0.1:11434/v1",
        "ollama serve & ollama pull qwen3-coder  (set OLLAMA_CONTEXT_LENGTH=65536)",
    ),
    Candidate("llama.cpp", "http://127.0.0.1:8080/v1", "llama-server -m MODEL.gguf --jinja -c 65536 --port 8080"),
    Candidate(
        "vLLM",
        "http://127.0.0.1:8000/v1",
        "vllm serve Qwen/Qwen3-Coder-30B-A3B-Instruct --enable-auto-tool-choice --tool-call-parser qwen3_coder",
    ),
    Candidate(
        "LM Studio", "http://127.0.0.1:1234/v1", "lms server start && lms load qwen3-coder --context-length 65536"
    ),
)


async def detect_service(
    candidates: Sequence[Candidate] = LOCAL_SERVICES,
) -> tuple[Candidate | None, list[tuple[Candidate, str]], list[str]]:
    """The first candidate whose ``GET /models`` answers 200; also what each one said, and its models."""
    tried: list[tuple[Candidate, str]] = []
    async with httpx.AsyncClient(timeout=DETECT_TIMEOUT, trust_env=False) as client:
        for c in candidates:
            try:
                r = await client.get(c.base_url.rstrip("/") + "/models")
            except httpx.HTTPError as e:
                tried.append((c, f"no answer ({type(e).__name__})"))
                continue
            if r.status_code != 200:
                tried.append((c, f"HTTP {r.status_code}"))
                continue
            try:
                ids = [str(m["id"]) for m in r.json().get("data", [])]
            except (ValueError, KeyError, TypeError, AttributeError):
                ids = []
            return c, tried, ids
    return None, tried, []


def no_service_message(tried: Sequence[tuple[Candidate, str]]) -> str:
    lines = ["no local model service answered. Tried:"]
    lines += [f"  {c.name:<20} {c.base_url:<40} {why}" for c, why in tried]
    lines.append("Start one, for example:")
    lines += [f"  {c.name:<20} {c.how_to_start}" for c, _ in tried]
    lines.append("or pass --base-url URL, or try the pipeline with recorded replies:")
    lines.append("  buildstudio run --local --model-server replay:examples/replays/add-subtract.json")
    return "\n".join(lines)


def resolve_replay(target: str) -> Path:
    """A path as given, else relative to the repository, else a name under examples/replays/."""
    for candidate in (Path(target), REPO_ROOT / target, REPO_ROOT / "examples" / "replays" / f"{target}.json"):
        if candidate.is_file():
            return candidate
    return Path(target)  # loading it reports the error


def replay_server(model_server: str) -> tuple[Replay, str]:
    """The replay of ``--model-server replay:FILE``, and the FILE as given."""
    kind, _, target = model_server.partition(":")
    if kind != "replay" or not target:
        raise CliError(f"--model-server {model_server}", "not of the form replay:FILE",
                       "e.g. --model-server replay:examples/replays/add-subtract.json")  # fmt: skip
    try:
        return load_replay(resolve_replay(target)), target
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the replay {target}", str(e), "check the file (examples/replays/)") from e
