"""Optional tool-call smoke test: one tiny chat request with one tool.

Flags the commonest qwen3-coder failure (docs/model-endpoints.md §4): the server returns the call
as text (`<tool_call>` / `<function=`) in `content` while `tool_calls` is empty. A warning with
advice, never a refusal: opencode is the engine that copes with it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import replace
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from buildstudio.adapters.modelservice.probe import ProbeFailure, fetch, new_client
from buildstudio.core.observation import FailureKind, ProbeTarget, clip

LEAK_MARKERS = ("<tool_call>", "<function=")
SMOKE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a text file from the workspace.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "Path relative to the workspace."}},
            "required": ["path"],
        },
    },
}
_PARSER_ADVICE = (
    "enable the server's tool-call parser (vLLM/SGLang --tool-call-parser qwen3_coder with "
    "--enable-auto-tool-choice; llama-server --jinja; Ollama >= 0.12 with the library qwen3-coder model)"
)


class SmokeStatus(enum.StrEnum):
    OK = "Ok"  # a real API tool call came back
    LEAKED = "ToolCallAsText"  # the call is in `content`, `tool_calls` empty
    NO_TOOL_CALL = "NoToolCall"  # a text answer without any call
    REJECTED = "ToolsRejected"  # the server refused a request with tools (HTTP 4xx)
    FAILED = "Failed"  # transport failure, 5xx or garbage


class SmokeResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    status: SmokeStatus
    warning: bool
    tool_calls: int = Field(0, alias="toolCalls")
    finish_reason: str | None = Field(None, alias="finishReason")
    excerpt: str = ""
    advice: str = ""
    latency_ms: int = Field(0, alias="latencyMs")


def smoke_request(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Read the file README.md using the read_file tool."}],
        "tools": [SMOKE_TOOL],
        "tool_choice": "auto",
        "max_tokens": 128,
        "temperature": 0,
        "stream": False,
    }


def classify_reply(body: Any) -> SmokeResult:
    """Pure: what a chat-completions body says about tool calling."""
    choices = body.get("choices") if isinstance(body, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    message = first.get("message") if first else None
    if not isinstance(message, dict):
        return SmokeResult(status=SmokeStatus.FAILED, warning=True, excerpt=clip(str(body), 160))
    calls = message.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    raw_content = message.get("content")
    content = raw_content if isinstance(raw_content, str) else ""  # null alongside tool_calls
    finish = first.get("finish_reason") if first and isinstance(first.get("finish_reason"), str) else None
    common: dict[str, Any] = {"tool_calls": len(calls), "finish_reason": finish, "excerpt": clip(content, 160)}
    if calls:
        return SmokeResult(status=SmokeStatus.OK, warning=False, **common)
    if any(marker in content for marker in LEAK_MARKERS):
        return SmokeResult(
            status=SmokeStatus.LEAKED,
            warning=True,
            advice="the model's tool call came back as text, not as tool_calls: " + _PARSER_ADVICE,
            **common,
        )
    return SmokeResult(
        status=SmokeStatus.NO_TOOL_CALL,
        warning=True,
        advice="the model answered in text without calling the tool; check the chat template supports tools "
        "(llama-server --jinja) and that the model is an instruct/tool-trained one",
        **common,
    )


async def tool_call_smoke(
    target: ProbeTarget, model: str, *, client: httpx.AsyncClient | None = None, read_timeout: float = 60.0
) -> SmokeResult:
    """One chat request with one tool. `read_timeout` is longer than the probe's: this one generates."""
    target = replace(target, read_timeout=max(target.read_timeout, read_timeout))
    url = target.base_url.rstrip("/") + "/chat/completions"
    started = time.monotonic()
    own = client is None
    http = client or new_client()
    try:
        fetched = await fetch(http, target, "POST", url, json_body=smoke_request(model))
        elapsed = int((time.monotonic() - started) * 1000)
        if 400 <= fetched.status < 500:
            text = fetched.body[:300].decode("utf-8", "replace")
            return SmokeResult(
                status=SmokeStatus.REJECTED,
                warning=True,
                excerpt=clip(f"HTTP {fetched.status}: {text}", 200),
                advice="the server rejected a request with tools: " + _PARSER_ADVICE,
                latency_ms=elapsed,
            )
        if not fetched.ok:
            raise ProbeFailure(FailureKind.HTTP_STATUS, f"HTTP {fetched.status}")
        result = classify_reply(fetched.json())
        result.latency_ms = elapsed
        return result
    except ProbeFailure as failure:
        return SmokeResult(status=SmokeStatus.FAILED, warning=True, excerpt=clip(failure.detail, 200))
    finally:
        if own:
            await http.aclose()
