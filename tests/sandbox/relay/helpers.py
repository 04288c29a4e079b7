"""Building and reading OpenAI-style SSE streams in tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def opencode_tools() -> list[dict[str, Any]]:
    """The `tools` array opencode 1.18.33 sends (captured)."""
    tools: list[dict[str, Any]] = json.loads((FIXTURES / "request-tools.json").read_text())
    return tools


def opencode_schemas() -> dict[str, Any]:
    return {t["function"]["name"]: t["function"]["parameters"] for t in opencode_tools()}


def chunk(delta: dict[str, Any], fr: str | None = None, *, cid: str = "chatcmpl-1") -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen3-coder",
        "choices": [{"index": 0, "delta": delta, "finish_reason": fr}],
    }


def sse_stream(pieces: list[str], *, finish: str = "stop", usage: bool = True, nl: str = "\n") -> bytes:
    """A complete streamed reply whose content arrives in ``pieces`` (one event each)."""
    evs = [chunk({"role": "assistant", "content": ""})]
    evs += [chunk({"content": p}) for p in pieces]
    evs.append(chunk({}, finish))
    if usage:
        evs.append(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "qwen3-coder",
                "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )
    out = b"".join(b"data: " + json.dumps(e).encode() + (nl * 2).encode() for e in evs)
    return out + b"data: [DONE]" + (nl * 2).encode()


@dataclass
class Reply:
    """What a client assembles from a streamed reply."""

    content: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> {id, name, arguments}
    finish: str | None = None
    usage: dict[str, Any] | None = None
    done: bool = False
    events: int = 0

    def tool_calls(self) -> list[tuple[str, dict[str, Any]]]:
        return [(c["name"], json.loads(c["arguments"])) for _, c in sorted(self.calls.items())]


def read_sse(data: bytes) -> Reply:
    r = Reply()
    for raw in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[5:].strip() for ln in raw.split(b"\n") if ln.startswith(b"data:")]
        if not lines:
            continue
        payload = b"\n".join(lines)
        r.events += 1
        if payload == b"[DONE]":
            r.done = True
            continue
        obj = json.loads(payload)
        if obj.get("usage"):
            r.usage = obj["usage"]
        for ch in obj.get("choices") or []:
            d = ch.get("delta") or {}
            r.content += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                c = r.calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                c["id"] = tc.get("id") or c["id"]
                fn = tc.get("function") or {}
                c["name"] += fn.get("name") or ""
                c["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                r.finish = ch["finish_reason"]
    return r


def splits(data: bytes | str, n: int) -> list[Any]:
    """``data`` cut into pieces of at most n."""
    return [data[i : i + n] for i in range(0, len(data), n)] or [data[:0]]
