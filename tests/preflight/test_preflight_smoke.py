"""tool_call_smoke against scripted chat replies (shapes from the qwen3-coder leak reports)."""

from __future__ import annotations

from typing import Any

import pytest

from buildstudio.adapters.modelservice.smoke import SmokeStatus, classify_reply, tool_call_smoke
from buildstudio.core.observation import ProbeTarget
from tests.preflight.scripted import Reply, ServeFn, closed_port


def chat(content: str | None, tool_calls: list[dict[str, Any]] | None, finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "qwen3-coder",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 180, "completion_tokens": 24, "total_tokens": 204},
    }


GOOD = chat(
    None,
    [{"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "README.md"}'}}],
    "tool_calls",
)
# Ollama #4428 / #16686: bare `<function=` in content, finish_reason stop, tool_calls null.
BARE = chat("<function=read_file>\n<parameter=path>\nREADME.md\n</parameter>\n</function>", None, "stop")
WRAPPED = chat("I'll read it.\n<tool_call>\n<function=read_file>\n<parameter=path>\nREADME.md", [], "stop")
TEXT = chat("README.md is a markdown file.", None, "stop")
VLLM_400 = {
    "object": "error",
    "message": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
    "type": "BadRequestError",
    "code": 400,
}


@pytest.mark.parametrize(
    ("reply", "status", "warning", "calls"),
    [
        (Reply(json=GOOD), SmokeStatus.OK, False, 1),
        (Reply(json=BARE), SmokeStatus.LEAKED, True, 0),
        (Reply(json=WRAPPED), SmokeStatus.LEAKED, True, 0),
        (Reply(json=TEXT), SmokeStatus.NO_TOOL_CALL, True, 0),
        (Reply(status=400, json=VLLM_400), SmokeStatus.REJECTED, True, 0),
        (Reply(status=500, text="boom"), SmokeStatus.FAILED, True, 0),
        (Reply(text="not json"), SmokeStatus.FAILED, True, 0),
    ],
)
async def test_smoke(serve: ServeFn, reply: Reply, status: SmokeStatus, warning: bool, calls: int) -> None:
    server = await serve({"POST /v1/chat/completions": reply})
    result = await tool_call_smoke(ProbeTarget(base_url=server.url + "/v1"), "qwen3-coder", read_timeout=5)
    assert (result.status, result.warning, result.tool_calls) == (status, warning, calls)
    sent = server.bodies["POST /v1/chat/completions"]
    assert sent["model"] == "qwen3-coder" and [t["function"]["name"] for t in sent["tools"]] == ["read_file"]
    if status in (SmokeStatus.LEAKED, SmokeStatus.REJECTED):
        assert "--tool-call-parser qwen3_coder" in result.advice
    if status is SmokeStatus.REJECTED:
        assert "enable-auto-tool-choice" in result.excerpt


async def test_smoke_unreachable_is_a_failed_warning() -> None:
    result = await tool_call_smoke(ProbeTarget(base_url=f"http://127.0.0.1:{closed_port()}/v1"), "m")
    assert result.status is SmokeStatus.FAILED and "refused" in result.excerpt


def test_classify_reply_garbage_shapes() -> None:
    bodies: list[Any] = [None, [], {"choices": []}, {"choices": [{"message": "x"}]}]
    for body in bodies:
        assert classify_reply(body).status is SmokeStatus.FAILED
